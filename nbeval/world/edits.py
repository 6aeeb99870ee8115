"""Edit operations on scenes, each with the instruction a user would type.

An edit is exact: the scene after it is the ground truth for the next turn, and `target` says which
thing changed so a scorer can check the edited region and the preservation of everything else.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from nbeval.world.layout import MARGIN, Box, LayoutError, fit_text, place_shapes, shape_box, word_box
from nbeval.world.prompts import position_phrase
from nbeval.world.render import text_width
from nbeval.world.scene import COLOURS, SHAPE_KINDS, SIZES, Scene, Word

EDIT_OPS: tuple[str, ...] = ("add", "remove", "recolour", "move", "change_text")


@dataclass(frozen=True)
class Edit:
    op: str
    instruction: str
    before: Scene
    after: Scene
    target: str  # "shape:<index in after>" / "shape:<index in before>" for remove / "word:<index>"

    def to_dict(self) -> dict:
        return {
            "op": self.op,
            "instruction": self.instruction,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "target": self.target,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Edit:
        return cls(d["op"], d["instruction"], Scene.from_dict(d["before"]), Scene.from_dict(d["after"]), d["target"])


def _add(scene: Scene, rng: random.Random) -> Edit:
    spec = (rng.choice(SHAPE_KINDS), rng.choice(list(COLOURS)), rng.choice(list(SIZES)))
    avoid = [shape_box(s) for s in scene.shapes] + [word_box(w) for w in scene.words]
    (new,) = place_shapes(rng, [spec], avoid)
    after = scene.with_shapes(scene.shapes + (new,))
    text = f"Add a {new.size} {new.colour} {new.kind} at the {position_phrase(new.x, new.y)}."
    return Edit("add", text, scene, after, f"shape:{len(scene.shapes)}")


def _remove(scene: Scene, rng: random.Random) -> Edit:
    i = rng.randrange(len(scene.shapes))
    s = scene.shapes[i]
    after = scene.with_shapes(scene.shapes[:i] + scene.shapes[i + 1 :])
    text = f"Remove the {s.colour} {s.kind} at the {position_phrase(s.x, s.y)}."
    return Edit("remove", text, scene, after, f"shape:{i}")


def _recolour(scene: Scene, rng: random.Random) -> Edit:
    i = rng.randrange(len(scene.shapes))
    s = scene.shapes[i]
    colour = rng.choice([c for c in COLOURS if c != s.colour])
    shapes = list(scene.shapes)
    shapes[i] = replace(s, colour=colour)
    text = f"Make the {s.colour} {s.kind} at the {position_phrase(s.x, s.y)} {colour}."
    return Edit("recolour", text, scene, scene.with_shapes(tuple(shapes)), f"shape:{i}")


def _move(scene: Scene, rng: random.Random) -> Edit:
    i = rng.randrange(len(scene.shapes))
    s = scene.shapes[i]
    others = scene.shapes[:i] + scene.shapes[i + 1 :]
    avoid = [shape_box(o) for o in others] + [word_box(w) for w in scene.words]
    for _ in range(50):
        (moved,) = place_shapes(rng, [(s.kind, s.colour, s.size)], avoid)
        if position_phrase(moved.x, moved.y) != position_phrase(s.x, s.y):
            break
    else:
        raise LayoutError("no free place in another region to move to")
    shapes = list(scene.shapes)
    shapes[i] = moved
    text = f"Move the {s.colour} {s.kind} from the {position_phrase(s.x, s.y)} to the {position_phrase(moved.x, moved.y)}."
    return Edit("move", text, scene, scene.with_shapes(tuple(shapes)), f"shape:{i}")


def _change_text(scene: Scene, rng: random.Random, vocabulary: tuple[str, ...]) -> Edit:
    i = rng.randrange(len(scene.words))
    old = scene.words[i]
    new_text = rng.choice([v for v in vocabulary if v != old.text])
    fitted = fit_text(rng, new_text, old.height)
    half = text_width(fitted) / 2
    new = Word(new_text, fitted.height, round(min(max(old.x, MARGIN + half), 1 - MARGIN - half), 4), old.y)
    words = list(scene.words)
    words[i] = new
    text = f'Change the text "{old.text}" to "{new_text}".'
    return Edit("change_text", text, scene, scene.with_words(tuple(words)), f"word:{i}")


_W = r"[a-z]+"
_WHERE = r"[a-z]+(?: [a-z]+)?"
_INSTRUCTIONS = {  # the inverse of the phrasings above, one per operation
    "add": rf"Add an? (?P<size>{_W}) (?P<colour>{_W}) (?P<kind>{_W}) at the (?P<where>{_WHERE})\.",
    "remove": rf"Remove the (?P<colour>{_W}) (?P<kind>{_W}) at the (?P<where>{_WHERE})\.",
    "recolour": rf"Make the (?P<colour>{_W}) (?P<kind>{_W}) at the (?P<where>{_WHERE}) (?P<new_colour>{_W})\.",
    "move": rf"Move the (?P<colour>{_W}) (?P<kind>{_W}) from the (?P<where>{_WHERE}) to the (?P<to>{_WHERE})\.",
    "change_text": r'Change the text "(?P<old>[^"]*)" to "(?P<new>[^"]*)"\.',
}


def parse_instruction(text: str) -> dict[str, str] | None:
    """An edit instruction of the world's phrasing → its operation and fields (None for any other
    text): what a judge that knows only the world reads from an instruction."""
    for op, pattern in _INSTRUCTIONS.items():
        if m := re.fullmatch(pattern, text.strip()):
            return {"op": op, **m.groupdict()}
    return None


def possible_ops(scene: Scene) -> list[str]:
    ops = ["add"]
    if scene.shapes:
        ops += ["remove", "recolour", "move"]
    if scene.words:
        ops.append("change_text")
    return ops


def apply_edit(scene: Scene, rng: random.Random, op: str | None = None, vocabulary: tuple[str, ...] = ()) -> Edit:
    """A random edit of kind `op` (random among the possible ones when None)."""
    ops = possible_ops(scene)
    op = op or rng.choice(ops)
    if op not in ops:
        raise ValueError(f"edit {op!r} is not possible on this scene; possible: {ops}")
    if op == "change_text":
        if not vocabulary:
            raise ValueError("change_text needs a vocabulary to draw the new text from")
        return _change_text(scene, rng, vocabulary)
    return {"add": _add, "remove": _remove, "recolour": _recolour, "move": _move}[op](scene, rng)


def changed_boxes(before: Scene, after: Scene, margin: float = MARGIN) -> list[Box]:
    """Boxes (fractions of the canvas, grown by `margin`) of everything added, removed, moved or
    changed between two scenes: where an edit was allowed to change pixels. Sorted: a set's order
    changes with the process's hash seed, and the boxes are part of scorer cache keys (drift's truth)."""
    boxes = [shape_box(s) for s in set(before.shapes) ^ set(after.shapes)]
    boxes += [word_box(w) for w in set(before.words) ^ set(after.words)]
    return sorted((max(0.0, x0 - margin), max(0.0, y0 - margin), min(1.0, x1 + margin), min(1.0, y1 + margin)) for x0, y0, x1, y1 in boxes)
