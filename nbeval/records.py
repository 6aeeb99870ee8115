"""The records that flow through a run — Sample → Generation → Score — and their table schemas.

Per-run tables are pandas DataFrames with exactly the columns below, saved as Parquet.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    """What weights are identified by: the bytes, not the path."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
        d = asdict(self)
        return {
            "sample_id": d["id"],
            "suite": d["suite"],
            "prompt": d["prompt"],
            "turns": canonical_json(d["turns"]),
            "truth": canonical_json(d["truth"]),
            "seed": d["seed"],
            "tags": canonical_json(d["tags"]),
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


SAMPLE_COLUMNS = ["sample_id", "suite", "prompt", "turns", "truth", "seed", "tags", "sample_key"]
GENERATION_COLUMNS = list(Generation.__dataclass_fields__)
SCORE_COLUMNS = list(Score.__dataclass_fields__)


def samples_frame(samples: list[Sample]) -> pd.DataFrame:
    return pd.DataFrame([s.to_row() for s in samples], columns=SAMPLE_COLUMNS)


def generations_frame(gens: list[Generation]) -> pd.DataFrame:
    return pd.DataFrame([asdict(g) for g in gens], columns=GENERATION_COLUMNS)


def scores_frame(scores: list[Score]) -> pd.DataFrame:
    df = pd.DataFrame([asdict(s) for s in scores], columns=SCORE_COLUMNS)
    return df.astype({"value": "float64"})
