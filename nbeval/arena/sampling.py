"""Which pair of models to show a voter next.

`uniform` spreads votes evenly over all unordered pairs (for audits: every pair gets evidence).
`uncertainty` spends votes where they change the leaderboard most: a pair's weight is the variance of
its outcome under the current ratings, p(1 − p), times how uncertain the two ratings still are (the
sum of their CI widths), so close, poorly measured pairs are asked about first (`uncertainty_draw`).
Sides are randomised.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from nbeval.arena.ratings import win_probability


def _pairs(models: list[str]) -> list[tuple[str, str]]:
    if len(models) < 2:
        raise ValueError("pair sampling needs at least two models")
    return list(itertools.combinations(models, 2))


def _draw(pairs: list[tuple[str, str]], weights: np.ndarray, k: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    chosen = rng.choice(len(pairs), size=k, p=weights / weights.sum())
    flips = rng.random(k) < 0.5
    return [(pairs[c][1], pairs[c][0]) if f else pairs[c] for c, f in zip(chosen, flips)]


def uniform_pairs(models: list[str], k: int, seed: int = 0) -> list[tuple[str, str]]:
    pairs = _pairs(models)
    return _draw(pairs, np.ones(len(pairs)), k, np.random.default_rng(seed))


def pair_weights(board: pd.DataFrame) -> dict[tuple[str, str], float]:
    """Uncertainty weight of every unordered pair, from a leaderboard (model, rating, ci_low, ci_high)."""
    b = board.set_index("model")
    out = {}
    for a, c in _pairs(sorted(b.index)):
        p = float(win_probability(b.at[a, "rating"], b.at[c, "rating"]))
        width = (b.at[a, "ci_high"] - b.at[a, "ci_low"]) + (b.at[c, "ci_high"] - b.at[c, "ci_low"])
        out[(a, c)] = p * (1 - p) * max(width, 1e-9)
    return out


def uncertainty_draw(candidates: list[frozenset], weights: dict[frozenset, float], rng: np.random.Generator) -> frozenset:
    """One of the candidate pairs, drawn in proportion to its uncertainty weight (`pair_weights`); a
    pair without one (a model without votes yet) weighs as much as the most uncertain pair, so new
    models are brought onto the leaderboard quickly. What the web app asks a voter about next."""
    top = max(weights.values(), default=1.0)
    w = np.array([weights.get(p, top) for p in candidates]) + 1e-12
    return candidates[rng.choice(len(candidates), p=w / w.sum())]
