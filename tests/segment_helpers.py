"""Shared artifacts for the segment / demo tests: a tiny checkpoint, its prompt bank, a text-only checkpoint, and
structured test images. Built once per test process (the tiny model takes seconds to build)."""

import atexit
import copy
import functools
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from helpers import tiny_model
from PIL import Image

from dpseg.checkpoint import save_model
from dpseg.prompts.bank import PromptBank
from dpseg.prompts.builder import add_exemplars
from dpseg.prompts.manifest import make_key
from dpseg.prompts.templates import model_templates

CLASSES = ["cat", "sofa, couch", "lamp", "floor"]


def scene(h=72, w=96, seed=0) -> np.ndarray:
    """(H, W, 3) uint8: coloured blocks and a gradient, so that a random model's map is not constant."""
    g = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[..., 1] = np.linspace(255, 0, h, dtype=np.uint8)[:, None]
    for _ in range(4):
        y, x = g.integers(0, h - 8), g.integers(0, w - 8)
        img[y : y + h // 3, x : x + w // 3] = g.integers(0, 256, 3)
    return img


@functools.cache
def artifacts() -> SimpleNamespace:
    root = Path(tempfile.mkdtemp(prefix="dpseg-segment-tests-"))
    atexit.register(shutil.rmtree, root, True)
    model, cfg = tiny_model()
    ckpt = save_model(model, cfg, root / "ckpt")
    key = make_key(model.prompt_encoder, model.text_encoder, model_templates(cfg), model.prompt_image_size)
    bank = PromptBank.create(root / "bank", key)
    rng = np.random.default_rng(1)
    images = {
        n: [Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)) for _ in range(2)] for n in CLASSES
    }
    add_exemplars(bank, images, model.prompt_encoder, model.text_encoder)
    text_model, text_cfg = tiny_model("model.prompt_type=text", "model.guidance=none", seed=1)
    ckpt_text = save_model(text_model, text_cfg, root / "ckpt_text")
    # the same weights decoding all classes at once (the preset's 8-class chunks are slow on CPU at large K)
    cfg_unchunked = copy.deepcopy(cfg)
    cfg_unchunked.eval.class_chunk = 0
    ckpt_unchunked = save_model(model, cfg_unchunked, root / "ckpt_unchunked")
    return SimpleNamespace(
        root=root,
        ckpt=ckpt,
        bank=root / "bank",
        ckpt_text=ckpt_text,
        ckpt_unchunked=ckpt_unchunked,
        classes=list(CLASSES),
    )
