"""Confidence intervals for aggregate metrics.

Proportions get Wilson score intervals (correct coverage near 0 and 1, where a nightly pass rate
lives); everything else a percentile bootstrap with a fixed seed so the same table gives the same CI.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

N_BOOTSTRAP = 2000


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float
    n: int
    method: str  # "wilson" | "bootstrap" | "none"

    def to_dict(self) -> dict:
        return asdict(self)


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: float, n: int, confidence: float = 0.95) -> Estimate:
    """Wilson score interval for a binomial proportion."""
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "wilson")
    p = successes / n
    z = _z(confidence)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n, "wilson")


def bootstrap_mean(values: np.ndarray, confidence: float = 0.95, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> Estimate:
    """Percentile bootstrap CI of the mean."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "bootstrap")
    if n == 1:
        return Estimate(float(x[0]), float(x[0]), float(x[0]), 1, "bootstrap")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return Estimate(float(x.mean()), float(lo), float(hi), n, "bootstrap")


def bootstrap_of_means(columns: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], confidence: float = 0.95, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> Estimate:
    """A statistic of several column means (a ratio of sums, a score combined from means) with a
    percentile bootstrap CI: rows (samples) are resampled together, so the columns stay paired, and
    the statistic is recomputed on each resample's means. `statistic` maps means of shape (..., k) to
    (...), vectorised over resamples; rows with a NaN are dropped. One column and the identity give
    `bootstrap_mean` exactly (the same draws)."""
    x = np.asarray(columns, dtype=float).reshape(len(columns), -1)
    x = x[~np.isnan(x).any(axis=1)]
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "bootstrap")
    value = float(statistic(x.mean(axis=0)))
    if n == 1:
        return Estimate(value, value, value, 1, "bootstrap")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    means = np.stack([col[idx].mean(axis=1) for col in x.T], axis=-1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(statistic(means), [alpha, 1 - alpha])
    return Estimate(value, float(lo), float(hi), n, "bootstrap")


def paired_difference(a: pd.Series, b: pd.Series, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of a − b over the samples both scored (aligned on the index), with a paired bootstrap CI:
    the same samples and seeds on both sides, so sample-to-sample variance cancels."""
    both = (a.astype(float) - b.astype(float)).dropna()
    return bootstrap_mean(both.to_numpy(), confidence, seed=seed)


def proportion(flags: np.ndarray, confidence: float = 0.95) -> Estimate:
    """Wilson interval for a column of 0/1 flags (NaN = not scored, dropped)."""
    x = np.asarray(flags, dtype=float)
    x = x[~np.isnan(x)]
    return wilson(float(x.sum()), len(x), confidence)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative (ties
    count half), by the Mann–Whitney rank sum."""
    from scipy.stats import rankdata

    s, y = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pair_auc(similarity: np.ndarray, group: np.ndarray, label: np.ndarray, confidence: float = 0.95, n_boot: int = 200, seed: int = 0) -> Estimate:
    """Verification ROC-AUC of a similarity matrix over items: a pair is positive when its two items
    share `label`. Items come in `group`s (the images of one sample, which are not independent), so
    the CI resamples whole groups; pairs of an item with itself never count."""
    sim = np.asarray(similarity, dtype=float)
    group, label = np.asarray(group), np.asarray(label)
    groups = np.unique(group)
    members = [np.flatnonzero(group == g) for g in groups]

    def auc(pick: np.ndarray) -> float:
        idx = np.concatenate([members[i] for i in pick])
        iu = np.triu_indices(len(idx), k=1)
        a, b = idx[iu[0]], idx[iu[1]]
        keep = a != b  # a group drawn twice would pair each item with itself
        same = (label[a] == label[b])[keep]
        return roc_auc(sim[a, b][keep], same)

    value = auc(np.arange(len(groups)))
    rng = np.random.default_rng(seed)
    boots = np.array([auc(rng.integers(0, len(groups), len(groups))) for _ in range(n_boot)])
    alpha = (1 - confidence) / 2
    lo, hi = np.nanquantile(boots, [alpha, 1 - alpha])
    return Estimate(value, float(lo), float(hi), len(groups), "bootstrap")
