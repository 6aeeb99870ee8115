"""Identity embeddings: what the identity suite compares across a character's images.

The default reads with the image tower of an open_clip backbone (the shipped in-domain nbclip-world,
or a user's pretrained open_clip weights through the same loader).
"""

from __future__ import annotations

import json

import torch
from PIL import Image

from nbeval.records import canonical_json
from nbeval.scorers.clip import ClipScorer
from nbeval.world import Scene, render


class ClipIdentityScorer(ClipScorer):
    """Reading: the image's identity embedding (the backbone's image tower) and its cosine with the
    embedding of the identity's reference render, which the truth describes."""

    name = "identity"
    uses_truth = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._references: dict[str, torch.Tensor] = {}  # one identity's reference serves all its turns

    def settings(self) -> dict:
        return {**super().settings(), "reference_side": 256}

    def _reference_embeddings(self, truths: list[dict]) -> torch.Tensor:
        keys = [canonical_json(t["reference"]) for t in truths]
        new = [k for k in dict.fromkeys(keys) if k not in self._references]
        if new:
            renders = [render(Scene.from_dict(json.loads(k)), 256) for k in new]
            self._references.update(zip(new, self.backbone.embed_images(renders)))
        return torch.stack([self._references[k] for k in keys])

    def score(self, images: list[Image.Image], truths: list[dict]) -> list[dict]:
        emb = self.backbone.embed_images(images)
        sims = (emb * self._reference_embeddings(truths)).sum(-1)
        return [{"embedding": [round(v, 5) for v in e.tolist()], "reference_similarity": float(s)} for e, s in zip(emb, sims)]
