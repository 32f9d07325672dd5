"""Typed, nested configuration.

A run is described by one :class:`Config` (sections ``model``, ``prompts``, ``data``, ``train``, ``eval``).
Sources are applied in order, each holding only *deltas* from what came before:

1. the dataclass defaults of :mod:`dpseg.config_schema` (= the paper's ConvNeXt-B recipe, preset ``dpseg-b``);
2. a preset (``dpseg-b``, ``dpseg-l``, ``sed-b``, ``sed-l``, ``dpseg-tiny``, ``synthetic``), a YAML delta shipped
   in ``dpseg/presets``;
3. a user YAML file (it may name its own ``preset:``);
4. ``--set section.key=value`` overrides (values parsed as YAML, then type-checked).

Unknown keys and wrongly typed values raise :class:`~dpseg.errors.ConfigError` naming the full key. The
resolved config is written as a complete YAML next to every run's outputs (:func:`save_config`) and
:func:`load_config` reads it back to an equal object.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from dpseg.atomic import atomic_write_text, json_text  # atomic_write_text: re-exported for callers of dpseg.config
from dpseg.config_schema import (  # noqa: F401 - re-exported
    GENERIC_RULE,
    INT_LIMIT,
    Config,
    DataConfig,
    EarlyRejection,
    EvalConfig,
    ModelConfig,
    NumberRule,
    PromptsConfig,
    TrainConfig,
)
from dpseg.errors import ConfigError, char_name, quote, unsafe_char
from dpseg.safe_load import loads_yaml, read_json, read_yaml

PRESET_DIR = Path(__file__).parent / "presets"


# ----------------------------------------------------------------------------------------------- checking


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    # built only when raised, and quoting a bounded prefix: repr() of a YAML alias tree would be gigabytes
    bad = _TypeMismatch(key, tp, value)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise bad
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        try:
            return float(value)
        except OverflowError:  # an integer beyond float range
            raise ConfigError(f"config key '{key}' is {quote(value)}, beyond the range of a float") from None
    if tp is str:
        if not isinstance(value, str):
            raise bad
        unsafe = unsafe_char(value, allow="\t")
        if unsafe is not None:  # a path or name holding ESC or a line separator is an attack or an accident
            raise ConfigError(
                f"config key '{key}' holds the control character {char_name(unsafe[1])} ({quote(value, 80)}); "
                "config strings must be printable text"
            )
        return value
    raise bad


class _TypeMismatch(ConfigError):
    def __init__(self, key: str, tp: Any, value: Any):
        super().__init__(f"config key '{key}' expects {_type_name(tp)}, got {quote(value)} ({type(value).__name__})")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _apply(obj: Any, delta: dict, prefix: str) -> None:
    """Apply a nested dict of deltas to a dataclass instance in place, checking keys and types."""
    if not isinstance(delta, dict):
        raise ConfigError(f"config section '{prefix or '<root>'}' must be a mapping, got {type(delta).__name__}")
    types_ = _field_types(type(obj))
    for name, value in delta.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in types_:
            close = ", ".join(sorted(types_))
            raise ConfigError(f"unknown config key {quote(key)} (valid keys here: {close})")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _apply(current, value, key)
        elif isinstance(current, dict):  # a free-form mapping (model.clip_model_cfg): a delta too, not a replacement
            setattr(obj, name, {} if value is None else merge_patch(current, _coerce(value, dict, key)))
        else:
            setattr(obj, name, _coerce(value, types_[name], key))


def merge_patch(base: dict, patch: dict) -> dict:
    """``base`` with ``patch`` merged in, as JSON Merge Patch (RFC 7396) does: mappings merge key by key, a ``null``
    value removes its key, anything else replaces. ``--set model.clip_model_cfg.vision_cfg.image_size=160`` changes
    one leaf and keeps its siblings; ``--set model.clip_model_cfg=null`` empties the mapping. A new copy."""
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_patch(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict:
    """A YAML config file through the bounded reader (:mod:`dpseg.safe_load`: size, depth, alias expansion)."""
    return read_yaml(path, "config file", dict, ConfigError) or {}


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _preset_delta(name: str) -> dict:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset '{name}' (available: {', '.join(list_presets())})")
    return _read_yaml(path)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=c`` into ("a.b", yaml-parsed c)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    value = loads_yaml(raw, f"--set {quote(key)}", error=ConfigError, invalid=raw) if raw.strip() else ""
    # YAML reads "1e-4" as a string; accept plain float syntax too.
    if isinstance(value, str):
        try:
            if any(c in value for c in ".eE") and value.strip().lower() not in ("nan", "inf"):
                value = float(value)
        except ValueError:
            pass
    return key, value


def _nest(key: str, value: Any) -> dict:
    out: dict = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = value
    return out


def build_config(
    preset: Optional[str] = None,
    file: Optional[Union[str, Path]] = None,
    overrides: Optional[list[str]] = None,
    delta: Optional[dict] = None,
) -> Config:
    """Resolve defaults → preset → YAML file → dict delta → ``--set`` overrides into a checked Config."""
    file_delta = _read_yaml(Path(file)) if file else {}
    name = preset or file_delta.get("preset") or (delta or {}).get("preset") or "dpseg-b"
    cfg = Config()
    preset_delta = _preset_delta(name)
    preset_delta.pop("preset", None)
    _apply(cfg, preset_delta, "")
    cfg.preset = name
    for d in (file_delta, delta or {}):
        d = dict(d)
        d.pop("preset", None)
        _apply(cfg, d, "")
    for text in overrides or []:
        key, value = parse_override(text)
        if key == "preset":
            raise ConfigError("'preset' cannot be changed with --set; pass --preset or put it in the YAML file")
        _apply(cfg, _nest(key, value), "")
    validate(cfg)
    return cfg


def check_number(key: str, value: Any, rule: NumberRule = GENERIC_RULE, error: type = ConfigError) -> None:
    """``error`` naming ``key``, the value (quoted, short) and what is allowed, unless ``rule`` accepts ``value``
    (a float must be finite, an int bounded, then the rule's range). The one numeric check: every config key
    (:func:`check_numbers`) and the numeric command-line options use it."""
    integer = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{key} must be {rule.describe(integer)}, got {quote(value)}")
    if not rule.accepts(value):
        raise error(f"{key} must be {rule.describe(integer)}, got {quote(value)}")


def _free_form_numbers(value: Any, key: str) -> None:
    """Every number inside a free-form mapping (model.clip_model_cfg) is finite and bounded (no sign rule)."""
    stack = [(key, value)]
    while stack:
        k, v = stack.pop()
        if isinstance(v, dict):
            stack.extend((f"{k}.{kk}", vv) for kk, vv in v.items())
        elif isinstance(v, list):
            stack.extend((f"{k}[{i}]", vv) for i, vv in enumerate(v))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            check_number(f"config key {quote(k)}", v, NumberRule(ge=-INT_LIMIT, le=INT_LIMIT))


def check_numbers(cfg: Config) -> None:
    """The generic numeric rule of every key of every section (:class:`~dpseg.config_schema.NumberRule`: the rule
    next to the field in :mod:`dpseg.config_schema`, else finite floats and bounded ints)."""
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        if dataclasses.is_dataclass(obj):
            check_section_numbers(obj, section.name)


def check_section_numbers(obj: Any, name: str) -> None:
    """:func:`check_numbers` of one section (``name``: its key prefix, e.g. "eval")."""
    for f in dataclasses.fields(obj):
        rule = f.metadata.get("number", GENERIC_RULE)
        value = getattr(obj, f.name)
        key = f"{name}.{f.name}"
        if isinstance(value, dict):
            _free_form_numbers(value, key)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    check_number(f"config key '{key}' (element {i})", v, rule)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            check_number(f"config key '{key}'", value, rule)


def validate(cfg: Config) -> None:
    """Every key's numeric rule (:func:`check_numbers`), then the cross-field checks that types alone cannot
    express."""
    check_numbers(cfg)
    m = cfg.model
    for key in ("decoder_dims", "encoder_guidance_dims", "cost_guidance_dims"):
        if len(getattr(m, key)) != 3:
            raise ConfigError(f"config key 'model.{key}' needs 3 values (one per decoder stage)")
    widths = [m.cost_embed_dim] + list(m.decoder_dims[:2])
    for w in widths:
        if w % m.attention_heads:
            raise ConfigError(
                f"config key 'model.attention_heads' ({m.attention_heads}) must divide every aggregated width {widths}"
            )
    if m.spatial_kernel % 2 == 0:
        raise ConfigError(
            f"config key 'model.spatial_kernel' must be odd (a centred depthwise kernel), got {m.spatial_kernel}"
        )
    validate_eval(cfg.eval)
    if cfg.eval.early_rejection_topk and not m.aux_heads:
        raise ConfigError(
            "config key 'eval.early_rejection_topk' ranks classes with the auxiliary heads, which this model "
            "lacks (model.aux_heads=false); set it to 0 or use an SED preset (sed-b, sed-l)"
        )


def check_types(section: Any, name: str) -> None:
    """Type-check every field of one config section (a section built in Python gets the checks a YAML file gets)."""
    for key, tp in _field_types(type(section)).items():
        _coerce(getattr(section, key), tp, f"{name}.{key}")


def validate_eval(e: EvalConfig) -> None:
    """The checks of the ``eval`` section alone: run by :func:`validate` and by every inference built from settings
    (:class:`dpseg.evaluation.inference.Inference`): types, then every key's numeric rule (ranges live next to the
    fields in :mod:`dpseg.config_schema`)."""
    check_types(e, "eval")
    check_section_numbers(e, "eval")
    problem = EarlyRejection.of(e).problem()
    if problem:
        raise ConfigError(f"config: {problem}")


# Keys that moved between sections; configs written by older versions are read with them in their new place.
MOVED_KEYS = {
    ("model", "refine_min_area"): ("eval", "refine_min_area"),
    ("model", "refine_max_classes"): ("eval", "refine_max_classes"),
    ("model", "refine_scope"): ("eval", "refine_scope"),
    ("model", "class_chunk"): None,  # inference memory: eval.class_chunk (the model's own copy was a duplicate)
}


def migrate(data: dict) -> dict:
    """A config dict of an older dpseg version with moved keys put in their current place (a copy)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for (section, key), target in MOVED_KEYS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            value = data[section].pop(key)
            if target is not None:
                data.setdefault(target[0], {}).setdefault(target[1], value)
    return data


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config from a complete dict (as written by save_config), checking every key."""
    cfg = Config()
    _apply(cfg, migrate(data), "")
    validate(cfg)
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)


def save_config(cfg: Config, path: Union[str, Path]) -> Path:
    """Write the complete resolved config atomically (YAML if the suffix is .yaml/.yml, else JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json_text(cfg.to_dict()) if path.suffix == ".json" else dump_config(cfg)
    atomic_write_text(path, text)
    return path


def load_config(path: Union[str, Path]) -> Config:
    """Read a resolved config written by :func:`save_config` (YAML or JSON)."""
    path = Path(path)
    if path.suffix == ".json":
        data = read_json(path, "config file", dict, ConfigError)
    else:
        data = _read_yaml(path)
    return config_from_dict(data)
