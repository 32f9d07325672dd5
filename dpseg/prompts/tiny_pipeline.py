"""A tiny random-weight Stable Diffusion pipeline, built offline (tests, CPU benchmarks, demos without weights).

It has the real SD-1.x structure (CLIP text encoder + tokenizer, conditional UNet, VAE, scheduler) at toy sizes,
and is saved with ``save_pretrained`` so that it is read back through the same loading path as a real pipeline
folder. Its images are noise-like: it exercises the machinery, not the quality. The tokenizer's vocabulary is
written here (letters and a few symbols, no merges), so nothing is downloaded.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path
from typing import Any, Union

import torch

from dpseg.atomic import json_text
from dpseg.prompts.generate import _quiet_diffusers


def make_tiny_pipeline(out_dir: Union[str, Path], seed: int = 0, width: int = 16) -> Path:
    """Write a tiny StableDiffusionPipeline folder (model_index.json + components) to ``out_dir``; return it.

    VAE downsampling factor 2, UNet with two blocks: any resolution that is a multiple of 4 works.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out_dir = Path(out_dir)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits + ".,'-!?":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json_text(vocab, indent=None))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=width,
            intermediate_size=2 * width,
            num_attention_heads=2,
            num_hidden_layers=1,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=4,
        sample_size=16,
    )
    scheduler = PNDMScheduler(
        skip_prk_steps=True, steps_offset=1, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    # Any: diffusers/__init__ star-imports placeholder classes of these names (used when a backend is missing) before
    # the real ones, and a type checker sees only the placeholders (no save_pretrained)
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )

    with _quiet_diffusers():
        pipe.save_pretrained(str(out_dir))
    return out_dir
