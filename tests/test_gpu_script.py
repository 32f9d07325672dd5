"""benchmarks/gpu.sh is ready for a GPU machine: a dry run of the whole script on a CPU at tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_dry_run_on_a_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    args = ["--device", "cpu", "--preset", "dpseg-tiny", "--size", "64", "--classes", "5", "--precisions", "fp32"]
    args += ["--modes", "sed", "sed_fast", "pass1", "two_pass", "two_pass_present", "two_pass_present_pooled"]
    args += ["pass1_fast_cost"]
    args += ["--repeat", "1", "--warmup", "0"]
    args += ["--detected", "2", "--train-size", "64", "--train-classes", "3", "--train-batch", "1"]
    args += ["--train-steps", "1", "--out", str(out)]
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), *args], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| train step (batch 1, 64²) | 3 | fp32 |" in res.stdout
    rows = json.loads(out.read_text())["rows"]
    modes = ["sed", "sed_fast", "pass1", "two_pass", "two_pass_present", "two_pass_present_pooled", "pass1_fast_cost"]
    modes += ["train step"]
    assert [r["mode"] for r in rows] == modes
    assert all(r["latency_s"] > 0 and r["peak_mem_gib"] > 0 for r in rows)
    assert rows[3]["refined"] == rows[5]["refined"] == 2  # the two-pass modes refine the --detected classes
