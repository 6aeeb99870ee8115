"""`scorer=[counter_detector]` (role `counter`): objects counted by a zero-shot object detector, for
real models' images, where the palette counter (nbeval.scorers.counting) meets shading, texture and
floors instead of its palette. The reading is the palette counter's, so `counting` runs unchanged.

- Model: OWL-ViT or OWLv2 (`AutoModelForZeroShotObjectDetection` + `AutoProcessor`) from the local
  folder `path` (what `save_pretrained` writes, or a downloaded snapshot), `local_files_only`: nothing
  is downloaded. Other zero-shot detectors (Grounding DINO, OmDet-Turbo) are refused: they name boxes
  by decoded phrases rather than by query, a path no test here covers.
- Queries: `query_template` of each kind the truth requests (`groups`, as the counting suite gives
  them), then of each of `extra_kinds` (the world's kinds, say, so that kinds compete for a box and
  an unrequested kind is seen). Each predicted box takes its best query, as OWL's own post-processing
  does, and is kept when that score (the logit's sigmoid) exceeds `score_threshold`. NMS then drops
  a box that overlaps a better one by IoU > `nms_iou`, whatever the kinds: one object found under two
  queries is one object (the world's objects never overlap).
- Colour: by default named by the box's pixels, in the world's palette (nbeval.world.COLOURS): the
  colour nearest in hue to most of the box's chromatic pixels that differ from the background (the
  median of the image's frame). Hue survives shading and lighting, which RGB distance does not; a box
  with no such pixel is `achromatic`. With `clip` ({model, weights, sha256}: an open_clip backbone
  through nbeval.scorers.clip) it is the crop's zero-shot choice among GenEval's "a photo of a
  {colour} {kind}" over the palette.
- Fingerprint: the folder's digest (records.folder_sha256: weights, configs, tokenizer, processor;
  not the path), dtype, thresholds, queries and the colour method. Not the device: it changes speed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from nbeval.hf import LoadOnce, local_model_folder
from nbeval.readings import CountedObject, CounterReading
from nbeval.records import folder_sha256
from nbeval.scorers.base import Scorer, check_sha256
from nbeval.world.scene import COLOURS

VERSION = 1  # bump when how queries are made, boxes kept or colours named changes
DTYPES = ("float32", "float16", "bfloat16")
FAMILIES = ("owlvit", "owlv2")  # config.json's model_type: one score per (box, query)
ACHROMATIC = "achromatic"
CLIP_TEMPLATE = "a photo of a {colour} {kind}"  # GenEval's colour classifier's prompt

# Naming by pixels, on PIL's HSV scale (0–255 each)
FRAME = 0.02  # share of the side, at each edge, the background colour is the median of
BACKGROUND_TOLERANCE = 60.0  # RGB distance within which a pixel is background
MIN_SATURATION = 64  # ≈ 0.25: greyer pixels (white, black, shadows, anti-aliased rims) have no reliable hue
MIN_VALUE = 40  # ≈ 0.15: darker pixels neither
_NAMES = list(COLOURS)
_PALETTE_HUES = np.asarray(Image.fromarray(np.array([list(COLOURS.values())], dtype=np.uint8)).convert("HSV"))[0, :, 0].astype(int)


def background_colour(image: Image.Image) -> np.ndarray:
    """The median RGB of the image's frame: what surrounds the objects."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    k = max(1, round(FRAME * min(a.shape[:2])))
    frame = np.concatenate([a[:k].reshape(-1, 3), a[-k:].reshape(-1, 3), a[:, :k].reshape(-1, 3), a[:, -k:].reshape(-1, 3)])
    return np.median(frame, axis=0)


def pixel_box(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box in fractions (x0, y0, x1, y1; x0 < 1, y0 < 1) as the pixels it touches, at least one."""
    w, h = size
    x0, y0 = int(box[0] * w), int(box[1] * h)
    return x0, y0, max(math.ceil(box[2] * w), x0 + 1), max(math.ceil(box[3] * h), y0 + 1)


def name_colour(image: Image.Image, box: Sequence[float], background: np.ndarray) -> str:
    """The palette colour most of the box's chromatic, non-background pixels are nearest to in hue. A
    vote, not a mean: a box also holds rims and corners of what surrounds the object."""
    crop = image.crop(pixel_box(box, image.size))
    rgb = np.asarray(crop.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    hsv = np.asarray(crop.convert("HSV")).reshape(-1, 3).astype(int)
    keep = (np.linalg.norm(rgb - background, axis=1) > BACKGROUND_TOLERANCE) & (hsv[:, 1] >= MIN_SATURATION) & (hsv[:, 2] >= MIN_VALUE)
    if not keep.any():
        return ACHROMATIC
    d = np.abs(hsv[keep, 0, None] - _PALETTE_HUES[None])
    nearest = np.minimum(d, 256 - d).argmin(1)  # hue is circular
    return _NAMES[int(np.bincount(nearest, minlength=len(_NAMES)).argmax())]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices of the boxes (N, 4: x0, y0, x1, y1, positive areas) kept, best score first: greedily,
    each box unless it overlaps a kept one by IoU > `iou`."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        k = np.array(kept, dtype=int)
        w = np.clip(np.minimum(boxes[k, 2], boxes[i, 2]) - np.maximum(boxes[k, 0], boxes[i, 0]), 0, None)
        h = np.clip(np.minimum(boxes[k, 3], boxes[i, 3]) - np.maximum(boxes[k, 1], boxes[i, 1]), 0, None)
        inter = w * h
        if not (inter / (area[k] + area[i] - inter) > iou).any():
            kept.append(int(i))
    return kept


def _check_folder(path: str) -> tuple[Path, str]:
    """The folder and its model type, refused before anything loads: missing, or not a zero-shot
    detector this counter reads."""
    folder, model_type = local_model_folder(path, "scorer.counter.path", "AutoModelForZeroShotObjectDetection", "detector", "OWLv2 or OWL-ViT")
    if model_type not in FAMILIES:
        raise ValueError(f"scorer.counter.path={str(path)!r} holds a {model_type!r} zero-shot detector; this counter reads "
                         f"{' and '.join(FAMILIES)} only (one score per box and query)")
    return folder, model_type


class DetectorCounter(Scorer):
    """Truth: the requested groups (`groups`: colour, kind), as the counting suite gives them."""

    name = "counter_detector"
    reading = CounterReading
    uses_truth = True  # the queries are the requested kinds

    def __init__(self, path: str, sha256: str | None = None, score_threshold: float = 0.1, nms_iou: float = 0.3,
                 query_template: str = "a photo of a {kind}", extra_kinds: Sequence[str] = (), device: str = "cpu",
                 dtype: str = "float32", clip: dict | None = None) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"scorer.counter.dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
        if not (0 <= score_threshold <= 1 and 0 <= nms_iou <= 1):
            raise ValueError(f"scorer.counter.score_threshold and nms_iou must be in [0, 1], got {score_threshold} and {nms_iou}")
        try:
            query_template.format(kind="circle")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"scorer.counter.query_template={query_template!r} must name only {{kind}}") from e
        if "{kind}" not in query_template:
            raise ValueError(f"scorer.counter.query_template={query_template!r} must contain {{kind}}")
        self.path, self.model_type = _check_folder(path)
        self.weights_sha256 = folder_sha256(self.path)
        check_sha256(f"the detector's files in {self.path}", self.weights_sha256, sha256)
        self.score_threshold, self.nms_iou, self.query_template = float(score_threshold), float(nms_iou), query_template
        self.extra_kinds = [str(k) for k in extra_kinds]
        self.device, self.dtype = device, dtype
        self.clip = None
        if clip is not None:
            self._load_clip(dict(clip))
        self._model: LoadOnce[tuple] = LoadOnce()  # (model, processor)

    def _from_pretrained(self) -> tuple:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        model, info = AutoModelForZeroShotObjectDetection.from_pretrained(self.path, local_files_only=True, dtype=getattr(torch, self.dtype),
                                                                          output_loading_info=True)
        if info["missing_keys"]:
            raise ValueError(f"{self.path} has no weights for {sorted(info['missing_keys'])[:5]}: they would be random")
        processor = AutoProcessor.from_pretrained(self.path, local_files_only=True)
        if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
            raise ValueError(f"{self.path} has no image-text processor (AutoProcessor gave {type(processor).__name__})")
        return model.to(self.device).eval(), processor

    def _load_clip(self, spec: dict) -> None:
        from nbeval.scorers.clip import DEFAULT_WEIGHTS, NBCLIP_NAME, shared_backbone

        if unknown := set(spec) - {"model", "weights", "sha256"}:
            raise ValueError(f"scorer.counter.clip takes model, weights and sha256, not {sorted(unknown)}")
        self.clip = shared_backbone(spec.get("model") or NBCLIP_NAME, spec.get("weights") or str(DEFAULT_WEIGHTS), None)
        check_sha256(f"CLIP weights {self.clip.weights}", self.clip.weights_sha256, spec.get("sha256"))
        self._prompts: dict[str, object] = {}  # kind → text embeddings of the palette's prompts

    def settings(self) -> dict:
        if self.clip is None:
            colour = {"method": "pixels", "palette": {k: list(v) for k, v in COLOURS.items()}, "frame": FRAME,
                      "background_tolerance": BACKGROUND_TOLERANCE, "min_saturation": MIN_SATURATION, "min_value": MIN_VALUE}
        else:
            card = self.clip.card()
            colour = {"method": "clip", "prompt": CLIP_TEMPLATE, "palette": _NAMES,
                      **({k: v for k, v in card.items() if k != "weights"} if card["weights_sha256"] else card)}
        return {"version": VERSION, "model_type": self.model_type, "weights_sha256": self.weights_sha256, "dtype": self.dtype,
                "score_threshold": self.score_threshold, "nms_iou": self.nms_iou, "nms": "greedy by score, across kinds",
                "query_template": self.query_template, "extra_kinds": self.extra_kinds, "colour": colour}

    def card(self) -> dict:
        return {**super().card(), "path": str(self.path)}

    def kinds(self, truth: dict) -> list[str]:
        """What one image is queried for: the requested kinds, then the extra ones."""
        kinds = list(dict.fromkeys([g["kind"] for g in truth["groups"]] + self.extra_kinds))
        if not kinds:
            raise ValueError("the truth requests no kind and scorer.counter.extra_kinds is empty: nothing to ask the detector")
        return kinds

    def _unpad(self, size: tuple[int, int]) -> np.ndarray:
        """Scale from fractions of the square the model saw to fractions of the image: OWLv2 pads the
        image to a square at the bottom and right; OWL-ViT stretches it."""
        if self.model_type != "owlv2":
            return np.ones(4)
        side = max(size)
        return np.array([side / size[0], side / size[1]] * 2)

    def read(self, images: list[Image.Image], truths: list[dict]) -> list[CounterReading]:
        import torch

        model, processor = self._model.get(self._from_pretrained)
        kinds = [self.kinds(t) for t in truths]
        rgb = [im.convert("RGB") for im in images]
        inputs = processor(text=[[self.query_template.format(kind=k) for k in ks] for ks in kinds], images=rgb, return_tensors="pt")
        with torch.inference_mode():
            out = model(**inputs.to(self.device, dtype=getattr(torch, self.dtype)))
        # (images, boxes, queries); the processor pads shorter query lists with " ": no kind, so no score
        logits = out.logits.float().cpu()
        n_queries = torch.tensor([len(ks) for ks in kinds])
        logits = logits.masked_fill(torch.arange(logits.shape[-1]) >= n_queries[:, None, None], -math.inf)
        best, label = logits.max(-1)
        cx, cy, w, h = out.pred_boxes.float().cpu().unbind(-1)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).numpy()
        floor = torch.logit(torch.tensor(self.score_threshold, dtype=torch.float64)).item()  # score > threshold ⇔ logit > floor
        readings = []
        for i, im in enumerate(rgb):
            b = np.clip(boxes[i] * self._unpad(im.size), 0, 1)
            scores = best[i].double().numpy()
            # a box under a pixel wide or tall within the image (e.g. wholly in OWLv2's padding) shows nothing
            seen = ((b[:, 2] - b[:, 0]) * im.width >= 1) & ((b[:, 3] - b[:, 1]) * im.height >= 1)
            idx = np.flatnonzero((scores > floor) & seen)
            kept = idx[nms(b[idx], scores[idx], self.nms_iou)]
            found = [(kinds[i][int(label[i, j])], b[j]) for j in kept]
            colours = self.colours(im, found)
            objects: list[CountedObject] = [{"kind": k, "colour": c, "bbox": [float(v) for v in box]}
                                            for (k, box), c in zip(found, colours)]
            counts = Counter(f"{o['colour']} {o['kind']}" for o in objects)
            readings.append({"counts": dict(sorted(counts.items())), "objects": objects})
        return readings

    def colours(self, image: Image.Image, found: list[tuple[str, Sequence[float]]]) -> list[str]:
        """The colour of each (kind, box in fractions) found in the image: by CLIP when configured, else by pixels."""
        if self.clip is None:
            background = background_colour(image)
            return [name_colour(image, box, background) for _, box in found]
        if not found:
            return []
        crops = self.clip.embed_images([image.crop(pixel_box(box, image.size)) for _, box in found])
        out = []
        for (kind, _), crop in zip(found, crops):
            if kind not in self._prompts:
                self._prompts[kind] = self.clip.embed_texts([CLIP_TEMPLATE.format(colour=c, kind=kind) for c in _NAMES])
            out.append(_NAMES[int((self._prompts[kind] @ crop).argmax())])
        return out
