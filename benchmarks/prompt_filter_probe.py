"""Could a CLIP-score filter catch the generator's misdrawn prompt images? A probe of a prompt bank, no training.

    python benchmarks/prompt_filter_probe.py --bank .dpseg_cache/quickstart/bank-KEY

Keeping only the generated images that agree with their text (CLIP score) is common practice with Stable Diffusion
data. In the synthetic world the generator's failures are known (``SyntheticGenerator.failure_of`` with the bank's
own seeds), so this measures whether the tiny CLIP's image-text cosine separates them: for every class of the split,
each bank image's cosine with the class's mean normalised text embedding, then the within-class AUC (the chance
that a faithful image scores above a misdrawn one of the same class) over the classes that have both. A lead for a
prompt-bank option, not a result: nothing here is chosen or changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from dpseg.config import build_config
from dpseg.data.synthetic.generator import SyntheticGenerator
from dpseg.data.synthetic.world import vocabulary
from dpseg.prompts.bank import PromptBank
from dpseg.prompts.generate import generator_prompt, image_seed
from dpseg.prompts.templates import get_templates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bank", type=Path, required=True, help="a prompt bank of the synthetic world (the quickstart's)")
    ap.add_argument("--splits", nargs="+", default=["seen", "unseen"], choices=("seen", "unseen"))
    args = ap.parse_args()
    cfg = build_config("synthetic")
    templates = get_templates(cfg.prompts.templates, cfg.prompts.num_templates)
    bank, gen = PromptBank.open(args.bank), SyntheticGenerator()
    for split in args.splits:
        aucs, faithful, misdrawn = [], [], []
        for k in vocabulary(split):
            entry = bank.load_class(k.name)
            seeds = [image_seed(cfg.prompts.seed, k.name, i) for i in range(len(templates))]
            failed = [
                gen.failure_of(k, generator_prompt(t, k.name), s)[0] is not None for t, s in zip(templates, seeds)
            ]
            text = F.normalize(F.normalize(entry["text"], dim=-1).mean(0), dim=-1)  # (M, d) -> (d,)
            score = (F.normalize(entry["visual"], dim=-1) @ text).tolist()  # (M,) one cosine per bank image
            ok = [s for s, f in zip(score, failed) if not f]
            bad = [s for s, f in zip(score, failed) if f]
            faithful += ok
            misdrawn += bad
            if ok and bad:
                aucs.append(float(np.mean([o > b for o in ok for b in bad])))
        print(
            f"{split}: {len(misdrawn)} of {len(faithful) + len(misdrawn)} bank images misdrawn; "
            f"{len(aucs)} classes hold both kinds, within-class AUC {np.mean(aucs):.3f} (0.5 = no signal); "
            f"mean cosine with the text: faithful {np.mean(faithful):.3f}, misdrawn {np.mean(misdrawn):.3f}"
        )


if __name__ == "__main__":
    main()
