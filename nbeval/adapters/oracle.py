"""The oracle: renders the ground truth, optionally corrupted. The ceiling of every suite, and the
instrument that proves each scorer right (clean → near-perfect; more damage → monotonically worse).
With `style` it draws the same truth in graded other styles instead (`model=oracle_style`,
nbeval.world.styles): the stand-in for a real model's look, against which every scorer's card is read."""

from __future__ import annotations

import random

from PIL import Image

from nbeval.adapters import corruptions
from nbeval.adapters.base import EditRequest, GenRequest, GenResult, ModelAdapter, timed
from nbeval.world import Scene, render, renderer_fingerprint
from nbeval.world.styles import STYLE_VERSION, render_styled


class OracleAdapter(ModelAdapter):
    capabilities = frozenset({"generate", "edit"})
    needs_truth = True

    def __init__(self, name: str = "oracle", corruption: str | None = None, severity: int = 0, render_size: int | None = None, style: bool = False) -> None:
        """`render_size` renders at that resolution and resizes to the requested one: the ceiling of a
        model that works at that resolution (the reference model's is 64). `style`: `severity` is the
        style's, not a corruption's (the two are not combined)."""
        corruptions.check(corruption, severity)
        if render_size is not None and render_size < 8:
            raise ValueError(f"render_size must be at least 8 pixels, got {render_size}")
        if style and corruption is not None:
            raise ValueError(f"a styled oracle takes no corruption (got {corruption!r}): its severity is the style's")
        self.name, self.corruption, self.severity, self.style = name, corruption, int(severity), bool(style)
        self.render_size = None if render_size is None else int(render_size)

    def settings(self) -> dict:
        return {"corruption": self.corruption, "severity": self.severity, "renderer": renderer_fingerprint(), "render_size": self.render_size,
                **({"style": STYLE_VERSION} if self.style else {})}

    def _draw(self, truth: dict, size: int, key: str, turn: int = 0) -> Image.Image:
        if "scene" not in truth:  # a suite that cannot make one says why in `no_scene`
            raise ValueError(truth.get("no_scene", "the oracle needs a scene in the sample's truth"))
        rng = random.Random(f"{key}:{self.corruption}:{self.severity}")
        scene = Scene.from_dict(truth["scene"])
        if self.corruption in corruptions.SCENE_CORRUPTIONS:
            scene = corruptions.SCENE_CORRUPTIONS[self.corruption](scene, self.severity, rng)
        side = self.render_size or size
        # the style's choices come from the sample, not the turn: an edit chain keeps its look
        img = render_styled(scene, side, self.severity, random.Random(f"style:{key.rsplit(':', 1)[0]}")) if self.style else render(scene, side)
        if img.width != size:
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        if self.corruption in corruptions.IMAGE_CORRUPTIONS:
            img = corruptions.IMAGE_CORRUPTIONS[self.corruption](img, self.severity, rng)
        if self.corruption in corruptions.TURN_CORRUPTIONS:
            img = corruptions.TURN_CORRUPTIONS[self.corruption](img, self.severity, turn, rng)
        return img

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return [timed(self._draw, r.truth, r.size, f"{r.sample_id}:{r.seed}:0") for r in requests]

    def edit(self, requests: list[EditRequest]) -> list[GenResult]:
        return [timed(self._draw, r.truth, r.size, f"{r.sample_id}:{r.seed}:{r.turn}", r.turn) for r in requests]
