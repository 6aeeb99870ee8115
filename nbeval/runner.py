"""Batched generate → read → score → aggregate, through the cache, with progress bars.

Every unit of work is committed to the cache as soon as its batch finishes, so a run killed at any
point and started again redoes nothing that was done. A failure of the model or of a scorer on one
item becomes a row with its error; the run goes on and counts them. Tables come out in `run_order`,
by columns the runner writes (`turn`, `sample_index`), so the shards of a run, sorted by the same
columns, are the whole run row for row.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nbeval.adapters.base import EditRequest, GenRequest, GenResult, ModelAdapter
from nbeval.cache import Cache
from nbeval.readings import missing_keys, name_of
from nbeval.records import (
    Generation,
    Sample,
    Score,
    canonical_json,
    content_hash,
    generations_frame,
    samples_frame,
    scores_frame,
)
from nbeval.scorers.base import Scorer
from nbeval.stats import Estimate
from nbeval.suite import Suite, SuiteResult

log = logging.getLogger(__name__)


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _requests(model: ModelAdapter, batch: list[Sample], turn: int, size: int, inputs: dict[str, list[str]], cache: Cache) -> list[GenResult]:
    """One batch of requests; the sample's truth goes only to a model that declares it needs it."""

    def truth(s: Sample) -> dict:
        return s.truth[turn] if model.needs_truth else {}

    if turn == 0:
        return model.generate([GenRequest(s.id, s.prompt, s.seed, size, truth(s)) for s in batch])
    return model.edit([
        EditRequest(s.id, turn, s.prompt, s.turns[:turn], tuple(map(cache.get_image, inputs[s.id])), s.seed, size, truth(s))
        for s in batch
    ])


def generate(model: ModelAdapter, suite: Suite, samples: list[Sample], size: int, cache: Cache, batch_size: int) -> list[Generation]:
    """Every turn of every sample: from the cache when this model made it before from the same
    inputs at this size, else generated. Turn t > 0 edits the images of turns < t that
    `suite.edit_input` chooses (the model's own, or the truth's); a failed turn ends its chain."""
    fp = model.fingerprint
    out: list[Generation] = []
    inputs: dict[str, list[str]] = {s.id: [] for s in samples}  # sha256 of the images each turn edits
    alive = list(samples)
    for turn in range(1 + max((len(s.turns) for s in samples), default=0)):
        todo = [s for s in alive if len(s.turns) >= turn]
        key = {s.id: content_hash([s.key, size, *inputs[s.id]]) for s in todo}
        by_id: dict[str, Generation] = {}
        pending: list[Sample] = []
        for s in todo:
            hit = cache.get_generation(fp, key[s.id], turn)
            given = inputs[s.id][-1] if turn else None
            if hit:
                by_id[s.id] = Generation(s.id, turn, model.name, fp, hit["image_sha256"], hit["seconds"], None, True, given)
            else:
                pending.append(s)
        desc = f"{suite.name}: " + ("generate" if turn == 0 else f"edit turn {turn}")
        with tqdm(total=len(todo), initial=len(todo) - len(pending), desc=desc, unit="img", leave=False) as bar:
            for batch in _chunks(pending, batch_size):
                try:
                    results = _requests(model, batch, turn, size, inputs, cache)
                    if len(results) != len(batch):
                        raise RuntimeError(f"model returned {len(results)} results for {len(batch)} requests")
                except Exception as e:  # noqa: BLE001 — a whole-batch failure fails its rows, not the run
                    log.warning("generation batch failed: %s", _error(e))
                    results = [GenResult(None, 0.0, f"batch failed: {_error(e)}")] * len(batch)
                for s, r in zip(batch, results):
                    given = inputs[s.id][-1] if turn else None
                    if r.image is None:
                        by_id[s.id] = Generation(s.id, turn, model.name, fp, None, r.seconds, r.error or "no image", input_sha256=given)
                        continue
                    sha = cache.put_image(r.image)
                    cache.put_generation(fp, key[s.id], turn, sha, r.seconds, r.manifest)
                    by_id[s.id] = Generation(s.id, turn, model.name, fp, sha, r.seconds, input_sha256=given)
                bar.update(len(batch))
        gens = [by_id[s.id] for s in todo]
        out += gens
        alive = [s for s, g in zip(todo, gens) if g.image_sha256]
        out += [
            Generation(s.id, later, model.name, fp, None, 0.0, f"turn {turn} failed")
            for s, g in zip(todo, gens) if not g.image_sha256 for later in range(turn + 1, len(s.turns) + 1)
        ]
        for s, g in zip(todo, gens):
            if g.image_sha256 and len(s.turns) > turn:
                given = suite.edit_input(s, turn, size)
                inputs[s.id].append(g.image_sha256 if given is None else cache.put_image(given))
    return out


def _checked(scorer: Scorer, readings: list[dict | BaseException]) -> list[dict | BaseException]:
    """The scorer's readings (an item it could not read is an exception in its place), refused when
    one lacks a key of the reading type it declares."""
    for r in readings:
        if not isinstance(r, BaseException) and (missing := missing_keys(r, scorer.reading)):
            raise TypeError(f"scorer {scorer.name!r} gave a reading without {', '.join(missing)} of its {name_of(scorer.reading)}")
    return readings


def read(scorer: Scorer, items: list[tuple[str, dict]], cache: Cache, batch_size: int, desc: str) -> tuple[list[dict | BaseException], int]:
    """The scorer's reading of each (image sha256, truth) — cached, else computed in batches — and
    how many came from the cache. A batch that fails is retried one item at a time, so a single bad
    image fails alone; an item the scorer could not read (an exception in its place) fails alone and
    is not cached. A truth's `context` (name → sha256 of an earlier image the reading is made against:
    the image an edit turn was given, the sample's first image, another model's image) is part of the
    cache key and reaches the scorer as the images themselves.
    """

    def truth_for_scorer(i: int) -> dict:
        truth = items[i][1]
        if "context" not in truth:
            return truth
        return {**truth, "context": {name: cache.get_image(sha) for name, sha in truth["context"].items()}}

    fp = scorer.fingerprint
    keys = [(sha, content_hash(truth) if scorer.uses_truth else "-") for sha, truth in items]
    out: list[dict | BaseException | None] = [cache.get_reading(fp, sha, th) for sha, th in keys]
    pending = [i for i, r in enumerate(out) if r is None]
    with tqdm(total=len(items), initial=len(items) - len(pending), desc=f"{desc}: {scorer.name}", unit="img", leave=False) as bar:
        for batch in _chunks(pending, batch_size):
            images = [cache.get_image(items[i][0]) for i in batch]
            truths = [truth_for_scorer(i) for i in batch]
            try:
                readings = _checked(scorer, scorer.read(images, truths))
            except Exception:  # noqa: BLE001 — isolate the failing item below
                readings = []
                for im, tr in zip(images, truths):
                    try:
                        readings.append(_checked(scorer, scorer.read([im], [tr]))[0])
                    except Exception as e:  # noqa: BLE001
                        readings.append(e)
            done = []
            for i, r in zip(batch, readings):
                if not isinstance(r, BaseException):
                    r = json.loads(canonical_json(r))  # as the cache gives it back (keys sorted): cold and warm runs make the same tables
                    done.append((keys[i][0], keys[i][1], r))
                out[i] = r
            cache.put_readings(fp, done)
            bar.update(len(batch))
    return out, len(items) - len(pending)  # type: ignore[return-value]


def parse_shard(spec, n: int | None = None) -> tuple[int, int] | None:
    """`suite.shard` → (index, count); None (the default) for an unsharded run."""
    if spec is None or spec == "":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise ValueError(f"suite.shard={spec!r}: expected i/k with 0 <= i < k, e.g. suite.shard=0/4 (all four: nbeval run -m suite.shard=0/4,1/4,2/4,3/4)")
    index, count = int(m[1]), int(m[2])
    if n is not None and count > n:
        raise ValueError(f"suite.shard={spec}: {count} shards of n={n} samples would leave shards empty; use at most {n}")
    return index, count


def shard_block(n_items: int, index: int, count: int, unit: int = 1) -> slice:
    """Shard `index` of `count` (`suite.shard=index/count`): a contiguous block of the full sample
    list. Suites stratify their samples round robin (counts 1–8, text tiers), so a block is a
    representative mini-run, where every count-th sample would not be. Blocks are whole batches of
    `unit` (the run's batch_size), within one batch of each other in size, so that each image is
    generated and read in the same batch as in an unsharded run (a model's or scorer's output may
    depend on its batch); with fewer batches than shards, blocks of single samples."""
    units = -(-n_items // unit)
    if units < count:
        unit, units = 1, n_items
    return slice(min(index * units // count * unit, n_items), min((index + 1) * units // count * unit, n_items))


def shard_samples(suite: Suite, n: int, seed: int, batch_size: int, shard: tuple[int, int] | None = None) -> tuple[list[Sample], int]:
    """The samples a run (or shard i of k of it) scores, and the place of the first in `samples(n, seed)`."""
    samples = suite.samples(n, seed)
    block = shard_block(len(samples), *shard, unit=batch_size) if shard is not None else slice(0, len(samples))
    return samples[block], block.start


def run_order(table: pd.DataFrame) -> pd.DataFrame:
    """A run's generations or scores in the order it writes them, whole or merged from shards: by
    turn, whole-sample rows (turn −1) last, then by the sample's place in `samples(n, seed)`; the rows
    of one (sample, turn) keep their own order (a stable sort)."""
    key = np.lexsort((table["sample_index"].to_numpy(), table["turn"].to_numpy(), (table["turn"] < 0).to_numpy()))
    return table.iloc[key].reset_index(drop=True)


def frame_hash(df: pd.DataFrame) -> str:
    """sha256 of a table's columns, dtypes, index and every value (pandas' per-row hashes)."""
    h = hashlib.sha256(content_hash([[str(c) for c in df.columns], [str(t) for t in df.dtypes]]).encode())
    h.update(pd.util.hash_pandas_object(df, index=True).to_numpy().tobytes())
    return h.hexdigest()


@lru_cache(maxsize=None)
def code_fingerprint(cls: type) -> str:
    """sha256 of the source of the modules a suite's aggregation runs: those defining its class and
    its bases, and the modules of their package they import names from (nbeval.stats, …), so an edit
    to that code never serves numbers it would no longer compute."""
    ours = {"nbeval", cls.__module__.split(".")[0]}
    modules = {}
    for base in cls.__mro__:
        module = sys.modules.get(base.__module__)
        if module is None or base.__module__.split(".")[0] not in ours:
            continue
        modules[module.__name__] = module
        for value in vars(module).values():
            name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
            if isinstance(name, str) and name.split(".")[0] in ours and name in sys.modules:
                modules[name] = sys.modules[name]
    h = hashlib.sha256()
    for name in sorted(modules):
        source = inspect.getsourcefile(modules[name])
        h.update(f"{name}\0".encode() + (Path(source).read_bytes() if source else b""))
    return h.hexdigest()


def aggregate(suite: Suite, scores: pd.DataFrame, samples: pd.DataFrame, cache: Cache) -> dict[str, Estimate]:
    """`suite.aggregate(scores, samples)`, served from the cache when the same suite (class, version,
    params, aggregation code) has aggregated the same tables before: a warm run repeats no bootstrap."""
    try:
        key = content_hash({"suite": f"{type(suite).__module__}.{type(suite).__qualname__}", "name": suite.name, "version": suite.version,
                            "params": suite.params(), "code": code_fingerprint(type(suite)),
                            "scores": frame_hash(scores), "samples": frame_hash(samples)})
    except TypeError:  # a table or params pandas or JSON cannot hash: compute, don't cache
        return suite.aggregate(scores, samples)
    known = cache.get_aggregate(key)
    if known is not None:
        return {name: Estimate(**est) for name, est in known.items()}
    metrics = suite.aggregate(scores, samples)
    cache.put_aggregate(key, {name: est.to_dict() for name, est in metrics.items()})
    return metrics


def score_suite(
    suite: Suite,
    model: ModelAdapter,
    scorer_for: Callable[[str], Scorer],
    cache: Cache,
    n: int,
    seed: int,
    batch_size: int,
    shard: tuple[int, int] | None = None,
) -> SuiteResult:
    """The suite's `samples(n, seed)` — or, given `shard=(i, k)`, block i of k of them — generated,
    read, scored and aggregated."""
    t0 = time.perf_counter()
    samples, start = shard_samples(suite, n, seed, batch_size, shard)
    index = {s.id: start + i for i, s in enumerate(samples)}
    t1 = time.perf_counter()
    gens = generate(model, suite, samples, suite.image_size, cache, batch_size)
    t2 = time.perf_counter()
    by_id = {s.id: s for s in samples}
    ok = [(by_id[g.sample_id], g) for g in gens if g.image_sha256]
    roles = [suite.scorers_for(s, g.turn) for s, g in ok]
    own = {(g.sample_id, g.turn): g.image_sha256 for g in gens}
    context = {"input": lambda g: g.input_sha256, "first": lambda g: own[g.sample_id, 0], "previous": lambda g: own.get((g.sample_id, g.turn - 1))}
    readings: dict[str, dict[int, dict | BaseException]] = {}
    cached_readings = 0
    for role in suite.scorers:
        which = [j for j, r in enumerate(roles) if role in r]
        items = []
        for s, g in (ok[j] for j in which):
            names = suite.scorer_context(s, g.turn, role)
            items.append((g.image_sha256, suite.scorer_truth(s, g.turn, role) | ({"context": {n: context[n](g) for n in names}} if names else {})))
        got_role, hits = read(scorer_for(role), items, cache, batch_size, suite.name) if items else ([], 0)
        readings[role] = dict(zip(which, got_role))
        cached_readings += hits
    t3 = time.perf_counter()
    rows: list[Score] = []
    complete: dict[str, dict[int, dict[str, dict]]] = {}  # sample id → turn → readings, all read
    for j, (s, g) in enumerate(ok):
        got = {role: readings[role][j] for role in roles[j]}
        failed = {role: r for role, r in got.items() if isinstance(r, BaseException)}
        if failed:
            rows += [Score(s.id, g.turn, role, "_error", None, "{}", _error(e)) for role, e in failed.items()]
            continue
        complete.setdefault(s.id, {})[g.turn] = got
        try:
            rows += suite.score(s, g.turn, got)
        except Exception as e:  # noqa: BLE001 — a suite bug on one sample is a row, not a crash
            rows.append(Score(s.id, g.turn, "suite", "_error", None, "{}", _error(e)))
    for s in samples:
        if len(complete.get(s.id, {})) == len(s.turns) + 1:
            try:
                rows += suite.score_sample(s, complete[s.id])
            except Exception as e:  # noqa: BLE001
                rows.append(Score(s.id, -1, "suite", "_error", None, "{}", _error(e)))
    scores = run_order(scores_frame(rows, index))
    samples_df = samples_frame(samples, start)
    valid = scores[scores["error"].isna()]
    metrics = aggregate(suite, valid, samples_df, cache) if len(valid) else {}
    t4 = time.perf_counter()
    return SuiteResult(
        suite,
        samples_df,
        run_order(generations_frame(gens, index)),
        scores,
        metrics,
        cached_readings,
        {"samples": t1 - t0, "generate": t2 - t1, "read": t3 - t2, "aggregate": t4 - t3, "total": t4 - t0},
    )
