"""The records that flow through a run — Sample → Generation → Score — and their table schemas.

Per-run tables are pandas DataFrames with exactly the columns below, saved as Parquet.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from nbeval.cache import file_digest


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    """What weights are identified by: the bytes, not the path (hashed once per size and mtime, not on
    every run: `nbeval.cache.file_digest`)."""
    return file_digest(path, "sha256")


SKIP_SUFFIXES = frozenset({".md", ".png", ".jpg", ".jpeg", ".gif", ".webp"})  # docs and sample images: no effect on outputs


def _weight_files(root: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file of a weights folder that can change outputs."""
    out = []
    for d, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for f in files:
            p = Path(d) / f
            if f.startswith(".") or p.suffix.lower() in SKIP_SUFFIXES:
                continue
            st = p.stat()
            out.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return sorted(out)


@lru_cache(maxsize=32)
def _hash_files(root: str, files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for rel, _, _ in files:
        h.update(f"{rel}\0{sha256_file(Path(root) / rel)}\n".encode())
    return h.hexdigest()


def folder_sha256(path: str | os.PathLike) -> str:
    """What a weights folder (a diffusers pipeline, a transformers model) is identified by: sha256 over
    (relative path, sha256 of content) of its files, hidden files, *.md and images left out; computed
    once per process for the same files (same sizes and modification times). The path is not in it."""
    root = Path(path).resolve()
    return _hash_files(str(root), tuple(_weight_files(root)))


@dataclass(frozen=True)
class Sample:
    """One test case. `truth[t]` is the exact ground truth after turn t (turn 0 = the prompt)."""

    id: str
    suite: str
    prompt: str
    truth: tuple[dict, ...]
    seed: int
    turns: tuple[str, ...] = ()
    tags: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Content hash: the cache key of what a model is asked, so changed samples are never served stale."""
        return content_hash([self.suite, self.id, self.prompt, list(self.turns), list(self.truth), self.seed])

    def to_row(self) -> dict:
        return {
            "sample_id": self.id,
            "suite": self.suite,
            "prompt": self.prompt,
            "turns": canonical_json(self.turns),
            "truth": canonical_json(self.truth),
            "seed": self.seed,
            "tags": canonical_json(self.tags),
            "sample_key": self.key,
        }


@dataclass(frozen=True)
class Generation:
    """What a model made for one turn of one sample; a failure is a row with `error`, not a crash."""

    sample_id: str
    turn: int
    model: str
    model_fingerprint: str
    image_sha256: str | None
    seconds: float
    error: str | None = None
    cached: bool = False
    input_sha256: str | None = None  # the image this turn edited (the model's own previous one, or what the suite gave it)


@dataclass(frozen=True)
class Score:
    """One metric value for one turn of one sample (turn −1: the whole sample); `detail` is JSON (what OCR read, what was counted)."""

    sample_id: str
    turn: int
    scorer: str
    metric: str
    value: float | None
    detail: str = "{}"
    error: str | None = None


# `sample_index`: the sample's place in its suite's `samples(n, seed)` — the order column a run's
# tables are sorted by (runner.run_order), the same in a whole run and in the shards of one.
SAMPLE_COLUMNS = ["sample_id", "suite", "prompt", "turns", "truth", "seed", "tags", "sample_key", "sample_index"]
GENERATION_COLUMNS = [*Generation.__dataclass_fields__, "sample_index"]
SCORE_COLUMNS = [*Score.__dataclass_fields__, "sample_index"]


def _fields(record: Generation | Score) -> dict:
    """A flat record's fields (`asdict` deep-copies: a tenth of a warm run went to it)."""
    return {f: getattr(record, f) for f in record.__dataclass_fields__}


def samples_frame(samples: list[Sample], start: int = 0) -> pd.DataFrame:
    """Samples that are `samples(n, seed)[start:start + len(samples)]`."""
    return pd.DataFrame([{**s.to_row(), "sample_index": start + i} for i, s in enumerate(samples)], columns=SAMPLE_COLUMNS).astype({"sample_index": "int64"})


def generations_frame(gens: list[Generation], index: dict[str, int]) -> pd.DataFrame:
    """`index`: sample id → its place in `samples(n, seed)`."""
    return pd.DataFrame([{**_fields(g), "sample_index": index[g.sample_id]} for g in gens], columns=GENERATION_COLUMNS).astype({"sample_index": "int64"})


def scores_frame(scores: list[Score], index: dict[str, int]) -> pd.DataFrame:
    df = pd.DataFrame([{**_fields(s), "sample_index": index[s.sample_id]} for s in scores], columns=SCORE_COLUMNS)
    return df.astype({"value": "float64", "sample_index": "int64"})
