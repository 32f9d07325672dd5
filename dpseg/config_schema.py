"""The configuration schema: one typed dataclass per section (``model``, ``prompts``, ``data``, ``train``, ``eval``).

The defaults are the paper's ConvNeXt-B recipe (preset ``dpseg-b``). Loading, presets, ``--set`` overrides, type
checking and validation live in :mod:`dpseg.config`, which re-exports these classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class ModelConfig:
    """Network architecture and the CLIP towers it is built on (docs/paper-choices.md for guessed details)."""

    # --- CLIP towers (open_clip) ---
    clip_model: str = "convnext_base_w_320"  # OpenCLIP model name (its model config ships with open_clip)
    clip_model_cfg: dict = field(default_factory=dict)  # inline OpenCLIP model config; overrides clip_model
    # OpenCLIP pretrained tag, a local .pt/.bin/.safetensors file in OpenCLIP layout, or "" for random init.
    clip_pretrained: str = "laion_aesthetic_s13b_b82k"
    prompt_image_size: int = 320  # visual prompts (generated images, crops) are encoded at this size
    # --- dual-prompt cost volume (§4.3-4.4) ---
    prompt_type: Literal["text", "visual", "dual"] = "dual"
    cost_embed_dim: int = 128
    cost_embed_kernel: int = 7
    # --- cost-volume-guided decoder (§4.5) ---
    # what guides the decoder stages: nothing, SED's upsampled F_c, the visual cost volumes F_v^j (the paper: they
    # take the upsampled F_c's place), or both side by side (the paper's Table 3 rows "F_c + F_v^j")
    guidance: Literal["none", "upsampled", "visual", "both"] = "visual"
    visual_scales: list[int] = field(default_factory=lambda: [2, 3, 4])  # stages j that get F_v^j
    # standardise the embedded F_v^j before fusion: across the K classes per pixel ("class"), BatchNorm ("batch"),
    # or not ("none"); raw stage-feature cosines barely vary across classes (docs/paper-choices.md #7). "class" was
    # chosen on seen-class validation scenes of the synthetic world with its stride-32 tower (docs/method-study.md
    # section 2); with the stride-16 tower the same test prefers "none", which the synthetic preset sets (2b)
    visual_cost_norm: Literal["none", "class", "batch"] = "class"
    decoder_dims: list[int] = field(default_factory=lambda: [64, 32, 16])
    encoder_guidance_dims: list[int] = field(default_factory=lambda: [32, 16, 8])  # projected E_4, E_3, E_2
    cost_guidance_dims: list[int] = field(default_factory=lambda: [32, 16, 8])  # embedded F_v^j or upsampled F_c
    attention_heads: int = 4
    mlp_ratio: int = 4
    class_pool_train: int = 2  # avg-pool of class-attention tokens while training (SED/CAT-Seg: 2)
    class_pool_test: int = 1
    detach_guidance: bool = True  # stage features reach the decoder without gradient (as SED)
    # --- decoder variants: DPSeg's own blocks, or SED's (presets sed-b / sed-l run SED's released checkpoints) ---
    # per-class spatial aggregation: hybrid dilated convs (DPSeg) or SED's ConvNeXt block (depthwise spatial_kernel)
    spatial_aggregation: Literal["hdconv", "convnext"] = "hdconv"
    spatial_kernel: int = 9  # depthwise kernel of the convnext spatial aggregation (SED: 9)
    # attention across classes: DPSeg's layer, or SED's with its quirks (no output projection, ReLU MLP, floor
    # pooling, align_corners unpooling, the input added twice)
    class_aggregation: Literal["dpseg", "sed"] = "dpseg"
    # SED's auxiliary heads: a 3x3 head on the (detached) class maps entering each decoder stage; the training loss
    # adds their BCE, and eval.early_rejection_topk ranks classes by them
    aux_heads: bool = False
    # --- memory ---
    grad_checkpointing: bool = False


@dataclass
class PromptsConfig:
    """Text templates and the visual-prompt bank (docs/paper-choices.md #1-#4)."""

    templates: str = "imagenet80"  # template set name or a text file with one template per line ("{}" = class)
    num_templates: int = 0  # M: use the first M templates (0 = all)
    bank: str = ""  # prompt bank directory (``dpseg prompts build``)
    generator: str = "runwayml/stable-diffusion-v1-5"  # diffusers pipeline directory or hub id
    scheduler: Literal["dpm++", "ddim", "euler", "default"] = "dpm++"
    steps: int = 25
    guidance_scale: float = 7.5
    resolution: int = 512
    seed: int = 0
    images_per_class: int = 0  # 0 = one image per (class, template) as the paper; N > 0 shares N images
    keep_images: bool = False
    batch_size: int = 8
    negative_prompt: str = ""  # generator negative prompt ("" = none, as the paper notes imply)
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # generator weights; auto = fp16 on CUDA, fp32 on CPU
    safety_checker: bool = False  # SD's NSFW filter blacks out flagged images, which would poison the prompts


@dataclass
class DataConfig:
    """Training data and augmentation (SED recipe; docs/paper-choices.md, Training recipe)."""

    root: str = ""  # dataset root; "" = $DETECTRON2_DATASETS or ./datasets
    train_dataset: str = "coco_stuff_171_train"
    val_dataset: str = "coco_stuff_171_val"
    crop_size: int = 768
    resize_short: int = 768
    resize_max: int = 2666
    cat_max_ratio: float = 1.0
    color_jitter: bool = True
    flip: bool = True
    pad_value: int = 128  # image fill when a crop is padded up to crop_size (labels are padded with ignore)
    num_workers: int = 4


@dataclass
class TrainConfig:
    """Optimisation."""

    output_dir: str = "runs/dpseg"
    iterations: int = 80000
    batch_size: int = 4  # global batch, split over ranks
    lr: float = 2e-4
    weight_decay: float = 1e-4
    encoder_lr_mult: float = 0.01  # the paper's alpha = 0.01
    grad_clip: float = 0.01  # full-model L2 norm, as SED (0 = off)
    warmup_iters: int = 0
    loss_ignore: Literal["negative", "mask"] = "negative"
    # 0 = every training class is decoded and scored at every step (the paper). N > 0 = only the classes present in
    # the batch plus random absent ones up to N: the decoder's cost is linear in the classes, so a step is ~K/N
    # times cheaper (the synthetic preset uses it to train on a CPU in minutes).
    classes_per_step: int = 0
    # which absent classes fill a step up to classes_per_step: "uniform" (at random) or "similar" (drawn without
    # replacement with weights exp(s / negatives_temperature), s = the cosine similarity of the class's prompt R to the
    # closest present class's: confusable classes are negatives far more often)
    negatives: Literal["uniform", "similar"] = "uniform"
    negatives_temperature: float = 0.05
    # auto = bf16 autocast on a CUDA GPU that supports it, else fp32; fp16 = autocast + loss scaling (V100-class GPUs)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    # start a new run from the weights of another checkpoint folder (e.g. 'dpseg convert sed'): every trainable
    # parameter whose name and shape match is loaded, the rest keep their fresh init; frozen towers always come from
    # model.clip_pretrained. Not a resume (that is --resume: optimizer, step, data position).
    init_from: str = ""
    device: str = "auto"  # auto = this rank's GPU if CUDA is available, else CPU; or cpu / cuda
    tensorboard: bool = True  # also write TensorBoard events (the JSONL/CSV logs are always written)
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    eval_every: int = 10000
    eval_max_images: int = 0  # 0 = whole validation split


@dataclass
class EvalConfig:
    """Test-time protocol (docs/paper-choices.md, Evaluation protocol)."""

    datasets: list[str] = field(default_factory=lambda: ["a847", "pc459", "a150", "pc59", "voc20"])
    protocol: Literal["whole", "slide"] = "whole"  # SED: whole image at input_size; CAT-Seg: sliding window
    short_side: int = 640
    max_side: int = 2560  # cap on the long side after the short-side resize (detectron2 test mapper)
    input_size: int = 768
    slide_window: int = 384
    slide_overlap: float = 0.333
    two_pass: bool = True  # report pass 1 and pass 2 (semantic-guided prompt refinement)
    # --- two-pass inference: semantic-guided prompt refinement; policy, not architecture ---
    # a pixel counts for its best class only if that class's probability >= this (0.3: the best of 12 settings on
    # seen-class validation scenes of the synthetic world, all within seed noise; docs/method-study.md section 3)
    refine_min_score: float = 0.3
    refine_min_area: float = 0.001  # a class is "detected" if it holds at least this fraction of the pass-1 map
    refine_max_classes: int = 0  # refine at most this many detected classes per image, largest first (0 = all)
    # pass 2 re-decodes all K classes (the paper) or only those detected in pass 1 ("present": the others keep their
    # pass-1 logits; much faster at large K)
    refine_scope: Literal["all", "present"] = "all"
    # 1 = a detected class's crop replaces its generated visual prompts (the paper); < 1 blends weight * crop +
    # (1 - weight) * generated prompt
    refine_crop_weight: float = 1.0
    # how a detected class's crop is framed (docs/paper-choices.md #18): "context" = the square frame around its
    # pixels at the generated objects' 70 % fill, surroundings kept; "tight" = the frame around its pixels at 100 %,
    # surroundings kept; "masked" = the 70 % frame with every pixel outside the class's pixels at the CLIP mean colour
    refine_framing: Literal["context", "tight", "masked"] = "masked"
    # which visual prompts the crop replaces: the global V and the pooled stage features v_j ("both", the paper),
    # only V ("global") or only v_j ("stages")
    refine_replace: Literal["both", "global", "stages"] = "both"
    class_chunk: int = 128  # classes decoded at a time (0 = all at once): bounds memory, same result
    # SED's category early rejection (SED-fast: 8): after each auxiliary head only the classes among the top k at
    # some pixel of the batch stay in the decoder; the others get probability 0. 0 = off. Needs model.aux_heads.
    early_rejection_topk: int = 0
    batch_size: int = 1
    max_images: int = 0  # 0 = all
    num_workers: int = 2  # image-loading processes per rank
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    # --- what `dpseg segment`, Segmenter and the demo leave unlabelled (dpseg.evaluation.calibrate) ---
    # pixels whose best class probability is below this stay unlabelled; chosen on the validation split when
    # training ends, or by `dpseg calibrate`; 0 = every pixel gets a class (also what configs without it get)
    min_score: float = 0.0
    # the vocabulary has a background / "other" class, so every pixel belongs to a class (true: min_score stays 0);
    # false: the labels' ignore pixels are "no class" and should stay unlabelled; null: decided at calibration
    background_class: Optional[bool] = None


@dataclass
class Config:
    preset: str = "dpseg-b"
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
