"""Bradley–Terry ratings from pairwise battles, with bootstrap confidence intervals, and online Elo.

Battles are aggregated to unique (unordered pair, outcome) counts, so a million battles among 50
models become at most 3 × 1,225 weighted rows, and the fit only needs each pair's battles and summed
score. The maximum-likelihood fit is Newton's method on that small problem, and all bootstrap
replicates (multinomial reweightings of the unique rows, i.e. resampling battles) are solved together
as one batched Newton iteration — no per-replicate optimiser, no process pool.

Ties (and "both bad") count as half a win for each side. Ratings are on the Elo scale
(400 / ln 10 per unit of log-odds), anchored by fixing one model's rating or the mean rating.

Beside the bootstrap, LMArena's closed-form intervals: the sandwich (robust) covariance of the fit,
H⁻¹ M H⁻¹ with H the Fisher information and M the summed outer products of per-battle scores, which
stays honest when Bradley–Terry is not quite the truth and costs one m × m solve (`ci="sandwich"`). LMArena also
reweights battles by the inverse frequency of their pair (`weighting="inverse_frequency"`), so pairs
that were sampled more often do not dominate the fit.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SCALE = 400 / math.log(10)
OUTCOMES = ("a", "b", "tie", "both_bad")
_FASTCHAT_WINNERS = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "both_bad"}
SCORE_OF_A = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}  # ties count as half a win
SKIP = "skip"  # a voter could not tell: kept with the battle, reported, left out of the fit
WINNERS = (*OUTCOMES, SKIP)
_SCORE2 = np.array([2 * SCORE_OF_A[o] for o in OUTCOMES] + [-1], dtype=np.int64)  # per WINNERS index; -1: skip


def win_probability(rating_a, rating_b):
    """P(a beats b) under Bradley–Terry on the Elo scale; works on scalars and arrays."""
    return 1 / (1 + 10 ** ((np.asarray(rating_b) - np.asarray(rating_a)) / 400))


def _winner_codes(winner: pd.Series) -> np.ndarray:
    """Each battle's index into WINNERS; factorising first, so the million-row column is hashed once
    and only its few distinct values are looked at as strings."""
    codes, uniques = pd.factorize(winner, use_na_sentinel=False)
    names = [_FASTCHAT_WINNERS.get(str(u), str(u)) for u in uniques]
    bad = sorted(set(names) - set(WINNERS))
    if bad:
        raise ValueError(f"unknown winner values {bad[:5]}; expected {WINNERS} or FastChat's {tuple(_FASTCHAT_WINNERS)}")
    return np.array([WINNERS.index(n) for n in names] or [0], dtype=np.int8)[codes]


def _model_codes(battles: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Integer codes of model_a and model_b over the sorted model names (one hash pass over both columns)."""
    n = len(battles)
    codes, uniques = pd.factorize(pd.concat([battles["model_a"], battles["model_b"]], ignore_index=True), sort=True)
    if (codes < 0).any():
        raise ValueError("battles have a missing model name")
    i, j = codes[:n].astype(np.int64), codes[n:].astype(np.int64)
    same = i == j
    if same.any():
        raise ValueError(f"{int(same.sum())} battles pit a model against itself")
    return i, j, [str(u) for u in uniques]


def _check_columns(df: pd.DataFrame) -> None:
    missing = {"model_a", "model_b", "winner"} - set(df.columns)
    if missing:
        raise ValueError(f"battles lack columns {sorted(missing)}; need model_a, model_b, winner")


def normalise_battles(df: pd.DataFrame) -> pd.DataFrame:
    """Our battle schema or FastChat/LMArena's (`winner` ∈ model_a, model_b, tie, tie (bothbad)) →
    columns model_a, model_b (categoricals over the model names), winner ∈ {a, b, tie, both_bad, skip}
    (other columns kept). Each string column is hashed once into integer codes; no per-row string work."""
    _check_columns(df)
    winner = _winner_codes(df["winner"])
    i, j, models = _model_codes(df)
    categories = pd.CategoricalDtype(models)
    return df.assign(
        winner=pd.Categorical.from_codes(winner, categories=WINNERS),
        model_a=pd.Categorical.from_codes(i, dtype=categories),
        model_b=pd.Categorical.from_codes(j, dtype=categories),
    )


def read_battles(path: str | Path) -> pd.DataFrame:
    """Battles from .parquet, .jsonl/.json (one object per line) or .csv."""
    p = Path(path)
    if p.suffix == ".parquet":
        df = pd.read_parquet(p)
    elif p.suffix in (".jsonl", ".json"):
        df = pd.read_json(p, lines=p.suffix == ".jsonl")
    elif p.suffix == ".csv":
        df = pd.read_csv(p)
    else:
        raise ValueError(f"cannot read battles from {p.name}: use .parquet, .jsonl, .json or .csv")
    return normalise_battles(df)


@dataclass(frozen=True)
class Aggregated:
    """Unique (i, j, y) rows, i < j, with i's score y ∈ {0, ½, 1} and how many battles had it; sorted
    by (i, j), so the rows of one pair are adjacent. Skips are not rows."""

    models: list[str]
    i: np.ndarray
    j: np.ndarray
    y: np.ndarray
    count: np.ndarray


def aggregate(battles: pd.DataFrame) -> Aggregated:
    """Raw battles (either schema, strings or categoricals) → the unique-row table the fit works on.

    A battle (b, a) that b won is the battle (a, b) that a lost, so each unordered pair has at most
    three rows (lost, tied, won), whatever the number of battles."""
    _check_columns(battles)
    score2 = _SCORE2[_winner_codes(battles["winner"])]
    i, j, models = _model_codes(battles)
    kept = score2 >= 0
    if not kept.all():
        i, j, score2 = i[kept], j[kept], score2[kept]
    m = len(models)
    swap = i > j
    lo, hi = np.where(swap, j, i), np.where(swap, i, j)
    counts = np.bincount((lo * m + hi) * 3 + np.where(swap, 2 - score2, score2), minlength=m * m * 3)
    (code,) = np.nonzero(counts)
    if not len(code):
        raise ValueError("no battles with a winner or a tie (skips only)")
    return Aggregated(models, code // 3 // m, code // 3 % m, (code % 3) / 2, counts[code].astype(float))


def fit_strengths(agg: Aggregated, weights: np.ndarray, start: np.ndarray | None = None, iters: int = 100, tol: float = 1e-7) -> np.ndarray:
    """Bradley–Terry log-strengths for each row of `weights` (B × rows), batched Newton.

    The likelihood only needs, per unordered pair, its battles and i's summed score, so rows are
    first summed to pairs (≤ m(m−1)/2 whatever the battles); a step is then O(B · pairs + B · m³)
    dense work. `start` (m,) warm-starts every replicate, e.g. bootstrap ones from the point fit,
    which they differ from little. Model 0's strength is fixed at 0 (the likelihood only sees
    differences); re-anchor afterwards. A tiny ridge keeps models with no wins or no losses finite
    instead of running off to ±∞.
    """
    w = np.atleast_2d(weights)
    b, m = w.shape[0], len(agg.models)
    first = np.flatnonzero(np.r_[True, np.diff(agg.i * m + agg.j) != 0])
    pi, pj = agg.i[first], agg.j[first]
    battles = np.add.reduceat(w, first, axis=1)  # B × pairs
    won = np.add.reduceat(w * agg.y, first, axis=1)  # i's score
    incidence = np.zeros((len(first), m))  # d (s_i − s_j) / d s
    incidence[np.arange(len(first)), pi], incidence[np.arange(len(first)), pj] = 1.0, -1.0
    s = np.zeros((b, m)) if start is None else np.tile(start - start[0], (b, 1))
    ridge = 1e-6 * max(1.0, float(w.sum(1).mean()) / max(m, 1))
    diagonal = np.arange(m)
    for _ in range(iters):
        p = 1 / (1 + np.exp(s[:, pj] - s[:, pi]))
        grad = (won - battles * p) @ incidence - ridge * s
        v = battles * p * (1 - p)
        hess = np.zeros((b, m, m))
        hess[:, pi, pj] = hess[:, pj, pi] = -v
        hess[:, diagonal, diagonal] = v @ np.abs(incidence) + ridge
        step = np.linalg.solve(hess[:, 1:, 1:], grad[:, 1:, None])[..., 0]
        s[:, 1:] += step
        if np.abs(step).max() < tol:
            break
    return s


def to_ratings(strengths: np.ndarray, models: list[str], anchor: str | None = None, anchor_rating: float = 1000.0) -> np.ndarray:
    """Elo-scale ratings: `anchor` model at `anchor_rating`, or the mean at `anchor_rating` when None."""
    r = SCALE * strengths
    if anchor is None:
        return r - r.mean(-1, keepdims=True) + anchor_rating
    if anchor not in models:
        raise ValueError(f"anchor model {anchor!r} is not in the battles; models: {models}")
    return r - r[..., [models.index(anchor)]] + anchor_rating


WEIGHTINGS = ("none", "inverse_frequency")
CI_METHODS = ("bootstrap", "sandwich")


def pair_weights(agg: Aggregated, weighting: str) -> np.ndarray:
    """A factor per unique row: 1, or N / (P · n_pair) for inverse_frequency (every unordered pair
    then weighs N / P in all, P pairs and N battles, so the total weight stays N)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}")
    if weighting == "none":
        return np.ones(len(agg.i))
    m = len(agg.models)
    pair = np.minimum(agg.i, agg.j) * m + np.maximum(agg.i, agg.j)
    codes, inverse = np.unique(pair, return_inverse=True)
    per_pair = np.bincount(inverse, weights=agg.count)
    return agg.count.sum() / (len(codes) * per_pair[inverse])


def sandwich_se(agg: Aggregated, strengths: np.ndarray, factor: np.ndarray, anchor: int | None = None) -> np.ndarray:
    """Standard errors of the ratings (Elo points) from the sandwich covariance H⁻¹ M H⁻¹ of the
    log-strengths (model 0 fixed, as in the fit; each battle of a row weighted by its `factor`),
    carried through the anchoring."""
    m = len(agg.models)
    d = strengths[agg.i] - strengths[agg.j]
    p = 1 / (1 + np.exp(-d))
    h, meat = np.zeros((m, m)), np.zeros((m, m))
    for mat, v in ((h, agg.count * factor * p * (1 - p)), (meat, agg.count * factor**2 * (agg.y - p) ** 2)):
        np.add.at(mat, (agg.i, agg.i), v)
        np.add.at(mat, (agg.j, agg.j), v)
        np.add.at(mat, (agg.i, agg.j), -v)
        np.add.at(mat, (agg.j, agg.i), -v)
    bread = np.linalg.inv(h[1:, 1:] + 1e-9 * np.eye(m - 1))
    cov = np.zeros((m, m))
    cov[1:, 1:] = bread @ meat[1:, 1:] @ bread
    shift = np.full((m, m), 1 / m) if anchor is None else np.outer(np.ones(m), np.eye(m)[anchor])
    t = SCALE * (np.eye(m) - shift)
    return np.sqrt(np.clip(np.diag(t @ cov @ t.T), 0, None))


def bootstrap_weights(agg: Aggregated, rounds: int, seed: int) -> np.ndarray:
    """Resampling all battles with replacement = multinomial counts over the unique rows (rounds × rows)."""
    n = int(agg.count.sum())
    return np.random.default_rng(seed).multinomial(n, agg.count / n, size=rounds).astype(float)


def leaderboard(
    battles: pd.DataFrame,
    rounds: int = 100,
    seed: int = 0,
    anchor: str | None = None,
    anchor_rating: float = 1000.0,
    confidence: float = 0.95,
    weighting: str = "none",
    ci: str = "bootstrap",
) -> pd.DataFrame:
    """model, rating, ci_low, ci_high, battles — sorted best first, from raw battles in either schema
    (skips left out). CIs: percentile bootstrap over battles (`rounds`, `seed`), or `ci="sandwich"`:
    rating ± z · sandwich standard error."""
    if ci not in CI_METHODS:
        raise ValueError(f"ci must be one of {CI_METHODS}")
    agg = aggregate(battles)
    factor = pair_weights(agg, weighting)
    strengths = fit_strengths(agg, agg.count * factor)[0]
    point = to_ratings(strengths, agg.models, anchor, anchor_rating)
    alpha = (1 - confidence) / 2
    if ci == "bootstrap":
        boot = to_ratings(fit_strengths(agg, bootstrap_weights(agg, rounds, seed) * factor, start=strengths), agg.models, anchor, anchor_rating)
        lo, hi = np.quantile(boot, [alpha, 1 - alpha], axis=0)
    else:
        half = NormalDist().inv_cdf(1 - alpha) * sandwich_se(agg, strengths, factor, None if anchor is None else agg.models.index(anchor))
        lo, hi = point - half, point + half
    per_model = np.zeros(len(agg.models))
    np.add.at(per_model, agg.i, agg.count)
    np.add.at(per_model, agg.j, agg.count)
    board = pd.DataFrame({"model": agg.models, "rating": point, "ci_low": lo, "ci_high": hi, "battles": per_model.astype(int)})
    return board.sort_values("rating", ascending=False, ignore_index=True)


def leaderboards_by(battles: pd.DataFrame, column: str, **options) -> pd.DataFrame:
    """LMArena's per-category leaderboards: one `leaderboard(**options)` per value of `column` (a suite),
    or per element where it holds lists (tags: a battle counts in each of its tags); columns
    category + the leaderboard's. Categories with battles of fewer than two models are left out."""
    if column not in battles.columns:
        raise ValueError(f"battles have no column {column!r} to group by; columns: {sorted(battles.columns)}")
    listed = battles[column].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any()
    rows = (battles.explode(column) if listed else battles).dropna(subset=[column])
    boards = [
        leaderboard(group, **options).assign(category=category)
        for category, group in rows.groupby(column, sort=True)
        if pd.concat([group["model_a"], group["model_b"]]).nunique() >= 2
    ]
    if not boards:
        raise ValueError(f"no value of {column!r} has battles between two models")
    board = pd.concat(boards, ignore_index=True)
    return board[["category", *board.columns.drop("category")]]


def skip_rates(battles: pd.DataFrame) -> pd.DataFrame:
    """How often voters could not tell, per unordered model pair (model_a < model_b by name) and
    overall (a last row, model_a = model_b = "all"): votes, skips, skip_rate. A pair that is often
    skipped is one voters cannot separate, which its rating difference alone does not show."""
    a, b = battles["model_a"].astype(str), battles["model_b"].astype(str)
    first = (a <= b).to_numpy()
    pairs = pd.DataFrame({"model_a": np.where(first, a, b), "model_b": np.where(first, b, a), "skips": (battles["winner"] == SKIP).to_numpy()})
    table = pairs.groupby(["model_a", "model_b"], sort=True)["skips"].agg(votes="size", skips="sum").reset_index()
    table.loc[len(table)] = ["all", "all", int(table["votes"].sum()), int(table["skips"].sum())]
    return table.assign(skips=table["skips"].astype(int), skip_rate=table["skips"] / table["votes"])


def online_elo(battles: pd.DataFrame, k: float = 4.0, initial: float = 1000.0) -> dict[str, float]:
    """Sequential Elo in battle order, for comparison with the order-free Bradley–Terry fit."""
    ratings: dict[str, float] = {}
    battles = battles[battles["winner"] != SKIP]
    for a, b, w in zip(battles["model_a"], battles["model_b"], battles["winner"]):
        ra, rb = ratings.setdefault(a, initial), ratings.setdefault(b, initial)
        ea = float(win_probability(ra, rb))
        sa = SCORE_OF_A[w]
        ratings[a], ratings[b] = ra + k * (sa - ea), rb - k * (sa - ea)
    return ratings


def pair_matrices(battles: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(row model's win rate against column model with ties as ½, number of battles between them; skips left out)."""
    battles = battles[battles["winner"] != SKIP]
    a = battles[["model_a", "model_b"]].copy()
    a["score"] = battles["winner"].map(SCORE_OF_A)
    b = pd.DataFrame({"model_a": a["model_b"], "model_b": a["model_a"], "score": 1 - a["score"]})
    both = pd.concat([a, b], ignore_index=True)
    wins = both.pivot_table(index="model_a", columns="model_b", values="score", aggfunc="mean")
    counts = both.pivot_table(index="model_a", columns="model_b", values="score", aggfunc="size").fillna(0).astype(int)
    return wins, counts


def predicted_win_probability(board: pd.DataFrame) -> pd.DataFrame:
    """P(row beats column) implied by the ratings."""
    r = board.set_index("model")["rating"]
    return pd.DataFrame(win_probability(r.to_numpy()[:, None], r.to_numpy()[None, :]), index=r.index, columns=r.index)
