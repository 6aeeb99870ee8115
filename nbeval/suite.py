"""The suite protocol. A suite makes samples with exact truth, turns scorer readings into metric
values and aggregates them with confidence intervals; the runner does the generating, the reading
and the caching, so every suite gets batching and resume for free. A suite's name is the key the
run's config gives it (`suite.<name>`), set by the orchestrator, never derived from a parameter."""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
from PIL import Image

from nbeval.records import Sample, Score, canonical_json
from nbeval.stats import Estimate, bootstrap_mean, proportion

if TYPE_CHECKING:
    from nbeval.adapters.base import ModelAdapter
    from nbeval.cache import Cache
    from nbeval.scorers.base import Scorer


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool | None  # None: closer to zero is better (a bias)
    description: str
    proportion: bool = False  # Wilson interval instead of bootstrap


class Suite(ABC):
    name: str = "suite"  # the default; a run names each suite by its config key
    version: str = "1"
    scorers: Mapping[str, type] = {}  # scorer role it reads images with → the reading it expects (nbeval.readings)
    optional_scorers: Mapping[str, type] = {}  # roles read too when the run configures a scorer for them (use_scorers)
    capabilities: frozenset[str] = frozenset({"generate"})
    metrics: tuple[MetricSpec, ...] = ()
    headline: tuple[str, ...] = ()  # metrics shown first in summaries

    def __init__(self, image_size: int = 256) -> None:
        self.image_size = image_size

    def params(self) -> dict:
        """Everything that shapes the samples; recorded in results.json and part of sample keys."""
        return {"image_size": self.image_size}

    @abstractmethod
    def samples(self, n: int, seed: int) -> list[Sample]:
        """`n` samples, a pure function of (params, n, seed)."""

    def sample_rng(self, seed: int, i: int) -> random.Random:
        """Sample i's own generator: it depends on the suite, its params, the seed and i only, so a
        sample never changes when n does (and shards draw exactly the unsharded run's samples)."""
        return random.Random(f"{self.name}:{canonical_json(self.params())}:{seed}:{i}")

    def use_scorers(self, configured: set[str]) -> None:
        """Read with the optional roles the run configures a scorer for, beside the required ones."""
        self.scorers = {**self.scorers, **{r: t for r, t in self.optional_scorers.items() if r in configured}}

    def scorers_for(self, sample: Sample, turn: int) -> tuple[str, ...]:
        """The scorer roles that read this turn's image (all of them unless a suite knows better)."""
        return self.scorers

    def scorer_truth(self, sample: Sample, turn: int, role: str) -> dict:
        """What scorer `role` needs to know of the truth (empty for scorers that just read)."""
        return {}

    def scorer_context(self, sample: Sample, turn: int, role: str) -> tuple[str, ...]:
        """Earlier images scorer `role` reads this turn's image against, by name: "input" (the image
        this turn edited), "first" (the model's own turn-0 image), "previous" (its own turn t−1
        image). The runner hands them in the truth's `context`; none by default."""
        return ()

    def edit_input(self, sample: Sample, turn: int, size: int) -> Image.Image | None:
        """What later turns edit in place of the model's own image of `turn`: None keeps the model's
        own (the conversational case); a suite may hand the model something else, such as the truth."""
        return None

    @abstractmethod
    def score(self, sample: Sample, turn: int, readings: dict[str, dict]) -> list[Score]:
        """Metric rows for one generated turn, from each scorer role's reading of it."""

    def score_sample(self, sample: Sample, readings: dict[int, dict[str, dict]]) -> list[Score]:
        """Rows about a whole multi-turn sample (turn −1), from every turn's readings; only for
        samples whose every turn was read. None by default."""
        return []

    @abstractmethod
    def aggregate(self, scores: pd.DataFrame, samples: pd.DataFrame) -> dict[str, Estimate]:
        """Metric name → estimate with CI. `scores` holds only rows without errors."""

    def plots(self, scores: pd.DataFrame, samples: pd.DataFrame, metrics: dict[str, Estimate]) -> dict:
        """Name → matplotlib Figure, drawn from the scores and the metrics `aggregate` computed (never
        recomputed here: bootstraps are the expensive part); none by default."""
        return {}

    def galleries(self, scores: pd.DataFrame, samples: pd.DataFrame, generations: pd.DataFrame, image: Callable[[str], Image.Image]) -> dict:
        """Name → PIL image made from the generations (`image(sha256)` loads one); none by default."""
        return {}

    def spec(self, metric: str) -> MetricSpec | None:
        base = metric.split("/")[0]
        return next((m for m in self.metrics if m.name == base), None)


@dataclass
class SuiteResult:
    """One suite's run: its tables (samples, generations, scores and its own), metrics and costs."""

    suite: Suite
    samples: pd.DataFrame
    generations: pd.DataFrame
    scores: pd.DataFrame
    metrics: dict[str, Estimate]
    cached_readings: int = 0  # scorer readings served by the cache
    seconds: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # a suite's own, e.g. the arena's battles

    @property
    def n_failed_generations(self) -> int:
        return int(self.generations["error"].notna().sum())

    @property
    def n_failed_scores(self) -> int:
        return int(self.scores.loc[self.scores["error"].notna(), "sample_id"].nunique())

    @property
    def failure_reasons(self) -> dict[str, int]:
        """Failed readings and scores by reason: a judge's kind of failure (refusal, content_filter,
        unparsable, timeout, …), else the exception's type."""
        out: dict[str, int] = {}
        for error in self.scores["error"].dropna():
            kind, _, rest = str(error).partition(": ")
            reason = rest.split(":", 1)[0] if kind == "JudgeError" else kind
            out[reason] = out.get(reason, 0) + 1
        return dict(sorted(out.items()))


@dataclass(frozen=True)
class RunContext:
    """What a run lends a suite that drives the runner itself (a contest): the run's scorers by role,
    its cache, n, seed and batch size, and `score`, the runner bound to all of them (one suite, one
    model → its SuiteResult), so a contest makes its images and readings exactly as a run would."""

    scorer_for: Callable[[str], Scorer]
    cache: Cache
    n: int
    seed: int
    batch_size: int
    score: Callable[[Suite, ModelAdapter], SuiteResult]


class ContestSuite(Suite):
    """A suite that rates models against each other (an arena) instead of scoring each alone: a run
    with `model=[a,b,…]` hands it every model at once, and every other suite refuses such a run.
    It makes its images and readings through the run's runner (`RunContext.score`), so they come from
    the shared cache, and its result may carry tables of its own (`SuiteResult.tables`)."""

    def score(self, sample: Sample, turn: int, readings: dict[str, dict]) -> list[Score]:
        raise TypeError(f"suite {self.name!r} compares models: the run calls its contest(), not score()")

    @abstractmethod
    def contest(self, models: list[ModelAdapter], run: RunContext) -> SuiteResult:
        """Every model on the run's samples, compared; the result's `generations` and `scores` hold
        every model's rows (a `model` column tells them apart)."""

    def contest_plots(self, result: SuiteResult) -> dict:
        """Name → matplotlib Figure drawn from the whole result (its own tables too); none by default."""
        return {}


def wide_table(scores: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """One row per (sample, turn), one column per metric, plus the samples' tags as columns."""
    wide = scores.pivot_table(index=["sample_id", "turn"], columns="metric", values="value", aggfunc="first")
    wide = wide.reset_index()
    wide.columns.name = None
    tags = pd.DataFrame([json.loads(t) for t in samples["tags"]], index=samples["sample_id"])
    return wide.merge(tags, left_on="sample_id", right_index=True, how="left")


def estimate(values: pd.Series, spec: MetricSpec) -> Estimate:
    return proportion(values.to_numpy()) if spec.proportion else bootstrap_mean(values.to_numpy())


def estimate_metrics(wide: pd.DataFrame, specs: tuple[MetricSpec, ...], breakdowns: tuple[str, ...] = ()) -> dict[str, Estimate]:
    """Each metric overall and per value of each breakdown column: `<metric>/<column>_<value>`."""
    out: dict[str, Estimate] = {}
    for spec in specs:
        if spec.name not in wide:
            continue
        out[spec.name] = estimate(wide[spec.name], spec)
        for col in breakdowns:
            for value, group in wide.groupby(col, sort=True):
                out[f"{spec.name}/{col}_{value}"] = estimate(group[spec.name], spec)
    return out
