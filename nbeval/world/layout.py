"""Random but valid layouts: shapes that do not touch each other or the text, text that fits the canvas.

Non-overlap is what lets a counter separate objects by connected components, so it is a rule of the
world, not a convenience. All randomness comes from a `random.Random` the caller seeds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from nbeval.world.characters import CHARACTER_SIZES, Character, Identity
from nbeval.world.render import text_width
from nbeval.world.scene import COLOURS, SHAPE_KINDS, SIZES, Scene, Shape, Word

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in normalised coordinates
MARGIN = 0.03  # free space kept between any two things and around the canvas edge


class LayoutError(RuntimeError):
    """The requested things do not fit on the canvas."""


def shape_box(s: Shape) -> Box:
    r = s.radius
    return (s.x - r, s.y - r, s.x + r, s.y + r)


def word_box(w: Word) -> Box:
    half_w = text_width(w) / 2
    # Cap height plus room for descenders/ascenders of the bold font.
    half_h = w.height * 0.75
    return (w.x - half_w, w.y - half_h, w.x + half_w, w.y + half_h)


def _overlaps(a: Box, b: Box, margin: float = MARGIN) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def place_shapes(
    rng: random.Random,
    specs: list[tuple[str, str, str]],
    avoid: Sequence[Box] = (),
    tries: int = 400,
) -> tuple[Shape, ...]:
    """Shapes of the given (kind, colour, size) at random free positions, largest first."""
    taken = list(avoid)
    placed: list[Shape] = []
    for kind, colour, size in sorted(specs, key=lambda s: -SIZES[s[2]]):
        r = SIZES[size]
        lo, hi = MARGIN + r, 1 - MARGIN - r
        for _ in range(tries):
            s = Shape(kind, colour, size, round(rng.uniform(lo, hi), 4), round(rng.uniform(lo, hi), 4))
            if not any(_overlaps(shape_box(s), b) for b in taken):
                placed.append(s)
                taken.append(shape_box(s))
                break
        else:
            raise LayoutError(f"no free place for a {size} {kind} after {tries} tries ({len(placed)} placed)")
    # Restore the requested order so prompts list groups the way they were asked for.
    order = {spec: i for i, spec in enumerate(specs)}
    return tuple(sorted(placed, key=lambda s: order[(s.kind, s.colour, s.size)]))


def fit_text(rng: random.Random, text: str, height: float, y_range: tuple[float, float] = (0.2, 0.8)) -> Word:
    """One line of text, shrunk until it fits the canvas width, at a random height within `y_range`."""
    w = Word(text, height, 0.5, 0.5)
    while text_width(w) > 1 - 2 * MARGIN - 0.04:
        height *= 0.9
        w = Word(text, round(height, 4), 0.5, 0.5)
    half = text_width(w) / 2
    x = rng.uniform(MARGIN + half, 1 - MARGIN - half) if half < 0.5 - MARGIN else 0.5
    return Word(text, w.height, round(x, 4), round(rng.uniform(*y_range), 4))


def place_character(rng: random.Random, identity: Identity, size: str | None = None) -> Character:
    """`identity` at a random place where its head and accessory fit the canvas; a random size if None."""
    size = size or rng.choice(tuple(CHARACTER_SIZES))
    r = CHARACTER_SIZES[size]
    return Character(identity, size, round(rng.uniform(MARGIN + r, 1 - MARGIN - r), 4), round(rng.uniform(MARGIN + 1.7 * r, 1 - MARGIN - r), 4))


def character_scene(rng: random.Random, character: Character, distractor: bool) -> Scene:
    """`character`, alone or beside one small random shape (none if the canvas has no room)."""
    shapes: tuple[Shape, ...] = ()
    if distractor:
        try:
            shapes = place_shapes(rng, [(rng.choice(SHAPE_KINDS), rng.choice(list(COLOURS)), "small")], avoid=[character.box()])
        except LayoutError:
            pass
    return Scene(shapes=shapes, characters=(character.to_dict(),))
