"""nbeval's own reference model as a model under test (`reference_model/`, shipped checkpoint).

The ablation presets (`conf/model/reference_*.yaml`) are the same weights with one switch changed.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

from nbeval.adapters.base import EditRequest, GenRequest, GenResult, ModelAdapter, timed
from nbeval.records import sha256_file

DEFAULT_CHECKPOINT = "reference-v3"
# Bumped whenever reference_model/ draws different images from the same checkpoint and settings, so no
# cache serves images of the code before: 2 = an edit of the model's own image starts from its tokens.
SAMPLER_VERSION = 2
_checkpoint_sha256 = lru_cache(maxsize=8)(sha256_file)  # the fingerprint asks often; hash 15 MB once


def checkpoint_path(checkpoint: str) -> Path:
    """A file path, or the name of a checkpoint shipped in `reference_model/checkpoints/`."""
    path = Path(checkpoint).expanduser()
    if path.suffix == ".safetensors":
        return path
    from reference_model import CHECKPOINTS

    return CHECKPOINTS / f"{checkpoint}.safetensors"


class ReferenceAdapter(ModelAdapter):
    capabilities = frozenset({"generate", "edit"})

    def __init__(self, name: str = "reference", checkpoint: str = DEFAULT_CHECKPOINT, device: str = "cpu", **settings) -> None:
        from reference_model.settings import Settings

        self.name, self.device = name, device
        self.checkpoint = checkpoint_path(checkpoint)
        if not self.checkpoint.exists():
            raise FileNotFoundError(f"reference model checkpoint {self.checkpoint} not found (train one: python -m reference_model.train)")
        self.options = Settings(**settings)
        self._model = None

    def settings(self) -> dict:
        return {"checkpoint_sha256": _checkpoint_sha256(self.checkpoint), "sampler_version": SAMPLER_VERSION, **asdict(self.options)}

    @property
    def needs_truth(self) -> bool:
        """Only the ground-truth-plan ablation (`reference_gtplan`) plans from the sample's scene."""
        return self.options.plan == "truth"

    @property
    def model(self):
        if self._model is None:
            from reference_model.model import ReferenceModel

            self._model = ReferenceModel.load(self.checkpoint, self.device)
        return self._model

    def _truth(self, truth: dict):
        from nbeval.world import Scene

        return Scene.from_dict(truth["scene"]) if "scene" in truth else None

    def _draw(self, requests: list[GenRequest] | list[EditRequest]) -> list:
        truths = [self._truth(r.truth) for r in requests]
        if len({r.size for r in requests}) > 1:
            raise ValueError("requests of several sizes in one batch")
        if isinstance(requests[0], EditRequest):
            return self.model.edit([r.prompt for r in requests], [r.instructions for r in requests], [r.images[-1] for r in requests], [r.seed for r in requests], self.options, truths, requests[0].size)
        return self.model.generate([r.prompt for r in requests], [r.seed for r in requests], self.options, truths, requests[0].size)

    def _batch(self, requests: list[GenRequest] | list[EditRequest]) -> list[GenResult]:
        """Drawn side by side; on any error, again one by one, so one bad request fails alone."""
        if not requests:
            return []
        t0 = time.perf_counter()
        try:
            images = self._draw(requests)
        except Exception:  # noqa: BLE001 — retried one by one below
            return [timed(lambda r: self._draw([r])[0], r) for r in requests]
        per_image = (time.perf_counter() - t0) / len(requests)
        return [GenResult(img, per_image) for img in images]

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return self._batch(requests)

    def edit(self, requests: list[EditRequest]) -> list[GenResult]:
        return self._batch(requests)
