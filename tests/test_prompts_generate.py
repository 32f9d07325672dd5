import json
import shutil
import time

import numpy as np
import pytest

from dpseg.config import build_config
from dpseg.errors import BankError, ConfigError, WeightsUnavailableError
from dpseg.prompts.generate import DiffusersGenerator, generator_prompt, get_generator, image_seed, resolve_pipeline_dir
from dpseg.prompts.tiny_pipeline import make_tiny_pipeline


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return make_tiny_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd")


def _cfg(*overrides):
    return build_config("dpseg-tiny", overrides=["prompts.resolution=16", "prompts.steps=2", *overrides]).prompts


def test_prompt_text_and_seeds():
    assert generator_prompt("a photo of a {}.", "sofa, couch ") == "a photo of a sofa."
    assert image_seed(0, "cat", 3) == image_seed(0, "cat", 3)
    assert len({image_seed(0, "cat", i) for i in range(50)} | {image_seed(1, "cat", 0), image_seed(0, "dog", 0)}) == 52


def test_generate_is_seeded_per_image_and_batch_independent(pipe_dir):
    gen = get_generator(str(pipe_dir), _cfg(), device="cpu")
    assert isinstance(gen, DiffusersGenerator)
    a, b = gen.generate(["a photo of a cat.", "a photo of a dog."], [11, 12])
    assert a.mode == "RGB" and a.size == (16, 16)
    (b_alone,) = gen.generate(["a photo of a dog."], [12])
    assert np.array_equal(np.array(b), np.array(b_alone))
    (b_other,) = gen.generate(["a photo of a dog."], [13])
    assert not np.array_equal(np.array(b), np.array(b_other))
    assert gen.generate([], []) == []
    sched = gen.pipeline.scheduler
    assert type(sched).__name__ == "DPMSolverMultistepScheduler" and sched.config.algorithm_type == "dpmsolver++"


@pytest.mark.parametrize(
    "name, cls", [("ddim", "DDIMScheduler"), ("euler", "EulerDiscreteScheduler"), ("default", "PNDMScheduler")]
)
def test_scheduler_choice(pipe_dir, name, cls):
    gen = get_generator(str(pipe_dir), _cfg(f"prompts.scheduler={name}"), device="cpu")
    assert type(gen.pipeline.scheduler).__name__ == cls and f"|{name}|" in gen.identity


def test_identity_names_content_and_settings(pipe_dir, tmp_path):
    ident = get_generator(str(pipe_dir), _cfg()).identity
    copy = shutil.copytree(pipe_dir, tmp_path / "copy")
    assert get_generator(str(copy), _cfg()).identity == ident  # content, not path
    (copy / "v1-5-pruned.ckpt").write_bytes(b"an original checkpoint next to the diffusers folders")
    (copy / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"a variant fetched later")
    assert get_generator(str(copy), _cfg()).identity == ident  # files a plain load does not read do not count
    assert get_generator(str(copy), _cfg("prompts.steps=3")).identity != ident
    assert get_generator(str(copy), _cfg("prompts.guidance_scale=5.0")).identity != ident
    assert get_generator(str(copy), _cfg("prompts.negative_prompt=blurry")).identity != ident
    weights = next((copy / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert get_generator(str(copy), _cfg()).identity != ident


def test_local_hub_cache_is_used_offline(pipe_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--someone--tiny-sd"
    shutil.copytree(pipe_dir, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    assert resolve_pipeline_dir("someone/tiny-sd") == repo / "snapshots" / ("a" * 40)
    assert get_generator("someone/tiny-sd", _cfg()).generate(["a cat"], [0])[0].size == (16, 16)


def test_missing_generator_weights_fail_at_once(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(
        WeightsUnavailableError, match=r"not in the local Hugging Face cache.*--generator /path/to/pipeline"
    ):
        get_generator("runwayml/stable-diffusion-v1-5", _cfg())
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{tmp}/absent", "generator directory .*absent does not exist"),
        ("{tmp}/empty", "is not a diffusers pipeline directory \\(no model_index.json"),
        ("{tmp}/file.bin", "is not a diffusers pipeline directory"),
        ("", "no generator given"),
        ("synthetic:big", "must look like synthetic, synthetic:size=N"),
        ("synthetic:colour=red", "must look like synthetic, synthetic:size=N"),
        ("synthetic:style=photo", "style must be prompt or scene, got 'photo'"),
    ],
)
def test_bad_generator_specs(tmp_path, spec, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(BankError, match=message):
        get_generator(spec.format(tmp=tmp_path), _cfg())


def test_bad_settings(pipe_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"'prompts.resolution' \(17\) must be a multiple of 2"):
        get_generator(str(pipe_dir), _cfg("prompts.resolution=17"))
    flow = shutil.copytree(pipe_dir, tmp_path / "flow")
    cfg_path = flow / "scheduler" / "scheduler_config.json"
    cfg_path.write_text(
        json.dumps({**json.loads(cfg_path.read_text()), "_class_name": "FlowMatchEulerDiscreteScheduler"})
    )
    with pytest.raises(ConfigError, match="dpm\\+\\+ .*does not fit this pipeline's FlowMatchEulerDiscreteScheduler"):
        get_generator(str(flow), _cfg())
    broken = shutil.copytree(pipe_dir, tmp_path / "broken")
    shutil.rmtree(broken / "unet")
    with pytest.raises(BankError, match="cannot load the diffusers pipeline in"):
        get_generator(str(broken), _cfg()).generate(["a cat"], [0])


def test_synthetic_generator():
    try:
        import dpseg.data.synthetic.generator  # noqa: F401
    except ImportError:
        with pytest.raises(BankError, match="synthetic generator"):
            get_generator("synthetic", _cfg())
        return
    gen = get_generator("synthetic:size=32", _cfg())
    (im,) = gen.generate([generator_prompt("a photo of a {}.", "red striped star")], [0])
    assert im.mode == "RGB" and im.size == (32, 32) and "32" in gen.identity
    assert get_generator("synthetic", _cfg("prompts.resolution=64")).identity != gen.identity
    scene = get_generator("synthetic:size=32,style=scene", _cfg())  # the world's style gap switched off
    assert scene.style == "scene" and gen.style == "prompt" and scene.identity != gen.identity
