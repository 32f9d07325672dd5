"""Paired single-factor comparisons over seeds, with a family-wise error correction.

Two variants trained with the same seed share everything the seed decides but the one factor they differ in (the
prompt type, or the decoder's guidance), and pass 2 of a model is compared with pass 1 of the same model, so every
claim is judged on the per-seed differences d_s = A_s - B_s:

* mean ± sample standard deviation of d, and the sign count (for how many seeds A is higher);
* a two-sided paired t-test (``scipy.stats.ttest_rel``), p-values adjusted with Holm's step-down method across the
  family of claims reported together (:func:`holm`);
* the verdict: ``holds`` when the adjusted p < ``ALPHA`` and the mean difference is positive, ``reversed`` when it is
  negative, ``no difference detected`` otherwise (with fewer than 3 seeds: no test, no verdict).

A verdict is about these seeds of this world: the CLIP, the prompt bank and the datasets are fixed, so their
variance is not in the spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

ALPHA = 0.05
MIN_SEEDS = 3


@dataclass
class Paired:
    """One claim "A >= B" judged on paired per-seed values."""

    claim: str
    a: list[float]
    b: list[float]
    p: Optional[float] = None  # two-sided paired t-test
    p_holm: Optional[float] = None  # after Holm's correction over the family

    @property
    def diffs(self) -> np.ndarray:
        return np.asarray(self.a, float) - np.asarray(self.b, float)

    @property
    def n(self) -> int:
        return len(self.a)

    @property
    def higher(self) -> int:
        return int((self.diffs > 0).sum())

    @property
    def mean(self) -> float:
        return float(self.diffs.mean())

    @property
    def std(self) -> float:
        return float(self.diffs.std(ddof=1)) if self.n > 1 else 0.0

    @property
    def verdict(self) -> str:
        if self.n < MIN_SEEDS or self.p_holm is None:
            return f"fewer than {MIN_SEEDS} seeds: no test, no verdict"
        if self.p_holm >= ALPHA:
            return "no difference detected"
        return "holds" if self.mean > 0 else "does NOT hold (reversed)"

    def line(self) -> str:
        a, b = float(np.mean(self.a)), float(np.mean(self.b))
        test = "" if self.p is None else f", paired t-test p = {self.p:.2g}, Holm-adjusted {self.p_holm:.2g}"
        return (
            f"- {self.claim}: {a:.1f} vs {b:.1f} (A - B per seed {self.mean:+.1f} ± {self.std:.1f}, A higher for "
            f"{self.higher}/{self.n} seeds{test}) -> {self.verdict}"
        )

    def to_dict(self) -> dict:
        return {
            "claim": self.claim,
            "a": self.a,
            "b": self.b,
            "mean_difference": self.mean,
            "std_difference": self.std,
            "a_higher": self.higher,
            "seeds": self.n,
            "p": self.p,
            "p_holm": self.p_holm,
            "verdict": self.verdict,
        }


def paired_t_p(diffs: Union[Sequence[float], np.ndarray]) -> Optional[float]:
    """Two-sided p-value of the paired t-test of H0: mean difference = 0 (None below MIN_SEEDS seeds)."""
    d = np.asarray(diffs, float)
    if len(d) < MIN_SEEDS:
        return None
    if np.all(d == d[0]):  # no spread: the test is undefined; identical results are no evidence of a difference
        return 1.0 if d[0] == 0 else 0.0
    from scipy.stats import ttest_1samp

    return float(ttest_1samp(d, 0.0).pvalue)


def holm(p_values: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjusted p-values (same order; None stays None): the i-th smallest of m is multiplied by
    (m - i), made monotone, capped at 1."""
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(ranked)
    out: list[Optional[float]] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def judge(claims: list[Paired]) -> list[Paired]:
    """Test every claim and correct the family's p-values with Holm's method (in place; returned for chaining)."""
    for c in claims:
        if len(c.a) != len(c.b):
            raise ValueError(f"claim {c.claim!r}: {len(c.a)} values of A but {len(c.b)} of B; pair them by seed")
        c.p = paired_t_p(c.diffs)
    for c, adjusted in zip(claims, holm([c.p for c in claims])):
        c.p_holm = adjusted
    return claims
