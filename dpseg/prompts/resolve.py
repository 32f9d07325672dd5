"""Vocabulary -> PromptSet: the one resolver used by training, ``dpseg eval``, :class:`~dpseg.segmenter.Segmenter`
and the demo, so that every surface turns the same classes into the same prompts.

Sources, in order of precedence per class: exemplar images (``exemplars=DIR`` with ``DIR/<class>/*.jpg``), a
prompt bank (``bank=DIR``), or the text tower alone. Policies, the same everywhere:

* a bank built with another template set than the model's is refused (:class:`BankError`) - its text prompts
  would not be the ones the model was trained with, and a different M would not even fit;
* a model that needs visual prompts (dual / visual prompts or visual cost volumes) with no bank or exemplars is
  refused with the fix, unless ``text_only=True`` asks for the *degraded* mode: V is replaced by T (so R = T) and
  the visual cost volumes get zero stage features; the result says it is degraded;
* a text-only model only reads the text prompts of whatever source is given; one without a visual-prompt encoder
  (e.g. SED) does not even look at exemplar images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from dpseg.errors import BankError, InputError, short_list
from dpseg.image_io import load_image
from dpseg.model.dual_prompt import PromptSet
from dpseg.prompts.agreement import keep_agreeing_images
from dpseg.prompts.bank import CLASS_DIR, MANIFEST, PromptBank
from dpseg.prompts.class_file import class_stem
from dpseg.prompts.exemplars import average_prompts, encode_prompt_images, find_exemplars
from dpseg.prompts.templates import model_templates, templates_id
from dpseg.vocab import canonical_name
from dpseg.weights import state_fingerprint

log = logging.getLogger("dpseg.segmenter")


def _stat(path: Path):
    try:
        st = path.stat()
        return st.st_mtime_ns, st.st_size
    except OSError:
        return None


def source_key(names: Sequence[str], bank: Optional[str], exemplars: Optional[str]) -> tuple:
    """Cache key of a vocabulary's prompts: names plus the identity and file stamps of their sources, so an
    edited bank or exemplar folder is re-read while switching back to an unchanged vocabulary costs nothing."""
    key: list = [tuple(names)]
    if bank is not None:
        root = Path(bank).expanduser().resolve()
        files = [root / CLASS_DIR / f"{class_stem(n)}.safetensors" for n in names]
        key.append(("bank", str(root), _stat(root / MANIFEST), tuple(_stat(f) for f in files)))
    if exemplars is not None:
        folder = Path(exemplars).expanduser().resolve()
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        key.append(("exemplars", str(folder), tuple((str(p), _stat(p)) for p in files)))
    if bank is None and exemplars is None:
        key.append(("text",))
    return tuple(key)


@torch.no_grad()
def _exemplar_prompts(model, names: Sequence[str], folder: str, num_templates: int) -> dict:
    """{class: (V (M, d), [v_j (M, D_j)])} for the classes that have a folder of images (mean embedding)."""
    found = {canonical_name(k): v for k, v in find_exemplars(folder).items()}
    unused = sorted(set(found) - set(names))
    if unused:
        log.info("exemplar folders that are not in the vocabulary are ignored: %s", short_list(unused))
    out = {}
    for name in names:
        if name in found:
            images = [load_image(p) for p in found[name]]
            v, stages = encode_prompt_images(
                model.prompt_encoder, images, model.prompt_image_size
            )  # (N, d), [(N, D_j)]
            mean_v, mean_stages = average_prompts(v, stages)  # (d,), [(D_j,)]
            out[name] = (mean_v.expand(num_templates, -1), [s.expand(num_templates, -1) for s in mean_stages])  # (M, ·)
    if not out:
        raise InputError(
            f"exemplar folder {folder} has no sub-folder named like any class ({short_list(list(names))}); "
            "name each folder exactly as its class"
        )
    return out


@dataclass
class ResolvedPrompts:
    prompts: PromptSet
    source: str  # one sentence naming where the prompts came from
    degraded: bool  # a visual-prompt model running on text prompts only


@torch.no_grad()
def resolve_prompts(
    model,
    templates: Sequence[str],
    names: Sequence[str],
    *,
    bank: Optional[str] = None,
    exemplars: Optional[str] = None,
    text_only: bool = False,
    device="cpu",
    what: str = "the vocabulary",
) -> ResolvedPrompts:
    """The prompts of ``names`` (in label order) on ``device`` by the rules of the module doc."""
    names, M = list(names), len(templates)
    if text_only and (bank is not None or exemplars is not None):
        raise InputError("text-only prompts cannot be combined with a bank or exemplars; choose one source")
    uses_visual = model.needs_visual_prompts
    skipped = ""
    if exemplars is not None and model.prompt_encoder is None:  # nothing could encode them, nothing would read them
        log.info("exemplar images are not used: this model reads text prompts only")
        exemplars, skipped = None, "; exemplar images not used"
    if bank is None and exemplars is None:
        text = model.encode_text_prompts(names, list(templates)).to(device)  # (K, M, d)
        if not uses_visual:
            return ResolvedPrompts(PromptSet(names, text), f"text (this model uses text prompts only{skipped})", False)
        if not text_only:
            raise BankError(
                f"{what}: this model needs visual prompts (prompt_type={model.prompt_type}"
                f"{', visual cost volumes' if model.visual_scales else ''}); give a prompt bank ('dpseg prompts "
                "build --checkpoint CKPT --vocab CLASS_LIST --generator GENERATOR --out BANK', then bank=BANK / "
                "--bank BANK / --set prompts.bank=BANK), exemplar images (DIR/<class>/*.jpg), or accept the degraded "
                "text-only mode (text_only=True / --text-only)"
            )
        zeros = [torch.zeros(len(names), M, d, device=device) for d in model.image_encoder.stage_dims[:3]]
        source = (
            f"text only - DEGRADED: this model was trained with visual prompts (prompt_type={model.prompt_type}); "
            "V is replaced by T and the visual cost volumes get no prompt; refinement helps the classes it finds"
        )
        return ResolvedPrompts(PromptSet(names, text, text.clone(), zeros), source, True)  # V := T, v_j := 0

    parts, rows = [], {}
    if exemplars is not None:
        from_exemplars = _exemplar_prompts(model, names, exemplars, M)
        found = [n for n in names if n in from_exemplars]
        text = model.encode_text_prompts(found, list(templates)).to(device)  # (K_e, M, d)
        for i, n in enumerate(found):
            rows[n] = (text[i], from_exemplars[n][0].to(device), [s.to(device) for s in from_exemplars[n][1]])
        parts.append(f"exemplars {exemplars} ({_classes(len(found))})")
    rest = [n for n in names if n not in rows]
    if rest and bank is None:
        raise InputError(
            f"exemplar folder {exemplars} has no images for {len(rest)} classes ({short_list(rest)}); add "
            f"{exemplars}/<class name>/ folders or also give a prompt bank"
        )
    if rest:
        opened = PromptBank.open(bank)
        if opened.manifest.get("templates_id") != templates_id(list(templates)):
            raise BankError(
                f"prompt bank {bank} was built with another template set ({len(opened.templates)} templates) than the "
                f"model's ({M} templates); "
                "build one with the model's templates ('dpseg prompts build --checkpoint CKPT --vocab CLASS_LIST "
                "--generator GENERATOR --out NEW_BANK')"
            )
        try:
            ps = opened.prompt_set(rest, model=model, device=device)
        except BankError as e:
            raise BankError(f"{what}: {e}") from None
        ps = keep_agreeing_images(ps, getattr(model, "visual_prompt_keep", 1.0))  # generated images only
        assert ps.visual is not None and ps.visual_stages is not None  # a bank always holds visual prompts
        for i, n in enumerate(rest):
            rows[n] = (ps.text[i], ps.visual[i], [s[i] for s in ps.visual_stages])
        parts.append(f"bank {bank} ({_classes(len(rest))})")
    text = torch.stack([rows[n][0] for n in names])  # K x (M, d) -> (K, M, d)
    visual = torch.stack([rows[n][1] for n in names])
    stages = [torch.stack([rows[n][2][j] for n in names]) for j in range(3)]  # [(K, M, D_j)]
    source = " + ".join(parts)
    if not uses_visual:
        source += f" (this model uses only their text prompts{skipped})"
    prompts = PromptSet(names, text.float(), visual.float(), [s.float() for s in stages])
    return ResolvedPrompts(prompts, source, False)


def vocabulary_prompts(cfg, model, class_names: Sequence[str], device, what: str) -> PromptSet:
    """The prompts a run's config gives a dataset vocabulary (training, validation, evaluation): the config's
    ``prompts.bank`` if set, else the text tower for a text-only model."""
    bank = cfg.prompts.bank or None
    return resolve_prompts(model, model_templates(cfg), class_names, bank=bank, device=device, what=what).prompts


def prompt_fingerprint(prompts: PromptSet) -> str:
    """A digest of a prompt set's tensors (T, V and the stage features v_j): what an output folder or a results
    cache is keyed by, so that other prompts are detected, not reused."""
    tensors = {"text": prompts.text}
    if prompts.visual is not None:
        tensors["visual"] = prompts.visual
    for j, v in enumerate(prompts.visual_stages or [], start=2):
        tensors[f"stage{j}"] = v
    return state_fingerprint(tensors)


def _classes(n: int) -> str:
    return f"{n} class" if n == 1 else f"{n} classes"
