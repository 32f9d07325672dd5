"""Property-based fuzzing of every reader of user bytes (issue 25): not a test, a bounded run that reports.

    pip install hypothesis                     # not a dependency of dpseg; only this script needs it
    python benchmarks/fuzz_readers.py                       # 60 s per target
    python benchmarks/fuzz_readers.py --seconds 20 --targets class_text,image

Targets (each gets generated and mutated inputs from hypothesis strategies):

* ``class_text`` / ``class_json`` / ``class_string``: class-list files (arbitrary text with control characters,
  separators, BOMs, very long lines; JSON values of any shape) and the one-string form of ``--classes``;
* ``config_yaml`` / ``config_override``: YAML config files (schema keys with hostile values: NaN, Infinity, huge
  and negative numbers, wrong types, anchors and aliases, deep nesting; and raw text) and ``--set`` overrides;
* ``checkpoint_json``: a checkpoint's ``config.json`` (valid configs with one hostile value, JSON of any shape);
* ``safetensors``: a valid weight file mutated (flipped bytes, truncated, header replaced by JSON of any shape),
  read by ``dpseg check``'s ``safetensors_check`` and by the loader ``read_state_dict``;
* ``bank_manifest``: a prompt bank's ``manifest.json`` (valid manifests with one hostile field, and any JSON);
* ``image``: PNG, JPEG, GIF, BMP, TIFF and WebP files mutated byte by byte and truncated, read by ``read_image``;
* ``exemplars``: exemplar folders (class sub-folders with hostile names; images, mutated or not) read by
  ``find_exemplars`` and ``load_image``.

The properties: a reader returns what it promises or raises a :class:`~dpseg.errors.DPSegError` whose message is
one printable line (no control character, at most 2000 characters); anything else (another exception, a control
character in a message, a call slower than ``--deadline`` seconds, a value the reader should have refused) is a
finding. Findings are de-duplicated by (target, kind, first line) and written with a reproducer to ``--out``.
Prints a table (inputs tried, findings per target) and writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dpseg.atomic import atomic_write_json

try:
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - the script's one extra requirement
    sys.exit("this script needs hypothesis: pip install hypothesis")

from dpseg.errors import MESSAGE_LIMIT, DPSegError, unsafe_char

UNSAFE_TEXT = st.text(
    alphabet=st.sampled_from(
        list("abc ,;#\t\r\n{}[]\"'\\&*:!-.0123456789")
        + ["\x00", "\x07", "\x0b", "\x0c", "\x1b", "\x1c", "\x85", "\u2028", "\u2029", "\u200b", "\u202e", "\ufeff"]
        + ["é", "猫", "\U0001f408"]
    ),
    max_size=200,
)
ANY_TEXT = st.one_of(st.text(max_size=200), UNSAFE_TEXT)
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 1e308, -0.0, 0.5, 1.0]),
)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, ANY_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(ANY_TEXT, inner, max_size=5)),
    max_leaves=30,
)


class Finding(Exception):
    """A broken property (not a DPSegError)."""


def check_message(e: DPSegError) -> None:
    text = str(e)
    bad = unsafe_char(text)
    if bad is not None:
        raise Finding(f"error message holds the control character U+{ord(bad[1]):04X}: {text[:120]!r}")
    if len(text) > MESSAGE_LIMIT:
        raise Finding(f"error message of {len(text)} characters")


def deep(n: int) -> str:
    return "[" * n + "]" * n


# ------------------------------------------------------------------------------------------------ targets


def target_class_text(data, tmp: Path) -> None:
    from dpseg.vocab import read_class_list

    text = data.draw(st.one_of(UNSAFE_TEXT, st.lists(UNSAFE_TEXT, max_size=8).map("\n".join)))
    if data.draw(st.booleans()):
        text = "\ufeff" + text
    path = tmp / "classes.txt"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    names = read_class_list(path)
    lines = text.lstrip("\ufeff").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if len(names) != len(lines):  # a hidden separator split or merged lines: labels would shift
        raise Finding(f"{len(lines)} lines read as {len(names)} classes")
    for n in names:
        if unsafe_char(n, allow="\t") is not None:
            raise Finding(f"class name with a control character accepted: {n!r}")


def target_class_json(data, tmp: Path) -> None:
    from dpseg.vocab import read_class_list

    kind = data.draw(st.sampled_from(["value", "list", "deep", "raw"]))
    if kind == "value":
        text = json.dumps(data.draw(JSON_VALUES))
    elif kind == "list":
        text = json.dumps(data.draw(st.lists(UNSAFE_TEXT, min_size=1, max_size=6)))
    elif kind == "deep":
        text = deep(data.draw(st.integers(1, 200_000)))
    else:
        text = data.draw(ANY_TEXT)
    path = tmp / "classes.json"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    names = read_class_list(path)
    if not isinstance(names, list) or not all(isinstance(n, str) and unsafe_char(n, "\t") is None for n in names):
        raise Finding(f"accepted {names!r:.120}")


def target_class_string(data, tmp: Path) -> None:
    from dpseg.vocab import parse_class_list

    names = parse_class_list(data.draw(st.one_of(UNSAFE_TEXT, st.text(max_size=400))))
    if not names or any(unsafe_char(n, "\t") is not None for n in names):
        raise Finding(f"accepted {names!r:.120}")


def _schema_keys() -> list[tuple[str, str]]:
    import dataclasses

    from dpseg.config import Config

    cfg = Config()
    return [
        (s.name, f.name)
        for s in dataclasses.fields(cfg)
        if dataclasses.is_dataclass(getattr(cfg, s.name))
        for f in dataclasses.fields(getattr(cfg, s.name))
    ]


KEYS = _schema_keys()


def _hostile_delta(data) -> dict:
    delta: dict = {}
    for _ in range(data.draw(st.integers(1, 4))):
        section, key = data.draw(st.sampled_from(KEYS + [("train", "nope"), ("nope", "x")]))
        delta.setdefault(section, {})[key] = data.draw(JSON_VALUES)
    return delta


def _config_ok(cfg) -> None:
    import dataclasses

    from dpseg.config import check_numbers

    check_numbers(cfg)  # every accepted number follows its rule (finite, sign, range)
    for s in dataclasses.fields(cfg):
        section = getattr(cfg, s.name)
        if dataclasses.is_dataclass(section):
            for f in dataclasses.fields(section):
                v = getattr(section, f.name)
                if isinstance(v, float) and not math.isfinite(v):
                    raise Finding(f"{s.name}.{f.name} = {v} accepted")


def target_config_yaml(data, tmp: Path) -> None:
    import yaml

    from dpseg.config import build_config

    kind = data.draw(st.sampled_from(["delta", "anchors", "deep", "raw"]))
    if kind == "delta":
        text = yaml.safe_dump(_hostile_delta(data), allow_unicode=True)
    elif kind == "anchors":
        n, width = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
        lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, n)]
        lines.append(f"train: {{output_dir: *a{n - 1}}}")
        text = "\n".join(lines)
    elif kind == "deep":
        text = "train: " + deep(data.draw(st.integers(1, 20_000)))
    else:
        text = data.draw(ANY_TEXT)
    path = tmp / "c.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _config_ok(build_config("dpseg-tiny", file=path))


def target_config_override(data, tmp: Path) -> None:
    from dpseg.config import build_config

    section, key = data.draw(st.sampled_from(KEYS))
    value = data.draw(st.one_of(ANY_TEXT, NUMBERS.map(repr), st.sampled_from([".nan", ".inf", "-.inf", "1e999"])))
    _config_ok(build_config("dpseg-tiny", overrides=[f"{section}.{key}={value}"]))


def target_checkpoint_json(data, tmp: Path) -> None:
    """What ``load_model`` and ``dpseg check`` do with a config.json before any model is built."""
    import torch

    from dpseg.checkpoint import check_model_dir, load_paths, read_config_json
    from dpseg.config import build_config, config_from_dict
    from dpseg.weights import save_safetensors

    ckpt = tmp / "ckpt"
    ckpt.mkdir(exist_ok=True)
    if data.draw(st.booleans()):
        base = build_config("dpseg-tiny").to_dict()
        for section, values in _hostile_delta(data).items():
            if isinstance(base.get(section), dict):
                base[section].update(values)
            else:
                base[section] = values
        text = json.dumps(base)
    elif data.draw(st.booleans()):
        text = json.dumps(data.draw(JSON_VALUES))
    else:
        text = deep(data.draw(st.integers(1, 100_000)))
    (ckpt / "config.json").write_text(text)
    if not (ckpt / "model.safetensors").exists():
        save_safetensors({"w": torch.zeros(1)}, ckpt / "model.safetensors")
    for _, status, detail in check_model_dir(ckpt):
        if unsafe_char(detail) is not None or len(detail) > MESSAGE_LIMIT:
            raise Finding(f"check row {status}: {detail[:120]!r}")
    stored = read_config_json(ckpt / "config.json")
    stored.pop("dpseg", None)
    _config_ok(config_from_dict(load_paths(stored, ckpt, True)))


def _safetensors_seed(tmp: Path) -> bytes:
    import torch

    from dpseg.weights import save_safetensors

    path = tmp / "seed.safetensors"
    if not path.exists():
        save_safetensors({"a": torch.randn(3, 4), "b": torch.arange(5)}, path, metadata={"x": "1"})
    return path.read_bytes()


def target_safetensors(data, tmp: Path) -> None:
    from dpseg.errors import CheckpointError
    from dpseg.weights import read_state_dict, safetensors_check

    raw = bytearray(_safetensors_seed(tmp))
    kind = data.draw(st.sampled_from(["flip", "truncate", "header", "deep"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        header = json.dumps(data.draw(JSON_VALUES)).encode() if kind == "header" else deep(5000).encode()
        raw = bytearray(len(header).to_bytes(8, "little") + header + bytes(data.draw(st.integers(0, 64))))
    path = tmp / "w.safetensors"
    path.write_bytes(bytes(raw))
    status, detail = safetensors_check(path)
    if status not in ("ok", "unverified", "damaged") or unsafe_char(detail) is not None:
        raise Finding(f"check said {status}: {detail[:120]!r}")
    try:
        state = read_state_dict(path, "fuzzed weights", fix="(fuzz)")
    except CheckpointError:
        raise  # refused (its message is checked by the runner)
    if status == "damaged":
        raise Finding(f"check said damaged ({detail[:80]}) but the loader accepted the file")
    for name, t in state.items():
        if t.is_floating_point() and not bool(__import__("torch").isfinite(t).all()):
            raise Finding(f"non-finite tensor {name} loaded")


def target_bank_manifest(data, tmp: Path) -> None:
    from dpseg.prompts.bank import PromptBank
    from dpseg.prompts.manifest import write_manifest
    from dpseg.prompts.templates import templates_id

    bank = tmp / "bank"
    (bank / "classes").mkdir(parents=True, exist_ok=True)
    templates = ["a photo of a {}."]
    manifest: dict[str, Any] = {
        "format": "dpseg-prompt-bank",
        "version": 1,
        "prompt_encoder": "0" * 16,
        "text_tower": "1" * 16,
        "templates_id": templates_id(templates),
        "templates": templates,
        "prompt_image_size": 64,
        "embed_dim": 8,
        "stage_dims": [4, 4, 4],
        "generator": "",
        "generator_spec": "",
        "seed": 0,
        "images_per_class": 0,
    }
    kind = data.draw(st.sampled_from(["field", "any", "deep"]))
    if kind == "field":
        manifest[data.draw(st.sampled_from(sorted(manifest)))] = data.draw(JSON_VALUES)
        write_manifest(bank, manifest)
    else:
        text = json.dumps(data.draw(JSON_VALUES)) if kind == "any" else deep(data.draw(st.integers(1, 100_000)))
        (bank / "manifest.json").write_text(text)
    b = PromptBank.open(bank)
    b.info()
    b.missing(["cat"])


IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")


def _image_seeds() -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for fmt in IMAGE_FORMATS:
        for mode in ("RGB", "L", "RGBA", "P"):
            if fmt == "JPEG" and mode in ("RGBA", "P"):
                continue
            im = Image.fromarray(rng.integers(0, 256, (12, 17, 3), dtype=np.uint8)).convert(mode)
            buf = io.BytesIO()
            im.save(buf, format=fmt)
            out.append(buf.getvalue())
    return out


SEEDS: list[bytes] = []


def target_image(data, tmp: Path) -> None:
    from dpseg.image_io import read_image

    if not SEEDS:
        SEEDS.extend(_image_seeds())
    raw = bytearray(data.draw(st.sampled_from(SEEDS)))
    for _ in range(data.draw(st.integers(0, 10))):
        at = data.draw(st.integers(0, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[at] = data.draw(st.integers(0, 255))
        else:  # big values where sizes live in headers
            raw[at : at + 2] = data.draw(st.sampled_from([b"\xff\xff", b"\x00\x00", b"\x7f\xff", b"\x80\x00"]))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = tmp / "image.bin"
    path.write_bytes(bytes(raw))
    t = read_image(path, max_pixels=4_000_000)
    if t.dtype.is_floating_point or t.ndim != 3 or t.shape[0] != 3:
        raise Finding(f"read_image returned {t.dtype} {tuple(t.shape)}")


def target_exemplars(data, tmp: Path) -> None:
    """An exemplar folder: class sub-folders with hostile names, files that are images or not."""
    from dpseg.image_io import load_image
    from dpseg.prompts.exemplars import find_exemplars

    if not SEEDS:
        SEEDS.extend(_image_seeds())
    folders = [
        (
            data.draw(UNSAFE_TEXT.filter(lambda n: n not in ("", ".", "..") and "\x00" not in n)),
            data.draw(st.one_of(st.sampled_from(SEEDS), st.binary(max_size=64))),
        )
        for _ in range(data.draw(st.integers(1, 4)))
    ]  # everything drawn first: what happens on disk never changes what is drawn
    root = Path(tempfile.mkdtemp(dir=tmp))
    try:
        for i, (name, raw) in enumerate(folders):
            (root / name).mkdir(exist_ok=True)
            (root / name / f"{i}.png").write_bytes(raw)
        for files in find_exemplars(root).values():  # folder names are checked as class names when matched
            for f in files:
                load_image(f)
    finally:
        shutil.rmtree(root)


TARGETS: dict[str, Callable] = {
    "class_text": target_class_text,
    "class_json": target_class_json,
    "class_string": target_class_string,
    "config_yaml": target_config_yaml,
    "config_override": target_config_override,
    "checkpoint_json": target_checkpoint_json,
    "safetensors": target_safetensors,
    "bank_manifest": target_bank_manifest,
    "image": target_image,
    "exemplars": target_exemplars,
}


# ---------------------------------------------------------------------------------------------- the runner


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def fuzz(name: str, fn: Callable, seconds: float, deadline: float, out: Path) -> dict:
    """Run ``fn`` on hypothesis-generated inputs for ``seconds``; every input that breaks a property is recorded."""
    stats: dict[str, Any] = {"inputs": 0, "refused": 0, "accepted": 0, "findings": {}}
    tmp = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    stop = time.monotonic() + seconds

    @settings(
        max_examples=25,  # one batch; batches run with new seeds until the time is up
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[__import__("hypothesis").Phase.generate],
    )
    @given(st.data())
    def run(data):
        stats["inputs"] += 1
        signal.setitimer(signal.ITIMER_REAL, deadline)
        started = time.monotonic()
        problem, example = None, ""
        try:
            fn(data, tmp)
            stats["accepted"] += 1
        except DPSegError as e:
            stats["refused"] += 1
            try:
                check_message(e)
            except Finding as f:
                problem = ("message", str(f))
        except Finding as f:
            problem = ("property", str(f))
        except _Timeout:
            problem = ("timeout", f"slower than {deadline} s")
        except RecursionError:
            problem = ("RecursionError", "")
        except Exception as e:  # noqa: BLE001 - exactly what the fuzzer looks for
            tb = traceback.extract_tb(e.__traceback__)[-1]  # one finding per raising line; the first message shown
            problem = (type(e).__name__, f"at {Path(tb.filename).name}:{tb.lineno} {tb.name}")
            example = str(e).splitlines()[0][:160] if str(e) else ""
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if problem:
            key = f"{problem[0]}: {problem[1]}"
            if key not in stats["findings"]:
                stats["findings"][key] = {
                    "count": 0,
                    "seconds": round(time.monotonic() - started, 2),
                    "example": example,
                }
                case = out / f"{name}-{len(stats['findings'])}"
                case.mkdir(parents=True, exist_ok=True)
                for f in tmp.rglob("*"):
                    if f.is_file() and f.stat().st_size < 50 << 20:
                        (case / f.relative_to(tmp)).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(f, case / f.relative_to(tmp))
                stats["findings"][key]["reproducer"] = str(case)
            stats["findings"][key]["count"] += 1

    i = 0
    while time.monotonic() < stop:
        seed(i)(run)()
        i += 1
    shutil.rmtree(tmp, ignore_errors=True)
    return stats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="per target")
    p.add_argument("--deadline", type=float, default=10.0, help="seconds one input may take before it is a finding")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated: " + ", ".join(TARGETS))
    p.add_argument("--out", default="benchmarks/results/fuzz", help="reproducers of findings")
    p.add_argument("--json", default="benchmarks/results/fuzz_readers.json")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.getLogger("dpseg").setLevel(logging.ERROR)  # notes of unhashed files, once per file: noise here
    warnings.simplefilter("ignore")  # decoders warn about the damage they were given: expected here
    signal.signal(signal.SIGALRM, _alarm)
    out = Path(args.out)
    for module in ("dpseg.checkpoint", "dpseg.prompts.bank", "dpseg.image_io", "dpseg.vocab", "yaml", "torch"):
        __import__(module)  # imported before the clock runs: a first import is not a slow input
    results = {}
    for name in args.targets.split(","):
        start = time.monotonic()
        results[name] = fuzz(name, TARGETS[name], args.seconds, args.deadline, out)
        results[name]["seconds"] = round(time.monotonic() - start, 1)
        r = results[name]
        print(
            f"{name:<16} {r['inputs']:>7} inputs in {r['seconds']:>5.0f} s  refused {r['refused']:>6}  "
            f"accepted {r['accepted']:>6}  findings {len(r['findings'])}",
            flush=True,
        )
        for key, f in r["findings"].items():
            print(f"    {f['count']:>5} x {key} ({f['example'][:80]!r}; {f['reproducer']})", flush=True)
    total = sum(r["inputs"] for r in results.values())
    found = sum(len(r["findings"]) for r in results.values())
    print(f"total: {total} inputs, {found} distinct findings")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.json), {"seconds_per_target": args.seconds, "targets": results}, indent=2)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
