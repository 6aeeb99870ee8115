"""Automatic arena judges: who wins a battle between two models' images of the same prompt.

A judge is built by Hydra from `conf/judge/` (`judge=suite`, `judge=clip`, or any class given as
`_target_`, such as a VLM judge), so adding one is a config and a class, nothing in the arena.
Every verdict is logged with the judge's fingerprint, which changes whenever anything that could
change a verdict does: the judge's settings, the base suite (name, version, params) and the
fingerprints of the scorers it reads with.

Rules shared by the judges here, because a model must not gain from failing: a side with no image
or no valid reading (its generation or a scorer failed) loses; when neither side has one the
battle is `both_bad`. Equal values are a `tie`; equal values are never called `both_bad`, since on a
graded metric "equally imperfect" and "both bad" cannot be told apart. (Ratings count both as ½.)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from nbeval.cache import Cache
from nbeval.records import Sample, content_hash
from nbeval.runner import read
from nbeval.scorers.base import Scorer
from nbeval.stats import Estimate
from nbeval.suite import Suite


@dataclass(frozen=True)
class Side:
    """One model's answer to a battle's prompt."""

    model: str
    image: str | None  # sha256 of its turn-0 image (the answer to the prompt); None: generation failed
    scores: dict[str, float]  # base-suite metric → the sample's value (mean over turns); empty if any reading failed


@dataclass(frozen=True)
class Battle:
    id: str
    sample: Sample
    a: Side
    b: Side


@dataclass(frozen=True)
class JudgeContext:
    """What a judge may use besides the battles: the base suite the images answer, the run's scorers
    (by role, as the config builds them) and the cache, so readings are shared with the suites."""

    base: Suite
    scorer_for: Callable[[str], Scorer]
    cache: Cache
    batch_size: int


class Judge(ABC):
    name: str = "judge"

    def settings(self, ctx: JudgeContext) -> dict:
        """Everything that changes verdicts besides the base suite (metrics, scorer fingerprints)."""
        return {}

    def fingerprint(self, ctx: JudgeContext) -> str:
        base = {"name": ctx.base.name, "version": ctx.base.version, "params": ctx.base.params()}
        return content_hash({"class": type(self).__qualname__, "settings": self.settings(ctx), "base": base})[:16]

    @abstractmethod
    def judge(self, battles: list[Battle], ctx: JudgeContext) -> list[str]:
        """One winner per battle, in order: "a", "b", "tie" or "both_bad"."""

    def diagnostics(self) -> dict[str, Estimate]:
        """What the last `judge` call showed of the judge itself (a VLM's position bias); reported as
        the arena's `judge/<name>` metrics. None by default."""
        return {}


def forfeit(missing_a: bool, missing_b: bool) -> str:
    """The verdict when a side has no valid answer: it loses; neither has one: both_bad."""
    return "both_bad" if missing_a and missing_b else "b" if missing_a else "a"


def compare(a: float | None, b: float | None, higher_is_better: bool | None) -> str:
    """The winner by one value per side; None or NaN is no valid reading (see `forfeit`).
    `higher_is_better=None` means closer to zero is better (a bias)."""
    missing_a, missing_b = a is None or math.isnan(a), b is None or math.isnan(b)
    if missing_a or missing_b:
        return forfeit(missing_a, missing_b)
    if higher_is_better is None:
        a, b, higher_is_better = abs(a), abs(b), False
    if a == b:
        return "tie"
    return "a" if (a > b) == higher_is_better else "b"


class SuiteJudge(Judge):
    """The image with the better base-suite score wins; equal scores tie.

    `metrics` are compared in order, the first that differs decides (default: the base suite's
    headline, e.g. counting's exact accuracy, then count MAE), so a pass/fail metric that ties
    often is refined by a graded one. Directions come from the base suite's metric specs.
    """

    name = "suite"

    def __init__(self, metrics: list[str] | None = None) -> None:
        self.metrics = list(metrics) if metrics else None

    def _order(self, base: Suite) -> list[tuple[str, bool | None]]:
        names = self.metrics or list(base.headline)
        unknown = [m for m in names if base.spec(m) is None]
        if unknown or not names:
            raise ValueError(f"suite judge: {base.name!r} has no metric {unknown or names}; its metrics: {[m.name for m in base.metrics]}")
        return [(m, base.spec(m).higher_is_better) for m in names]

    def settings(self, ctx: JudgeContext) -> dict:
        return {"metrics": self._order(ctx.base), "scorers": {role: ctx.scorer_for(role).fingerprint for role in ctx.base.scorers}}

    def judge(self, battles: list[Battle], ctx: JudgeContext) -> list[str]:
        order = self._order(ctx.base)
        return [self._verdict(b.a, b.b, order) for b in battles]

    @staticmethod
    def _verdict(a: Side, b: Side, order: list[tuple[str, bool | None]]) -> str:
        if not a.scores or not b.scores:
            return forfeit(not a.scores, not b.scores)
        for metric, higher_is_better in order:
            winner = compare(a.scores.get(metric), b.scores.get(metric), higher_is_better)
            if winner != "tie":
                return winner
        return "tie"


class ClipJudge(Judge):
    """Higher adherence wins: the cosine of each side's turn-0 image with the sample's caption, read
    by the run's CLIP scorer (`scorer.<scorer>`, the same weights and cache as the adherence suite).

    The caption is what the base suite gives that scorer when it reads with it (adherence: its
    caption), else the truth's `caption`, else the prompt. Equal cosines tie.
    """

    name = "clip"

    def __init__(self, scorer: str = "clip") -> None:
        self.scorer = scorer

    def settings(self, ctx: JudgeContext) -> dict:
        return {"scorer": self.scorer, "scorer_fingerprint": ctx.scorer_for(self.scorer).fingerprint, "text": "base suite's scorer truth, else truth caption, else prompt", "turn": 0}

    def _truth(self, sample: Sample, ctx: JudgeContext) -> dict:
        if self.scorer in ctx.base.scorers:
            return ctx.base.scorer_truth(sample, 0, self.scorer)
        return {"caption": sample.truth[0].get("caption", sample.prompt)}

    def judge(self, battles: list[Battle], ctx: JudgeContext) -> list[str]:
        truths = [self._truth(b.sample, ctx) for b in battles]
        items = {(side.image, content_hash(t)): (side.image, t) for b, t in zip(battles, truths) for side in (b.a, b.b) if side.image}
        readings, _ = read(ctx.scorer_for(self.scorer), list(items.values()), ctx.cache, ctx.batch_size, "arena judge")
        cos = {key: r["cos"] for key, r in zip(items, readings) if not isinstance(r, BaseException)}
        verdicts = []
        for b, t in zip(battles, truths):
            cos_a, cos_b = (cos.get((side.image, content_hash(t))) for side in (b.a, b.b))
            verdicts.append(compare(cos_a, cos_b, True))
        return verdicts


class VLMPairwiseJudge(Judge):
    """A VLM judge (conf/vlm/) asked which image matches the sample's prompt better, in both orders
    (GenArena: one order alone carries the judge's position bias). A side wins only when both orders
    agree; orders that disagree, or "tie" answers, are a tie; a failed answer (refusal, filter,
    unparsable, timeout) is a tie too, never a win. Each order is a cached reading of the
    `VLMPairwise` scorer (the images' pair and the prompt are its key). `diagnostics()` reports
    how often the judge chose the first image shown — 0.5 for a judge without a position bias — and
    how often the two orders disagreed."""

    name = "vlm_pairwise"

    def __init__(self, vlm) -> None:
        from nbeval.scorers.vlm import VLMPairwise

        self.scorer = VLMPairwise(vlm)
        self._seen: dict[str, int] = {}

    def settings(self, ctx: JudgeContext) -> dict:
        return {"scorer_fingerprint": self.scorer.fingerprint, "orders": "both", "text": "the sample's prompt", "turn": 0}

    def judge(self, battles: list[Battle], ctx: JudgeContext) -> list[str]:
        pairs = [(b, {"prompt": b.sample.prompt}) for b in battles if b.a.image and b.b.image]
        items = [(second.image, {**t, "context": {"first": first.image}}) for b, t in pairs for first, second in ((b.a, b.b), (b.b, b.a))]
        readings, _ = read(self.scorer, items, ctx.cache, ctx.batch_size, "arena judge") if items else ([], 0)
        choices = [r["choice"] if not isinstance(r, BaseException) else None for r in readings]
        verdict: dict[str, str] = {}
        first = disagree = answered = 0
        for k, (b, _) in enumerate(pairs):
            ab, ba = choices[2 * k], choices[2 * k + 1]  # a shown first, then b shown first
            answered += (ab is not None) + (ba is not None)
            first += (ab == "first") + (ba == "first")
            a_wins, b_wins = (ab, ba) == ("first", "second"), (ab, ba) == ("second", "first")
            disagree += ab in ("first", "second") and ba in ("first", "second") and not (a_wins or b_wins)
            verdict[b.id] = "a" if a_wins else "b" if b_wins else "tie"
        self._seen = {"answers": answered, "first": first, "pairs": len(pairs), "disagreed": disagree}
        return [verdict.get(b.id) or forfeit(not b.a.image, not b.b.image) for b in battles]

    def diagnostics(self) -> dict[str, Estimate]:
        from nbeval.stats import wilson

        seen = self._seen
        if not seen.get("answers"):
            return {}
        return {"judge_first_rate": wilson(seen["first"], seen["answers"]), "judge_order_disagreement": wilson(seen["disagreed"], seen["pairs"])}
