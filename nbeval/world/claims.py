"""What a caption claims about a scene, and its hard negatives: captions one attribute away.

A claim is a list of (colour, kind, count) groups, or two single objects in a spatial relation.
Its hard negatives change exactly one thing — a colour, a shape, a count, or which object stands
where — so ranking the true caption above them (CLIP-R-precision) tests that attribute and nothing else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from nbeval.world.layout import MARGIN, place_shapes
from nbeval.world.prompts import NUMBER_WORDS, article, plural
from nbeval.world.scene import COLOURS, SHAPE_KINDS, SIZES, Scene, Shape

RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
HORIZONTAL: tuple[str, ...] = RELATIONS[:2]  # along x; the others along y
NEGATIVE_KINDS: tuple[str, ...] = ("colour", "shape", "count", "relation")


@dataclass(frozen=True)
class Group:
    colour: str
    kind: str
    count: int


@dataclass(frozen=True)
class Claim:
    groups: tuple[Group, ...]
    relation: str | None = None  # groups[0] <relation> groups[1]; both then have count 1

    def __post_init__(self) -> None:
        if self.relation is not None and (self.relation not in RELATIONS or len(self.groups) != 2 or any(g.count != 1 for g in self.groups)):
            raise ValueError(f"a relation needs exactly two single objects and one of {RELATIONS}")

    def caption(self) -> str:
        """'a red circle to the left of a blue square' or 'three red circles and one blue square'."""
        if self.relation:
            a, b = self.groups
            return f"{article(a.colour)} {a.colour} {a.kind} {self.relation} {article(b.colour)} {b.colour} {b.kind}"
        return " and ".join(f"{NUMBER_WORDS[g.count]} {g.colour} {plural(g.kind, g.count)}" for g in self.groups)

    def to_dict(self) -> dict:
        return {"groups": [vars(g) for g in self.groups], "relation": self.relation}

    @classmethod
    def from_dict(cls, d: dict) -> Claim:
        return cls(tuple(Group(**g) for g in d["groups"]), d.get("relation"))


def random_claim(rng: random.Random, relation: bool, max_count: int = 4, groups: int | None = None) -> Claim:
    """`groups` (one or two; random if None) groups of distinct colour and kind; or, with
    `relation`, two objects and a relation."""
    n = 2 if relation else groups or rng.choice((1, 2))
    colours, kinds = rng.sample(list(COLOURS), n), rng.sample(SHAPE_KINDS, n)
    if relation:
        return Claim(tuple(Group(c, k, 1) for c, k in zip(colours, kinds)), rng.choice(RELATIONS))
    return Claim(tuple(Group(c, k, rng.randint(1, max_count)) for c, k in zip(colours, kinds)))


def _relation_pair(rng: random.Random, a: Group, b: Group, relation: str, size: str) -> tuple[Shape, Shape]:
    """Two objects whose offset along the relation's axis is at least three times the other one."""
    r = SIZES[size]
    lo, hi = MARGIN + r, 1 - MARGIN - r
    gap = rng.uniform(max(0.3, 2 * r + 0.1), hi - lo)
    first = rng.uniform(lo, hi - gap)
    along = (first, first + gap)  # the first object is the one with the smaller coordinate
    across = rng.uniform(lo, hi)
    across = (across, min(hi, max(lo, across + rng.uniform(-gap / 3, gap / 3))))
    if relation in ("to the right of", "below"):
        along = along[::-1]
    horizontal = relation in HORIZONTAL
    xy = [(along[i], across[i]) if horizontal else (across[i], along[i]) for i in (0, 1)]
    return tuple(Shape(g.kind, g.colour, size, round(x, 4), round(y, 4)) for g, (x, y) in zip((a, b), xy))


def scene_for(claim: Claim, rng: random.Random) -> Scene:
    """A random scene of which `claim` is exactly true."""
    total = sum(g.count for g in claim.groups)
    size = rng.choice(("medium", "large")) if total <= 3 else rng.choice(("small", "medium"))
    if claim.relation:
        return Scene(shapes=_relation_pair(rng, *claim.groups, claim.relation, size))
    return Scene(shapes=place_shapes(rng, [(g.kind, g.colour, size) for g in claim.groups for _ in range(g.count)]))


def hard_negatives(claim: Claim, rng: random.Random, max_count: int = 5) -> dict[str, Claim]:
    """One false claim per applicable kind in NEGATIVE_KINDS, each one attribute away from `claim`."""
    i = rng.randrange(len(claim.groups))
    g = claim.groups[i]
    used_colours = {x.colour for x in claim.groups}
    used_kinds = {x.kind for x in claim.groups}

    def with_group(new: Group) -> Claim:
        return replace(claim, groups=claim.groups[:i] + (new,) + claim.groups[i + 1 :])

    out = {
        "colour": with_group(replace(g, colour=rng.choice([c for c in COLOURS if c not in used_colours]))),
        "shape": with_group(replace(g, kind=rng.choice([k for k in SHAPE_KINDS if k not in used_kinds]))),
    }
    if claim.relation:
        a, b = claim.groups
        out["relation"] = replace(claim, groups=(b, a))  # same words, the objects trade places
    else:
        step = rng.choice([d for d in (-1, 1) if 1 <= g.count + d <= max_count])
        out["count"] = with_group(replace(g, count=g.count + step))
    return out

