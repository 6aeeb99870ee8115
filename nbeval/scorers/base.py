"""The scorer protocol: images (+ the truth they should show) in, one JSON-able reading per image out.

A reading is what the scorer saw (the text OCR read, the objects the counter found), of the type the
scorer declares (`reading`, from nbeval.readings); suites turn readings into scores — metric values.
Readings are cached by (fingerprint, image, truth), so a scorer whose reading does not depend on the
truth says so (`uses_truth = False`) and is cached across suites.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

from PIL import Image

from nbeval.records import canonical_json


def check_sha256(what: str, got: str | None, expected: str | None) -> None:
    """Refuse weights other than the config names: the same config must mean the same readings."""
    if expected is not None and got != expected:
        raise ValueError(f"{what} have sha256 {got}, but the config expects {expected} "
                         "(set the scorer's sha256 to the weights', or to null to skip the check)")


class Scorer(ABC):
    name: str = "scorer"
    reading: type = dict  # what one reading is (nbeval.readings); a suite's role expects a given one
    uses_truth: bool = False

    def settings(self) -> dict:
        """Everything that changes readings (weights checksums, preprocessing); part of the fingerprint."""
        return {}

    def card(self) -> dict:
        """What a reader of the results needs to know to trust or reproduce the readings."""
        return {"name": self.name, "class": f"{type(self).__module__}.{type(self).__qualname__}", **self.settings()}

    @property
    def fingerprint(self) -> str:
        blob = canonical_json({"class": type(self).__qualname__, "settings": self.settings()})
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @abstractmethod
    def read(self, images: list[Image.Image], truths: list[dict]) -> list[dict]:
        """One reading per image, in order; an item that cannot be read may be an exception in its
        place (a judge's refusal). Raise only for a whole-batch failure. Earlier images a reading is
        made against come in its truth's `context` (name → image; see runner.read)."""
