"""Sentence templates t_m("{class}") shared by the text prompts and the text-to-image generator.

``imagenet80`` is the 80 CLIP ImageNet templates in OpenAI's order (SED's default, M = 80); the paper ablates
M in {1, 10, 20, 40, 80} by taking the first M (``prompts.num_templates``). ``single`` is CAT-Seg's one
template. A text file with one template per line (each containing "{}") is also accepted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from dpseg.errors import ConfigError, char_name, quote, unsafe_char
from dpseg.safe_load import read_text

TEMPLATE_SETS: dict[str, list[str]] = {
    "imagenet80": [t("{}") for t in OPENAI_IMAGENET_TEMPLATES],
    "single": ["A photo of a {} in the scene"],
    "photo": ["a photo of a {}."],
}


def get_templates(name_or_file: str, num: int = 0) -> list[str]:
    """The template list for a set name or a file, truncated to the first ``num`` (0 = all)."""
    if name_or_file in TEMPLATE_SETS:
        templates = list(TEMPLATE_SETS[name_or_file])
    else:
        path = Path(name_or_file)
        if not path.exists() or path.is_dir():  # a FIFO or device is refused by the reader, naming what it is
            raise ConfigError(
                f"config key 'prompts.templates': '{name_or_file}' is neither a template set "
                f"({', '.join(TEMPLATE_SETS)}) nor a file"
            )
        text = read_text(path, "template file", 1 << 20, ConfigError, encoding="utf-8-sig")
        # "\n" alone ends a line (as in class lists): a form feed or U+2028 must not split a template in two
        templates = [line.strip() for line in text.split("\n") if line.strip()]
        if not templates:
            raise ConfigError(f"template file {path} holds no templates")
        for t in templates:
            unsafe = unsafe_char(t, allow="\t")
            if unsafe is not None:
                raise ConfigError(
                    f"template {quote(t, 80)} in {path} holds the control character {char_name(unsafe[1])}; "
                    "templates must be printable text"
                )
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ConfigError(f"template {quote(bad[0], 80)} must contain '{{}}' exactly once (where the class name goes)")
    if num < 0 or num > len(templates):
        raise ConfigError(f"config key 'prompts.num_templates' is {num} but the set has {len(templates)} templates")
    return templates[:num] if num else templates


def templates_id(templates: list[str]) -> str:
    """Content hash identifying a template list (order matters: template m feeds cost-volume channel m)."""
    return hashlib.sha256("\n".join(templates).encode()).hexdigest()[:12]


def model_templates(cfg) -> list[str]:
    """The M templates a config's model is built for (``prompts.templates`` truncated to ``prompts.num_templates``)."""
    return get_templates(cfg.prompts.templates, cfg.prompts.num_templates)
