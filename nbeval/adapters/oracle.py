"""The oracle: renders the ground truth, optionally corrupted. The ceiling of every suite, and the
instrument that proves each scorer right (clean → near-perfect; more damage → monotonically worse)."""

from __future__ import annotations

import random

from PIL import Image

from nbeval.adapters import corruptions
from nbeval.adapters.base import EditRequest, GenRequest, GenResult, ModelAdapter, timed
from nbeval.world import Scene, render, renderer_fingerprint


class OracleAdapter(ModelAdapter):
    capabilities = frozenset({"generate", "edit"})

    def __init__(self, name: str = "oracle", corruption: str | None = None, severity: int = 0) -> None:
        corruptions.check(corruption, severity)
        self.name, self.corruption, self.severity = name, corruption, int(severity)

    def settings(self) -> dict:
        return {"corruption": self.corruption, "severity": self.severity, "renderer": renderer_fingerprint()}

    def _draw(self, truth: dict, size: int, key: str) -> Image.Image:
        if "scene" not in truth:
            raise ValueError("the oracle needs a scene in the sample's truth")
        rng = random.Random(f"{key}:{self.corruption}:{self.severity}")
        scene = Scene.from_dict(truth["scene"])
        if self.corruption in corruptions.SCENE_CORRUPTIONS:
            scene = corruptions.SCENE_CORRUPTIONS[self.corruption](scene, self.severity, rng)
        img = render(scene, size)
        if self.corruption in corruptions.IMAGE_CORRUPTIONS:
            img = corruptions.IMAGE_CORRUPTIONS[self.corruption](img, self.severity, rng)
        return img

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return [timed(self._draw, r.truth, r.size, f"{r.sample_id}:{r.seed}:0") for r in requests]

    def edit(self, requests: list[EditRequest]) -> list[GenResult]:
        return [timed(self._draw, r.truth, r.size, f"{r.sample_id}:{r.seed}:{r.turn}") for r in requests]
