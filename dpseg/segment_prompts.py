"""The prompts of a user's vocabulary for :class:`~dpseg.segmenter.Segmenter`: class-list parsing, the cache key,
and assembling a PromptSet from a bank, exemplar folders, or text alone (the rules are in the segmenter's doc).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional, Sequence

import torch

from dpseg.errors import InputError
from dpseg.model.prompts import PromptSet
from dpseg.prompts.bank import CLASS_DIR, MANIFEST, PromptBank, canonical_name, check_class_list, class_stem, short_list
from dpseg.prompts.exemplars import average_prompts, encode_prompt_images, find_exemplars, load_image
from dpseg.prompts.templates import templates_id

log = logging.getLogger("dpseg.segmenter")


def parse_class_list(text: str) -> list[str]:
    """Classes from one string. If it holds ';' or a line break, those separate classes and commas join
    synonyms of one class ("sofa, couch; cat" = 2 classes); otherwise commas separate classes ("cat, sofa, lamp"
    = 3 classes). Whitespace around names is ignored; empty items are skipped; duplicates are an error."""
    if not isinstance(text, str):
        raise InputError(f"the class list must be a string or a list of names, got {type(text).__name__}")
    parts = re.split(r"[;\n]", text) if re.search(r"[;\n]", text) else text.split(",")
    parts = [p.strip() for p in parts if p.strip()]
    if not parts:
        raise InputError('the class list is empty; name at least one class, e.g. "cat, sofa, lamp"')
    return check_class_list(parts)


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
            v, stages = encode_prompt_images(model.prompt_encoder, images, model.prompt_image_size)  # (N, d), [(N, D_j)]
            mean_v, mean_stages = average_prompts(v, stages)  # (d,), [(D_j,)]
            out[name] = (mean_v.expand(num_templates, -1), [s.expand(num_templates, -1) for s in mean_stages])  # (M, ·)
    if not out:
        raise InputError(f"exemplar folder {folder} has no sub-folder named like any class ({short_list(list(names))}); "
                         "name each folder exactly as its class")
    return out


@torch.no_grad()
def build_prompts(model, templates: Sequence[str], names: Sequence[str], bank: Optional[str], exemplars: Optional[str],
                  device) -> tuple[PromptSet, str, bool]:
    """(prompts on ``device``, a sentence naming their source, degraded?)."""
    names, M = list(names), len(templates)
    uses_visual = model.needs_visual_prompts
    if bank is None and exemplars is None:
        text = model.encode_text_prompts(names, list(templates)).to(device)  # (K, M, d)
        if not uses_visual:
            return PromptSet(names, text), "text (this model uses text prompts only)", False
        zeros = [torch.zeros(len(names), M, d, device=device) for d in model.prompt_encoder.stage_dims[:3]]
        source = (f"text only - DEGRADED: this model was trained with visual prompts (prompt_type={model.prompt_type}); "
                  "V is replaced by T and the visual cost volumes get no prompt; refinement helps the classes it finds")
        return PromptSet(names, text, text.clone(), zeros), source, True  # V := T, v_j := 0 (module doc of segmenter)

    parts, rows = [], {}
    if exemplars is not None:
        visual = _exemplar_prompts(model, names, exemplars, M)
        found = [n for n in names if n in visual]
        text = model.encode_text_prompts(found, list(templates)).to(device)  # (K_e, M, d)
        for i, n in enumerate(found):
            rows[n] = (text[i], visual[n][0].to(device), [s.to(device) for s in visual[n][1]])
        parts.append(f"exemplars {exemplars} ({len(found)} classes)")
    rest = [n for n in names if n not in rows]
    if rest and bank is None:
        raise InputError(f"exemplar folder {exemplars} has no images for {len(rest)} classes ({short_list(rest)}); add "
                         f"{exemplars}/<class name>/ folders or also give a prompt bank")
    if rest:
        opened = PromptBank.open(bank)
        if opened.manifest.get("templates_id") != templates_id(list(templates)):
            log.warning("prompt bank %s was built with other templates than this model's %d; results may suffer",
                        bank, M)
        ps = opened.prompt_set(rest, model=model, device=device)
        for i, n in enumerate(rest):
            rows[n] = (ps.text[i], ps.visual[i], [s[i] for s in ps.visual_stages])
        parts.append(f"bank {bank} ({len(rest)} classes)")
    text = torch.stack([rows[n][0] for n in names])  # K x (M, d) -> (K, M, d)
    visual = torch.stack([rows[n][1] for n in names])
    stages = [torch.stack([rows[n][2][j] for n in names]) for j in range(3)]  # [(K, M, D_j)]
    source = " + ".join(parts)
    if not uses_visual:
        source += " (this model uses only their text prompts)"
    return PromptSet(names, text.float(), visual.float(), [s.float() for s in stages]), source, False
