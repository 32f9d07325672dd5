"""Training SED and starting DPSeg from a converted SED checkpoint (train.init_from), which is not a resume."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_sed import FIXTURE, write_sed_checkpoint
from test_train import CLASSES, make_bank, make_dataset, records

from dpseg.build import build_model
from dpseg.config import build_config
from dpseg.convert import convert_sed
from dpseg.engine.resume import list_checkpoints
from dpseg.engine.train import train
from dpseg.errors import CheckpointError

FAST = [
    "data.crop_size=64",
    "data.resize_short=64",
    "data.num_workers=0",
    "train.batch_size=2",
    "train.eval_every=0",
    "train.tensorboard=false",
    "train.log_every=1",
    "model.prompt_image_size=64",
]


@pytest.fixture(scope="module")
def sed_checkpoint(tmp_path_factory) -> Path:
    """The SED equality fixture converted to a dpseg checkpoint (tiny ConvNeXt CLIP, SED's decoder)."""
    root = tmp_path_factory.mktemp("sed")
    pth = write_sed_checkpoint(root / "model_final.pth", load_file(FIXTURE / "sed_tiny_state.safetensors"))
    return convert_sed(pth, root / "ckpt", config_file=str(FIXTURE / "dpseg_config.yaml")).directory


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=3)


def config(preset, out, data, *overrides):
    """The tiny SED's CLIP and widths (fixture config) under ``preset``, fast training settings."""
    return build_config(
        preset,
        file=FIXTURE / "dpseg_config.yaml",
        overrides=[*FAST, f"data.train_dataset={data}", f"train.output_dir={out}", *overrides],
    )


def test_sed_trains_with_its_auxiliary_losses(tmp_path, data, monkeypatch):
    from dpseg.model.loss import SegmentationLoss

    sizes, forward = [], SegmentationLoss.forward
    monkeypatch.setattr(
        SegmentationLoss,
        "forward",
        lambda self, logits, labels: (sizes.append(tuple(logits.shape)), forward(self, logits, labels))[1],
    )
    train(config("sed-b", tmp_path / "run", data, "train.iterations=2", "train.checkpoint_every=0"), progress=False)
    step = [(2, 3, 16, 16), (2, 3, 2, 2), (2, 3, 4, 4), (2, 3, 8, 8)]  # logits at stride 4, aux at strides 32, 16, 8
    assert sizes == step * 2
    assert all(r["loss"] > 0 for r in records(tmp_path / "run"))


def test_dpseg_starts_from_sed(tmp_path, data, sed_checkpoint, capsys, monkeypatch):
    """The run starts from SED's weights where name and shape match, from the fresh initialisation elsewhere, and
    with the frozen towers from model.clip_pretrained (so the prompt bank built from it stays valid)."""
    import dpseg.engine.setup as engine

    start, init = {}, engine.init_from_checkpoint

    def spy(model, source):
        report = init(model, source)
        start.update({k: v.clone() for k, v in model.state_dict().items()})
        return report

    monkeypatch.setattr(engine, "init_from_checkpoint", spy)
    cfg = config(
        "dpseg-b",
        tmp_path / "run",
        data,
        f"train.init_from={sed_checkpoint}",
        "train.iterations=1",
        "train.checkpoint_every=0",
    )
    cfg.prompts.bank = str(make_bank(cfg, tmp_path / "bank", CLASSES))  # built from clip_pretrained, not from SED
    train(cfg, progress=False)
    printed = capsys.readouterr().out
    assert f"init from {sed_checkpoint} (preset sed-b):" in printed
    # all 55 tensors of the image tower, the cost embedding, class attention (not its output projection), upsampling,
    # fusion and head of every stage; SED's ConvNeXt blocks, upsampled-cost cascade and auxiliary heads have no place
    assert "loaded: 131 tensors" in printed and "image_encoder (55)" in printed and "cost_embedding.conv (2)" in printed
    assert "fresh (not in the checkpoint): 39 tensors" in printed and "decoder.stages.0.spatial (9)" in printed
    assert "frozen, from model.clip_pretrained" in printed and "in the checkpoint, unused: 39 tensors" in printed
    sed = load_file(sed_checkpoint / "model.safetensors")
    torch.manual_seed(cfg.train.seed)
    fresh = build_model(cfg).state_dict()
    for name in (
        "image_encoder.trunk.stem.0.weight",
        "cost_embedding.conv.weight",
        "decoder.stages.1.classes.q.weight",
        "decoder.stages.2.fuse.0.weight",
        "decoder.head.bias",
    ):
        assert torch.equal(start[name], sed[name]) and not torch.equal(start[name], fresh[name]), name
    for name in (
        "decoder.stages.0.spatial.block.0.weight",
        "decoder.stages.0.classes.out.weight",
        "visual_cost.2.proj.weight",
        "prompt_encoder.trunk.stem.0.weight",
        "text_encoder.token_embedding.weight",
    ):
        assert torch.equal(start[name], fresh[name]), name
    report = (tmp_path / "run" / "init_from.json").read_text()
    assert '"decoder.aux_heads.0.weight"' in report and '"image_encoder.head.proj.weight"' in report


def test_init_from_is_not_a_resume(tmp_path, data, sed_checkpoint, capsys):
    """A run started from SED, interrupted and resumed, ends where the uninterrupted run ends: the resume takes the
    weights of its checkpoint, train.init_from is not applied again."""

    def cfg(out):
        return config(
            "sed-b",
            out,
            data,
            f"train.init_from={sed_checkpoint}",
            "train.iterations=3",
            "train.checkpoint_every=1",
            "train.keep_checkpoints=0",
            "train.lr=0.01",
        )

    whole = train(cfg(tmp_path / "a"), progress=False)

    def crash(step, _):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "b"), callback=crash, progress=False)
    capsys.readouterr()
    resumed = train(cfg(tmp_path / "b"), resume="auto", progress=False)
    assert f"train.init_from={sed_checkpoint} is not applied: the run resumes from" in capsys.readouterr().out
    assert whole["step"] == resumed["step"] == 3
    a, b = (
        load_file(tmp_path / "a" / "final" / "model.safetensors"),
        load_file(tmp_path / "b" / "final" / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    sed = load_file(sed_checkpoint / "model.safetensors")
    assert not torch.equal(a["decoder.head.weight"], sed["decoder.head.weight"])  # it trained
    assert [p.name for p in list_checkpoints(tmp_path / "b")][-1] == "step-00000003"


def test_a_wrong_init_from_fails_before_the_model_is_built(tmp_path, data):
    with pytest.raises(CheckpointError, match="does not exist"):
        train(config("dpseg-b", tmp_path / "run", data, f"train.init_from={tmp_path / 'nope'}"), progress=False)
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match="must hold config.json and model.safetensors"):
        train(config("dpseg-b", tmp_path / "run", data, f"train.init_from={tmp_path / 'half'}"), progress=False)
