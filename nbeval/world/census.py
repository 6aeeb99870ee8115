"""Counting things where an instruction names them: the census the drift suite checks edits with,
and the world judge answers edit questions with, from a counter's reading.

Regions are the world's 3×3 named grid (`position_phrase`); a centre within `REGION_TOLERANCE` of a
region border counts in both regions, for truth and reading alike, since a counter's boxes are
pixel-rounded.
"""

from __future__ import annotations

from nbeval.world.prompts import position_phrase
from nbeval.world.scene import Scene

REGION_TOLERANCE = 0.02
Located = tuple[str, str, frozenset[str]]  # colour, kind, the named regions its centre is in


def regions(x: float, y: float) -> frozenset[str]:
    """The named regions a centre is in, allowing for pixel-rounded boxes at borders."""
    d = REGION_TOLERANCE
    return frozenset(position_phrase(min(max(x + dx, 0.0), 1.0), min(max(y + dy, 0.0), 1.0)) for dx in (-d, 0, d) for dy in (-d, 0, d))


def located_objects(reading: dict) -> list[Located]:
    """What a counter reading (CounterReading) found, with where."""
    return [(o["colour"], o["kind"], regions((o["bbox"][0] + o["bbox"][2]) / 2, (o["bbox"][1] + o["bbox"][3]) / 2)) for o in reading["objects"]]


def located_shapes(scene: Scene) -> list[Located]:
    """What a scene holds, with where: the truth a reading is compared with."""
    return [(s.colour, s.kind, regions(s.x, s.y)) for s in scene.shapes]


def census(objects: list[Located], colour: str, kind: str, region: str | None = None) -> int:
    """How many `colour` `kind`s there are in `region` (None: anywhere)."""
    return sum(1 for c, k, where in objects if c == colour and k == kind and (region is None or region in where))
