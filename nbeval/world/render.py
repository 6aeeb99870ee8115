"""Deterministic PIL renderer: a Scene in, an RGB image out. Same scene and size → same pixels."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from nbeval.world.characters import Character, draw_character
from nbeval.world.scene import BACKGROUND, COLOURS, TEXT_COLOUR, Scene, Shape, Word

FONT_PATH = Path(__file__).parent / "fonts" / "DejaVuSans-Bold.ttf"
SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges like a real generator's output
RENDERER_VERSION = "1"


@lru_cache(maxsize=1)
def renderer_fingerprint() -> str:
    """Changes whenever the pixels could: renderer version and the bundled font's bytes."""
    h = hashlib.sha256(RENDERER_VERSION.encode())
    h.update(FONT_PATH.read_bytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=64)
def font_for_cap_height(cap_px: int, font: Path = FONT_PATH) -> ImageFont.FreeTypeFont:
    """A font (the bundled one by default) at the point size whose capital 'H' is `cap_px` pixels tall."""
    probe = ImageFont.truetype(str(font), 100)
    left, top, right, bottom = probe.getbbox("H")
    size = max(1, round(cap_px * 100 / (bottom - top)))
    return ImageFont.truetype(str(font), size)


def text_width(word: Word, canvas: int = 1000) -> float:
    """Width of a rendered word as a fraction of the canvas side (layout uses it to fit text)."""
    font = font_for_cap_height(max(1, round(word.height * canvas)))
    left, _, right, _ = font.getbbox(word.text)
    return (right - left) / canvas


def _draw_shape(draw: ImageDraw.ImageDraw, s: Shape, px: int) -> None:
    cx, cy, r = s.x * px, s.y * px, s.radius * px
    fill = COLOURS[s.colour]
    if s.kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif s.kind == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif s.kind == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    else:  # Shape validates kinds; a new kind must be drawn here
        raise ValueError(f"cannot draw shape kind {s.kind!r}")


def _draw_word(draw: ImageDraw.ImageDraw, w: Word, px: int, font: Path) -> None:
    """The word centred where the scene puts it; another font than the bundled one is shrunk, if it
    must be, to the bundled font's width, so the word keeps the box the layout gave it."""
    cap = max(1, round(w.height * px))
    face = font_for_cap_height(cap, font)
    if font != FONT_PATH:
        left, _, right, _ = face.getbbox(w.text)
        room = text_width(w, px) * px
        if right - left > room:
            face = font_for_cap_height(max(1, int(cap * room / (right - left))), font)
    draw.text((w.x * px, w.y * px), w.text, fill=TEXT_COLOUR, font=face, anchor="mm")


def render(scene: Scene, size: int = 256, font: Path = FONT_PATH) -> Image.Image:
    """Render `scene` to a `size`×`size` RGB image (its words in `font`: the bundled one by default)."""
    px = size * SUPERSAMPLE
    img = Image.new("RGB", (px, px), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        _draw_shape(draw, s, px)
    for c in scene.characters:
        draw_character(draw, Character.from_dict(c), px)
    for w in scene.words:
        _draw_word(draw, w, px, font)
    return img.resize((size, size), Image.Resampling.LANCZOS)
