"""What each kind of scorer reports of one image: the contracts between scorers and suites.

A scorer declares the reading it gives (`Scorer.reading`) and a suite the reading it expects of
each role it reads with (`Suite.scorers`); a run refuses a scorer whose reading is not the one its
role's suite expects before any image is made (a detector counter must give `CounterReading`), and
the runner refuses a reading that lacks a key of its type. Readings stay plain JSON dicts (they are
cached as JSON), typed for the reader and for static checkers.
"""


from typing import NotRequired, TypedDict


class OCRBox(TypedDict):
    text: str
    confidence: float
    polygon: list[list[int]]


class JudgedQuestion(TypedDict):
    """One question a judge was asked for a reading, and what it said (nbeval.scorers.vlm)."""

    question: str
    answer: str | None
    probabilities: dict[str, float] | None  # option → probability
    source: str | None  # "logprobs" (the first answer token's alternatives) or "text" (the parsed answer alone)
    model: str | None  # as the backend names itself in its answer: a provider changing it shows here
    system_fingerprint: str | None


class OCRReading(TypedDict):
    text: str  # every box's text, in reading order, joined by spaces
    boxes: list[OCRBox]
    judge: NotRequired[list[JudgedQuestion]]  # when a judge read it (no boxes then)


class CountedObject(TypedDict):
    kind: str
    colour: str
    bbox: list[float]  # x0, y0, x1, y1 as fractions of the image side
    area: NotRequired[int]  # pixels, where the counter measures it


class CounterReading(TypedDict):
    counts: dict[str, int]  # "<colour> <kind>" → how many
    objects: list[CountedObject]  # empty from a judge, which counts without boxes
    judge: NotRequired[list[JudgedQuestion]]
    relations: NotRequired[list[dict]]  # from a judge asked them: each {a, relation, b} of the truth (a, b: {colour or None, kind}) and "holds"


class Similarity(TypedDict):
    """One masked comparison of an image with a reference render."""

    ssim: float | None  # None: the mask kept no pixel
    psnr: float | None
    kept: float  # share of pixels compared
    lpips: NotRequired[float | None]  # only with LPIPS weights


PixelsReading = dict[str, Similarity]  # comparison name (as the suite's truth names it) → similarity


class ClipReading(TypedDict):
    cos: float  # cosine of the image with its caption
    negatives: dict[str, float]  # hard-negative kind → cosine with that caption


class TifaAtom(JudgedQuestion):
    expected: str  # the right answer
    p_correct: float  # the judge's probability of it (Soft-TIFA)


class TifaReading(TypedDict):
    atoms: list[TifaAtom]


class EditReading(TypedDict):
    sc: float  # semantic consistency: the edit made, nothing else changed, 0–1 (a 0–10 rating / 10)
    pq: float  # perceptual quality, 0–1
    judge: list[JudgedQuestion]


class PairwiseReading(TypedDict):
    choice: str  # "first", "second" or "tie": which image matches the prompt better
    judge: list[JudgedQuestion]


class IdentityReading(TypedDict):
    embedding: list[float]  # L2-normalised
    reference_similarity: float  # cosine with the identity's reference render


def missing_keys(reading: object, kind: type) -> list[str]:
    """The keys of `kind` (a TypedDict) that `reading` lacks; [] for a complete reading or an untyped kind."""
    required = getattr(kind, "__required_keys__", None)
    if required is None:
        return []
    if not isinstance(reading, dict):
        return sorted(required)
    return sorted(required - reading.keys())


def name_of(kind: object) -> str:
    return getattr(kind, "__name__", None) or str(kind)
