"""open_clip backbones for nbeval: one loader, the base of the scorers that read with them (`clip` for
adherence here; `identity` in `scorers.embeddings`), and the torchmetrics Metric for adherence
(`CLIPAdherence`, defined in `scorers.clip_metric` and imported on first use).

Every backbone — our shipped in-domain `nbclip-world` or a user's pretrained ViT-B-32 from a local
file — loads through `open_clip.create_model_and_transforms(name, pretrained=...)`, so the path our
tests prove is the path real weights take. Nothing is downloaded: a missing file is an error.

A scorer's fingerprint needs no backbone: the weights' digest, the architecture's name and the
preprocessing (memoised by what fixes it), so a run whose readings all come from the cache never
imports open_clip or torch; the backbone loads on the first image read.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from nbeval.cache import memoised
from nbeval.clipmetrics import VARIANTS
from nbeval.readings import ClipReading
from nbeval.records import sha256_file
from nbeval.scorers.base import Scorer, check_sha256
from nbeval.world.claims import NEGATIVE_KINDS

if TYPE_CHECKING:
    import torch

    from nbeval.scorers.clip_metric import CLIPAdherence

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

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        import torch

        with torch.no_grad():
            x = torch.stack([self.transform(im.convert("RGB")) for im in images])
            return self.model.encode_image(x, normalize=True)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        import torch

        with torch.no_grad():
            return self.model.encode_text(self.tokenizer(texts), normalize=True)

    def description(self) -> dict[str, str]:
        """What, besides the weights, decides its readings and its scorer's card (`describe`)."""
        return {"preprocess": repr(self.transform).replace("\n", " "), "tokenizer": type(self.tokenizer).__name__}

    def card(self) -> dict:
        return {"backbone": self.name, "weights": self.weights, "weights_sha256": self.weights_sha256,
                "preprocess": self.description()["preprocess"]}


def resolve_weights(pretrained: str | None) -> tuple[str | None, str | None]:
    """(the weights as the backbone names them, their sha256): a local file (.safetensors/.bin/.pt)
    by its expanded path and digest; an open_clip tag or None as given, without a digest."""
    if pretrained is None or not (Path(pretrained).suffix or "/" in pretrained):
        return pretrained, None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights {path} not found: give a local file (nothing is downloaded at run time)")
    return str(path), sha256_file(path)


def load_backbone(name: str = NBCLIP_NAME, pretrained: str | None = str(DEFAULT_WEIGHTS), cache_dir: str | None = None) -> ClipBackbone:
    """`pretrained`: a local weight file (.safetensors/.bin/.pt), an open_clip tag already in
    `cache_dir`, or None for random weights (training only)."""
    import open_clip

    open_clip.add_model_config(WEIGHTS_DIR)  # registers nbclip-world; idempotent
    pretrained, sha = resolve_weights(pretrained)
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


def describe(name: str, pretrained: str | None, cache_dir: str | None, weights_sha256: str | None) -> dict[str, str]:
    """`ClipBackbone.description()` without loading the backbone when it is known: memoised by the
    architecture, the weights (digest, or open_clip tag), the model configs we ship and the versions
    of open_clip and torchvision (whose transforms make the preprocessing), from package metadata."""
    key = {"name": name, "weights": weights_sha256 or pretrained, "open_clip": version("open_clip_torch"),
           "torchvision": version("torchvision"),
           "configs": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(WEIGHTS_DIR.glob("*.json"))}}
    return memoised("clip", key, lambda: shared_backbone(name, pretrained, cache_dir).description())


def __getattr__(name: str) -> type:
    """`CLIPAdherence` (nbeval.scorers.clip_metric) on first use: torchmetrics takes seconds to import."""
    if name == "CLIPAdherence":
        from nbeval.scorers.clip_metric import CLIPAdherence

        return CLIPAdherence
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ClipScorer(Scorer):
    """Base of the scorers that read images with an open_clip backbone."""

    def __init__(self, model: str = NBCLIP_NAME, weights: str | None = None, sha256: str | None = None, cache_dir: str | None = None) -> None:
        """`weights`: a local file or an open_clip tag in `cache_dir`; None is our shipped nbclip-world.
        `sha256`: the file's expected checksum; other bytes are refused (None: not checked)."""
        self.model_name, self.pretrained, self.cache_dir = model, weights or str(DEFAULT_WEIGHTS), cache_dir
        self.weights, self.weights_sha256 = resolve_weights(self.pretrained)
        check_sha256(f"CLIP weights {self.weights}", self.weights_sha256, sha256)
        self._loaded: ClipBackbone | None = None

    def description(self) -> dict[str, str]:
        return describe(self.model_name, self.pretrained, self.cache_dir, self.weights_sha256)

    @property
    def backbone(self) -> ClipBackbone:
        """Loaded on first use (the first image read), and refused if it is not what the fingerprint
        said: a stale memo must not file readings under another backbone's fingerprint."""
        if self._loaded is None:
            loaded = shared_backbone(self.model_name, self.pretrained, self.cache_dir)
            if loaded.description() != self.description():
                raise RuntimeError(f"CLIP backbone {self.model_name} loads as {loaded.description()}, but its memo says "
                                   f"{self.description()}: delete the memo under the cache's memos/clip and run again")
            self._loaded = loaded
        return self._loaded

    def settings(self) -> dict:
        """The weights by checksum (not by path, so a moved checkout keeps its cache) and preprocessing."""
        card = {"backbone": self.model_name, "weights": self.weights, "weights_sha256": self.weights_sha256,
                "preprocess": self.description()["preprocess"]}
        return {k: v for k, v in card.items() if k != "weights"} if card["weights_sha256"] else card

    def card(self) -> dict:
        return {**super().card(), "weights": self.weights}


class ClipAdherenceScorer(ClipScorer):
    """Reading: the cosine of the image with its caption and with each hard negative."""

    name = "clip"
    reading = ClipReading
    uses_truth = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._metric: CLIPAdherence | None = None

    @property
    def metric(self) -> CLIPAdherence:
        if self._metric is None:
            from nbeval.scorers.clip_metric import CLIPAdherence

            self._metric = CLIPAdherence(self.backbone)
        return self._metric

    def card(self) -> dict:
        return {**super().card(), "variants": VARIANTS, "tokenizer": self.description()["tokenizer"]}

    def read(self, images: list[Image.Image], truths: list[dict]) -> list[ClipReading]:
        self.metric.reset()
        self.metric.update(images, [t["caption"] for t in truths], [t.get("negatives", {}) for t in truths])
        cos, neg = self.metric.cos[0].tolist(), self.metric.neg_cos[0].tolist()
        return [{"cos": c, "negatives": {k: v for k, v in zip(NEGATIVE_KINDS, n) if not np.isnan(v)}} for c, n in zip(cos, neg)]
