"""Identity embeddings: what the identity suite compares across a character's images.

The default reads with the image tower of an open_clip backbone (the shipped in-domain nbclip-world,
or a user's pretrained open_clip weights through the same loader).
"""

from __future__ import annotations

from PIL import Image

from nbeval.scorers.clip import ClipScorer
from nbeval.world import Scene, render


class ClipIdentityScorer(ClipScorer):
    """Reading: the image's identity embedding (the backbone's image tower) and its cosine with the
    embedding of the identity's reference render, which the truth describes."""

    name = "identity"
    uses_truth = True

    def settings(self) -> dict:
        return {**super().settings(), "reference_side": 256}

    def score(self, images: list[Image.Image], truths: list[dict]) -> list[dict]:
        emb = self.backbone.embed_images(images)
        refs = self.backbone.embed_images([render(Scene.from_dict(t["reference"]), 256) for t in truths])
        sims = (emb * refs).sum(-1)
        return [{"embedding": [round(v, 5) for v in e.tolist()], "reference_similarity": float(s)} for e, s in zip(emb, sims)]
