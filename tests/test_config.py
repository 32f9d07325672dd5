import json
import subprocess
import sys

import pytest

from dpseg.config import Config, build_config, config_from_dict, list_presets, load_config, parse_override, save_config
from dpseg.errors import ConfigError


def test_defaults_are_the_paper_recipe():
    cfg = build_config()
    assert cfg.preset == "dpseg-b"
    assert cfg.model.clip_model == "convnext_base_w_320"
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.encoder_lr_mult) == (2e-4, 1e-4, 0.01)
    assert (cfg.train.iterations, cfg.train.batch_size, cfg.data.crop_size) == (80000, 4, 768)


def test_presets_exist_and_resolve():
    assert {"dpseg-b", "dpseg-l", "dpseg-tiny"} <= set(list_presets())
    assert build_config("dpseg-l").model.clip_model == "convnext_large_d_320"
    tiny = build_config("dpseg-tiny")
    assert tiny.model.clip_pretrained == "" and tiny.model.clip_model_cfg["embed_dim"] == 32


def test_set_overrides_are_typed():
    cfg = build_config(
        "dpseg-tiny",
        overrides=[
            "train.lr=1e-3",
            "model.visual_scales=[2]",
            "eval.two_pass=false",
            "model.prompt_type=text",
            "train.iterations=7",
        ],
    )
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.model.visual_scales == [2] and cfg.eval.two_pass is False
    assert cfg.model.prompt_type == "text" and cfg.train.iterations == 7


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("nosection.x=1", "unknown config key 'nosection'"),
        ("train.lr=abc", "config key 'train.lr' expects float"),
        ("train.iterations=1.5", "config key 'train.iterations' expects int"),
        ("eval.two_pass=3", "config key 'eval.two_pass' expects bool"),
        ("model.prompt_type=both", "config key 'model.prompt_type' expects 'text' | 'visual' | 'dual'"),
        ("model.visual_scales=[2,x]", "config key 'model.visual_scales[1]' expects int"),
        ("model.visual_scales=[5]", "model.visual_scales"),
        ("train.lr", "must look like section.key=value"),
        ("model=3", "config section 'model' must be a mapping"),
        ("eval.refine_crop_weight=0", "config key 'eval.refine_crop_weight' must be a finite number in (0, 1]"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=None) as err:
        build_config("dpseg-tiny", overrides=[override])
    assert needle in str(err.value)


def test_yaml_delta_file_with_preset(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("preset: dpseg-tiny\ntrain:\n  lr: 0.001\nmodel:\n  guidance: upsampled\n")
    cfg = build_config(file=f, overrides=["train.lr=0.002"])
    assert cfg.preset == "dpseg-tiny" and cfg.train.lr == 0.002 and cfg.model.guidance == "upsampled"
    f.write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(file=f)
    f.write_text("train:\n  nope: 1\n")
    with pytest.raises(ConfigError, match="'train.nope'"):
        build_config(file=f)


def test_a_mapping_key_is_a_delta_too(tmp_path):
    """model.clip_model_cfg is a free-form mapping: a dotted --set or a YAML delta changes the named leaves and keeps
    the rest (it used to replace the whole mapping, silently dropping the preset's other keys); null removes."""
    preset = build_config("synthetic").model.clip_model_cfg
    cfg = build_config("synthetic", overrides=["model.clip_model_cfg.vision_cfg.timm_model_name=convnext_atto"])
    vision = cfg.model.clip_model_cfg["vision_cfg"]
    assert vision["timm_model_name"] == "convnext_atto"
    assert {k: v for k, v in vision.items() if k != "timm_model_name"} == {
        k: v for k, v in preset["vision_cfg"].items() if k != "timm_model_name"
    }
    assert cfg.model.clip_model_cfg["text_cfg"] == preset["text_cfg"]
    assert build_config("synthetic").model.clip_model_cfg == preset  # the preset's mapping itself left alone
    f = tmp_path / "run.yaml"
    f.write_text(
        "preset: synthetic\nmodel:\n  clip_model_cfg:\n"
        "    text_cfg:\n      heads: 1\n    vision_cfg:\n      timm_drop: null\n"
    )
    cfg = build_config(file=f)
    assert cfg.model.clip_model_cfg["text_cfg"] == {**preset["text_cfg"], "heads": 1}
    assert cfg.model.clip_model_cfg["vision_cfg"] == {k: v for k, v in preset["vision_cfg"].items() if k != "timm_drop"}
    assert build_config("synthetic", overrides=["model.clip_model_cfg=null"]).model.clip_model_cfg == {}
    with pytest.raises(ConfigError, match="config key 'model.clip_model_cfg' expects dict"):
        build_config("synthetic", overrides=["model.clip_model_cfg=3"])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'dpseg-xl'"):
        build_config("dpseg-xl")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_resolved_config_round_trip(tmp_path, suffix):
    cfg = build_config("dpseg-tiny", overrides=["train.lr=3e-4", "model.visual_scales=[3,4]"])
    path = save_config(cfg, tmp_path / f"config{suffix}")
    again = load_config(path)
    assert again == cfg
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_parse_override_values():
    assert parse_override("a.b=1e-4") == ("a.b", 1e-4)
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=") == ("a.b", "")


def test_cli_config_and_errors():
    out = subprocess.run(
        [sys.executable, "-m", "dpseg", "config", "--preset", "dpseg-tiny", "--set", "train.lr=0.5"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "lr: 0.5" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "dpseg", "config", "--set", "train.lr=abc"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "train.lr" in bad.stderr
    top = subprocess.run([sys.executable, "-m", "dpseg", "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "quickstart" in top.stdout
    unknown = subprocess.run([sys.executable, "-m", "dpseg", "fly"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown command 'fly'" in unknown.stderr
    assert Config().to_dict()["model"]["clip_model"] == "convnext_base_w_320"
