"""open_clip backbones for nbeval: one loader, a torchmetrics Metric for adherence, and the base of
the scorers that read with them (`clip` for adherence here; `identity` in `scorers.embeddings`).

Every backbone — our shipped in-domain `nbclip-world` or a user's pretrained ViT-B-32 from a local
file — loads through `open_clip.create_model_and_transforms(name, pretrained=...)`, so the path our
tests prove is the path real weights take. Nothing is downloaded: a missing file is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from nbeval.clipmetrics import VARIANTS, adherence
from nbeval.readings import ClipReading
from nbeval.records import sha256_file
from nbeval.scorers.base import Scorer, check_sha256
from nbeval.world.claims import NEGATIVE_KINDS

WEIGHTS_DIR = Path(__file__).parent / "weights"
NBCLIP_NAME = "nbclip-world"
DEFAULT_WEIGHTS = WEIGHTS_DIR / f"{NBCLIP_NAME}.safetensors"

@dataclass
class ClipBackbone:
    """A loaded open_clip model with its own preprocessing and tokenizer, in eval mode."""

    model: torch.nn.Module
    transform: object
    tokenizer: object
    name: str
    weights: str  # file path or open_clip pretrained tag
    weights_sha256: str | None

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        x = torch.stack([self.transform(im.convert("RGB")) for im in images])
        return self.model.encode_image(x, normalize=True)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts), normalize=True)

    def card(self) -> dict:
        return {"backbone": self.name, "weights": self.weights, "weights_sha256": self.weights_sha256,
                "preprocess": repr(self.transform).replace("\n", " ")}


def load_backbone(name: str = NBCLIP_NAME, pretrained: str | None = str(DEFAULT_WEIGHTS), cache_dir: str | None = None) -> ClipBackbone:
    """`pretrained`: a local weight file (.safetensors/.bin/.pt), an open_clip tag already in
    `cache_dir`, or None for random weights (training only)."""
    open_clip.add_model_config(WEIGHTS_DIR)  # registers nbclip-world; idempotent
    sha = None
    if pretrained is not None and (Path(pretrained).suffix or "/" in pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"CLIP weights {path} not found: give a local file (nothing is downloaded at run time)")
        pretrained, sha = str(path), sha256_file(path)
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # open_clip narrates every load step at INFO on the root logger
    try:
        model, _, transform = open_clip.create_model_and_transforms(name, pretrained=pretrained, cache_dir=cache_dir)
        tokenizer = open_clip.get_tokenizer(name)
    finally:
        root.setLevel(level)
    return ClipBackbone(model.eval(), transform, tokenizer, name, str(pretrained), sha)


@lru_cache(maxsize=4)
def shared_backbone(name: str, pretrained: str | None, cache_dir: str | None) -> ClipBackbone:
    """One loaded copy per process, shared by the adherence and identity scorers."""
    return load_backbone(name, pretrained, cache_dir)


class CLIPAdherence(Metric):
    """Prompt adherence of images to captions, in the variants of VARIANTS (nbeval.clipmetrics).

    `update(images, captions, negatives)`: `negatives[i]` maps a kind in NEGATIVE_KINDS to a false
    caption for image i (empty: no R-precision for it). States are per-image cosines, concatenated
    across processes, so `compute()` is exact under distributed evaluation.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, backbone: ClipBackbone, **kwargs) -> None:
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


class ClipScorer(Scorer):
    """Base of the scorers that read images with an open_clip backbone."""

    def __init__(self, model: str = NBCLIP_NAME, weights: str | None = None, sha256: str | None = None, cache_dir: str | None = None) -> None:
        """`weights`: a local file or an open_clip tag in `cache_dir`; None is our shipped nbclip-world.
        `sha256`: the file's expected checksum; other bytes are refused (None: not checked)."""
        self.backbone = shared_backbone(model, weights or str(DEFAULT_WEIGHTS), cache_dir)
        check_sha256(f"CLIP weights {self.backbone.weights}", self.backbone.weights_sha256, sha256)

    def settings(self) -> dict:
        """The weights by checksum (not by path, so a moved checkout keeps its cache) and preprocessing."""
        card = self.backbone.card()
        return {k: v for k, v in card.items() if k != "weights"} if card["weights_sha256"] else card

    def card(self) -> dict:
        return {**super().card(), "weights": self.backbone.weights}


class ClipAdherenceScorer(ClipScorer):
    """Reading: the cosine of the image with its caption and with each hard negative."""

    name = "clip"
    reading = ClipReading
    uses_truth = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.metric = CLIPAdherence(self.backbone)

    def card(self) -> dict:
        return {**super().card(), "variants": VARIANTS, "tokenizer": type(self.backbone.tokenizer).__name__}

    def read(self, images: list[Image.Image], truths: list[dict]) -> list[ClipReading]:
        self.metric.reset()
        self.metric.update(images, [t["caption"] for t in truths], [t.get("negatives", {}) for t in truths])
        cos, neg = self.metric.cos[0].tolist(), self.metric.neg_cos[0].tolist()
        return [{"cos": c, "negatives": {k: v for k, v in zip(NEGATIVE_KINDS, n) if not np.isnan(v)}} for c, n in zip(cos, neg)]
