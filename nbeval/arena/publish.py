"""A leaderboard for people: the ratings-with-CIs plot, and an MLflow run with ratings, tables, plots."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from nbeval.arena.ratings import pair_matrices


def plot_ratings(board: pd.DataFrame):
    """Horizontal forest plot: each model's rating with its 95% CI, best at the top."""
    from nbeval.plots import plt

    b = board.iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(b) + 1.2))
    # a percentile interval need not hold the point fit (with one battle, bootstraps equal it up to rounding): clip, as matplotlib refuses negative bars
    below, above = (b["rating"] - b["ci_low"]).clip(lower=0), (b["ci_high"] - b["rating"]).clip(lower=0)
    ax.errorbar(b["rating"], range(len(b)), xerr=[below, above], fmt="o", color="#4c72b0", capsize=3)
    ax.set_yticks(range(len(b)), [f"{m} (n={n})" for m, n in zip(b["model"], b["battles"])])
    ax.set_xlabel("Bradley–Terry rating (Elo scale) with 95% CI")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _metric_key(model: str) -> str:
    return re.sub(r"[^\w\-. :/]", "_", model)


def log_to_mlflow(board: pd.DataFrame, battles: pd.DataFrame, params: dict, out: Path, experiment: str = "nbeval-arena") -> str:
    """One MLflow run: params, `arena/rating/<model>` (+ CI bounds), leaderboard and battle tables,
    win-rate and battle-count matrices, the ratings plot. Returns the run id."""
    from nbeval.tracking import import_mlflow

    mlflow = import_mlflow()
    mlflow.set_experiment(experiment)
    wins, counts = pair_matrices(battles)
    battles.to_parquet(out / "battles.parquet", index=False)
    with mlflow.start_run(run_name="arena leaderboard", tags={"nbeval.kind": "arena"}) as run:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        metrics = {}
        for r in board.itertuples():
            key = _metric_key(r.model)
            metrics |= {f"arena/rating/{key}": r.rating, f"arena/rating/{key}_ci_low": r.ci_low, f"arena/rating/{key}_ci_high": r.ci_high}
        metrics["arena/battles"] = float(len(battles))
        mlflow.log_metrics(metrics)
        mlflow.log_table(board, artifact_file="leaderboard_table.json")
        mlflow.log_artifacts(str(out))  # leaderboard files, the plot, the battles as read
        mlflow.log_text(wins.to_csv(), "win_rate_matrix.csv")
        mlflow.log_text(counts.to_csv(), "battle_count_matrix.csv")
    return run.info.run_id
