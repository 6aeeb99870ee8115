"""The torchmetrics form of CLIP prompt adherence, apart from the scorers (nbeval.scorers.clip) so
that building a scorer does not import torchmetrics; `nbeval.scorers.clip.CLIPAdherence` is this class."""

from __future__ import annotations

from typing import Protocol

import torch
from PIL import Image
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from nbeval.clipmetrics import adherence
from nbeval.world.claims import NEGATIVE_KINDS


class Embedder(Protocol):
    """What the metric needs of a backbone (nbeval.scorers.clip.ClipBackbone): unit-norm embeddings."""

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor: ...

    def embed_texts(self, texts: list[str]) -> torch.Tensor: ...


class CLIPAdherence(Metric):
    """Prompt adherence of images to captions, in the variants of VARIANTS (nbeval.clipmetrics).

    `update(images, captions, negatives)`: `negatives[i]` maps a kind in NEGATIVE_KINDS to a false
    caption for image i (empty: no R-precision for it). States are per-image cosines, concatenated
    across processes, so `compute()` is exact under distributed evaluation.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, backbone: Embedder, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.add_state("cos", default=[], dist_reduce_fx="cat")
        self.add_state("neg_cos", default=[], dist_reduce_fx="cat")  # [N, len(NEGATIVE_KINDS)], NaN where none

    def update(self, images: list[Image.Image], captions: list[str], negatives: list[dict[str, str]] | None = None) -> None:
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        negatives = negatives or [{} for _ in images]
        img = self.backbone.embed_images(images)
        texts = list(captions) + [n[k] for n in negatives for k in NEGATIVE_KINDS if k in n]
        txt = self.backbone.embed_texts(texts)
        self.cos.append((img * txt[: len(images)]).sum(-1))
        neg = torch.full((len(images), len(NEGATIVE_KINDS)), float("nan"))
        j = len(images)
        for i, n in enumerate(negatives):
            for k, kind in enumerate(NEGATIVE_KINDS):
                if kind in n:
                    neg[i, k] = img[i] @ txt[j]
                    j += 1
        self.neg_cos.append(neg)

    def compute(self) -> dict[str, torch.Tensor]:
        """Every variant of `VARIANTS` (nbeval.clipmetrics: the definitions the adherence suite uses too)."""
        cos, neg = dim_zero_cat(self.cos), dim_zero_cat(self.neg_cos)
        return {k: torch.tensor(v) for k, v in adherence(cos.double().numpy(), neg.double().numpy(), NEGATIVE_KINDS).items()}
