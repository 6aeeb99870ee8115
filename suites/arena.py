"""The arena as a suite: models against each other on another suite's prompts, decided by an
automatic judge and rated by Bradley–Terry with bootstrap confidence intervals.

    nbeval run suite=arena model=[reference,reference_noplan]                   # suite judge on counting
    nbeval run suite=arena model=[oracle,oracle_drop] model.severity=3 judge=clip suite.arena.base=adherence

Each model answers the base suite's samples through the run's runner, so its images and readings come
from (and go to) the shared cache exactly as in a run of the base suite alone: the base suite is built
from its own config (`conf/suite/<base>.yaml`, `base_params` over it), as that run builds it. Each sample then becomes a
battle between every pair of models (or `pairs_per_sample` random pairs), sides drawn at random from
the seed so that a judge with a position bias (a VLM) favours no model; the judge (`conf/judge/`)
decides each one and its fingerprint goes into every battle row. Tables: `battles` (battle_id,
sample_id, model_a, model_b, winner ∈ a | b | tie | both_bad, judge, judge_fingerprint, voter, time:
the schema of human votes, so both can be rated together), `leaderboard` (model, rating, ci_low,
ci_high, battles, win_rate) and `win_rates` (row model's score against column model, ties ½).
"""

from __future__ import annotations

import datetime as dt
import itertools
import time

import numpy as np
import pandas as pd

from nbeval.adapters.base import ModelAdapter
from nbeval.api import configured_suite
from nbeval.arena.judges import Battle, Judge, JudgeContext, Side, SuiteJudge
from nbeval.arena.publish import plot_ratings
from nbeval.arena.ratings import SCORE_OF_A, leaderboard, pair_matrices
from nbeval.arena.sampling import uniform_pairs
from nbeval.records import Sample, content_hash
from nbeval.stats import Estimate, wilson
from nbeval.suite import ContestSuite, MetricSpec, RunContext, SuiteResult


def sides(model: str, result: SuiteResult) -> dict[str, Side]:
    """Sample id → the model's side of a battle: its turn-0 image and its base-suite values, which
    stay empty when any turn of the sample failed to generate or to be read (a judge then lets it lose)."""
    first = result.generations[result.generations["turn"] == 0]
    failed = set(result.generations.loc[result.generations["error"].notna(), "sample_id"])
    failed |= set(result.scores.loc[result.scores["error"].notna(), "sample_id"])
    ok = result.scores[~result.scores["sample_id"].isin(failed)]
    values = ok.groupby(["sample_id", "metric"])["value"].mean()
    by_sample = {sid: {metric: float(v) for (_, metric), v in group.items()} for sid, group in values.groupby(level="sample_id")}
    return {sid: Side(model, sha if isinstance(sha, str) else None, by_sample.get(sid, {})) for sid, sha in zip(first["sample_id"], first["image_sha256"])}


class ArenaSuite(ContestSuite):
    name = "arena"
    version = "1"
    metrics = (
        MetricSpec("rating", True, "Bradley–Terry rating (Elo scale, ties ½) from the judge's verdicts, 95% bootstrap CI: rating/<model>"),
        MetricSpec("win_rate", True, "share of its battles a model won, ties as ½ (Wilson CI): win_rate/<model>", proportion=True),
        MetricSpec("judge", None, "what the judge showed of itself, e.g. judge/judge_first_rate (a VLM's position bias: 0.5 is none)", proportion=True),
    )
    headline = ("rating", "win_rate")

    def __init__(
        self,
        base: str = "counting",
        base_params: dict | None = None,
        judge: Judge | None = None,
        pairs_per_sample: int | None = None,
        rounds: int = 100,
        anchor: str | None = None,
        anchor_rating: float = 1000.0,
    ) -> None:
        """`base`: a suite whose samples the models answer, as its config builds it with `base_params` over it;
        `pairs_per_sample`: None battles every pair of models on every sample, k draws k pairs;
        `rounds`, `anchor`, `anchor_rating`: the ratings' bootstrap and scale (ratings.leaderboard)."""
        self.base = configured_suite(base, base_params)
        super().__init__(self.base.image_size)
        if isinstance(self.base, ContestSuite):
            raise ValueError(f"the arena's base must score single models; {base!r} is itself a contest")
        if pairs_per_sample is not None and pairs_per_sample < 1:
            raise ValueError(f"pairs_per_sample must be at least 1 (or null for every pair), got {pairs_per_sample}")
        self.scorers, self.optional_scorers, self.capabilities = self.base.scorers, self.base.optional_scorers, self.base.capabilities
        self.judge = judge or SuiteJudge()
        self.pairs_per_sample, self.rounds, self.anchor, self.anchor_rating = pairs_per_sample, rounds, anchor, float(anchor_rating)

    def use_scorers(self, configured: set[str]) -> None:
        self.base.use_scorers(configured)
        self.scorers = self.base.scorers

    def params(self) -> dict:
        return {"base": self.base.name, "base_version": self.base.version, "base_params": self.base.params(), "judge": self.judge.name,
                "pairs_per_sample": self.pairs_per_sample, "rounds": self.rounds, "anchor": self.anchor, "anchor_rating": self.anchor_rating}

    def samples(self, n: int, seed: int) -> list[Sample]:
        return self.base.samples(n, seed)

    def _pairs(self, names: list[str], n_samples: int, seed: int) -> list[list[tuple[str, str]]]:
        """Per sample, the (model_a, model_b) pairs that battle on it, sides at random."""
        if self.pairs_per_sample:
            k = self.pairs_per_sample
            drawn = uniform_pairs(names, k * n_samples, seed)
            return [drawn[i * k : (i + 1) * k] for i in range(n_samples)]
        rng = np.random.default_rng(seed)
        pairs = list(itertools.combinations(names, 2))
        return [[(b, a) if flip else (a, b) for (a, b), flip in zip(pairs, rng.random(len(pairs)) < 0.5)] for _ in range(n_samples)]

    def contest(self, models: list[ModelAdapter], run: RunContext) -> SuiteResult:
        names = [m.name for m in models]
        if len(set(names)) < len(names):
            raise ValueError(f"the arena tells models apart by name, but two share one: {names} (set model.name)")
        t0 = time.perf_counter()
        runs = {m.name: run.score(self.base, m) for m in models}
        t1 = time.perf_counter()
        ctx = JudgeContext(self.base, run.scorer_for, run.cache, run.batch_size)
        fingerprint = self.judge.fingerprint(ctx)
        by_model = {name: sides(name, r) for name, r in runs.items()}
        samples = self.samples(run.n, run.seed)
        battles = [
            Battle(content_hash([fingerprint, s.key, a, b, k])[:16], s, by_model[a][s.id], by_model[b][s.id])
            for s, pairs in zip(samples, self._pairs(names, len(samples), run.seed)) for k, (a, b) in enumerate(pairs)
        ]
        winners = self.judge.judge(battles, ctx)
        t2 = time.perf_counter()
        table = pd.DataFrame({
            "battle_id": [b.id for b in battles],
            "sample_id": [b.sample.id for b in battles],
            "model_a": [b.a.model for b in battles],
            "model_b": [b.b.model for b in battles],
            "winner": winners,
            "judge": self.judge.name,
            "judge_fingerprint": fingerprint,
            "voter": f"{self.judge.name}@{fingerprint}",
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        })
        first = next(iter(runs.values()))
        metrics = self.aggregate(table, first.samples) | {f"judge/{k}": v for k, v in self.judge.diagnostics().items()}
        board = pd.DataFrame([
            {"model": key.split("/", 1)[1], "rating": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "battles": e.n,
             "win_rate": metrics["win_rate/" + key.split("/", 1)[1]].value}
            for key, e in metrics.items() if key.startswith("rating/")
        ])
        wins, _ = pair_matrices(table)
        t3 = time.perf_counter()
        return SuiteResult(
            self,
            first.samples,
            # by sample, so the run's sample grid shows the models' images of one prompt side by side
            pd.concat([r.generations for r in runs.values()]).sort_values(["sample_id", "turn"], kind="stable", ignore_index=True),
            pd.concat([r.scores.assign(model=name) for name, r in runs.items()], ignore_index=True),
            metrics,
            sum(r.cached_readings for r in runs.values()),
            {"models": t1 - t0, "judge": t2 - t1, "ratings": t3 - t2, "total": t3 - t0},
            {"battles": table, "leaderboard": board, "win_rates": wins.rename_axis(index="model", columns=None).reset_index()},
        )

    def aggregate(self, scores: pd.DataFrame, samples: pd.DataFrame) -> dict[str, Estimate]:
        """From the battles table (the arena's own table, in place of per-image scores): each
        model's rating with its bootstrap CI, best first, then its win rate. A model that wins (or
        loses) every battle has no finite maximum-likelihood rating: the fit's tiny ridge bounds
        it and the bootstrap cannot widen it, so its win rate's Wilson interval is the honest one."""
        board = leaderboard(scores, self.rounds, 0, self.anchor, self.anchor_rating)
        out = {f"rating/{r.model}": Estimate(float(r.rating), float(r.ci_low), float(r.ci_high), int(r.battles), "bootstrap") for r in board.itertuples()}
        score_a = scores["winner"].map(SCORE_OF_A)
        for model in board["model"]:
            won = pd.concat([score_a[scores["model_a"] == model], 1 - score_a[scores["model_b"] == model]])
            out[f"win_rate/{model}"] = wilson(float(won.sum()), len(won))
        return out

    def contest_plots(self, result: SuiteResult) -> dict:
        from nbeval.plots import plt

        wins = result.tables["win_rates"].set_index("model")
        fig, ax = plt.subplots(figsize=(1.2 * len(wins) + 2.5, 0.9 * len(wins) + 1.5))
        ax.imshow(wins.to_numpy(float), vmin=0, vmax=1, cmap="RdBu")
        for (y, x), v in np.ndenumerate(wins.to_numpy(float)):
            if v == v:  # not NaN (the diagonal)
                ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(wins.columns)), wins.columns, rotation=30, ha="right")
        ax.set_yticks(range(len(wins)), wins.index)
        ax.set_title(f"win rate of row vs column (ties ½), judge {self.judge.name}")
        fig.tight_layout()
        return {"ratings": plot_ratings(result.tables["leaderboard"]), "win_rates": fig}
