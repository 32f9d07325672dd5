"""The synthetic generator's failures (world v3): each class's designed failure, and what the quickstart's bank draws.

    python benchmarks/generator_failures.py [--classes unseen|seen|all] [--images 400]

For every class: its failure mode (colour or shape), the value drawn instead, its designed rate and whether it is a
hard class (``failure_profile()``); the share of ``--images`` generator images that fail (templates of the synthetic
preset, cycling, random seeds: it should match the rate); and how many of the class's images in the quickstart's
prompt bank fail (one image per template, the bank's seeds ``image_seed(prompts.seed, class, i)``) - the images its
visual prompt is actually made of. Only the generator's random decisions are drawn; nothing is rendered.
"""

from __future__ import annotations

import argparse

import numpy as np

from dpseg.config import build_config
from dpseg.data.synthetic.generator import SyntheticGenerator, failure_profile
from dpseg.data.synthetic.world import vocabulary
from dpseg.prompts.generate import generator_prompt, image_seed
from dpseg.prompts.templates import get_templates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", default="unseen", choices=("unseen", "seen", "all"))
    ap.add_argument("--images", type=int, default=400, help="generator images per class for the measured share")
    args = ap.parse_args()
    cfg = build_config("synthetic")
    templates = get_templates(cfg.prompts.templates, cfg.prompts.num_templates)
    gen = SyntheticGenerator()
    n_bank = cfg.prompts.images_per_class or len(templates)
    print(
        f"| class | mode | drawn instead | rate | hard | failing share of {args.images} images | failing bank images |"
    )
    print("|---|---|---|---|---|---|---|")
    shares, bank = [], []
    for k in vocabulary(args.classes):
        f = failure_profile()[k]
        rng = np.random.default_rng([0, len(shares)])
        texts = [templates[i % len(templates)].format(k.name) for i in range(args.images)]
        fails = [
            gen.failure_of(k, t, int(s))[0] is not None for t, s in zip(texts, rng.integers(2**31, size=len(texts)))
        ]
        in_bank = sum(
            gen.failure_of(
                k, generator_prompt(templates[i % len(templates)], k.name), image_seed(cfg.prompts.seed, k.name, i)
            )[0]
            is not None
            for i in range(n_bank)
        )
        shares.append(np.mean(fails))
        bank.append(in_bank / n_bank)
        hard = "hard" if f.hard else ""
        cells = [
            k.name,
            f.mode,
            f.wrong,
            f"{f.rate:.2f}",
            hard,
            f"{100 * np.mean(fails):.1f} %",
            f"{in_bank} / {n_bank}",
        ]
        print("| " + " | ".join(cells) + " |")
    generated, banked = 100 * np.mean(shares), 100 * np.mean(bank)
    print(f"\nmean failing share: {generated:.1f} % of generated images, {banked:.1f} % of bank images")


if __name__ == "__main__":
    main()
