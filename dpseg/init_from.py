"""Start a new model from another checkpoint's matching weights (``train.init_from``, e.g. SED's released model
converted by ``dpseg convert sed``): every trainable tensor whose name and shape match is copied, the rest keep their
fresh initialisation, and the frozen towers always come from ``model.clip_pretrained``."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Union

from torch import nn

from dpseg.build import human_count
from dpseg.checkpoint import checkpoint_files
from dpseg.errors import CheckpointError
from dpseg.model.dpseg import DPSeg, is_frozen_tower
from dpseg.safe_load import read_json
from dpseg.weights import read_state_dict


@dataclass
class InitReport:
    """What :func:`init_from_checkpoint` did, tensor by tensor (state-dict names)."""

    source: str
    preset: str
    loaded: list[str]  # trainable tensors taken from the checkpoint (name and shape match)
    fresh: list[str]  # trainable tensors the checkpoint lacks: they keep their fresh initialisation
    mismatched: list[str]  # "name (checkpoint shape, model shape)": same name, other shape; kept fresh
    unused: list[str]  # in the checkpoint but not in this model
    frozen: list[str]  # the frozen towers: never taken from the checkpoint (they come from model.clip_pretrained)

    def lines(self, model: nn.Module) -> list[str]:
        """One line per category: how many tensors and values, and the modules they belong to."""
        state = model.state_dict()
        values = lambda names: sum(state[n.split(" (")[0]].numel() for n in names if n.split(" (")[0] in state)  # noqa: E731
        rows = [
            ("loaded", self.loaded),
            ("fresh (not in the checkpoint)", self.fresh),
            ("fresh (shape mismatch)", self.mismatched),
            ("frozen, from model.clip_pretrained", self.frozen),
            ("in the checkpoint, unused", self.unused),
        ]
        out = [f"init from {self.source} (preset {self.preset}):"]
        for title, names in rows:
            if names:
                size = f", {human_count(values(names))} values" if title != "in the checkpoint, unused" else ""
                out.append(f"  {title}: {len(names)} tensors{size}: {module_groups(names)}")
        out += [f"    {m}" for m in self.mismatched]
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _module_of(name: str) -> str:
    parts = name.split(" (")[0].split(".")
    if parts[0] in ("image_encoder", "text_encoder", "prompt_encoder"):
        return parts[0]
    if parts[:2] == ["decoder", "stages"]:
        return ".".join(parts[:4])  # decoder.stages.s.<part>
    return ".".join(parts[:2])


def module_groups(names: list[str]) -> str:
    """'image_encoder (344), decoder.stages.0.classes (10), ...': tensor names counted by the module they belong to."""
    counts: dict[str, int] = {}
    for n in names:
        counts[_module_of(n)] = counts.get(_module_of(n), 0) + 1
    return ", ".join(f"{m} ({c})" for m, c in counts.items())


def plan_init(own: dict, state: dict, source: str = "", preset: str = "?") -> InitReport:
    """Which tensors of a model's state dict ``own`` would come from ``state`` (names and shapes only)."""
    trainable = [k for k in own if not is_frozen_tower(k)]
    return InitReport(
        source=source,
        preset=preset,
        loaded=[k for k in trainable if k in state and tuple(state[k].shape) == tuple(own[k].shape)],
        fresh=[k for k in trainable if k not in state],
        mismatched=[
            f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
            for k in trainable
            if k in state and tuple(state[k].shape) != tuple(own[k].shape)
        ],
        unused=[k for k in state if k not in own],
        frozen=[k for k in own if is_frozen_tower(k)],
    )


def init_from_checkpoint(model: DPSeg, source: Union[str, os.PathLike]) -> InitReport:
    """Copy every trainable tensor of ``model`` whose name and shape match into it from the checkpoint ``source``
    (e.g. SED converted by ``dpseg convert sed``); the others keep their values. The frozen towers are left alone:
    they define the prompts (and the keys of prompt banks) and come from ``model.clip_pretrained``."""
    cfg_path, weights = checkpoint_files(source)
    preset = str(read_json(cfg_path, "checkpoint config", dict, CheckpointError).get("preset", "?"))[:100]
    state = read_state_dict(weights, "dpseg checkpoint")
    report = plan_init(model.state_dict(), state, str(source), preset)
    result = model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    assert not result.unexpected_keys
    return report
