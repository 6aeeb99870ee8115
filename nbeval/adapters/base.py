"""The model-under-test protocol: batch in, batch out, failures per item.

A stateless model uses the last image of an EditRequest; a model with native multi-turn context
can use the whole conversation. The sample's ground truth is opt-in: a request carries it only to an
adapter that declares `needs_truth` (the oracle, which renders it; the reference model planning from
it, `reference_gtplan`); every other model gets an empty `truth`, through every path (a run, the
arena, `nbeval serve`), so a model under test can never read the answer.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from PIL import Image

from nbeval.records import canonical_json


@dataclass(frozen=True)
class GenRequest:
    sample_id: str
    prompt: str
    seed: int
    size: int
    truth: dict = field(default_factory=dict)  # empty unless the adapter declares needs_truth


@dataclass(frozen=True)
class EditRequest:
    sample_id: str
    turn: int
    prompt: str
    instructions: tuple[str, ...]  # instructions of turns 1..turn, the last one is this turn's
    images: tuple[Image.Image, ...]  # images of turns 0..turn-1 (the model's own, or the truth's)
    seed: int
    size: int
    truth: dict = field(default_factory=dict)  # empty unless the adapter declares needs_truth


@dataclass
class GenResult:
    image: Image.Image | None
    seconds: float = 0.0
    error: str | None = None
    manifest: dict = field(default_factory=dict)


class ModelAdapter(ABC):
    """Base of every model under test. Subclasses set `name` and describe their settings in `settings()`."""

    name: str = "model"
    capabilities: frozenset[str] = frozenset({"generate"})
    needs_truth: bool = False  # True only for instruments that draw the answer (the oracle)

    def settings(self) -> dict:
        """Everything that changes the images; part of the fingerprint."""
        return {}

    @property
    def fingerprint(self) -> str:
        blob = canonical_json({"class": type(self).__qualname__, "name": self.name, "settings": self.settings()})
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @abstractmethod
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """One result per request, in order; a failure is a result with `error` set."""

    def edit(self, requests: list[EditRequest]) -> list[GenResult]:
        raise NotImplementedError(f"model {self.name!r} cannot edit images")


def timed(fn, *args) -> GenResult:
    """Run `fn(*args) -> Image`, catching its failure into the result so one bad sample never stops a run."""
    t0 = time.perf_counter()
    try:
        img = fn(*args)
    except Exception as e:  # noqa: BLE001 — any model failure becomes a per-row error
        return GenResult(None, time.perf_counter() - t0, f"{type(e).__name__}: {e}")
    return GenResult(img, time.perf_counter() - t0)
