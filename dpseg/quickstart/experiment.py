"""One DPSeg run of the quickstart experiment: train a variant on the seen classes, evaluate it zero-shot.

Everything goes through the real code paths: :func:`dpseg.engine.train.train` (the training engine, with the
custom-dataset folder ``seen`` and the prompt bank), :func:`dpseg.checkpoint.load_model` (the exported model) and
:func:`dpseg.evaluation.evaluator.evaluate` (the evaluator, pass 1 and pass 2). Variants differ only in config
switches: the prompts the cost volume is built from, and the decoder's guidance.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch

from dpseg.atomic import atomic_write_text
from dpseg.checkpoint import load_model
from dpseg.clip_loading import build_towers
from dpseg.config import Config
from dpseg.config_schema import EvalConfig
from dpseg.data.catalog import build_dataset
from dpseg.data.synthetic.folders import WorldDatasets
from dpseg.engine import training_code
from dpseg.engine.train import train
from dpseg.errors import DataError, DPSegError
from dpseg.evaluation.calibrate import calibrate_checkpoint, read_calibration, update_eval_config
from dpseg.evaluation.evaluator import evaluate
from dpseg.evaluation.inference import REFINEMENT_KEYS, Inference
from dpseg.evaluation.metrics import ConfusionMatrix, metrics_from_confusion
from dpseg.fingerprint import code_fingerprint
from dpseg.prompts.bank import PromptBank
from dpseg.prompts.builder import build_bank
from dpseg.prompts.generate import get_generator
from dpseg.prompts.manifest import make_key
from dpseg.prompts.resolve import vocabulary_prompts
from dpseg.prompts.templates import get_templates
from dpseg.safe_load import read_json
from dpseg.weights import file_sha256


@dataclass(frozen=True)
class Variant:
    name: str
    prompt_type: Literal["text", "visual", "dual"]  # what R = the cost volume's class embedding is made of
    guidance: Literal["none", "upsampled", "visual", "both"]  # visual (F_v^j, DPSeg) | upsampled (the initial F_c, SED)
    title: str

    @property
    def uses_bank(self) -> bool:
        return self.prompt_type != "text" or self.guidance in ("visual", "both")

    @property
    def two_pass(self) -> bool:
        return self.uses_bank  # refinement replaces visual prompts: a model without any has no pass 2


VARIANTS = {
    v.name: v
    for v in (
        # the paper's factors: the prompts of F_c = cos(E, R) (Table 2a) x the decoder's guidance (Table 3)
        Variant("text", "text", "upsampled", "text prompts, upsampled F_c (SED-like baseline)"),
        Variant("text-fv", "text", "visual", "text prompts, visual cost volumes F_v"),
        Variant("text-both", "text", "both", "text prompts, F_v beside the upsampled F_c"),
        Variant("visual-fc", "visual", "upsampled", "visual prompts, upsampled F_c"),
        Variant("visual", "visual", "visual", "visual prompts, visual cost volumes F_v"),
        Variant("visual-both", "visual", "both", "visual prompts, F_v beside the upsampled F_c"),
        Variant("dual-upsampled", "dual", "upsampled", "dual prompts, upsampled F_c instead of F_v"),
        Variant("dual", "dual", "visual", "dual prompts, visual cost volumes F_v (DPSeg)"),
        Variant("dual-both", "dual", "both", "dual prompts, F_v beside the upsampled F_c"),
    )
}
# single-factor comparisons: (claim, A, B) - A and B differ in one factor only
CLAIMS = (
    ("dual prompts >= text prompts (guidance F_v)", "dual", "text-fv"),
    ("dual prompts >= visual prompts (guidance F_v)", "dual", "visual"),
    ("visual prompts >= text prompts (guidance F_v)", "visual", "text-fv"),
    ("dual prompts >= text prompts (guidance upsampled F_c)", "dual-upsampled", "text"),
    ("F_v in place of the upsampled F_c (dual prompts)", "dual", "dual-upsampled"),
    ("F_v beside the upsampled F_c >= the upsampled F_c alone (dual prompts)", "dual-both", "dual-upsampled"),
)


def run_config(
    base: Config, variant: Variant, seed: int, datasets: WorldDatasets, bank: Path, out_root: Path
) -> Config:
    """The training config of one (variant, seed); its output folder is keyed by everything that shapes the run."""
    cfg = copy.deepcopy(base)
    cfg.model.prompt_type, cfg.model.guidance = variant.prompt_type, variant.guidance
    cfg.prompts.bank = str(bank) if variant.uses_bank else ""
    cfg.data.train_dataset = str(datasets.seen)
    cfg.train.seed = seed
    cfg.train.eval_every = 0
    cfg.train.checkpoint_every = 0  # one checkpoint, at the end
    cfg.train.keep_checkpoints = 1
    blob = json.dumps(run_identity(cfg.to_dict()), sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:10]
    cfg.train.output_dir = str(out_root / f"{variant.name}-seed{seed}-{key}")
    return cfg


EVAL_CACHE = "quickstart_eval.json"  # a run folder's evaluation results, keyed (dpseg.quickstart.run)
SECTIONS = ("model", "data", "prompts", "train")  # the config sections that hold a run's paths


def keyed_folder(path: str | Path) -> str:
    """A dataset folder named by its key and vocabulary (``synthetic-<key>/seen``), wherever the cache lies."""
    return "/".join(Path(path).parts[-2:])


def run_identity(config: dict) -> dict:
    """What makes a run the run it is: its training config without ``eval``, and with its three paths replaced by
    what identifies their content, so that a run is reused from another checkout or a moved cache. The CLIP weights
    by their SHA-256; the dataset folder (``synthetic-<key>/<vocabulary>``) and the bank (``bank-<key>``) by their
    names, which are keys of what produced them."""
    out = copy.deepcopy({k: v for k, v in config.items() if k != "eval"})
    sections: list[dict] = [out[k] if isinstance(out.get(k), dict) else {} for k in SECTIONS]
    model, data, prompts, training = sections
    clip = model.get("clip_pretrained")
    if isinstance(clip, str) and clip and Path(clip).is_file():
        model["clip_pretrained"] = "sha256:" + file_sha256(clip)
    if isinstance(data.get("train_dataset"), str) and data["train_dataset"]:
        data["train_dataset"] = keyed_folder(data["train_dataset"])
    if isinstance(prompts.get("bank"), str) and prompts["bank"]:
        prompts["bank"] = Path(prompts["bank"]).name
    training.pop("output_dir", None)  # named after the key itself
    return out


def is_trained(cfg: Config) -> bool:
    """Whether the run of ``cfg`` has exported its final model with exactly this training config, trained by this
    code (the ``training_code`` fingerprint in its metadata: a run that other code trained is trained again).

    The ``eval`` section (inference settings, and the threshold calibration writes) is not part of a run: like the
    run's folder key it is left out, and :func:`evaluate_model` takes it from the experiment."""
    final = Path(cfg.train.output_dir) / "final"
    if not ((final / "model.safetensors").is_file() and (final / "config.json").is_file()):
        return False
    try:
        saved = read_json(final / "config.json", "checkpoint config", dict)
    except DPSegError:  # unreadable: trained again
        return False
    meta = saved.pop("dpseg", None)  # save_model's metadata
    made_here = isinstance(meta, dict) and meta.get("training_code") == training_code()
    return made_here and run_identity(saved) == run_identity(cfg.to_dict())


def adopt_inference_settings(model_dir: Path, inference: EvalConfig) -> bool:
    """Write the experiment's refinement settings into the model folder's ``config.json`` (atomically, weights
    untouched), so that ``dpseg segment`` and the demo refine as the quickstart's table did. True if it changed."""
    return update_eval_config(model_dir, {k: getattr(inference, k) for k in REFINEMENT_KEYS})


def calibrate_run(model_dir: Path, folder: Path, max_images: int = 0, inference: Optional[EvalConfig] = None) -> float:
    """The run's default score threshold (``eval.min_score``: what ``dpseg segment`` and the demo leave unlabelled),
    chosen on the validation split of ``folder`` (the seen classes) by the public calibration
    (:func:`dpseg.evaluation.calibrate.calibrate_checkpoint`); reused when already chosen on that split with the same
    refinement settings. ``inference``: the experiment's eval section, whose refinement settings the folder adopts
    first (the threshold is chosen on the map that ``segment`` makes, pass 2 included)."""
    changed = inference is not None and adopt_inference_settings(model_dir, inference)
    done = read_calibration(model_dir)
    if not changed and done and done.get("dataset") == str(folder) and done.get("num_images") == max_images:
        return float(done["min_score"])
    return calibrate_checkpoint(model_dir, str(folder), device="cpu", max_images=max_images, progress=False).min_score


# a run folder's record of the code that trains in it, and what that code wrote there (discarded when it differs)
CODE_STAMP = "training_code.txt"
RUN_PRODUCTS = ("final", "best", "checkpoints", "log.jsonl", "log.csv", "tensorboard", EVAL_CACHE)


def trained_model_dir(cfg: Config, log: Callable[[str], None] = print) -> Path:
    """Train (or reuse) the run of ``cfg``; returns its exported model folder. A run folder that other code began or
    finished (:data:`CODE_STAMP`) is emptied first: neither its model nor its checkpoints are this code's."""
    run_dir = Path(cfg.train.output_dir)
    if is_trained(cfg):
        log(f"reusing {run_dir / 'final'}")
        return run_dir / "final"
    stamp = run_dir / CODE_STAMP
    made_by = stamp.read_text().strip() if stamp.is_file() else "not recorded"
    other_code = made_by != training_code() and any((run_dir / name).exists() for name in RUN_PRODUCTS)
    if other_code or (run_dir / "final").exists():  # a final model that is_trained refused is no model to finish
        why = (
            f"other code made it (training code {made_by}, now {training_code()})"
            if other_code
            else "its model is not this run's"
        )
        log(f"discarding what {run_dir} holds: {why}")
        for path in (run_dir / name for name in RUN_PRODUCTS):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    atomic_write_text(stamp, training_code() + "\n")  # before training: an interrupted run's checkpoints are its
    result = train(cfg, resume="auto", progress=False)
    return Path(result["final"])


def _prompts(cfg: Config, model, names: list[str]):
    return vocabulary_prompts(cfg, model, names, torch.device("cpu"), f"{len(names)} synthetic classes")


def evaluate_model(
    model_dir: Path,
    splits: dict[str, Path],
    variant: Variant,
    max_images: int = 0,
    eval_cfg: Optional[EvalConfig] = None,
    split: str = "val",
) -> dict:
    """{split name: {"pass1": metrics[, "pass2": metrics]}} with the real evaluator, on split ``split`` of each folder.

    Each split is scored with its own vocabulary. ``eval_cfg`` (the experiment's inference settings) replaces the
    checkpoint's own ``eval`` section: a trained run is reused across changes of inference settings (its key leaves
    ``eval`` out), and calibration writes a score threshold into the demo run's checkpoint that the other seeds'
    checkpoints do not have.
    """
    model, cfg = load_model(model_dir, device="cpu")
    model.eval()
    if eval_cfg is not None:
        cfg.eval = eval_cfg
    out = {}
    for name, folder in splits.items():
        dataset = build_dataset(str(folder), split=split)
        prompts = _prompts(cfg, model, list(dataset.class_names))
        inference = Inference(model, prompts, cfg.eval, two_pass=variant.two_pass, device="cpu")
        res = evaluate(inference, dataset, max_images=max_images or None, progress=False)
        out[name] = {k: res[k] for k in ("pass1", "pass2") if k in res}
    return out


def chance_miou(folder: Path, max_images: int = 0, split: str = "val") -> float:
    """Expected mIoU (%) of a predictor that labels every pixel with a uniformly random class of the vocabulary.

    With n_c ground-truth pixels of class c, N in all and K classes, its expected confusion row is n_c / K for
    every class, so IoU_c = (n_c / K) / (n_c + N / K - n_c / K); the mean runs over classes present in the GT,
    as the evaluator's does.
    """
    dataset = build_dataset(str(folder), split=split)
    k = len(dataset.class_names)
    counts = np.zeros(k)
    n = len(dataset) if not max_images else min(max_images, len(dataset))
    for i in range(n):
        label = dataset[i]["label"].numpy().ravel()
        counts += np.bincount(label[label >= 0], minlength=k)[:k]
    total = counts.sum()
    if total == 0:
        raise DataError(f"{folder} has no labelled pixels")
    present = counts > 0
    iou = (counts / k) / (counts + total / k - counts / k)
    return float(100 * iou[present].mean())


def _bank_code() -> str:
    """The code a bank's entries come from: the builder and the world's generator (a bank built by other code is
    not reused; the bank's own key names the encoders and templates, not the code)."""
    return code_fingerprint("dpseg.prompts.builder", "dpseg.data.synthetic.generator")


def build_prompt_bank(cfg: Config, root: Path, class_names: list[str], log: Callable[[str], None] = print) -> Path:
    """A prompt bank of ``class_names`` made with the world's generator and ``cfg``'s CLIP (reused when complete)."""
    _, prompt_encoder, text_tower = build_towers(cfg.model)
    templates = get_templates(cfg.prompts.templates, cfg.prompts.num_templates)
    key = make_key(prompt_encoder, text_tower, templates, cfg.model.prompt_image_size)
    # the configured synthetic generator (synthetic:style=scene switches the world's style gap off)
    spec = cfg.prompts.generator if cfg.prompts.generator.startswith("synthetic") else "synthetic"
    generator = get_generator(spec, cfg.prompts)
    tag = hashlib.sha256(
        json.dumps([key, generator.identity, cfg.prompts.seed, _bank_code()], sort_keys=True, default=str).encode()
    ).hexdigest()[:10]
    path = root / f"bank-{tag}"
    bank = PromptBank.create(path, key, generator.identity, "synthetic", cfg.prompts.seed, cfg.prompts.images_per_class)
    report = build_bank(bank, class_names, generator, prompt_encoder, text_tower, templates, progress=False)
    log(f"prompt bank {path}: {len(report.built)} classes built, {report.skipped} reused")
    return path


@torch.no_grad()
def clip_dense_miou(cfg: Config, folder: Path, max_images: int = 0, split: str = "val") -> float:
    """mIoU (%) of the CLIP alone.

    Argmax over classes of cos(E, T) at the dense stride, upsampled (no decoder, no training).
    """
    import torch.nn.functional as F

    image_tower, _, text_tower = build_towers(cfg.model)
    image_tower.eval()
    dataset = build_dataset(str(folder), split=split)
    templates = get_templates(cfg.prompts.templates, cfg.prompts.num_templates)
    text = F.normalize(text_tower.encode(list(dataset.class_names), templates).mean(1), dim=-1)  # (K, M, d) -> (K, d)
    conf = ConfusionMatrix(len(dataset.class_names))
    for i in range(len(dataset) if not max_images else min(max_images, len(dataset))):
        item = dataset[i]
        x = item["image"].float()[None] / 255  # (1, 3, H, W)
        dense = F.normalize(image_tower(x).dense, dim=1)  # (1, d, h, w)
        scores = torch.einsum("bdhw,kd->bkhw", dense, text)  # (1, K, h, w)
        scores = F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)
        conf.update(scores.argmax(1)[0], item["label"])
    return float(metrics_from_confusion(conf.mat)["mIoU"])


def predict_examples(model_dir: Path, folder: Path, indices: list[int], two_pass: bool, split: str = "val") -> dict:
    """Label maps of a few validation images through the evaluator's inference path.

    Returns {"images", "labels", pass: [...]}.
    """
    model, cfg = load_model(model_dir, device="cpu")
    model.eval()
    dataset = build_dataset(str(folder), split=split)
    prompts = _prompts(cfg, model, list(dataset.class_names))
    items = [dataset[i] for i in indices]
    preds = Inference(model, prompts, cfg.eval, two_pass=two_pass, device="cpu").predict([it["image"] for it in items])
    out = {
        "images": [it["image"].permute(1, 2, 0).numpy() for it in items],  # (3, H, W) -> (H, W, 3)
        "labels": [it["label"].numpy() for it in items],
        "class_names": list(dataset.class_names),
    }
    for key in preds[0]:
        out[key] = [p[key].labels.cpu().numpy() for p in preds]
    return out
