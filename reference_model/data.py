"""Training data: random scenes of the world with the prompts and edit instructions that describe them.

Infinite and on the fly (no dataset on disk). The mix covers what the suites ask for — counts of one or
two kinds, text lines of common, rare-letter, numeric and random words, per-object phrases with sizes
and positions, and shapes with text — without using any suite's sampler, so evaluation prompts are
never training prompts by construction of the seed streams.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from nbeval.world import COLOURS, COMMON_WORDS, RARE_LETTER_WORDS, SHAPE_KINDS, SIZES, LayoutError, Scene, apply_edit, fit_text, place_shapes, scene_prompt
from nbeval.world.layout import word_box
from nbeval.world.prompts import N_PHRASINGS

KINDS_OF_SCENE = ("count_one", "count_two", "text", "objects", "mixed")


@dataclass(frozen=True)
class Example:
    """A prompt and its scene; for an edit, also the scene before and the instruction."""

    prompt: str
    scene: Scene
    before: Scene | None = None
    instruction: str | None = None


def _random_text(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.45:
        return " ".join(rng.sample(COMMON_WORDS, rng.randint(1, 3)))
    if r < 0.6:
        return " ".join(rng.sample(RARE_LETTER_WORDS, rng.randint(1, 2)))
    if r < 0.75:
        return " ".join(str(rng.randrange(10 ** (k - 1), 10**k)) for k in rng.choices(range(1, 6), k=rng.randint(1, 2)))
    # Random letters teach spelling rather than a vocabulary.
    return " ".join("".join(rng.choices(string.ascii_uppercase, k=rng.randint(2, 7))) for _ in range(rng.randint(1, 2)))


def _word(rng: random.Random) -> tuple:
    small = rng.random() < 0.2
    height = rng.uniform(0.035, 0.045) if small else rng.uniform(0.07, 0.11)
    return (fit_text(rng, _random_text(rng), height),)


def random_scene(rng: random.Random, kind: str | None = None) -> tuple[Scene, bool]:
    """A random valid scene and whether its prompt should group shapes by count."""
    kind = kind or rng.choice(KINDS_OF_SCENE)
    for _ in range(20):
        try:
            if kind in ("count_one", "count_two"):
                kinds = rng.sample(SHAPE_KINDS, 1 if kind == "count_one" else 2)
                colours = rng.sample(list(COLOURS), len(kinds))
                counts = [rng.randint(1, 8)] + ([rng.randint(1, 4)] if len(kinds) == 2 else [])
                size = "large" if sum(counts) <= 3 and rng.random() < 0.5 else rng.choice(["small", "medium"])
                specs = [(k, c, size) for k, c, m in zip(kinds, colours, counts) for _ in range(m)]
                return Scene(shapes=place_shapes(rng, specs)), True
            if kind == "text":
                return Scene(words=_word(rng)), False
            words = _word(rng) if kind == "mixed" else ()
            specs = [(rng.choice(SHAPE_KINDS), rng.choice(list(COLOURS)), rng.choice(list(SIZES))) for _ in range(rng.randint(1, 3))]
            return Scene(shapes=place_shapes(rng, specs, [word_box(w) for w in words]), words=words), None
        except LayoutError:
            continue
    raise LayoutError(f"could not lay out a {kind} scene in 20 tries")


def example(rng: random.Random, edit_rate: float = 0.0) -> Example:
    """One training example; with probability `edit_rate` an edit (scene before, instruction, scene after)."""
    scene, grouped = random_scene(rng)
    prompt = scene_prompt(scene, phrasing=rng.randrange(N_PHRASINGS), grouped=grouped)
    if rng.random() >= edit_rate:
        return Example(prompt, scene)
    vocabulary = COMMON_WORDS + RARE_LETTER_WORDS
    for _ in range(10):
        try:
            e = apply_edit(scene, rng, vocabulary=vocabulary)
        except LayoutError:
            continue
        if len(e.after.shapes) <= 12:
            return Example(e.instruction, e.after, e.before, e.instruction)
    return Example(prompt, scene)
