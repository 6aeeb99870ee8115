"""Identity embeddings: what the identity suite compares across a character's images.

`IdentityScorer` owns the reading every backend shares (the embedding, and its cosine with the
embedding of the identity's reference render, each reference embedded once); only the backbone varies:
- `ClipIdentityScorer` (`conf/scorer/identity.yaml`, the default): the image tower of an open_clip
  backbone — the shipped in-domain nbclip-world, or a user's open_clip weights through the same loader;
- `Dinov2IdentityScorer` (`identity_dinov2.yaml`): DINOv2 from a local transformers folder;
- `TorchScriptIdentityScorer` (`identity_torchscript.yaml`): a face embedder exported as TorchScript
  (ArcFace/FaceNet-style: a float batch (N, 3, H, W) in, (N, D) embeddings out).
A user's weights are identified by their sha256 (in the fingerprint), never by their path; nothing is
downloaded at run time. torch is imported where an image is embedded or weights load, not to
fingerprint: a run whose readings are all cached does not pay for it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from PIL import Image

from nbeval.readings import IdentityReading
from nbeval.records import canonical_json, folder_sha256, sha256_file
from nbeval.scorers.base import Scorer, check_sha256
from nbeval.scorers.clip import ClipScorer
from nbeval.world import Scene, render

if TYPE_CHECKING:
    import torch

REFERENCE_SIDE = 256  # px of the reference render: the suite's image size


class ImageEmbedder(Protocol):
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, D) with unit-norm rows, so that a dot product is a cosine."""


class IdentityScorer(Scorer):
    """Reading: the image's identity embedding and its cosine with the embedding of the identity's
    reference render, which the truth describes. A subclass provides `self.backbone`."""

    name = "identity"
    reading = IdentityReading
    uses_truth = True
    backbone: ImageEmbedder

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._references: dict[str, torch.Tensor] = {}  # one identity's reference serves all its turns

    def settings(self) -> dict:
        return {**super().settings(), "reference_side": REFERENCE_SIDE}

    def _reference_embeddings(self, truths: list[dict]) -> torch.Tensor:
        import torch

        keys = [canonical_json(t["reference"]) for t in truths]
        new = [k for k in dict.fromkeys(keys) if k not in self._references]
        if new:
            renders = [render(Scene.from_dict(json.loads(k)), REFERENCE_SIDE) for k in new]
            self._references.update(zip(new, self.backbone.embed_images(renders)))
        return torch.stack([self._references[k] for k in keys])

    def read(self, images: list[Image.Image], truths: list[dict]) -> list[IdentityReading]:
        emb = self.backbone.embed_images(images)
        sims = (emb * self._reference_embeddings(truths)).sum(-1)
        return [{"embedding": [round(v, 5) for v in e.tolist()], "reference_similarity": float(s)} for e, s in zip(emb, sims)]


class ClipIdentityScorer(IdentityScorer, ClipScorer):
    """The default: the open_clip backbone's image tower (loading, checksum and settings: ClipScorer)."""


# --- DINOv2 --------------------------------------------------------------------------------------

# What facebook/dinov2-* ship in preprocessor_config.json: short side to 256 (bicubic), centre crop
# 224, ImageNet mean/std. Used for a folder without that file.
DINOV2_PREPROCESS = {
    "size": {"shortest_edge": 256},
    "crop_size": {"height": 224, "width": 224},
    "resample": 3,  # PIL bicubic
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


@dataclass
class Dinov2Backbone:
    """A DINOv2 model (float32, eval mode) with its image processor."""

    # DINOv2's own k-NN evaluation (facebookresearch/dinov2, dinov2/eval/knn.py) compares the
    # L2-normalised output of the backbone's forward, which is this token (`x_norm_clstoken`); the
    # mean of the patch tokens is concatenated to it only for the linear probes.
    embedding: ClassVar[str] = "CLS token of last_hidden_state (after the final LayerNorm), L2-normalised"
    model: torch.nn.Module
    processor: Any  # a transformers image processor
    path: Path
    weights_sha256: str

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        import torch

        with torch.no_grad():
            x = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
            return torch.nn.functional.normalize(self.model(pixel_values=x).last_hidden_state[:, 0], dim=-1)

    def settings(self) -> dict:
        return {"backbone": "dinov2", "weights_sha256": self.weights_sha256, "preprocess": self.processor.to_dict()}


def load_dinov2(path: str, sha256: str | None) -> Dinov2Backbone:
    """`path`: a folder with config.json and the weights (what save_pretrained writes, or a downloaded
    snapshot of facebook/dinov2-*); its preprocessor_config.json when there is one, else DINOV2_PREPROCESS.
    `sha256`: the folder's digest (`nbeval.records.folder_sha256`); other files are refused."""
    import torch

    try:
        from transformers import AutoImageProcessor, BitImageProcessor, Dinov2Model
    except ImportError as e:
        raise ImportError("the DINOv2 identity scorer needs transformers: pip install -e '.[dinov2]'") from e
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"scorer.identity.path={str(path)!r} is not a DINOv2 folder (no config.json): give the folder "
                                "save_pretrained wrote or a downloaded snapshot (nothing is downloaded at run time)")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != "dinov2":
        raise ValueError(f"{folder / 'config.json'} describes a {model_type!r} model, not dinov2")
    folder = folder.resolve()
    sha = folder_sha256(folder)
    check_sha256(f"DINOv2 weights in {folder}", sha, sha256)
    model, info = Dinov2Model.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32, output_loading_info=True)
    if info["missing_keys"]:
        raise ValueError(f"{folder} has no weights for {sorted(info['missing_keys'])[:5]}: they would be random")
    if (folder / "preprocessor_config.json").is_file():
        processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    else:
        processor = BitImageProcessor(**DINOV2_PREPROCESS)
    return Dinov2Backbone(model.eval(), processor, folder, sha)


# --- TorchScript face embedders ------------------------------------------------------------------

CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass
class TorchScriptBackbone:
    """A TorchScript embedder on CPU in eval mode (its BatchNorm and dropout frozen), fed the whole
    image resized (bicubic) to `input_size`², scaled to [0, 1] and normalised per channel by `mean`
    and `std`, given in the model's `channel_order`."""

    # face embedders (ArcFace) return unnormalised features and are compared by cosine
    embedding: ClassVar[str] = "the model's (N, D) output, L2-normalised"
    model: torch.jit.ScriptModule
    path: Path
    weights_sha256: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str

    def _batch(self, images: list[Image.Image]) -> torch.Tensor:
        import torch

        side = (self.input_size, self.input_size)
        x = np.stack([np.asarray(im.convert("RGB").resize(side, Image.Resampling.BICUBIC)) for im in images])
        x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W), RGB
        if self.channel_order == "BGR":
            x = x.flip(1)
        return (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        import torch

        with torch.no_grad():
            out = self.model(self._batch(images))
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or len(out) != len(images):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f"{self.path} returned {got} for {len(images)} images: an embedder returns one (N, D) tensor")
        return torch.nn.functional.normalize(out.float(), dim=-1)

    def settings(self) -> dict:
        return {"backbone": "torchscript", "weights_sha256": self.weights_sha256, "input_size": self.input_size,
                "mean": list(self.mean), "std": list(self.std), "channel_order": self.channel_order, "resize": "bicubic, whole image"}


def load_torchscript(path: str, sha256: str | None, input_size: int, mean: Sequence[float], std: Sequence[float],
                     channel_order: str) -> TorchScriptBackbone:
    """`path`: a file written by `torch.jit.script(model).save(path)` (or `torch.jit.trace`); its bytes
    are checked against `sha256` before they are loaded."""
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"scorer.identity.channel_order={channel_order!r}: choose one of {', '.join(CHANNEL_ORDERS)}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"scorer.identity.mean and std need three values each, std > 0; got {list(mean)}, {list(std)}")
    if int(input_size) < 1:
        raise ValueError(f"scorer.identity.input_size must be positive, got {input_size}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"scorer.identity.path={str(path)!r}: no such file (give a TorchScript file; nothing is downloaded at run time)")
    file = file.resolve()
    sha = sha256_file(file)
    check_sha256(f"TorchScript embedder {file}", sha, sha256)
    import torch

    with warnings.catch_warnings():
        # torch 2.14 warns that TorchScript is deprecated; the files it reads are what face models ship as
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
        try:
            model = torch.jit.load(str(file), map_location="cpu")
        except RuntimeError as e:
            raise ValueError(f"{file} is not a TorchScript file: {str(e).splitlines()[0]}") from e
    return TorchScriptBackbone(model.eval(), file, sha, int(input_size), mean, std, channel_order)


# --- scorers on a user's weights -----------------------------------------------------------------


class LocalWeightsIdentityScorer(IdentityScorer):
    """Base of the identity scorers on a user's local weights: fingerprinted by the weights' sha256
    and the preprocessing, not by the path, so the same weights elsewhere share the cache."""

    backbone: Dinov2Backbone | TorchScriptBackbone

    def __init__(self, backbone: Dinov2Backbone | TorchScriptBackbone) -> None:
        self.backbone = backbone
        super().__init__()

    def settings(self) -> dict:
        return {**self.backbone.settings(), **super().settings()}

    def card(self) -> dict:
        return {**super().card(), "path": str(self.backbone.path), "embedding": self.backbone.embedding}


class Dinov2IdentityScorer(LocalWeightsIdentityScorer):
    """DINOv2 embeddings from a local folder (`load_dinov2`)."""

    def __init__(self, path: str, sha256: str | None = None) -> None:
        super().__init__(load_dinov2(path, sha256))


class TorchScriptIdentityScorer(LocalWeightsIdentityScorer):
    """A TorchScript face embedder (`load_torchscript`)."""

    def __init__(self, path: str, sha256: str | None = None, input_size: int = 112, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), channel_order: str = "RGB") -> None:
        """Defaults: ArcFace's input (112² RGB, (x − 0.5) / 0.5); FaceNet (facenet-pytorch) takes 160²,
        (x − 127.5) / 128, i.e. mean 0.5, std 0.50196."""
        super().__init__(load_torchscript(path, sha256, input_size, mean, std, channel_order))
