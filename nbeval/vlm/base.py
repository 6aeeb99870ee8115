"""The judge protocol: a batch of questions about images in, one answer each out.

A `Question` is images, the question's text, and the options a right answer is one of (empty: free
text). An `Answer` is the text, the log-probabilities of the first answer token's top alternatives
when the backend gives them (`top_logprobs`, as OpenAI's chat API returns them), and — instead of
both — an error of a known kind: a refusal, a content filter, an unparsable answer, a timeout, a
transport failure. A failed answer is never scored as right or wrong: scorers turn it into a failed
reading, counted by reason in the run's summary.

`option_probabilities` turns an answer into each option's probability: from the log-probabilities
when the options are among the first token's alternatives (`source` "logprobs"), else from the
parsed text alone (`source` "text": 1 for the option it names, 0 for the others), so a reading
always says which it is.
"""

from __future__ import annotations

import hashlib
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from PIL import Image

from nbeval.records import canonical_json

ERROR_KINDS = ("refusal", "content_filter", "unparsable", "timeout", "transport", "unsupported")


@dataclass(frozen=True)
class Question:
    images: tuple[Image.Image, ...]
    text: str
    options: tuple[str, ...] = ()  # the answers it allows, lower case ("yes", "no"); () = free text


@dataclass
class Answer:
    text: str | None = None
    top_logprobs: list[tuple[str, float]] | None = None  # the first answer token's alternatives, best first
    error: str | None = None  # why there is no usable answer
    error_kind: str | None = None  # one of ERROR_KINDS
    meta: dict = field(default_factory=dict)  # what the backend says of itself: model, system_fingerprint, usage

    @classmethod
    def failed(cls, kind: str, error: str, **meta) -> Answer:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown judge error kind {kind!r}; one of {ERROR_KINDS}")
        return cls(error=error, error_kind=kind, meta=meta)


class JudgeError(Exception):
    """A judge's answer that cannot be scored; `kind` is one of ERROR_KINDS. A scorer returns it in
    place of a reading (the runner records it as that reading's failure, with its reason)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def normalise(token: str) -> str:
    """How an answer token is compared with an option: stripped of spaces, punctuation and case."""
    return re.sub(r"[^a-z0-9]", "", token.lower())


def parse_option(text: str | None, options: tuple[str, ...]) -> str | None:
    """The option a free-text answer names: its first word that is an option (None: none is)."""
    for word in re.findall(r"[a-z0-9]+", (text or "").lower()):
        if word in options:
            return word
    return None


def option_probabilities(answer: Answer, options: tuple[str, ...]) -> tuple[dict[str, float], str]:
    """Each option's probability and where it came from ("logprobs" or "text"); raises JudgeError
    (unparsable) when neither the alternatives nor the text name an option."""
    if answer.top_logprobs:
        mass: dict[str, float] = {}
        for token, logprob in answer.top_logprobs:
            key = normalise(token)
            if key in options and logprob > -math.inf:
                mass[key] = mass.get(key, 0.0) + math.exp(logprob)
        if mass:
            total = sum(mass.values())
            return {o: mass.get(o, 0.0) / total for o in options}, "logprobs"
    named = parse_option(answer.text, options)
    if named is None:
        raise JudgeError("unparsable", f"the answer {answer.text!r} names none of {list(options)}")
    return {o: float(o == named) for o in options}, "text"


class Judge(ABC):
    """A vision-language judge. `ask` answers a batch, one Answer per question, in order; a failure
    is an Answer with its error, never an exception for the batch."""

    name: str = "judge"

    def settings(self) -> dict:
        """Everything that changes answers: backend, model, decoding; part of the fingerprint."""
        return {}

    @property
    def fingerprint(self) -> str:
        blob = canonical_json({"class": type(self).__qualname__, "settings": self.settings()})
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @abstractmethod
    def ask(self, questions: list[Question]) -> list[Answer]:
        """One answer per question, in order."""
