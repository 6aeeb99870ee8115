"""Controlled damage at graded severity 0–5 (0 = none), to prove scorers read the truth and react.

Image corruptions act on the rendered pixels; scene corruptions change what is drawn (a typo in the
text, an object dropped, added or recoloured). Each is deterministic for a seed.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from nbeval.world.characters import PARTS, Character
from nbeval.world.layout import LayoutError, place_shapes, shape_box, word_box
from nbeval.world.scene import COLOURS, Scene

MAX_SEVERITY = 5
_BLUR_RADIUS = (0, 0.8, 1.5, 2.5, 4.0, 6.0)  # at 256 px; scaled with the image side
_NOISE_SIGMA = (0, 10, 20, 35, 55, 80)
_JPEG_QUALITY = (None, 50, 25, 12, 6, 2)
_SHIFT_FRACTION = (0, 0.04, 0.08, 0.12, 0.18, 0.25)
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _blur(img: Image.Image, s: int, rng: random.Random) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(_BLUR_RADIUS[s] * img.width / 256)) if s else img


def _noise(img: Image.Image, s: int, rng: random.Random) -> Image.Image:
    if not s:
        return img
    a = np.asarray(img, dtype=np.float32)
    a = a + np.random.default_rng(rng.getrandbits(32)).normal(0, _NOISE_SIGMA[s], a.shape)
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))


def _jpeg(img: Image.Image, s: int, rng: random.Random) -> Image.Image:
    if not s:
        return img
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=_JPEG_QUALITY[s])
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _shift(img: Image.Image, s: int, rng: random.Random) -> Image.Image:
    if not s:
        return img
    d = round(_SHIFT_FRACTION[s] * img.width)
    dx, dy = rng.choice((-d, d)), rng.choice((-d, d))
    moved = ImageChops.offset(img, dx, dy)
    # offset() wraps around; blank the wrapped band so nothing re-enters from the other side.
    canvas = Image.new("RGB", img.size, (255, 255, 255))
    x0, y0 = max(dx, 0), max(dy, 0)
    box = (x0, y0, x0 + img.width - abs(dx), y0 + img.height - abs(dy))
    canvas.paste(moved.crop(box), box[:2])
    return canvas


def _typo(scene: Scene, s: int, rng: random.Random) -> Scene:
    if not s or not scene.words:
        return scene
    words = list(scene.words)
    for _ in range(s):
        i = rng.randrange(len(words))
        text = words[i].text
        j = rng.randrange(len(text))
        op = rng.choice(("substitute", "delete", "insert")) if len(text) > 1 else "substitute"
        if op == "substitute":
            text = text[:j] + rng.choice(_LETTERS.replace(text[j], "")) + text[j + 1 :]
        elif op == "delete":
            text = text[:j] + text[j + 1 :]
        else:
            text = text[:j] + rng.choice(_LETTERS) + text[j:]
        words[i] = replace(words[i], text=text)
    return scene.with_words(tuple(words))


def _drop(scene: Scene, s: int, rng: random.Random) -> Scene:
    keep = list(scene.shapes)
    for _ in range(min(s, len(keep))):
        keep.pop(rng.randrange(len(keep)))
    return scene.with_shapes(tuple(keep))


def _add(scene: Scene, s: int, rng: random.Random) -> Scene:
    if not s or not scene.shapes:
        return scene
    shapes = list(scene.shapes)
    for _ in range(s):
        like = rng.choice(scene.shapes)  # an extra object of a requested kind: a counting error
        avoid = [shape_box(x) for x in shapes] + [word_box(w) for w in scene.words]
        try:
            shapes += place_shapes(rng, [(like.kind, like.colour, like.size)], avoid, tries=200)
        except LayoutError:
            break  # canvas full: the severity saturates
    return scene.with_shapes(tuple(shapes))


def _recolour(scene: Scene, s: int, rng: random.Random) -> Scene:
    shapes = list(scene.shapes)
    for i in rng.sample(range(len(shapes)), min(s, len(shapes))):
        shapes[i] = replace(shapes[i], colour=rng.choice([c for c in COLOURS if c != shapes[i].colour]))
    return scene.with_shapes(tuple(shapes))


def _swap(scene: Scene, s: int, rng: random.Random) -> Scene:
    """Each character loses its identity in `s` parts (head, skin, eyes, accessory, its colour)."""
    characters = []
    for d in scene.characters:
        c = Character.from_dict(d)
        ident = c.identity
        for part in rng.sample(PARTS, min(s, len(PARTS))):
            ident = ident.swap(part, rng)
        characters.append(replace(c, identity=ident).to_dict())
    return replace(scene, characters=tuple(characters))


IMAGE_CORRUPTIONS: dict[str, Callable[[Image.Image, int, random.Random], Image.Image]] = {
    "blur": _blur,
    "noise": _noise,
    "jpeg": _jpeg,
    "shift": _shift,
}
SCENE_CORRUPTIONS: dict[str, Callable[[Scene, int, random.Random], Scene]] = {
    "typo": _typo,
    "drop": _drop,
    "add": _add,
    "recolour": _recolour,
    "swap": _swap,
}


def _drift(img: Image.Image, s: int, turn: int, rng: random.Random) -> Image.Image:
    """Blur that grows with every edit turn (radius 0.3·severity·turn px at 256 px): a model that
    softens what it keeps each time it edits. Turn 0 is untouched."""
    radius = 0.3 * s * turn * img.width / 256
    return img.filter(ImageFilter.GaussianBlur(radius)) if radius else img


# Damage that depends on the edit turn as well as the severity.
TURN_CORRUPTIONS: dict[str, Callable[[Image.Image, int, int, random.Random], Image.Image]] = {"drift": _drift}
CORRUPTIONS = tuple(IMAGE_CORRUPTIONS) + tuple(SCENE_CORRUPTIONS) + tuple(TURN_CORRUPTIONS)


def check(corruption: str | None, severity: int) -> None:
    if corruption is not None and corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; expected one of {CORRUPTIONS}")
    if not 0 <= severity <= MAX_SEVERITY or int(severity) != severity:
        raise ValueError(f"severity must be an integer in 0..{MAX_SEVERITY}, got {severity!r}")
