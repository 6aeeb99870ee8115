"""The plan ("think" step): a scene as a short token sequence, and back.

A plan lists the words first (position, cap height, characters) and then the objects (kind, colour,
size, position), with positions on a 32-bin grid. Decoding a plan gives a Scene at bin centres, so the
world's renderer can draw the planned words (the glyph canvas) and the generator can place the objects.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from nbeval.world import COLOURS, SHAPE_KINDS, SIZES, Scene, Shape, Word
from nbeval.world.layout import MARGIN, shape_box, word_box
from nbeval.world.render import text_width

POS_BINS = 32
HEIGHT_BINS = 16
HEIGHT_RANGE = (0.025, 0.125)
CHARS = string.ascii_uppercase + string.digits + " "
SPECIALS = ("<pad>", "<plan>", "<end>", "<obj>", "<word>", "</word>", "<prev>")


def _build_vocab() -> list[str]:
    v = list(SPECIALS)
    v += [f"kind:{k}" for k in SHAPE_KINDS] + [f"colour:{c}" for c in COLOURS] + [f"size:{s}" for s in SIZES]
    v += [f"x:{i}" for i in range(POS_BINS)] + [f"y:{i}" for i in range(POS_BINS)]
    v += [f"h:{i}" for i in range(HEIGHT_BINS)] + [f"char:{c}" for c in CHARS]
    return v


VOCAB: list[str] = _build_vocab()
ID: dict[str, int] = {t: i for i, t in enumerate(VOCAB)}
PAD, PLAN, END, OBJ, WORD, END_WORD, PREV = (ID[s] for s in SPECIALS)


def ids_with_prefix(prefix: str) -> list[int]:
    return [i for i, t in enumerate(VOCAB) if t.startswith(prefix)]


def pos_bin(v: float) -> int:
    return min(POS_BINS - 1, max(0, int(v * POS_BINS)))


def bin_centre(b: int) -> float:
    return round((b + 0.5) / POS_BINS, 4)


def height_bin(h: float) -> int:
    lo, hi = HEIGHT_RANGE
    return min(HEIGHT_BINS - 1, max(0, round((h - lo) / (hi - lo) * (HEIGHT_BINS - 1))))


def height_of(b: int) -> float:
    lo, hi = HEIGHT_RANGE
    return round(lo + b * (hi - lo) / (HEIGHT_BINS - 1), 4)


def encode(scene: Scene) -> list[int]:
    """Plan tokens of a scene (without <plan>, ending in <end>). Characters outside CHARS are dropped."""
    out: list[int] = []
    for w in scene.words:
        out += [WORD, ID[f"x:{pos_bin(w.x)}"], ID[f"y:{pos_bin(w.y)}"], ID[f"h:{height_bin(w.height)}"]]
        out += [ID[f"char:{c}"] for c in w.text.upper() if c in CHARS] + [END_WORD]
    for s in scene.shapes:
        out += [OBJ, ID[f"kind:{s.kind}"], ID[f"colour:{s.colour}"], ID[f"size:{s.size}"]]
        out += [ID[f"x:{pos_bin(s.x)}"], ID[f"y:{pos_bin(s.y)}"]]
    return out + [END]


def fit_word(text: str, height: float, x: float, y: float) -> Word:
    """A planned word made to fit the canvas: shrunk until it fits the width, then moved inside."""
    w = Word(text, height, 0.5, 0.5)
    while text_width(w) > 1 - 2 * MARGIN and w.height > 0.01:
        w = Word(text, round(w.height * 0.92, 4), 0.5, 0.5)
    half_w, half_h = text_width(w) / 2, w.height * 0.75
    return Word(text, w.height, round(min(max(x, MARGIN + half_w), 1 - MARGIN - half_w), 4), round(min(max(y, MARGIN + half_h), 1 - MARGIN - half_h), 4))


def decode(tokens: list[int]) -> Scene:
    """The scene a plan describes; tolerant of malformed items (a sampled plan may be imperfect)."""
    words: list[Word] = []
    shapes: list[Shape] = []
    i = 0
    names = [VOCAB[t] if 0 <= t < len(VOCAB) else "?" for t in tokens]
    while i < len(names) and names[i] != "<end>":
        if names[i] == "<word>" and i + 3 < len(names):
            x, y, h = names[i + 1], names[i + 2], names[i + 3]
            j = i + 4
            chars = []
            while j < len(names) and names[j].startswith("char:"):
                chars.append(names[j][5:])
                j += 1
            text = "".join(chars).strip()
            if text and x.startswith("x:") and y.startswith("y:") and h.startswith("h:"):
                words.append(fit_word(text, height_of(int(h[2:])), bin_centre(int(x[2:])), bin_centre(int(y[2:]))))
            i = j + (j < len(names) and names[j] == "</word>")
        elif names[i] == "<obj>" and i + 5 < len(names):
            k, c, s, x, y = names[i + 1 : i + 6]
            if k.startswith("kind:") and c.startswith("colour:") and s.startswith("size:") and x.startswith("x:") and y.startswith("y:"):
                shapes.append(Shape(k[5:], c[7:], s[5:], bin_centre(int(x[2:])), bin_centre(int(y[2:]))))
            i += 6
        else:
            i += 1
    return Scene(shapes=tuple(shapes), words=tuple(words))


def quantise(scene: Scene) -> Scene:
    """The scene as its plan would describe it (bin-centre positions): the generator's training condition."""
    return decode(encode(scene))


@dataclass
class Grammar:
    """Which plan tokens may come next: keeps sampled plans well formed and objects from overlapping.

    Objects are kept off everything already planned (the world's rule: things never touch), which is
    what lets counting work on a sampled layout.
    """

    def __post_init__(self) -> None:
        self.kind, self.colour, self.size = ids_with_prefix("kind:"), ids_with_prefix("colour:"), ids_with_prefix("size:")
        self.x, self.y, self.h, self.chars = ids_with_prefix("x:"), ids_with_prefix("y:"), ids_with_prefix("h:"), ids_with_prefix("char:")

    def allowed(self, plan: list[int]) -> list[int]:
        """Allowed next tokens after the plan tokens so far (after <plan>)."""
        if not plan:
            return [WORD, OBJ, END]
        # Position of the last item start.
        starts = [i for i, t in enumerate(plan) if t in (WORD, OBJ)]
        last = starts[-1] if starts else None
        if last is None:
            return [WORD, OBJ, END]
        item, k = plan[last:], len(plan) - last
        if item[0] == WORD:
            if k == 1:
                return self.x
            if k == 2:
                return self.y
            if k == 3:
                return self.h
            if item[-1] == END_WORD:
                return [WORD, OBJ, END] if not any(t == OBJ for t in plan) else [OBJ, END]
            return self.chars + ([END_WORD] if k > 4 else [])
        if k == 1:
            return self.kind
        if k == 2:
            return self.colour
        if k == 3:
            return self.size
        if k == 4:
            return self._free_x(plan[:last], VOCAB[item[3]][5:])
        if k == 5:
            return self._free_y(plan[:last], VOCAB[item[3]][5:], int(VOCAB[item[4]][2:]))
        return [OBJ, END]

    def _boxes(self, plan: list[int]) -> list:
        scene = decode(plan + [END])
        return [shape_box(s) for s in scene.shapes] + [word_box(w) for w in scene.words]

    def _fits(self, boxes: list, size: str, xb: int, yb: int) -> bool:
        r, x, y = SIZES[size], bin_centre(xb), bin_centre(yb)
        if not (MARGIN + r <= x + 1e-9 and x <= 1 - MARGIN - r + 1e-9 and MARGIN + r <= y + 1e-9 and y <= 1 - MARGIN - r + 1e-9):
            return False
        return all(x + r + MARGIN <= b[0] or b[2] + MARGIN <= x - r or y + r + MARGIN <= b[1] or b[3] + MARGIN <= y - r for b in boxes)

    def _free_x(self, plan: list[int], size: str) -> list[int]:
        boxes = self._boxes(plan)
        ok = [ID[f"x:{xb}"] for xb in range(POS_BINS) if any(self._fits(boxes, size, xb, yb) for yb in range(POS_BINS))]
        return ok or self.x  # nowhere free: let the model choose (the count may then merge)

    def _free_y(self, plan: list[int], size: str, xb: int) -> list[int]:
        boxes = self._boxes(plan)
        ok = [ID[f"y:{yb}"] for yb in range(POS_BINS) if self._fits(boxes, size, xb, yb)]
        return ok or self.y
