"""Fast start: `dpseg segment` imports no heavy package it does not use, and loading a checkpoint draws no random
numbers that the checkpoint's weights overwrite anyway (the speed itself is measured by benchmarks/bench_startup.py,
not here)."""

import subprocess
import sys
import threading

import pytest
import torch
from segment_helpers import artifacts

from dpseg.checkpoint import load_model
from dpseg.init_patch import skip_random_init
from dpseg.weights import read_state_dict

HEAVY = (
    "gradio",
    "diffusers",
    "matplotlib",
    "torch.utils.tensorboard",
    "cv2",
    "dpseg.data.synthetic",
    "dpseg.quickstart.run",
    "dpseg.engine",
)


def test_segment_imports_no_heavy_package():
    code = (
        "import sys, dpseg.commands.segment, dpseg.commands.calibrate, dpseg.segmenter; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_loading_a_checkpoint_draws_no_random_numbers_and_loads_every_weight():
    ckpt = artifacts().ckpt
    torch.manual_seed(123)
    before = torch.get_rng_state()
    model, _ = load_model(ckpt)
    assert torch.equal(torch.get_rng_state(), before)  # no random initialisation was drawn (and thrown away)
    saved = read_state_dict(ckpt / "model.safetensors")
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_skip_random_init_is_scoped_to_its_block_and_thread():
    original = torch.nn.init.normal_
    other: list = []
    with skip_random_init():
        kept = torch.nn.init.normal_(torch.zeros(4))
        thread = threading.Thread(target=lambda: other.append(torch.nn.init.normal_(torch.zeros(4))))
        thread.start()
        thread.join()
    assert torch.equal(kept, torch.zeros(4))  # this thread: left as it was
    assert other[0].abs().sum() > 0  # another thread building a model meanwhile still gets random weights
    assert torch.nn.init.normal_ is original and torch.nn.init.normal_(torch.zeros(4)).abs().sum() > 0  # restored


def _run_in_thread(work):
    """Start ``work`` in another thread; (thread, list that receives its result or exception)."""
    out: list = []

    def target():
        try:
            out.append(work())
        except Exception as e:  # noqa: BLE001 - handed back to the test
            out.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize("work", ["random-init model", "diffusers pipeline"])
def test_a_load_in_another_thread_waits_while_the_initialisers_are_patched(work, tmp_path):
    """torch.nn.init is patched process-wide by skip_random_init and by diffusers/transformers' from_pretrained; two
    overlapping patchers in two threads can leave a no-op in place for good (every later model then keeps
    uninitialised memory). A model build or a pipeline load in another thread must wait for the block to end."""
    from helpers import tiny_model

    from dpseg.config import build_config
    from dpseg.prompts.generate import get_generator
    from dpseg.prompts.tiny_pipeline import make_tiny_pipeline

    if work == "random-init model":
        job = lambda: tiny_model()[0]  # noqa: E731
    else:
        folder = make_tiny_pipeline(tmp_path / "tiny-sd")
        generator = get_generator(str(folder), build_config("dpseg-tiny").prompts, device="cpu")
        job = lambda: generator.pipeline  # noqa: E731
    with skip_random_init():
        thread, out = _run_in_thread(job)
        thread.join(timeout=3)
        assert thread.is_alive() and not out  # waiting for the block to end
    thread.join(timeout=120)
    assert out and not isinstance(out[0], Exception), out
    if work == "random-init model":  # built after the block: the same random weights as a build in this thread
        built, reference = out[0].state_dict(), tiny_model()[0].state_dict()
        assert all(torch.equal(built[k], v) for k, v in reference.items())


def test_the_frozen_encoders_fingerprints_come_from_the_verified_file(tmp_path, monkeypatch):
    import shutil

    from helpers import strip_content_hash

    import dpseg.weights as weights
    from dpseg.weights import safetensors_metadata, state_fingerprint

    ckpt = shutil.copytree(artifacts().ckpt, tmp_path / "ckpt")
    meta = safetensors_metadata(ckpt / "model.safetensors")
    model, _ = load_model(ckpt)
    fresh = weights._fingerprint(model.prompt_encoder.state_dict())
    assert meta["prompt_encoder"] == fresh
    assert meta["text_encoder"] == weights._fingerprint(model.text_encoder.state_dict())

    def no_hashing(state):
        raise AssertionError("the encoder was hashed again")

    monkeypatch.setattr(weights, "_fingerprint", no_hashing)
    assert state_fingerprint(model.prompt_encoder) == fresh  # known from the file: a bank check costs nothing
    monkeypatch.undo()
    with torch.no_grad():
        next(model.prompt_encoder.parameters()).add_(1)  # changed weights are hashed again
    assert state_fingerprint(model.prompt_encoder) != fresh
    image, prompt = next(model.image_encoder.parameters()), next(model.prompt_encoder.parameters())
    assert image.data_ptr() != prompt.data_ptr()  # the two towers hold their own tensors
    strip_content_hash(ckpt / "model.safetensors")  # a file without a content hash: its metadata is not trusted
    unverified, _ = load_model(ckpt)
    monkeypatch.setattr(weights, "_fingerprint", no_hashing)
    with pytest.raises(AssertionError, match="hashed again"):
        state_fingerprint(unverified.prompt_encoder)
