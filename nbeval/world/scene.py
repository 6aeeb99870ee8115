"""Scene spec of the synthetic world: what is in an image, exactly, so every image has ground truth.

Coordinates are normalised to [0, 1] (x right, y down) so one scene renders at any resolution.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle")

# Palette chosen far apart in RGB so colour segmentation is unambiguous on clean renders.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 225),
    "yellow": (240, 205, 30),
    "purple": (145, 60, 190),
    "orange": (245, 135, 25),
}
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
TEXT_COLOUR: tuple[int, int, int] = (20, 20, 20)

# Half-extent of a shape as a fraction of the canvas side.
SIZES: dict[str, float] = {"small": 0.045, "medium": 0.065, "large": 0.09}


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    x: float
    y: float

    def __post_init__(self) -> None:
        if self.kind not in SHAPE_KINDS:
            raise ValueError(f"unknown shape kind {self.kind!r}; expected one of {SHAPE_KINDS}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {tuple(COLOURS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; expected one of {tuple(SIZES)}")

    @property
    def radius(self) -> float:
        return SIZES[self.size]


@dataclass(frozen=True)
class Word:
    """A line of rendered text; `height` is the cap height as a fraction of the canvas side."""

    text: str
    height: float
    x: float
    y: float


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...] = ()
    words: tuple[Word, ...] = ()
    characters: tuple[dict, ...] = field(default=())  # world.characters.Character.to_dict() of each

    def to_dict(self) -> dict:
        return {
            "shapes": [asdict(s) for s in self.shapes],
            "words": [asdict(w) for w in self.words],
            "characters": [dict(c) for c in self.characters],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(
            shapes=tuple(Shape(**s) for s in d.get("shapes", ())),
            words=tuple(Word(**w) for w in d.get("words", ())),
            characters=tuple(dict(c) for c in d.get("characters", ())),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> Scene:
        return cls.from_dict(json.loads(s))

    def counts(self) -> dict[str, int]:
        """Number of shapes per kind, e.g. {"circle": 3}."""
        out: dict[str, int] = {}
        for s in self.shapes:
            out[s.kind] = out.get(s.kind, 0) + 1
        return out

    def text(self) -> str:
        return " ".join(w.text for w in self.words)

    def with_shapes(self, shapes: tuple[Shape, ...]) -> Scene:
        return replace(self, shapes=tuple(shapes))

    def with_words(self, words: tuple[Word, ...]) -> Scene:
        return replace(self, words=tuple(words))
