"""Bootstrap Bradley–Terry: nbeval's batched Newton vs the FastChat/LMArena approach (aggregate to
unique rows, then one scipy L-BFGS fit per bootstrap replicate in a process pool), on the same
simulated battles and the same bootstrap weights, so ratings must agree.

    python benchmarks/arena_bt.py --models 50 --battles 1000000 --rounds 100 --out benchmarks/results/arena_bt.md
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from nbeval.arena.ratings import aggregate, bootstrap_weights, fit_strengths, normalise_battles, to_ratings


def simulate(models: int, battles: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    true = rng.normal(0, 150, models)
    a = rng.integers(0, models, battles)
    b = (a + rng.integers(1, models, battles)) % models
    p = 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
    u, tie = rng.random(battles), rng.random(battles) < 0.1
    names = np.array([f"model_{k:02d}" for k in range(models)])
    winner = np.where(tie, "tie", np.where(u < p, "model_a", "model_b"))
    return pd.DataFrame({"model_a": names[a], "model_b": names[b], "winner": winner})


def _bt_loss(params, i, j, y, w):
    d = params[i] - params[j]
    p = 1 / (1 + np.exp(-d))
    loss = -(w * (y * np.log(p + 1e-300) + (1 - y) * np.log(1 - p + 1e-300))).sum()
    g = w * (p - y)
    grad = np.bincount(i, g, len(params)) - np.bincount(j, g, len(params))
    return loss, grad


def _fit_one(args):
    i, j, y, w, m = args
    res = minimize(_bt_loss, np.zeros(m), args=(i, j, y, w), jac=True, method="L-BFGS-B", options={"maxiter": 1000, "gtol": 1e-8})
    return res.x


def reference(battles: pd.DataFrame, weights: np.ndarray) -> tuple[np.ndarray, list[str]]:
    agg = aggregate(battles)
    m = len(agg.models)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        fits = list(pool.map(_fit_one, [(agg.i, agg.j, agg.y, w, m) for w in weights]))
    return np.stack(fits), agg.models


def ours(battles: pd.DataFrame, weights: np.ndarray) -> tuple[np.ndarray, list[str]]:
    agg = aggregate(battles)
    return fit_strengths(agg, weights), agg.models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=50)
    p.add_argument("--battles", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    battles = normalise_battles(simulate(args.models, args.battles, 0))
    weights = bootstrap_weights(aggregate(battles), args.rounds, seed=0)
    times = {}
    results = {}
    for name, fn in (("nbeval batched Newton", ours), ("FastChat-style L-BFGS per replicate, process pool", reference)):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            strengths, models = fn(battles, weights)
            best = min(best, time.perf_counter() - t0)
        times[name], results[name] = best, to_ratings(strengths, models)
    names = list(times)
    diff = np.abs(results[names[0]] - results[names[1]]).max()
    ci = [np.quantile(results[n], [0.025, 0.975], axis=0) for n in names]
    ci_diff = np.abs(ci[0] - ci[1]).max()
    lines = [
        "# Bootstrap Bradley–Terry speed",
        "",
        f"{args.models} models, {args.battles:,} simulated battles (10% ties), {args.rounds} bootstrap rounds, same bootstrap weights for both;",
        f"best of {args.repeats}; {os.cpu_count()} cores, no GPU. Times include aggregating the battles to unique (pair, outcome) rows.",
        "",
        "| method | seconds |",
        "|---|---|",
        *[f"| {n} | {times[n]:.2f} |" for n in names],
        "",
        f"Speed-up: {times[names[1]] / times[names[0]]:.1f}×. Largest rating difference over all replicates and models: {diff:.4f} Elo points; "
        f"largest CI-bound difference: {ci_diff:.4f}.",
        "",
        f"Command: `python benchmarks/arena_bt.py --models {args.models} --battles {args.battles} --rounds {args.rounds} --out {args.out}`",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
