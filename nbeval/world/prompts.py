"""Prompt grammar: a Scene → a natural-language prompt, in several phrasings.

The phrasing is chosen by index so a sample's prompt is a pure function of its seed.
"""

from __future__ import annotations

from collections import Counter

from nbeval.world.scene import Scene, Shape

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "centre", "right")


def position_phrase(x: float, y: float) -> str:
    """3×3 grid bin of a normalised position, e.g. 'top left', 'centre', 'bottom'."""
    row, col = _ROWS[min(int(y * 3), 2)], _COLS[min(int(x * 3), 2)]
    if row == "middle":
        return "centre" if col == "centre" else col
    return row if col == "centre" else f"{row} {col}"


def plural(kind: str, n: int) -> str:
    return kind if n == 1 else kind + "s"


def capitalise(text: str) -> str:
    """First letter upper case, the rest untouched (str.capitalize lowers it)."""
    return text[:1].upper() + text[1:]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def describe_groups(shapes: tuple[Shape, ...]) -> str:
    """'three red circles and two blue squares' — counts by (colour, kind), in order of first appearance."""
    groups = Counter((s.colour, s.kind) for s in shapes)
    return _join([f"{NUMBER_WORDS[n]} {colour} {plural(kind, n)}" for (colour, kind), n in groups.items()])


def describe_objects(shapes: tuple[Shape, ...]) -> str:
    """'a large red circle at the top left and a small blue square at the right' — one phrase per shape."""
    return _join([f"a {s.size} {s.colour} {s.kind} at the {position_phrase(s.x, s.y)}" for s in shapes])


_SHAPE_TEMPLATES = (
    "A picture of {objs}.",
    "{Objs} on a white background.",
    "Draw {objs}.",
    "An image showing exactly {objs}.",
)
_TEXT_TEMPLATES = (
    'A sign that says "{text}".',
    'The words "{text}" written in black letters.',
    'Text reading "{text}" on a white background.',
    'Write "{text}".',
)
N_PHRASINGS = len(_SHAPE_TEMPLATES)


def scene_prompt(scene: Scene, phrasing: int = 0, grouped: bool | None = None) -> str:
    """Natural-language prompt for `scene`.

    `grouped` describes shapes by counts (counting prompts); None picks it when any (colour, kind)
    repeats or there are more than three shapes, where per-object phrases would be unreadable.
    """
    parts: list[str] = []
    if scene.shapes:
        if grouped is None:
            groups = Counter((s.colour, s.kind) for s in scene.shapes)
            grouped = len(scene.shapes) > 3 or max(groups.values()) > 1
        objs = describe_groups(scene.shapes) if grouped else describe_objects(scene.shapes)
        t = _SHAPE_TEMPLATES[phrasing % len(_SHAPE_TEMPLATES)]
        parts.append(t.format(objs=objs, Objs=capitalise(objs)))
    if scene.words:
        t = _TEXT_TEMPLATES[phrasing % len(_TEXT_TEMPLATES)]
        text = scene.text()
        line = t.format(text=text)
        if scene.words[0].height < 0.06:
            line = line[:-1] + " in small letters."
        parts.append(line)
    return " ".join(parts) if parts else "An empty white canvas."
