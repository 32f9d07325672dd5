"""benchmarks/bench_common.py's sed_code mode: SED's own decoder imported from a user's local checkout."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_common  # noqa: E402


def test_a_folder_without_sed_says_what_to_give(tmp_path):
    with pytest.raises(SystemExit, match="no sed/modeling/transformer/model.py there; give a checkout of SED"):
        bench_common.sed_aggregator(str(tmp_path))


def test_the_aggregator_is_built_from_the_checkout_with_sed_b_settings(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "einops", types.ModuleType("einops"))  # SED's code needs it; dpseg does not
    folder = tmp_path / "sed" / "modeling" / "transformer"
    folder.mkdir(parents=True)
    (folder / "convnext.py").write_text("BLOCK = 'convnext'\n")
    (folder / "model.py").write_text(
        "import torch\nfrom .convnext import BLOCK\n\n"
        "class Aggregator(torch.nn.Module):\n"
        "    def __init__(self, **kwargs):\n"
        "        super().__init__()\n"
        "        self.kwargs, self.block = kwargs, BLOCK\n"
    )
    monkeypatch.delitem(sys.modules, "sed_own", raising=False)
    aggregator = bench_common.sed_aggregator(str(tmp_path))
    assert aggregator.block == "convnext" and not aggregator.training
    assert aggregator.kwargs == bench_common.SED_B_AGGREGATOR
