"""The one progress helper: a tqdm bar (rate, ETA) on a terminal, plain lines elsewhere, and its four users
(training, prompt-bank builds, evaluation, dataset preparation) print those lines when not on a terminal."""

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from dpseg.progress import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


LINE = re.compile(
    r"^(?P<desc>.+): (?P<n>\d+)/(?P<total>\d+) (?P<unit>\w+) \((?P<pct>\d+)%\), "
    r"(?P<rate>[\d.e+-]+) \w+/s, (ETA \d+:\d\d|done in \d+:\d\d)"
)


def test_plain_lines_with_rate_and_eta_when_not_a_terminal(monkeypatch):
    monkeypatch.delenv("DPSEG_PROGRESS", raising=False)
    out = io.StringIO()
    with progress(4, "build", unit="img", stream=out, interval=0) as bar:
        assert not bar.is_bar
        for _ in range(4):
            bar.update()
        bar.set_postfix("cat")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in out.getvalue()  # 3 progress lines + the final one, no carriage returns
    for line in lines:
        assert LINE.match(line), line
    assert lines[0].startswith("build: 1/4 img (25%)") and "ETA" in lines[0]
    assert lines[-1].startswith("build: 4/4 img (100%)") and "done in" in lines[-1] and lines[-1].endswith("[cat]")


def test_lines_are_rate_limited_and_a_job_that_did_nothing_says_nothing(monkeypatch):
    monkeypatch.delenv("DPSEG_PROGRESS", raising=False)
    out = io.StringIO()
    bar = progress(100, "eval", stream=out, interval=3600)
    for _ in range(99):
        bar.update()
    assert out.getvalue() == ""  # within the interval: silent
    bar.update()
    bar.close()
    bar.close()  # closing twice prints once
    assert out.getvalue().count("\n") == 1 and out.getvalue().startswith("eval: 100/100 it (100%)")
    quiet = io.StringIO()
    progress(5, "nothing", stream=quiet, interval=0).close()
    assert quiet.getvalue() == ""


def test_a_bar_on_a_terminal_and_the_switches(monkeypatch):
    monkeypatch.delenv("DPSEG_PROGRESS", raising=False)
    tty = Terminal()
    with progress(10, "train", unit="it", stream=tty) as bar:
        assert bar.is_bar
        bar.update(10)
    assert "train" in tty.getvalue() and "it/s" in tty.getvalue() and "10/10" in tty.getvalue()
    for kwargs in ({"enabled": False}, {"lines": False}):
        out = io.StringIO()
        with progress(3, "x", stream=out, interval=0, **kwargs) as bar:
            bar.update(3)
        assert out.getvalue() == "", kwargs  # disabled, or a bar-only caller that logs its own lines
    monkeypatch.setenv("DPSEG_PROGRESS", "lines")
    tty = Terminal()
    with progress(2, "forced", stream=tty, interval=0) as bar:
        bar.update(2)
    assert tty.getvalue().startswith("forced: 2/2 it (100%)")
    monkeypatch.setenv("DPSEG_PROGRESS", "off")
    tty = Terminal()
    with progress(2, "off", stream=tty) as bar:
        bar.update(2)
    assert tty.getvalue() == ""


def test_slow_jobs_read_in_seconds_per_unit(monkeypatch):
    monkeypatch.delenv("DPSEG_PROGRESS", raising=False)
    out = io.StringIO()
    bar = progress(10, "slow", stream=out, interval=0)
    bar._t0 -= 100  # as if the first item took 100 s
    bar.update()
    assert "(10%), 100 s/it, ETA 15:00" in out.getvalue()


# ---------------------------------------------------------------------------------- the four users, not on a TTY


def test_dataset_preparation_prints_lines(capsys, tmp_path, monkeypatch):
    from dpseg.data.prepare.common import Job, run_jobs

    monkeypatch.setenv("DPSEG_PROGRESS_INTERVAL", "0")
    jobs = [Job((tmp_path / f"{i}.txt",), lambda p: p.write_text("x"), (tmp_path / f"{i}.txt",)) for i in range(3)]
    stats = run_jobs(jobs, "a150 validation")
    assert stats.written == 3
    err = capsys.readouterr().err
    assert "a150 validation: 3/3 file (100%)" in err and "done in" in err and "\r" not in err


def test_evaluation_prints_lines(capsys, monkeypatch):
    from helpers import stub_inference

    from dpseg.config import EvalConfig
    from dpseg.evaluation.evaluator import evaluate

    monkeypatch.setenv("DPSEG_PROGRESS_INTERVAL", "0")
    items = [{"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "label": torch.zeros(8, 8, dtype=torch.long)}] * 2
    dataset = type("Tiny", (list,), {"class_names": ["a", "b"], "name": "tiny"})(items)
    cfg = EvalConfig(input_size=32, short_side=8, num_workers=0, two_pass=False)
    evaluate(stub_inference(lambda x: torch.zeros(x.shape[0], 2, 8, 8), cfg, 2), dataset)
    err = capsys.readouterr().err
    assert "tiny: 1/2 img (50%)" in err and "tiny: 2/2 img (100%)" in err


def test_prompt_bank_builds_print_lines(capsys, tmp_path, monkeypatch):
    from dpseg.clip_loading import build_towers
    from dpseg.config import build_config
    from dpseg.prompts.bank import PromptBank
    from dpseg.prompts.builder import build_bank
    from dpseg.prompts.manifest import make_key
    from dpseg.prompts.templates import get_templates

    class Noise:
        identity = "noise-v1"

        def generate(self, texts, seeds):
            rngs = [np.random.default_rng(s) for s in seeds]
            return [Image.fromarray(g.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for g in rngs]

    monkeypatch.setenv("DPSEG_PROGRESS_INTERVAL", "0")
    cfg = build_config("dpseg-tiny")
    torch.manual_seed(0)
    _, prompt, text = build_towers(cfg.model)
    templates = get_templates("imagenet80", 2)
    key = make_key(prompt, text, templates, cfg.model.prompt_image_size)
    bank = PromptBank.create(tmp_path / "bank", key, "noise-v1", "n")
    build_bank(bank, ["cat", "dog"], Noise(), prompt, text, batch_size=2)
    err = capsys.readouterr().err
    assert "prompt bank: 2/4 img (50%)" in err and "prompt bank: 4/4 img (100%)" in err and "[dog]" in err


@pytest.mark.parametrize("progress_flag", [True, False])
def test_training_logs_lines_when_not_a_terminal(capsys, tmp_path, progress_flag):
    from test_train import make_dataset, text_only

    from dpseg.engine.train import train

    data = make_dataset(tmp_path / "data")
    train(text_only(tmp_path / "run", data, "train.iterations=2"), progress=progress_flag)
    out = capsys.readouterr().out
    assert "step 2/2  loss" in out and "it/s  ETA" in out  # a bar only on a terminal; here the plain lines
