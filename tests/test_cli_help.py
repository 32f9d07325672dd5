"""`dpseg COMMAND --help` is instant: building any command's parser imports no heavy package (torch, open_clip,
gradio, numpy, ...), which is what made every help take seconds. The time itself is measured by
benchmarks/bench_help.py, not here."""

import subprocess
import sys

import pytest

from dpseg.commands import COMMANDS

HEAVY = ("torch", "open_clip", "gradio", "numpy", "PIL", "diffusers", "matplotlib", "scipy", "safetensors")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_imports_no_heavy_package_and_shows_no_markup(name):
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['dpseg', {name!r}, '--help']\n"
        "try:\n"
        "    runpy.run_module('dpseg', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"usage: dpseg {name}" in out.stdout
    assert not any(markup in out.stdout for markup in ("``", ":func:", ":mod:", ":class:", ":meth:")), out.stdout
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []", out.stdout[-500:]


def test_help_texts_are_plain_and_give_the_limits_defaults():
    out = subprocess.run([sys.executable, "-m", "dpseg", "demo", "--help"], capture_output=True, text=True)
    assert ":func:" not in out.stdout and "``" not in out.stdout
    for flag, default in (("--max-upload-mb", "20"), ("--max-megapixels", "16"), ("--max-classes", "100")):
        line = " ".join(out.stdout.split(flag, 2)[-1].split())
        assert f"(default {default})" in line, line[:200]
    quickstart = subprocess.run([sys.executable, "-m", "dpseg", "quickstart", "--help"], capture_output=True, text=True)
    assert "dpseg-b (default)" not in quickstart.stdout and "the only preset the quickstart runs" in " ".join(
        quickstart.stdout.split()
    )
    convert = subprocess.run([sys.executable, "-m", "dpseg", "convert", "--help"], capture_output=True, text=True)
    assert "dpseg-b (default)" not in convert.stdout and "tensor shapes" in convert.stdout
