"""The functional core of CLIP prompt adherence: one definition of each variant, from cosines.

Used by the torchmetrics `CLIPAdherence` metric (nbeval/scorers/clip.py) and by the adherence suite
(per-sample values, bootstrapped), so the two can never disagree. Seven incompatible "CLIP scores"
exist across benchmarks; `VARIANTS` says which these are, and every run logs it.
"""

from __future__ import annotations

import numpy as np

VARIANTS: dict[str, str] = {
    "clip_score": "torchmetrics-style CLIPScore: max(100 · mean_i cos(image_i, caption_i), 0) — clamped on the mean",
    "clipscore_hessel": "Hessel et al. 2021 CLIPScore: mean_i 2.5 · max(cos(image_i, caption_i), 0) — clamped per sample",
    "r_precision": "CLIP-R-precision (R = 1): share of images whose caption has a higher cosine than every one of its "
    "world-made hard negatives (one each: wrong colour, wrong shape, wrong count or swapped relation)",
    "pairwise/<kind>": "share of images whose caption beats the hard negative of that kind",
}


def clip_score_terms(cos: np.ndarray) -> np.ndarray:
    """Each image's term of torchmetrics' CLIPScore, 100 · cos: not clamped (the clamp is on their mean)."""
    return 100.0 * np.asarray(cos, dtype=float)


def clip_score(mean_term: float) -> float:
    """torchmetrics' CLIPScore of a set of images from the mean of their terms: clamped at 0 on the mean."""
    return max(float(mean_term), 0.0)


def hessel(cos: np.ndarray) -> np.ndarray:
    """Hessel et al.'s CLIPScore per image: 2.5 · max(cos, 0)."""
    return 2.5 * np.maximum(np.asarray(cos, dtype=float), 0.0)


def beats(cos: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """(N, K): 1 where image i's caption has a higher cosine than its negative k, 0 where not, NaN
    where it has no negative of that kind (`negatives` is NaN there)."""
    cos, negatives = np.asarray(cos, dtype=float), np.asarray(negatives, dtype=float)
    return np.where(np.isnan(negatives), np.nan, (cos[:, None] > negatives).astype(float))


def r_precision_hits(cos: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """(N,): 1 where the caption beats every one of its negatives, NaN for an image without any."""
    b = beats(cos, negatives)
    has = ~np.isnan(b).all(axis=1)
    return np.where(has, np.nan_to_num(b, nan=1.0).min(axis=1, initial=1.0), np.nan)


def adherence(cos: np.ndarray, negatives: np.ndarray, kinds: tuple[str, ...]) -> dict[str, float]:
    """Every variant over a set of images (`negatives[:, k]` is the negative of kind `kinds[k]`)."""
    cos = np.asarray(cos, dtype=float)
    b = beats(cos, negatives)
    hits = r_precision_hits(cos, negatives)
    out = {
        "clip_score": clip_score(clip_score_terms(cos).mean()),
        "clipscore_hessel": float(hessel(cos).mean()),
        "r_precision": float(np.nanmean(hits)) if (~np.isnan(hits)).any() else float("nan"),
    }
    for k, kind in enumerate(kinds):
        col = b[:, k]
        out[f"pairwise/{kind}"] = float(np.nanmean(col)) if (~np.isnan(col)).any() else float("nan")
    return out
