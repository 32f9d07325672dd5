"""benchmarks/plot_inference.py: the latency/memory-vs-K figure reads bench_inference.py's JSON rows."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import load_benchmark


def _rows(*modes: str) -> dict:
    return {
        "results": [
            {"mode": m, "classes": k, "latency_s": 2.0 * k, "cpu_s": 1.0 * k, "peak_mem_gib": 1.0 + k / 100}
            for m in modes
            for k in (20, 150)
        ]
    }


def test_plot_writes_a_figure_with_sed_code_rows(tmp_path, monkeypatch):
    plot = load_benchmark("plot_inference")
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(_rows("sed", "sed_code", "pass1")))
    out = tmp_path / "fig.png"
    monkeypatch.setattr(sys, "argv", ["plot_inference.py", str(data), "--out", str(out)])
    plot.main()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_mode_without_a_label_is_refused_not_dropped(tmp_path, monkeypatch):
    plot = load_benchmark("plot_inference")
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(_rows("sed", "pass1:-pixel_blocks")))
    monkeypatch.setattr(sys, "argv", ["plot_inference.py", str(data), "--out", str(tmp_path / "fig.png")])
    with pytest.raises(SystemExit, match=r"no label for mode\(s\) pass1:-pixel_blocks"):
        plot.main()
    assert not (tmp_path / "fig.png").exists()
