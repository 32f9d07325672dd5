"""`dpseg train` end to end on the tiny preset and a small custom dataset written here (CPU)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dpseg.build import build_model
from dpseg.checkpoint import load_model
from dpseg.commands import main
from dpseg.config import build_config
from dpseg.engine import TrainingError, training_code
from dpseg.engine.resume import list_checkpoints, load_checkpoint
from dpseg.engine.train import train
from dpseg.errors import BankError
from dpseg.evaluation.calibrate import read_calibration
from dpseg.prompts.templates import model_templates

CLASSES = ("red square", "blue square", "green square")
COLOURS = ((200, 30, 30), (30, 30, 200), (30, 200, 30))


def make_dataset(root, n_train=4, n_val=2, size=(72, 88), seed=0) -> Path:
    """A custom-dataset folder: coloured squares on dark noise, labels 0..2, 255 (ignore) elsewhere."""
    root, rng = Path(root), np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for split, n in (("train", n_train), ("val", n_val)):
        for sub in ("images", "labels"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = size
            label = np.full((h, w), 255, np.uint8)
            image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            for k, colour in enumerate(COLOURS):
                y, x = rng.integers(0, h - 24), rng.integers(0, w - 24)
                label[y : y + 24, x : x + 24], image[y : y + 24, x : x + 24] = k, colour
            Image.fromarray(image).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(label).save(root / "labels" / split / f"{i:03d}.png")
    return root


def text_only(out, data, *overrides):
    """The tiny preset as a text-only model (no prompt bank needed), fast settings."""
    return build_config(
        "dpseg-tiny",
        overrides=[
            f"data.train_dataset={data}",
            f"data.val_dataset={data}:val",
            "model.prompt_type=text",
            "model.guidance=upsampled",
            f"train.output_dir={out}",
            "train.tensorboard=false",
            "train.log_every=1",
            "train.eval_every=0",
            "eval.num_workers=0",
            *overrides,
        ],
    )


def make_bank(cfg, root, names):
    """A prompt bank for the model train() builds from ``cfg`` (same seed -> same frozen encoders)."""
    from dpseg.prompts.bank import PromptBank
    from dpseg.prompts.manifest import make_key

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    templates = model_templates(cfg)
    key = make_key(model.prompt_encoder, model.text_encoder, templates, cfg.model.prompt_image_size)
    bank = PromptBank.create(root, key, generator="test-noise", seed=0)
    K, M, S = len(names), len(templates), cfg.model.prompt_image_size
    text = model.encode_text_prompts(list(names), templates)  # (K, M, d)
    visual, stages = model.encode_visual_prompts(torch.rand(K * M, 3, S, S, generator=torch.Generator().manual_seed(0)))
    for k, name in enumerate(names):
        bank.write_class(
            name,
            text[k],
            visual.view(K, M, -1)[k],
            [s.view(K, M, -1)[k] for s in stages],
            source="test",
            seeds=list(range(M)),
        )
    return root


def records(out, kind="train"):
    lines = (Path(out) / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_cli_trains_the_dual_prompt_model_end_to_end(tmp_path, capsys):
    """The paper's model (dual prompts, visual cost volumes) from a prompt bank: logs, eval, checkpoints, export."""
    data = make_dataset(tmp_path / "data")
    cfg = build_config("dpseg-tiny")
    bank = make_bank(cfg, tmp_path / "bank", CLASSES)
    out = tmp_path / "run"
    args = [
        "train",
        "--preset",
        "dpseg-tiny",
        "--no-progress",
        "--set",
        f"data.train_dataset={data}",
        "--set",
        f"data.val_dataset={data}:val",
        "--set",
        f"prompts.bank={bank}",
        "--set",
        f"train.output_dir={out}",
        "--set",
        "train.iterations=4",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.keep_checkpoints=1",
        "--set",
        "train.eval_every=2",
        "--set",
        "train.log_every=1",
        "--set",
        "eval.num_workers=0",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "cpu x 1 process(es)" in text and "2 per process x 1 = 2 (effective)" in text and "fp32" in text
    assert "visual-prompt encoder (frozen copy)" in text and "bank " in text
    assert "step 4/4  loss" in text and "it/s  ETA" in text  # --no-progress: one line per log record
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 for r in records(out))
    assert [r["step"] for r in records(out, "eval")] == [2, 4]
    assert len((out / "log.csv").read_text().splitlines()) == 5
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in list_checkpoints(out)] == ["step-00000004"]  # pruned to the last one
    assert not list((out / "checkpoints").glob(".*"))
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["step"] in (2, 4) and best["mIoU"] == max(r["mIoU"] for r in records(out, "eval"))
    model, saved_cfg = load_model(out / "final")  # what `dpseg eval` and Segmenter load
    assert saved_cfg.prompts.bank == str(bank) and saved_cfg.train.iterations == 4
    # the final export carries its score threshold, chosen on the validation set (background = ignore: no class)
    calibration = read_calibration(out / "final")
    assert calibration["dataset"] == f"{data.name}:val" and calibration["num_images"] == 2
    assert saved_cfg.eval.min_score == calibration["min_score"] and saved_cfg.eval.background_class is False
    assert f"score threshold eval.min_score = {calibration['min_score']:g}, chosen on {data.name}:val" in text
    assert load_model(out / "best")[1].eval.min_score == 0  # best/ is exported during training, uncalibrated
    final = dict(model.state_dict())
    trained = load_checkpoint(list_checkpoints(out)[-1])[0]
    assert all(torch.equal(final[k], v) for k, v in trained.items())

    assert main(args) == 2  # a second fresh run into the same directory is refused
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["train", "--no-progress", "--resume", str(out)]) == 0  # finished run: nothing left to do
    assert records(out)[-1]["step"] == 4


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    """Crash at step 3, resume from the step-2 checkpoint with 2 loader workers: bit-identical to no crash."""
    data = make_dataset(tmp_path / "data", n_train=5)

    def config(out, *extra):
        cfg = text_only(
            out,
            data,
            "train.iterations=5",
            "train.checkpoint_every=2",
            "train.keep_checkpoints=0",
            "train.eval_every=2",
            *extra,
        )
        cfg.model.clip_model_cfg["vision_cfg"]["timm_drop_path"] = 0.2  # the global RNG must be restored too
        return cfg

    whole = train(config(tmp_path / "a"), progress=False)

    def crash(step, _):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "b"), callback=crash, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-00000002"]
    (tmp_path / "b" / "checkpoints" / ".step-00000004.x.tmp").mkdir()  # as if killed while writing
    resumed = train(config(tmp_path / "b", "data.num_workers=2"), resume="auto", progress=False)

    assert whole["step"] == resumed["step"] == 5 and whole["best"] == resumed["best"]
    assert [r["mIoU"] for r in records(tmp_path / "a", "eval")] == [r["mIoU"] for r in records(tmp_path / "b", "eval")]
    a, b = (
        load_file(tmp_path / "a" / "final" / "model.safetensors"),
        load_file(tmp_path / "b" / "final" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = load_checkpoint(list_checkpoints(tmp_path / "a")[-1])[1]["optimizer"]["state"]
    opt_b = load_checkpoint(list_checkpoints(tmp_path / "b")[-1])[1]["optimizer"]["state"]
    assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i])
    assert [r["loss"] for r in records(tmp_path / "a")] == [r["loss"] for r in records(tmp_path / "b")]
    assert not list((tmp_path / "b" / "checkpoints").glob(".*"))


def test_the_code_that_trained_is_recorded_and_a_resume_by_other_code_is_noted(tmp_path, monkeypatch, capsys):
    """Checkpoints and exported models name the training code (a cache of runs tells a run other code made); a run
    resumed under other code goes on, but says that its continuation mixes the two."""
    data = make_dataset(tmp_path / "data", n_train=3)
    out = tmp_path / "run"

    def config(steps):
        return text_only(out, data, f"train.iterations={steps}", "train.checkpoint_every=1", "train.eval_every=0")

    train(config(2), progress=False)
    assert json.loads((out / "final" / "config.json").read_text())["dpseg"]["training_code"] == training_code()
    assert load_checkpoint(list_checkpoints(out)[-1])[1]["training_code"] == training_code()
    assert "other code" not in capsys.readouterr().out
    monkeypatch.setattr("dpseg.engine.setup.training_code", lambda: "0123456789abcdef")
    train(config(3), resume="auto", progress=False)
    assert f"resuming a run that other code started (training code {training_code()}, now 0123456789abcdef)" in (
        capsys.readouterr().out
    )


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=2, size=(64, 64))
    cfg = text_only(
        tmp_path / "run",
        data,
        "train.iterations=10",
        "train.lr=0.005",
        "data.color_jitter=false",
        "data.flip=false",
        "train.checkpoint_every=0",
    )
    train(cfg, progress=False)
    losses = [r["loss"] for r in records(tmp_path / "run")]
    assert len(losses) == 10 and np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # one batch, falling lr: every step helps


def test_nan_guard_names_the_step(tmp_path, monkeypatch):
    from dpseg.model.loss import SegmentationLoss

    data = make_dataset(tmp_path / "data", n_train=2)
    calls = []
    real = SegmentationLoss.forward

    def poisoned(self, logits, labels):
        calls.append(1)
        loss = real(self, logits, labels)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(SegmentationLoss, "forward", poisoned)
    cfg = text_only(tmp_path / "run", data, "train.iterations=4", "train.checkpoint_every=1")
    with pytest.raises(TrainingError, match=r"non-finite loss or gradient at step 2: loss nan.*step-00000001"):
        train(cfg, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000001"]  # the bad step was not saved


def test_out_of_memory_suggests_smaller_settings(tmp_path, monkeypatch):
    from dpseg.model.dpseg import DPSeg

    def oom(self, *a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(DPSeg, "forward", oom)
    cfg = text_only(tmp_path / "run", make_dataset(tmp_path / "data", n_train=2), "train.iterations=2")
    with pytest.raises(
        TrainingError, match=r"out of GPU memory at step 1 \(batch 2 per GPU, crop 64.*train.batch_size.*data.crop_size"
    ):
        train(cfg, progress=False)


def test_bad_inputs_fail_early_with_one_line(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n_train=2, n_val=1)
    base = ["train", "--preset", "dpseg-tiny", "--set", f"train.output_dir={tmp_path / 'run'}"]
    assert main(base + ["--set", f"data.train_dataset={tmp_path / 'missing'}"]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    assert main(base + ["--set", "data.train_dataset=coco_stuff_171_train", "--set", f"data.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "images folder" in err and "dpseg prepare coco_stuff" in err
    assert main(base + ["--set", f"data.train_dataset={data}", "--set", "data.crop_size=48"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert main(base + ["--resume", str(tmp_path / "nowhere"), "--set", f"data.train_dataset={data}"]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(base + ["--set", f"data.train_dataset={data}", "--set", f"data.val_dataset={tmp_path / 'noval'}"]) == 2
    assert "validation set (data.val_dataset" in capsys.readouterr().err

    with pytest.raises(BankError, match="this model needs visual prompts.*give a prompt bank"):
        train(
            build_config(
                "dpseg-tiny",
                overrides=[f"data.train_dataset={data}", "train.eval_every=0", f"train.output_dir={tmp_path / 'r1'}"],
            ),
            progress=False,
        )
    cfg = build_config(
        "dpseg-tiny",
        overrides=[f"data.train_dataset={data}", f"train.output_dir={tmp_path / 'r2'}", "train.eval_every=0"],
    )
    cfg.prompts.bank = str(make_bank(cfg, tmp_path / "bank", CLASSES[:2]))
    with pytest.raises(
        BankError, match=r"the training vocabulary of data:train: .*lacks 1 of the 3 classes \(green square\)"
    ):
        train(cfg, progress=False)
    cfg.prompts.num_templates = 3  # a model for M = 3 cannot use a bank of M = 4 prompts
    with pytest.raises(BankError, match=r"another template set \(4 templates\).*\(3 templates\)"):
        train(cfg, progress=False)


def test_step_class_sampling_keeps_every_present_class():
    from dpseg.engine.class_sampling import remap_labels, sample_step_classes

    labels = torch.tensor([[[-1, 3, 3], [7, -1, 3]]])  # (1, 2, 3): classes 3 and 7 present
    picked = sample_step_classes(labels, num_classes=10, limit=4, seed=0)
    assert len(picked) == 4 and {3, 7} <= set(picked.tolist()) and picked.tolist() == sorted(picked.tolist())
    assert torch.equal(picked, sample_step_classes(labels, 10, 4, seed=0))  # seeded
    assert sample_step_classes(labels, 10, 1, seed=0).tolist() == [3, 7]  # present classes always stay
    assert sample_step_classes(labels, 10, 0, seed=0) is None and sample_step_classes(labels, 10, 10, seed=0) is None
    remapped = remap_labels(labels, picked, 10)
    inverse = torch.where(remapped >= 0, picked[remapped.clamp(min=0)], torch.tensor(-1))
    assert torch.equal(inverse, labels)  # index i of the subset is class picked[i]; ignore stays ignore
    assert remap_labels(torch.tensor([[[5]]]), torch.tensor([3, 7]), 10).item() == -1  # not in the subset: ignore


def test_similar_negatives_are_the_confusable_classes():
    """train.negatives=similar draws absent classes by their prompt's similarity to the present ones: with a low
    temperature the most similar class is nearly always a negative, with uniform sampling 1 time in 8."""
    from dpseg.engine.class_sampling import prompt_similarity, sample_step_classes
    from dpseg.model.dual_prompt import PromptSet

    text = torch.nn.functional.normalize(torch.randn(10, 2, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    text[5] = text[3] + 0.05 * text[5]  # class 5 is a near copy of class 3: its confusable neighbour
    similarity = prompt_similarity(PromptSet([f"c{k}" for k in range(10)], text), "text")
    assert similarity.shape == (10, 10) and similarity[3, 5] > 0.99 and similarity.diagonal().allclose(torch.ones(10))
    labels = torch.tensor([[[3, 7]]])  # classes 3 and 7 present, 8 absent
    similar = [5 in sample_step_classes(labels, 10, 3, s, similarity, 0.05).tolist() for s in range(200)]
    uniform = [5 in sample_step_classes(labels, 10, 3, s).tolist() for s in range(200)]
    assert sum(similar) > 190 and 10 < sum(uniform) < 45
    picked = sample_step_classes(labels, 10, 6, 1, similarity, 0.05)
    assert {3, 7} <= set(picked.tolist()) and len(picked) == 6  # present kept, no class drawn twice
    assert torch.equal(picked, sample_step_classes(labels, 10, 6, 1, similarity, 0.05))  # seeded: resume-exact
    with pytest.raises(Exception, match="train.negatives_temperature"):
        build_config("dpseg-tiny", overrides=["train.negatives_temperature=0"])


def test_classes_per_step_is_wired_into_the_training_step(tmp_path, monkeypatch):
    import dpseg.engine.train as engine
    from dpseg.model.loss import SegmentationLoss

    seen = []
    forward = SegmentationLoss.forward
    monkeypatch.setattr(
        SegmentationLoss,
        "forward",
        lambda self, logits, labels: (
            seen.append((logits.shape[1], set(labels.unique().tolist()))),
            forward(self, logits, labels),
        )[1],
    )
    monkeypatch.setattr(
        engine, "sample_step_classes", lambda labels, k, limit, seed, *a: torch.tensor([0, 2]) if limit else None
    )
    data = make_dataset(tmp_path / "data", n_train=2, size=(64, 64))
    train(
        text_only(tmp_path / "run", data, "train.iterations=2", "train.classes_per_step=2", "train.checkpoint_every=0"),
        progress=False,
    )
    assert [k for k, _ in seen] == [2, 2] and all(v <= {-1, 0, 1} for _, v in seen)
    with pytest.raises(Exception, match="train.classes_per_step"):
        build_config("dpseg-tiny", overrides=["train.classes_per_step=-1"])
