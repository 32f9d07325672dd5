"""SED in dpseg: the presets sed-b / sed-l, `dpseg convert sed`, and equality with SED's own code.

tests/fixtures/sed/ holds a tiny random SED in SED's checkpoint layout and the tensors SED's own model code computed
from it (README there: how, and with which SED commit). The converted checkpoint must reproduce them in fp32.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dpseg.build import build_model, component_counts
from dpseg.checkpoint import load_model
from dpseg.commands import main
from dpseg.config import build_config
from dpseg.convert import convert_sed, sed_key
from dpseg.errors import CheckpointError, ConfigError, InputError
from dpseg.evaluation.inference import Inference
from dpseg.evaluation.protocols import predict_whole
from dpseg.model.dpseg import REJECTED_LOGIT
from dpseg.model.dual_prompt import PromptSet
from dpseg.prompts.templates import model_templates

FIXTURE = Path(__file__).parent / "fixtures" / "sed"
TOL = 1e-4


def write_sed_checkpoint(path: Path, state: dict) -> Path:
    """A file in the layout of SED's released model_final.pth (detectron2: {"model": state_dict, ...})."""
    torch.save({"model": state, "iteration": 79999}, path)
    return path


@pytest.fixture(scope="module")
def fixture():
    return {
        "state": load_file(FIXTURE / "sed_tiny_state.safetensors"),
        "io": load_file(FIXTURE / "sed_tiny_io.safetensors"),
        "meta": json.loads((FIXTURE / "meta.json").read_text()),
    }


@pytest.fixture(scope="module")
def converted(fixture, tmp_path_factory):
    root = tmp_path_factory.mktemp("sed")
    pth = write_sed_checkpoint(root / "model_final.pth", fixture["state"])
    assert main(["convert", "sed", str(pth), str(root / "ckpt"), "--config", str(FIXTURE / "dpseg_config.yaml")]) == 0
    model, cfg = load_model(root / "ckpt")
    return model, cfg, root


def sed_prompts(model, cfg, names) -> PromptSet:
    return PromptSet(names, model.encode_text_prompts(names, model_templates(cfg)))


def test_text_embeddings_equal_seds(fixture, converted):
    model, cfg, _ = converted
    for names, key in (
        (fixture["meta"]["class_names"], "text.text_features_test"),
        (fixture["meta"]["cer_class_names"], "cer.text_features_test"),
    ):
        T = model.encode_text_prompts(names, model_templates(cfg))  # (K, 80, d), "sofa, couch" = two synonyms
        assert (T - fixture["io"][key]).abs().max() < TOL


def test_logits_and_aux_outputs_equal_seds_through_the_whole_protocol(fixture, converted):
    """SED's input: the uint8 image (3, 96, 128) normalised and squashed to 160x160; dpseg's protocol "whole" with
    short side 96 (no resize) and input size 160 does the same (fixture config)."""
    model, cfg, _ = converted
    io, names = fixture["io"], fixture["meta"]["class_names"]
    assert cfg.eval.protocol == "whole" and (cfg.eval.short_side, cfg.eval.input_size) == (96, 160)
    seen = {}

    class Spy(torch.nn.Module):
        needs_visual_prompts = False

        def forward(self, images, prompts, class_chunk=0):
            seen["input"] = images
            seen["out"] = model(images, prompts, class_chunk)
            return seen["out"]

    inference = Inference(Spy(), sed_prompts(model, cfg, names), cfg.eval, precision="fp32")
    with torch.no_grad():
        pred = inference.predict([io["input.image_uint8"]])[0]["pass1"]
        normalised = (seen["input"] - model.image_encoder.mean) / model.image_encoder.std
        feats = model.encode_image(seen["input"])
    assert (normalised - io["input.clip_images"]).abs().max() < TOL  # what SED's CLIP saw
    for j, stage in enumerate(feats.stages, start=2):
        assert (stage - io[f"encoder.res{j}"]).abs().max() < TOL
    assert (feats.dense - io["encoder.clip_vis_dense"]).abs().max() < TOL
    diff = (seen["out"]["logits"] - io["out.logits"]).abs().max()
    assert diff < TOL, diff
    for s, aux in enumerate(seen["out"]["aux"]):
        assert (aux - io[f"out.aux_head{s}"]).abs().max() < TOL
    probs = torch.nn.functional.interpolate(io["out.logits"].sigmoid(), size=(96, 128), mode="bilinear")[0]
    assert (pred.scores - probs.max(dim=0).values).abs().max() < TOL  # sigmoid, then straight to the image size
    assert (pred.labels == probs.argmax(dim=0)).float().mean() > 0.999


def test_sed_postprocessing_equals_the_protocols(fixture, converted):
    """SED.forward's own output (sigmoid, resized to the original 75x100) is what the protocol makes of the logits."""
    model, cfg, _ = converted
    io = fixture["io"]
    settings = dataclasses.replace(cfg.eval, short_side=75, input_size=160)
    logits = io["out.logits"]
    pred = predict_whole(
        lambda images: {"pass1": logits}, [torch.zeros(3, 75, 100, dtype=torch.uint8)], settings, logits.shape[1]
    )[0]["pass1"]
    best, labels = io["out.sem_seg"].max(dim=0)
    assert (pred.scores - best).abs().max() < TOL and torch.equal(pred.labels, labels)


def test_training_pooling_of_the_class_attention_equals_seds(fixture, converted):
    model, cfg, _ = converted
    io = fixture["io"]
    x = torch.nn.functional.interpolate(io["input.image_uint8"][None].float() / 255, (160, 160), mode="bilinear")
    for stage in model.decoder.stages:
        stage.classes.pool_test = (
            2  # SED's POOLING_SIZES [2, 2]: floor pooling, align_corners unpooling at 5, 10, 20 px
        )
    try:
        with torch.no_grad():
            logits = model(x, sed_prompts(model, cfg, fixture["meta"]["class_names"]))["logits"]
    finally:
        for stage in model.decoder.stages:
            stage.classes.pool_test = 1
    assert (logits - io["pool2.logits"]).abs().max() < TOL


@pytest.mark.parametrize("k", [1, 2])
def test_early_rejection_equals_sed_fast(fixture, converted, k):
    model, cfg, _ = converted
    io, names = fixture["io"], fixture["meta"]["cer_class_names"]
    x = torch.nn.functional.interpolate(io["input.image_uint8"][None].float() / 255, size=(160, 160), mode="bilinear")
    prompts = sed_prompts(model, cfg, names)
    with torch.no_grad():
        full = model(x, prompts)["logits"]
        out = model(x, prompts, class_chunk=5, early_rejection_topk=k)
    assert (full - io["cer.full_logits"]).abs().max() < TOL
    probs, ref = out["logits"].sigmoid(), io[f"cer_top{k}.probs"]
    assert torch.equal(probs == 0, ref == 0) and (probs - ref).abs().max() < TOL  # rejected: exactly 0
    alive = [(a != REJECTED_LOGIT).flatten(2).any(-1)[0] for a in out["aux"][1:]] + [(probs != 0).flatten(2).any(-1)[0]]
    before = torch.ones(len(names), dtype=torch.bool)
    for s, now in enumerate(alive):  # SED's keep masks: stage s over the survivors of stage s - 1
        assert torch.equal(now[before], io[f"cer_top{k}.keep_stage{s}"].bool())
        before = now
    assert (probs == 0).flatten(2).all(-1).sum() > 0  # the fixture does reject classes
    with torch.no_grad():  # a batch keeps the classes any of its images keeps: two copies keep the same ones
        twice = model(x.repeat(2, 1, 1, 1), prompts, early_rejection_topk=k)["logits"]
    assert torch.allclose(twice, out["logits"].repeat(2, 1, 1, 1), atol=1e-5)
    settings = dataclasses.replace(cfg.eval, short_side=96, input_size=160, class_chunk=3, early_rejection_topk=k)
    with torch.no_grad():
        pred = Inference(model, prompts, settings, precision="fp32").predict([io["input.image_uint8"]])[0]["pass1"]
    assert (
        alive[-1][pred.labels.long().unique()].all() and torch.isfinite(pred.scores).all()
    )  # rejected classes never win


def test_early_rejection_needs_auxiliary_heads(converted):
    with pytest.raises(ConfigError, match="early_rejection_topk.*aux_heads"):
        build_config("dpseg-tiny", overrides=["eval.early_rejection_topk=8"])
    with pytest.raises(ConfigError, match="early_rejection_topk' must be an integer in \\[0, "):
        build_config("sed-b", overrides=["eval.early_rejection_topk=-1"])
    from helpers import random_prompts, tiny_model

    model, _ = tiny_model()
    with pytest.raises(InputError, match="auxiliary heads"):
        model(torch.rand(1, 3, 64, 64), random_prompts(model, 2), early_rejection_topk=1)


def test_presets_have_seds_parameter_counts():
    """SED's own model code counts 180,761,741 (B) and 353,245,773 (L) parameters, one of them CLIP's logit scale,
    which SED never reads and dpseg does not keep; no visual-prompt encoder copy."""
    counts = {}
    for preset in ("sed-b", "sed-l"):
        with torch.device("meta"):
            model = build_model(build_config(preset), load_clip_weights=False)
        assert model.prompt_encoder is None and not model.needs_visual_prompts
        counts[preset] = {name.split(" (")[0]: total for name, total, _ in component_counts(model)}
    b = counts["sed-b"]
    assert b["image encoder"] == 88_221_824 and b["text encoder"] == 91_163_521 - 1
    assert b["cost embedding"] + b["decoder"] + b["upsampled-cost guidance"] == 1_376_396
    assert b["total"] == 180_761_741 - 1
    assert counts["sed-l"]["total"] == 353_245_773 - 1


@pytest.mark.parametrize("preset", ["sed-b", "sed-l"])
def test_every_tensor_of_a_full_size_sed_checkpoint_has_its_place(preset):
    """The key list of SED's real checkpoints (names and shapes) is exactly the preset's, renamed by sed_key."""
    listed = {}
    for line in (FIXTURE / f"keys_{preset.replace('-', '_')}.txt").read_text().splitlines():
        name, shape = line.split(" ", 1)
        listed[name] = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
    with torch.device("meta"):
        model = build_model(build_config(preset), load_clip_weights=False)
    ours = {sed_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(listed) - set(ours) == {"sem_seg_head.predictor.clip_model.logit_scale"}
    assert all(listed[k] == shape for k, shape in ours.items())


def test_converter_names_every_problem(fixture, tmp_path):
    state, cfg_file = dict(fixture["state"]), str(FIXTURE / "dpseg_config.yaml")
    convert = lambda s, **kw: convert_sed(write_sed_checkpoint(tmp_path / "x.pth", s), tmp_path / "out", **kw)  # noqa: E731
    bad = dict(state)
    del bad["sem_seg_head.predictor.transformer.decoder2.cnext.gamma"]
    bad["sem_seg_head.predictor.transformer.extra.weight"] = torch.zeros(1)
    bad["sem_seg_head.predictor.transformer.head.bias"] = torch.zeros(2)
    with pytest.raises(CheckpointError) as e:
        convert(bad, config_file=cfg_file)
    msg = str(e.value)
    assert "\n" not in msg and "missing keys: sem_seg_head.predictor.transformer.decoder2.cnext.gamma" in msg
    assert "unexpected keys: sem_seg_head.predictor.transformer.extra.weight" in msg
    assert "shape mismatch: sem_seg_head.predictor.transformer.head.bias (file (2,), sed-b (1,))" in msg
    with pytest.raises(CheckpointError, match="neither SED-B"):  # the tiny stem is 8 wide: no preset fits
        convert(state)
    with pytest.raises(CheckpointError, match="shape mismatch: sem_seg_head.predictor.clip_model.visual"):
        convert(state, preset="sed-b")
    with pytest.raises(CheckpointError, match="not SED's architecture: SED has no tensor for prompt_encoder"):
        convert(state, preset="dpseg-b")
    with pytest.raises(CheckpointError, match="not an SED checkpoint"):
        convert({"backbone.weight": torch.zeros(1)})
    torch.save(
        {"model": state, "trainer": {"hook": Path("x")}}, tmp_path / "unsafe.pth"
    )  # an object weights_only refuses
    with pytest.raises(CheckpointError, match=r"weights_only=True.*never runs pickled code"):
        convert_sed(tmp_path / "unsafe.pth", tmp_path / "out")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        convert_sed(tmp_path / "text.pth", tmp_path / "out")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "unsafe.pth").read_bytes()[:300])  # a download cut short
    with pytest.raises(CheckpointError, match="cannot read SED checkpoint .*; download it again$"):
        convert_sed(tmp_path / "cut.pth", tmp_path / "out")
    with pytest.raises(CheckpointError, match="does not exist"):
        convert_sed(tmp_path / "nope.pth", tmp_path / "out")
    convert(state, config_file=cfg_file)
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        convert(state, config_file=cfg_file)
    assert convert(state, config_file=cfg_file, overwrite=True).tensors == len(state) - 1  # logit_scale dropped


def test_converted_checkpoint_segments_a_photo_text_only(converted, tmp_path, capsys):
    from PIL import Image
    from segment_helpers import scene

    _, _, root = converted
    Image.fromarray(scene()).save(tmp_path / "photo.jpg")
    assert (
        main(
            [
                "segment",
                str(tmp_path / "photo.jpg"),
                "--checkpoint",
                str(root / "ckpt"),
                "--classes",
                "person, sky, tree",
                "--out",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
        == 0
    )
    info = json.loads((tmp_path / "out" / "photo.json").read_text())
    assert info["prompts"].startswith("text") and not info["refined"] and info["size"] == [72, 96]
    assert [c["name"] for c in info["classes"]] == ["person", "sky", "tree"]
    assert "3 classes; prompts: text" in capsys.readouterr().err


def test_sed_decoder_is_exact_under_class_chunking(fixture, converted):
    model, cfg, _ = converted
    prompts = sed_prompts(model, cfg, fixture["meta"]["cer_class_names"][:7])
    x = torch.rand(2, 3, 96, 64, generator=torch.Generator().manual_seed(0))
    try:
        for mode in (False, True):  # test pooling 1 and training pooling 2 (floor: 3x2 of the 6x4 map at stride 16)
            model.train(mode)
            with torch.no_grad():
                full = model(x, prompts)
                for chunk in (1, 3):
                    part = model(x, prompts, class_chunk=chunk)
                    assert torch.allclose(part["logits"], full["logits"], atol=1e-5)
                    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(part["aux"], full["aux"]))
    finally:
        model.eval()


def test_sed_switches_are_checked():
    with pytest.raises(ConfigError, match="spatial_kernel' must be odd"):
        build_config("sed-b", overrides=["model.spatial_kernel=8"])
    with pytest.raises(ConfigError, match="class_aggregation' expects 'dpseg' | 'sed'"):
        build_config("sed-b", overrides=["model.class_aggregation=cat"])
    with pytest.raises(ConfigError, match="spatial_aggregation' expects 'hdconv' | 'convnext'"):
        build_config("sed-b", overrides=["model.spatial_aggregation=swin"])


def test_demo_runs_the_converted_checkpoint_without_a_bank(converted, tmp_path):
    from PIL import Image
    from segment_helpers import scene

    from dpseg import demo_app
    from dpseg.commands import demo

    _, _, root = converted
    seg, note = demo.load_segmenter(str(root / "ckpt"), None, text_only=False, device="cpu")
    assert "text prompts only" in note
    Image.fromarray(scene()).save(tmp_path / "photo.png")
    picture, legend, info, *_ = demo_app.make_handler(seg, demo.Limits())(
        str(tmp_path / "photo.png"), "person, sky, tree"
    )
    assert picture.width > 96 and "one pass" in info and "text (this model uses text prompts only)" in info


def test_early_rejection_from_needs_early_rejection_on():
    with pytest.raises(ConfigError, match="early_rejection_from.*early_rejection_topk=0"):
        build_config("sed-b", overrides=["eval.early_rejection_from=1"])
    with pytest.raises(ConfigError, match="early_rejection_from"):
        build_config("sed-b", overrides=["eval.early_rejection_topk=8", "eval.early_rejection_from=3"])
    cfg = build_config("sed-b", overrides=["eval.early_rejection_topk=8", "eval.early_rejection_from=1"])
    assert cfg.eval.early_rejection_from == 1


def test_early_rejection_rank_needs_rejection_at_stage_0():
    with pytest.raises(ConfigError, match="early_rejection_rank.*early_rejection_topk=0"):
        build_config("sed-b", overrides=["eval.early_rejection_rank=cost"])
    with pytest.raises(ConfigError, match="early_rejection_rank.*early_rejection_from=1"):
        build_config(
            "sed-b",
            overrides=["eval.early_rejection_topk=8", "eval.early_rejection_from=1", "eval.early_rejection_rank=cost"],
        )
    with pytest.raises(ConfigError, match="early_rejection_rank"):
        build_config("sed-b", overrides=["eval.early_rejection_topk=8", "eval.early_rejection_rank=votes"])
    cfg = build_config("sed-b", overrides=["eval.early_rejection_topk=8", "eval.early_rejection_rank=cost"])
    assert cfg.eval.early_rejection_rank == "cost"
