"""The whole leaderboard from raw battles: nbeval's `leaderboard()` against FastChat's own
`compute_bootstrap_bt` (vendored verbatim in benchmarks/fastchat_rating_systems.py: unique rows, then
one scipy L-BFGS fit per bootstrap replicate in a process pool), both timed in this process on the
same DataFrame in FastChat's schema (model_a, model_b, winner ∈ model_a, model_b, tie; pandas'
default string columns), and our point ratings against FastChat's `compute_bt`, offset-free.

    python benchmarks/arena_bt.py --models 50 --battles 1000000 --rounds 100 --out benchmarks/results/arena_bt.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
import fastchat_rating_systems as fastchat  # noqa: E402

from nbeval.arena.ratings import leaderboard  # noqa: E402


def simulate(models: int, battles: int, seed: int) -> pd.DataFrame:
    """Battles in FastChat's schema between models of known strength, 10% ties."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0, 150, models)
    a = rng.integers(0, models, battles)
    b = (a + rng.integers(1, models, battles)) % models
    p = 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
    u, tie = rng.random(battles), rng.random(battles) < 0.1
    names = np.array([f"model_{k:02d}" for k in range(models)])
    winner = np.where(tie, "tie", np.where(u < p, "model_a", "model_b"))
    return pd.DataFrame({"model_a": names[a], "model_b": names[b], "winner": winner})


def offset_free_difference(ours: pd.Series, theirs: pd.Series) -> float:
    """Largest |difference| once each side's mean rating is subtracted (anchoring differs, spacing must not)."""
    theirs = theirs[ours.index]
    return float(((ours - ours.mean()) - (theirs - theirs.mean())).abs().max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=50)
    p.add_argument("--battles", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    battles = simulate(args.models, args.battles, 0)
    runs = {
        "nbeval `leaderboard(battles, rounds)`": lambda: leaderboard(battles, rounds=args.rounds),
        "FastChat `compute_bootstrap_bt(battles, num_round)`": lambda: fastchat.compute_bootstrap_bt(battles, args.rounds),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    results = {}
    for _ in range(args.repeats):  # interleaved, so a busy spell on the machine hits both
        for name, fn in runs.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    ours, boot = results.values()
    ours = ours.set_index("model")
    diff = offset_free_difference(ours["rating"], fastchat.compute_bt(battles))
    fc_lo, fc_hi = (boot.quantile(q) for q in (0.025, 0.975))
    centre = ours["rating"].mean() - fastchat.compute_bt(battles)[ours.index].mean()
    ci_diff = max((ours["ci_low"] - centre - fc_lo[ours.index]).abs().max(), (ours["ci_high"] - centre - fc_hi[ours.index]).abs().max())
    ours_s, theirs_s = (min(t) for t in times.values())
    names = list(times)
    lines = [
        "# Arena leaderboard speed: nbeval against FastChat",
        "",
        f"{args.models} models, {args.battles:,} simulated battles in FastChat's schema (10% ties), {args.rounds} bootstrap rounds;",
        f"both from the same raw DataFrame in one process, interleaved, {args.repeats} times each; {os.cpu_count()} cores"
        " (FastChat's pool uses them all), no GPU.",
        "",
        "| method | best s | all runs, s |",
        "|---|---|---|",
        *[f"| {n} | {min(times[n]):.3f} | {', '.join(f'{t:.3f}' for t in times[n])} |" for n in names],
        "",
        f"Speed-up (best against best): {theirs_s / ours_s:.1f}×. Point ratings against FastChat's `compute_bt` on the same"
        f" battles, offset-free: largest difference {diff:.4f} Elo points. 95% bounds against FastChat's bootstrap"
        f" (different random draws, same method): largest difference {ci_diff:.2f} points.",
        "",
        f"Command: `OMP_NUM_THREADS=1 python benchmarks/arena_bt.py --models {args.models} --battles {args.battles}"
        f" --rounds {args.rounds} --repeats {args.repeats} --out {args.out}`",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
