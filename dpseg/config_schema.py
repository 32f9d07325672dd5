"""The configuration schema: one typed dataclass per section (``model``, ``prompts``, ``data``, ``train``, ``eval``).

The defaults are the paper's ConvNeXt-B recipe (preset ``dpseg-b``). Loading, presets, ``--set`` overrides, type
checking and validation live in :mod:`dpseg.config`, which re-exports these classes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, Literal, Optional

INT_LIMIT = 2**31 - 1  # every int key is within +-INT_LIMIT unless its rule says otherwise (tensor sizes, counts)


@dataclass(frozen=True)
class NumberRule:
    """What a numeric key (or every element of a numeric list key) accepts. Every float must be finite unless
    ``nonfinite``; every int is within +-``INT_LIMIT`` unless ``ge``/``le`` say otherwise. Enforced for every key by
    :func:`dpseg.config.check_numbers`; put a rule on a new key with :func:`num`."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    multiple_of: Optional[int] = None
    nonfinite: bool = False

    def describe(self, integer: bool) -> str:
        """'a finite number in (0, 1]', 'an integer >= 0', ... (what the error message says is allowed)."""
        kind = "an integer" if integer else ("a number" if self.nonfinite else "a finite number")
        lo, lo_open = (self.ge, False) if self.ge is not None else (self.gt, True)
        hi, hi_open = (self.le, False) if self.le is not None else (self.lt, True)
        if integer and hi is None and (lo is None or lo > -INT_LIMIT):
            hi, hi_open = INT_LIMIT, False
        if lo is not None and hi is not None:
            bounds = f" in {'(' if lo_open else '['}{_bound(lo)}, {_bound(hi)}{')' if hi_open else ']'}"
        elif lo is not None:
            bounds = f" {'>' if lo_open else '>='} {_bound(lo)}"
        elif hi is not None:
            bounds = f" {'<' if hi_open else '<='} {_bound(hi)}"
        else:
            bounds = ""
        step = f", a multiple of {self.multiple_of}" if self.multiple_of else ""
        return f"{kind}{bounds}{step}"

    def accepts(self, value: Any) -> bool:
        integer = isinstance(value, int) and not isinstance(value, bool)
        if not integer and not (self.nonfinite or math.isfinite(value)):
            return False
        if integer and self.le is None and self.lt is None and value > INT_LIMIT:
            return False
        if integer and self.ge is None and self.gt is None and value < -INT_LIMIT:
            return False
        if math.isnan(value):  # allowed only with nonfinite=True, and then no bound applies
            return True
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
            and (not self.multiple_of or value % self.multiple_of == 0)
        )


def num(
    default: Any = MISSING,
    *,
    factory: Optional[Callable[[], Any]] = None,
    ge: Optional[float] = None,
    gt: Optional[float] = None,
    le: Optional[float] = None,
    lt: Optional[float] = None,
    multiple_of: Optional[int] = None,
    nonfinite: bool = False,
) -> Any:
    """A numeric field with its rule (a list field: the rule holds for every element); e.g. ``lr: float =
    num(2e-4, gt=0)``. A key without a rule still gets the generic one (finite floats, bounded ints)."""
    meta = {"number": NumberRule(ge, gt, le, lt, multiple_of, nonfinite)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


GENERIC_RULE = NumberRule()


def _bound(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e20 else f"{x:g}"


@dataclass
class ModelConfig:
    """Network architecture and the CLIP towers it is built on (docs/paper-choices.md for guessed details)."""

    # --- CLIP towers (open_clip) ---
    clip_model: str = "convnext_base_w_320"  # OpenCLIP model name (its model config ships with open_clip)
    clip_model_cfg: dict = field(default_factory=dict)  # inline OpenCLIP model config; overrides clip_model
    # OpenCLIP pretrained tag, a local .pt/.bin/.safetensors file in OpenCLIP layout, or "" for random init.
    clip_pretrained: str = "laion_aesthetic_s13b_b82k"
    # visual prompts (generated images, crops) are encoded at this size
    prompt_image_size: int = num(320, ge=1, le=8192)
    # --- dual-prompt cost volume (§4.3-4.4) ---
    prompt_type: Literal["text", "visual", "dual"] = "dual"
    # the share of a class's generated prompt images kept: those whose embedding agrees best with the class's text
    # (cosine with its mean text embedding, a CLIP-score filter); the others' visual prompts are replaced by the mean
    # of the kept ones. 1 = every image (the paper). Bank images only, never exemplars or refinement crops
    visual_prompt_keep: float = num(1.0, gt=0, le=1)
    cost_embed_dim: int = num(128, ge=1, le=65536)
    cost_embed_kernel: int = num(7, ge=1, le=255)
    # --- cost-volume-guided decoder (§4.5) ---
    # what guides the decoder stages: nothing, SED's upsampled F_c, the visual cost volumes F_v^j (the paper: they
    # take the upsampled F_c's place), or both side by side (the paper's Table 3 rows "F_c + F_v^j")
    guidance: Literal["none", "upsampled", "visual", "both"] = "visual"
    visual_scales: list[int] = num(factory=lambda: [2, 3, 4], ge=2, le=4)  # stages j that get F_v^j
    # standardise the embedded F_v^j before fusion: across the K classes per pixel ("class"), BatchNorm ("batch"),
    # or not ("none"); raw stage-feature cosines barely vary across classes (docs/paper-choices.md #7). "class" was
    # chosen on seen-class validation scenes of the synthetic world with its stride-32 tower (docs/method-study.md
    # section 2); with the stride-16 tower the same test prefers "none", which the synthetic preset sets (2b)
    visual_cost_norm: Literal["none", "class", "batch"] = "class"
    decoder_dims: list[int] = num(factory=lambda: [64, 32, 16], ge=1, le=65536)
    encoder_guidance_dims: list[int] = num(factory=lambda: [32, 16, 8], ge=0, le=65536)  # projected E_4, E_3, E_2
    cost_guidance_dims: list[int] = num(factory=lambda: [32, 16, 8], ge=0, le=65536)  # embedded F_v^j or upsampled F_c
    attention_heads: int = num(4, ge=1, le=1024)
    mlp_ratio: int = num(4, ge=1, le=64)
    class_pool_train: int = num(2, ge=1, le=1024)  # avg-pool of class-attention tokens while training (SED/CAT-Seg: 2)
    class_pool_test: int = num(1, ge=1, le=1024)
    detach_guidance: bool = True  # stage features reach the decoder without gradient (as SED)
    # --- decoder variants: DPSeg's own blocks, or SED's (presets sed-b / sed-l run SED's released checkpoints) ---
    # per-class spatial aggregation: hybrid dilated convs (DPSeg) or SED's ConvNeXt block (depthwise spatial_kernel)
    spatial_aggregation: Literal["hdconv", "convnext"] = "hdconv"
    spatial_kernel: int = num(9, ge=1, le=255)  # depthwise kernel of the convnext spatial aggregation (SED: 9)
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
    num_templates: int = num(0, ge=0)  # M: use the first M templates (0 = all)
    bank: str = ""  # prompt bank directory (``dpseg prompts build``)
    generator: str = "runwayml/stable-diffusion-v1-5"  # diffusers pipeline directory or hub id
    scheduler: Literal["dpm++", "ddim", "euler", "default"] = "dpm++"
    steps: int = num(25, ge=1, le=10000)
    guidance_scale: float = num(7.5, ge=0)
    resolution: int = num(512, ge=8, le=8192)
    seed: int = num(0, ge=0, le=2**63 - 1)
    # 0 = one image per (class, template) as the paper; N > 0 shares N images
    images_per_class: int = num(0, ge=0, le=100000)
    keep_images: bool = False
    batch_size: int = num(8, ge=1, le=65536)
    negative_prompt: str = ""  # generator negative prompt ("" = none, as the paper notes imply)
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # generator weights; auto = fp16 on CUDA, fp32 on CPU
    safety_checker: bool = False  # SD's NSFW filter blacks out flagged images, which would poison the prompts


@dataclass
class DataConfig:
    """Training data and augmentation (SED recipe; docs/paper-choices.md, Training recipe)."""

    root: str = ""  # dataset root; "" = $DETECTRON2_DATASETS or ./datasets
    train_dataset: str = "coco_stuff_171_train"
    val_dataset: str = "coco_stuff_171_val"
    crop_size: int = num(768, ge=32, le=16384)
    resize_short: int = num(768, ge=1, le=65536)
    resize_max: int = num(2666, ge=1, le=65536)
    cat_max_ratio: float = num(1.0, gt=0, le=1)
    color_jitter: bool = True
    flip: bool = True
    # image fill when a crop is padded up to crop_size (labels are padded with ignore)
    pad_value: int = num(128, ge=0, le=255)
    num_workers: int = num(4, ge=0, le=1024)


@dataclass
class TrainConfig:
    """Optimisation."""

    output_dir: str = "runs/dpseg"
    iterations: int = num(80000, ge=1)
    batch_size: int = num(4, ge=1, le=65536)  # global batch, split over ranks
    lr: float = num(2e-4, gt=0)
    weight_decay: float = num(1e-4, ge=0)
    encoder_lr_mult: float = num(0.01, ge=0)  # the paper's alpha = 0.01
    grad_clip: float = num(0.01, ge=0)  # full-model L2 norm, as SED (0 = off)
    warmup_iters: int = num(0, ge=0)
    loss_ignore: Literal["negative", "mask"] = "negative"
    # 0 = every training class is decoded and scored at every step (the paper). N > 0 = only the classes present in
    # the batch plus random absent ones up to N: the decoder's cost is linear in the classes, so a step is ~K/N
    # times cheaper (the synthetic preset uses it to train on a CPU in minutes).
    classes_per_step: int = num(0, ge=0)
    # which absent classes fill a step up to classes_per_step: "uniform" (at random) or "similar" (drawn without
    # replacement with weights exp(s / negatives_temperature), s = the cosine similarity of the class's prompt R to the
    # closest present class's: confusable classes are negatives far more often)
    negatives: Literal["uniform", "similar"] = "uniform"
    negatives_temperature: float = num(0.05, gt=0)
    # auto = bf16 autocast on a CUDA GPU that supports it, else fp32; fp16 = autocast + loss scaling (V100-class GPUs)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    # start a new run from the weights of another checkpoint folder (e.g. 'dpseg convert sed'): every trainable
    # parameter whose name and shape match is loaded, the rest keep their fresh init; frozen towers always come from
    # model.clip_pretrained. Not a resume (that is --resume: optimizer, step, data position).
    init_from: str = ""
    device: str = "auto"  # auto = this rank's GPU if CUDA is available, else CPU; or cpu / cuda
    tensorboard: bool = True  # also write TensorBoard events (the JSONL/CSV logs are always written)
    seed: int = num(0, ge=0, le=2**63 - 1)
    log_every: int = num(20, ge=1)
    checkpoint_every: int = num(5000, ge=0)  # 0 = only at the end
    keep_checkpoints: int = num(3, ge=0)  # 0 = keep all
    eval_every: int = num(10000, ge=0)  # 0 = no evaluation while training
    eval_max_images: int = num(0, ge=0)  # 0 = whole validation split


@dataclass
class EvalConfig:
    """Test-time protocol (docs/paper-choices.md, Evaluation protocol)."""

    datasets: list[str] = field(default_factory=lambda: ["a847", "pc459", "a150", "pc59", "voc20"])
    protocol: Literal["whole", "slide"] = "whole"  # SED: whole image at input_size; CAT-Seg: sliding window
    short_side: int = num(640, ge=1, le=65536)
    # cap on the long side after the short-side resize (detectron2 test mapper)
    max_side: int = num(2560, ge=0, le=65536)
    input_size: int = num(768, ge=32, le=16384, multiple_of=32)
    slide_window: int = num(384, ge=1, le=65536)
    slide_overlap: float = num(0.333, ge=0, lt=1)
    two_pass: bool = True  # report pass 1 and pass 2 (semantic-guided prompt refinement)
    # --- two-pass inference: semantic-guided prompt refinement; policy, not architecture ---
    # a pixel counts for its best class only if that class's probability >= this (0.3: the best of 12 settings on
    # seen-class validation scenes of the synthetic world, all within seed noise; docs/method-study.md section 3)
    refine_min_score: float = num(0.3, ge=0, lt=1)
    # a class is "detected" if it holds at least this fraction of the pass-1 map
    refine_min_area: float = num(0.001, ge=0, lt=1)
    # refine at most this many detected classes per image, largest first (0 = all)
    refine_max_classes: int = num(0, ge=0)
    # pass 2 re-decodes all K classes (the paper) or only those detected in pass 1 ("present": the others keep their
    # pass-1 logits; much faster at large K)
    refine_scope: Literal["all", "present"] = "all"
    # 1 = a detected class's crop replaces its generated visual prompts (the paper); < 1 blends weight * crop +
    # (1 - weight) * generated prompt
    refine_crop_weight: float = num(1.0, gt=0, le=1)
    # how a detected class's crop is framed (docs/paper-choices.md #18): "context" = the square frame around its
    # pixels at the generated objects' 70 % fill, surroundings kept; "tight" = the frame around its pixels at 100 %,
    # surroundings kept; "masked" = the 70 % frame with every pixel outside the class's pixels at the CLIP mean colour
    refine_framing: Literal["context", "tight", "masked"] = "masked"
    # which visual prompts the crop replaces: the global V and the pooled stage features v_j ("both", the paper),
    # only V ("global") or only v_j ("stages")
    refine_replace: Literal["both", "global", "stages"] = "both"
    # where a detected class's new visual prompts come from: "crops" = its framed crop through the frozen prompt
    # encoder (the paper); "pooled" = its pass-1 image features pooled over its pixels (no encoder run: faster, an
    # approximation; its accuracy cost is in BENCHMARKS.md). "pooled" ignores refine_framing
    refine_source: Literal["crops", "pooled"] = "crops"
    class_chunk: int = num(128, ge=0)  # classes decoded at a time (0 = all at once): bounds memory, same result
    # SED's category early rejection (SED-fast: 8): after each auxiliary head only the classes among the top k at
    # some pixel of the batch stay in the decoder; the others get probability 0. 0 = off. Needs model.aux_heads.
    early_rejection_topk: int = num(0, ge=0)
    # the first decoder stage whose auxiliary head rejects (SED: 0, its head on the raw cost embedding); 1 or 2 keep
    # every class through the stages before (slower, safer when the first head ranks classes badly: BENCHMARKS.md)
    early_rejection_from: int = num(0, ge=0, le=2)
    # what ranks the classes at stage 0: "heads" = its auxiliary head (SED); "cost" = the dual-prompt cost volume's
    # mean similarity over the templates (comparable across classes; BENCHMARKS.md measures both)
    early_rejection_rank: Literal["heads", "cost"] = "heads"  # RANKS
    batch_size: int = num(1, ge=1, le=65536)
    max_images: int = num(0, ge=0)  # 0 = all
    num_workers: int = num(2, ge=0, le=1024)  # image-loading processes per rank
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    # --- what `dpseg segment`, Segmenter and the demo leave unlabelled (dpseg.evaluation.calibrate) ---
    # pixels whose best class probability is below this stay unlabelled; chosen on the validation split when
    # training ends, or by `dpseg calibrate`; 0 = every pixel gets a class (also what configs without it get)
    min_score: float = num(0.0, ge=0, lt=1)
    # the vocabulary has a background / "other" class, so every pixel belongs to a class (true: min_score stays 0);
    # false: the labels' ignore pixels are "no class" and should stay unlabelled; null: decided at calibration
    background_class: Optional[bool] = None


# what ranks the classes at stage 0: its auxiliary head (SED), or the dual-prompt cost volume's mean similarity over
# the templates ("cost": every class's score is comparable with the others', which a per-class head's need not be)
RANKS = ("heads", "cost")


@dataclass(frozen=True)
class EarlyRejection:
    """``topk`` = k > 0 turns early rejection on: the auxiliary heads of the decoder stages ``first_stage`` (SED: 0)
    and after reject every class outside their k best at all pixels; ``rank="cost"`` ranks the classes by the
    dual-prompt cost volume before stage 0 instead of by stage 0's head after it. ``topk`` = 0: off."""

    topk: int = 0
    first_stage: int = 0
    rank: str = "heads"

    @classmethod
    def of(cls, settings: Any) -> EarlyRejection:
        """The early rejection an ``eval`` config (or inference settings) asks for: its ``early_rejection_*`` keys."""
        return cls(settings.early_rejection_topk, settings.early_rejection_from, settings.early_rejection_rank)

    @property
    def ranks_by_cost(self) -> bool:
        """Whether the first rejection happens before stage 0, by the cost volume."""
        return self.topk > 0 and self.first_stage == 0 and self.rank == "cost"

    def rejects_after(self, stage: int) -> bool:
        """Whether the auxiliary head of decoder stage ``stage`` rejects classes (a cost-volume ranking rejects
        before stage 0 instead)."""
        return self.topk > 0 and stage >= self.first_stage and not (stage == 0 and self.ranks_by_cost)

    def problem(self, num_stages: int = 3) -> Optional[str]:
        """Why these settings cannot run on a decoder of ``num_stages`` stages, or would silently do nothing (one
        line naming the ``eval`` keys and the fix), else None."""
        if self.topk < 0:
            return f"eval.early_rejection_topk is the number of classes kept per pixel, not {self.topk}; use k >= 0"
        if not 0 <= self.first_stage < num_stages:
            return (
                f"eval.early_rejection_from starts early rejection after one of the decoder stages "
                f"0-{num_stages - 1}, not {self.first_stage}; set eval.early_rejection_from to one of them"
            )
        if self.rank not in RANKS:
            return (
                f"eval.early_rejection_rank ranks stage 0's classes by one of {', '.join(RANKS)}, not "
                f"{self.rank!r}; set eval.early_rejection_rank to one of them"
            )
        unused = [f"eval.early_rejection_from ({self.first_stage})"] if self.first_stage else []
        unused += [f"eval.early_rejection_rank ({self.rank!r})"] if self.rank != "heads" else []
        if unused and not self.topk:
            return (
                f"{' and '.join(unused)} {'choose' if len(unused) > 1 else 'chooses'} how early rejection works, but "
                "it is off (eval.early_rejection_topk=0); set eval.early_rejection_topk=k or leave "
                f"{'them' if len(unused) > 1 else 'it'} at the default (0, 'heads')"
            )
        if self.rank == "cost" and self.first_stage:
            return (
                f"eval.early_rejection_rank='cost' ranks the classes before stage 0, but "
                f"eval.early_rejection_from={self.first_stage} starts rejection after stage {self.first_stage}; "
                "use one of the two"
            )
        return None

    def decode_options(self) -> dict:
        """The keyword arguments of ``DPSeg.decode`` / ``forward`` (none when off, so models whose ``decode``
        predates the options still work)."""
        if not self.topk:
            return {}
        options: dict = {"early_rejection_topk": self.topk}
        if self.first_stage:
            options["early_rejection_from"] = self.first_stage
        if self.rank != "heads":
            options["early_rejection_rank"] = self.rank
        return options


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
