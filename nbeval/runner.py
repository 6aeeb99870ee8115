"""Batched generate → read → score → aggregate, through the cache, with progress bars.

Every unit of work is committed to the cache as soon as its batch finishes, so a run killed at any
point and started again redoes nothing that was done. A failure of the model or of a scorer on one
item becomes a row with its error; the run goes on and counts them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from nbeval.adapters.base import GenRequest, GenResult, ModelAdapter
from nbeval.cache import Cache
from nbeval.records import (
    Generation,
    Sample,
    Score,
    content_hash,
    generations_frame,
    samples_frame,
    scores_frame,
)
from nbeval.scorers.base import Scorer
from nbeval.stats import Estimate
from nbeval.suite import Suite

log = logging.getLogger(__name__)


@dataclass
class SuiteResult:
    suite: Suite
    samples: pd.DataFrame
    generations: pd.DataFrame
    scores: pd.DataFrame
    metrics: dict[str, Estimate]
    cached_readings: int = 0  # scorer readings served by the cache
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n_failed_generations(self) -> int:
        return int(self.generations["error"].notna().sum())

    @property
    def n_failed_scores(self) -> int:
        return int(self.scores.loc[self.scores["error"].notna(), "sample_id"].nunique())


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def generate(model: ModelAdapter, samples: list[Sample], size: int, cache: Cache, batch_size: int, desc: str) -> list[Generation]:
    """Turn-0 image of every sample: from the cache when this model made it before at this size, else generated."""
    fp = model.fingerprint
    key = {s.id: content_hash([s.key, size]) for s in samples}
    by_id: dict[str, Generation] = {}
    pending: list[Sample] = []
    for s in samples:
        hit = cache.get_generation(fp, key[s.id], 0)
        if hit:
            by_id[s.id] = Generation(s.id, 0, model.name, fp, hit["image_sha256"], hit["seconds"], None, True)
        else:
            pending.append(s)
    with tqdm(total=len(samples), initial=len(samples) - len(pending), desc=f"{desc}: generate", unit="img", leave=False) as bar:
        for batch in _chunks(pending, batch_size):
            requests = [GenRequest(s.id, s.prompt, s.seed, size, s.truth[0]) for s in batch]
            try:
                results = model.generate(requests)
                if len(results) != len(batch):
                    raise RuntimeError(f"model returned {len(results)} results for {len(batch)} requests")
            except Exception as e:  # noqa: BLE001 — a whole-batch failure fails its rows, not the run
                log.warning("generation batch failed: %s", _error(e))
                results = [GenResult(None, 0.0, f"batch failed: {_error(e)}")] * len(batch)
            for s, r in zip(batch, results):
                if r.image is None:
                    by_id[s.id] = Generation(s.id, 0, model.name, fp, None, r.seconds, r.error or "no image")
                    continue
                sha = cache.put_image(r.image)
                cache.put_generation(fp, key[s.id], 0, sha, r.seconds, r.manifest)
                by_id[s.id] = Generation(s.id, 0, model.name, fp, sha, r.seconds)
            bar.update(len(batch))
    return [by_id[s.id] for s in samples]


def read(scorer: Scorer, items: list[tuple[str, dict]], cache: Cache, batch_size: int, desc: str) -> tuple[list[dict | BaseException], int]:
    """The scorer's reading of each (image sha256, truth) — cached, else computed in batches — and
    how many came from the cache. A batch that fails is retried one item at a time, so a single bad
    image fails alone.
    """
    fp = scorer.fingerprint
    keys = [(sha, content_hash(truth) if scorer.uses_truth else "-") for sha, truth in items]
    out: list[dict | BaseException | None] = [cache.get_reading(fp, sha, th) for sha, th in keys]
    pending = [i for i, r in enumerate(out) if r is None]
    with tqdm(total=len(items), initial=len(items) - len(pending), desc=f"{desc}: {scorer.name}", unit="img", leave=False) as bar:
        for batch in _chunks(pending, batch_size):
            images = [cache.get_image(items[i][0]) for i in batch]
            truths = [items[i][1] for i in batch]
            try:
                readings = scorer.score(images, truths)
            except Exception:  # noqa: BLE001 — isolate the failing item below
                readings = []
                for im, tr in zip(images, truths):
                    try:
                        readings.append(scorer.score([im], [tr])[0])
                    except Exception as e:  # noqa: BLE001
                        readings.append(e)
            done = []
            for i, r in zip(batch, readings):
                out[i] = r
                if not isinstance(r, BaseException):
                    done.append((keys[i][0], keys[i][1], r))
            cache.put_readings(fp, done)
            bar.update(len(batch))
    return out, len(items) - len(pending)  # type: ignore[return-value]


def score_suite(
    suite: Suite,
    model: ModelAdapter,
    scorer_for: Callable[[str], Scorer],
    cache: Cache,
    n: int,
    seed: int,
    batch_size: int,
) -> SuiteResult:
    t0 = time.perf_counter()
    samples = suite.samples(n, seed)
    t1 = time.perf_counter()
    gens = generate(model, samples, suite.image_size, cache, batch_size, suite.name)
    t2 = time.perf_counter()
    ok = [(s, g) for s, g in zip(samples, gens) if g.image_sha256]
    readings: dict[str, list] = {}
    cached_readings = 0
    for role in suite.scorers:
        items = [(g.image_sha256, suite.scorer_truth(s, 0, role)) for s, g in ok]
        readings[role], hits = read(scorer_for(role), items, cache, batch_size, suite.name)
        cached_readings += hits
    t3 = time.perf_counter()
    rows: list[Score] = []
    for j, (s, _) in enumerate(ok):
        got = {role: readings[role][j] for role in suite.scorers}
        failed = {role: r for role, r in got.items() if isinstance(r, BaseException)}
        if failed:
            rows += [Score(s.id, 0, role, "_error", None, "{}", _error(e)) for role, e in failed.items()]
            continue
        try:
            rows += suite.score(s, 0, got)
        except Exception as e:  # noqa: BLE001 — a suite bug on one sample is a row, not a crash
            rows.append(Score(s.id, 0, "suite", "_error", None, "{}", _error(e)))
    scores = scores_frame(rows)
    samples_df = samples_frame(samples)
    valid = scores[scores["error"].isna()]
    metrics = suite.aggregate(valid, samples_df) if len(valid) else {}
    t4 = time.perf_counter()
    return SuiteResult(
        suite,
        samples_df,
        generations_frame(gens),
        scores,
        metrics,
        cached_readings,
        {"samples": t1 - t0, "generate": t2 - t1, "read": t3 - t2, "aggregate": t4 - t3, "total": t4 - t0},
    )


def write_tables(result: SuiteResult, out_dir: Path) -> Path:
    """The per-sample tables of one suite as Parquet, under `<out_dir>/<suite>/`."""
    d = out_dir / result.suite.name
    d.mkdir(parents=True, exist_ok=True)
    result.samples.to_parquet(d / "samples.parquet", index=False)
    result.generations.to_parquet(d / "generations.parquet", index=False)
    result.scores.to_parquet(d / "scores.parquet", index=False)
    return d
