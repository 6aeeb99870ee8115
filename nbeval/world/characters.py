"""Characters: identities made of parts, so "the same character" has an exact meaning.

An identity is the tuple of its parts (head shape, skin colour, eyes, accessory and its colour);
where it stands and how large it is are not part of it. Swapping one part makes a different
character that differs in exactly one named way, which is how the identity suite proves its scorer.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace

from PIL import ImageDraw

from nbeval.world.prompts import article
from nbeval.world.scene import COLOURS

HEADS: tuple[str, ...] = ("round", "square", "diamond")
EYES: tuple[str, ...] = ("dot", "wide", "sleepy")
ACCESSORIES: tuple[str, ...] = ("hat", "crown", "bow", "antenna", "none")
PARTS: tuple[str, ...] = ("head", "skin", "eyes", "accessory", "accessory_colour")
# Half-extent of the head as a fraction of the canvas side; the accessory sits above it.
CHARACTER_SIZES: dict[str, float] = {"small": 0.09, "medium": 0.13, "large": 0.17}
_INK = (20, 20, 20)


@dataclass(frozen=True)
class Identity:
    head: str
    skin: str
    eyes: str
    accessory: str
    accessory_colour: str

    def __post_init__(self) -> None:
        for part, value, allowed in (
            ("head", self.head, HEADS), ("skin", self.skin, tuple(COLOURS)), ("eyes", self.eyes, EYES),
            ("accessory", self.accessory, ACCESSORIES), ("accessory_colour", self.accessory_colour, tuple(COLOURS)),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {part} {value!r}; expected one of {allowed}")
        if self.accessory != "none" and self.accessory_colour == self.skin:
            raise ValueError("an accessory must differ in colour from the skin, or it cannot be seen")

    def describe(self) -> str:
        """'a round red character with wide eyes and a blue hat'."""
        eyes = {"dot": "dot eyes", "wide": "wide eyes", "sleepy": "sleepy eyes"}[self.eyes]
        wears = "no accessory" if self.accessory == "none" else f"{article(self.accessory_colour)} {self.accessory_colour} {self.accessory}"
        return f"{article(self.head)} {self.head} {self.skin} character with {eyes} and {wears}"

    def swap(self, part: str, rng: random.Random) -> Identity:
        """The same identity with `part` changed to another valid value."""
        options = {"head": HEADS, "skin": tuple(COLOURS), "eyes": EYES, "accessory": ACCESSORIES, "accessory_colour": tuple(COLOURS)}[part]
        current = getattr(self, part)
        for value in rng.sample(options, len(options)):
            try:
                if value != current:
                    return replace(self, **{part: value})
            except ValueError:  # e.g. an accessory recoloured to the skin colour
                continue
        raise ValueError(f"no other valid value for part {part!r} of {self}")


def random_identity(rng: random.Random) -> Identity:
    skin, hat_colour = rng.sample(list(COLOURS), 2)
    return Identity(rng.choice(HEADS), skin, rng.choice(EYES), rng.choice(ACCESSORIES), hat_colour)


@dataclass(frozen=True)
class Character:
    identity: Identity
    size: str
    x: float
    y: float

    def __post_init__(self) -> None:
        if self.size not in CHARACTER_SIZES:
            raise ValueError(f"unknown character size {self.size!r}; expected one of {tuple(CHARACTER_SIZES)}")

    @property
    def radius(self) -> float:
        return CHARACTER_SIZES[self.size]

    def box(self) -> tuple[float, float, float, float]:
        """Head plus the accessory above it (0.7 radii), in normalised coordinates."""
        r = self.radius
        return (self.x - r, self.y - 1.7 * r, self.x + r, self.y + r)

    def to_dict(self) -> dict:
        return {"identity": asdict(self.identity), "size": self.size, "x": self.x, "y": self.y}

    @classmethod
    def from_dict(cls, d: dict) -> Character:
        return cls(Identity(**d["identity"]), d["size"], d["x"], d["y"])


def draw_character(draw: ImageDraw.ImageDraw, c: Character, px: int) -> None:
    cx, cy, r = c.x * px, c.y * px, c.radius * px
    ident = c.identity
    skin, acc = COLOURS[ident.skin], COLOURS[ident.accessory_colour]
    if ident.head == "round":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=skin)
    elif ident.head == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=skin)
    else:  # diamond
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=skin)
    ex, ey, e = 0.38 * r, cy - 0.15 * r, 0.17 * r
    for x in (cx - ex, cx + ex):
        if ident.eyes == "dot":
            draw.ellipse((x - 0.6 * e, ey - 0.6 * e, x + 0.6 * e, ey + 0.6 * e), fill=_INK)
        elif ident.eyes == "wide":
            draw.ellipse((x - 1.3 * e, ey - 1.3 * e, x + 1.3 * e, ey + 1.3 * e), fill=(255, 255, 255), outline=_INK, width=max(1, round(0.25 * e)))
            draw.ellipse((x - 0.5 * e, ey - 0.5 * e, x + 0.5 * e, ey + 0.5 * e), fill=_INK)
        else:  # sleepy: closed lids
            draw.rectangle((x - 1.2 * e, ey - 0.25 * e, x + 1.2 * e, ey + 0.25 * e), fill=_INK)
    top = cy - r
    if ident.accessory == "hat":
        draw.rectangle((cx - 0.85 * r, top - 0.12 * r, cx + 0.85 * r, top + 0.04 * r), fill=acc)
        draw.rectangle((cx - 0.5 * r, top - 0.7 * r, cx + 0.5 * r, top - 0.1 * r), fill=acc)
    elif ident.accessory == "crown":
        w = 0.6 * r
        draw.polygon([(cx - w, top + 0.05 * r), (cx - w, top - 0.65 * r), (cx - w / 2, top - 0.3 * r), (cx, top - 0.7 * r),
                      (cx + w / 2, top - 0.3 * r), (cx + w, top - 0.65 * r), (cx + w, top + 0.05 * r)], fill=acc)
    elif ident.accessory == "bow":
        draw.polygon([(cx, top - 0.15 * r), (cx - 0.6 * r, top - 0.6 * r), (cx - 0.6 * r, top + 0.3 * r)], fill=acc)
        draw.polygon([(cx, top - 0.15 * r), (cx + 0.6 * r, top - 0.6 * r), (cx + 0.6 * r, top + 0.3 * r)], fill=acc)
    elif ident.accessory == "antenna":
        draw.rectangle((cx - 0.06 * r, top - 0.5 * r, cx + 0.06 * r, top + 0.05 * r), fill=_INK)
        draw.ellipse((cx - 0.2 * r, top - 0.7 * r, cx + 0.2 * r, top - 0.3 * r), fill=acc)
