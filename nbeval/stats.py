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
    """Verification ROC-AUC of a symmetric similarity matrix over items: a pair is positive when its
    two items share `label`. Items come in `group`s (the images of one sample, which are not
    independent), so the CI resamples whole groups; pairs of an item with itself never count.

    A resample that draws groups g and h c_g and c_h times holds each pair of distinct items of theirs
    c_g·c_h times, so its AUC is the Mann–Whitney U of the item pairs weighted by those counts: the
    pairs are sorted once and each resample is a cumulative sum of the negatives' weights (integers,
    so U is exact: the same AUC as ranking the resample's expanded list of pairs, to the last digit)."""
    sim = np.asarray(similarity, dtype=float)
    groups, gidx = np.unique(np.asarray(group), return_inverse=True)
    label = np.asarray(label)
    i, j = np.triu_indices(len(sim), k=1)
    order = np.argsort(sim[i, j], kind="stable")
    gi, gj = gidx[i[order]], gidx[j[order]]
    score, positive = sim[i, j][order], label[i[order]] == label[j[order]]
    # the positives' tie blocks [first, last] in the sorted pairs: a negative tied with a positive counts half
    new_block = np.r_[True, score[1:] != score[:-1]][: len(score)]
    starts = np.flatnonzero(new_block)
    block = (np.cumsum(new_block) - 1)[positive]
    first, last = starts[block], np.r_[starts[1:] - 1, len(score) - 1][block]

    def auc(counts: np.ndarray) -> np.ndarray:
        """AUC per row of `counts` (resamples × groups: how often each group was drawn)."""
        w = counts[:, gi] * counts[:, gj]
        w_pos = w[:, positive]
        w[:, positive] = 0
        neg = np.cumsum(w, axis=1, out=w)  # negatives' weight up to each pair
        below = np.where(first > 0, neg[:, first - 1], 0)
        twice_u = (w_pos * (below + neg[:, last])).sum(axis=1)  # the negatives below twice, the tied ones once
        n_pos, n_neg = w_pos.sum(axis=1), neg[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((n_pos > 0) & (n_neg > 0), twice_u / 2 / (n_pos * n_neg), np.nan)

    value = float(auc(np.ones((1, len(groups)), dtype=np.int64))[0]) if len(score) else math.nan
    picks = np.random.default_rng(seed).integers(0, len(groups), size=(n_boot, len(groups)))
    counts = np.zeros((n_boot, len(groups)), dtype=np.int64)
    np.add.at(counts, (np.arange(n_boot)[:, None], picks), 1)
    chunk = max(1, 2**23 // max(1, len(score)))  # resamples per numpy call: 64 MB of weights
    boots = np.concatenate([auc(counts[k:k + chunk]) for k in range(0, n_boot, chunk)])
    alpha = (1 - confidence) / 2
    lo, hi = np.nanquantile(boots, [alpha, 1 - alpha])
    return Estimate(value, float(lo), float(hi), len(groups), "bootstrap")
