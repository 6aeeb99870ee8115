"""Text rendering: does the image say exactly what the prompt asked it to say?

Samples are stratified over difficulty tiers (round robin, so any n covers them evenly): one, two or
three common words; numbers; words rich in rare letters; and small text. OCR reads the image; the
comparison uses the one normalisation in `nbeval.textmetrics` (case, punctuation, spacing ignored).
Beside them, OneIG-Bench's text metrics (completion rate, word accuracy, text score), so a model's
numbers read on the scale that benchmark reports.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd

from nbeval.readings import OCRReading
from nbeval.records import Sample, Score
from nbeval.stats import Estimate, bootstrap_of_means
from nbeval.suite import MetricSpec, Suite, estimate_metrics, wide_table
from nbeval.textmetrics import compare, normalise, oneig_text_score
from nbeval.world import COMMON_WORDS, RARE_LETTER_WORDS, Scene, fit_text, scene_prompt
from nbeval.world.prompts import N_PHRASINGS

TIERS = ("words_1", "words_2", "words_3", "digits", "rare_letters", "small")
BREAKDOWNS = ("tier", "length")
# compare()'s columns OneIG's dataset-level ED, CR and WAC are made of, in this order
ONEIG_PARTS = ["edit_distance", "exact_match", "words_matched", "words_requested"]


def _oneig_wac(means: np.ndarray) -> np.ndarray:
    """OneIG's WAC, Σ words matched / Σ words requested (from the columns' means), i.e. word_recall's
    per-sample numerator and denominator pooled over the dataset: word_recall averages the per-sample
    ratios instead, so WAC weighs a sample by its number of words."""
    return means[..., 2] / means[..., 3]


def _oneig_score(means: np.ndarray) -> np.ndarray:
    return oneig_text_score(means[..., 0], means[..., 1], _oneig_wac(means))


def _oneig(wide: pd.DataFrame) -> dict[str, Estimate]:
    """word_accuracy and oneig_text_score over these rows, each with its bootstrap CI (samples resampled,
    the pooled statistic recomputed per resample)."""
    parts = wide[ONEIG_PARTS].to_numpy()
    return {"word_accuracy": bootstrap_of_means(parts, _oneig_wac), "oneig_text_score": bootstrap_of_means(parts, _oneig_score)}


def _text_for(tier: str, rng: random.Random) -> str:
    if tier.startswith("words_"):
        return " ".join(rng.sample(COMMON_WORDS, int(tier[-1])))
    if tier == "digits":
        return " ".join(str(rng.randrange(10 ** (k - 1), 10**k)) for k in rng.choices(range(2, 6), k=rng.randint(1, 2)))
    if tier == "rare_letters":
        return " ".join(rng.sample(RARE_LETTER_WORDS, rng.randint(1, 2)))
    if tier == "small":
        return " ".join(rng.sample(COMMON_WORDS, rng.randint(1, 2)))
    raise ValueError(f"unknown tier {tier!r}")


class TextRenderingSuite(Suite):
    name = "text_rendering"
    version = "1"
    scorers = {"ocr": OCRReading}
    pooled = (  # OneIG-Bench's: statistics of sums over the samples, not means of a per-sample value
        MetricSpec("word_accuracy", True, "OneIG-Bench's WAC: requested words found in the readings (multiset), pooled over samples"),
        MetricSpec("oneig_text_score", True, "OneIG-Bench's text score 1 − min(100, ED)·(1 − CR)·(1 − WAC)/100, ED the mean edit distance"),
    )
    metrics = (
        MetricSpec("exact_match", True, "normalised OCR reading equals the requested text", proportion=True),
        MetricSpec("word_recall", True, "requested words found in the reading (multiset)"),
        MetricSpec("cer", False, "character error rate: edit distance / requested length"),
        MetricSpec("ned", False, "normalised edit distance: edit distance / longer length"),
        MetricSpec("completion_rate", True, "OneIG-Bench's CR: share of samples read completely right (exact_match under OneIG's name)", proportion=True),
        *pooled,
    )
    headline = ("exact_match", "cer")

    def __init__(self, image_size: int = 256, tiers: tuple[str, ...] = TIERS, small_height: tuple[float, float] = (0.035, 0.045), height: tuple[float, float] = (0.07, 0.11)) -> None:
        super().__init__(image_size)
        unknown = set(tiers) - set(TIERS)
        if unknown:
            raise ValueError(f"unknown text_rendering tiers {sorted(unknown)}; expected some of {TIERS}")
        self.tiers, self.small_height, self.height = tuple(tiers), tuple(small_height), tuple(height)

    def params(self) -> dict:
        return {**super().params(), "tiers": list(self.tiers), "small_height": list(self.small_height), "height": list(self.height)}

    def samples(self, n: int, seed: int) -> list[Sample]:
        out = []
        for i in range(n):
            rng = self.sample_rng(seed, i)
            tier = self.tiers[i % len(self.tiers)]
            text = _text_for(tier, rng)
            word = fit_text(rng, text, rng.uniform(*(self.small_height if tier == "small" else self.height)))
            scene = Scene(words=(word,))
            out.append(
                Sample(
                    id=f"{self.name}-{seed}-{i:05d}",
                    suite=self.name,
                    prompt=scene_prompt(scene, phrasing=rng.randrange(N_PHRASINGS)),
                    truth=({"scene": scene.to_dict(), "text": text},),
                    seed=seed * 1_000_003 + i,
                    tags={"tier": tier, "length": len(text.split())},
                )
            )
        return out

    def score(self, sample: Sample, turn: int, readings: dict[str, dict]) -> list[Score]:
        read = readings["ocr"]["text"]
        truth = sample.truth[turn]["text"]
        detail = json.dumps({"read": read, "read_normalised": normalise(read), "truth": truth,
                             **({"judge": readings["ocr"]["judge"]} if "judge" in readings["ocr"] else {})})
        return [Score(sample.id, turn, "ocr", m, v, detail) for m, v in compare(truth, read).items()]

    def aggregate(self, scores: pd.DataFrame, samples: pd.DataFrame) -> dict[str, Estimate]:
        """Per-sample metrics by `estimate_metrics`; OneIG's pooled ones over all samples and per
        breakdown value (`word_accuracy/tier_digits`, …)."""
        wide = wide_table(scores, samples).assign(completion_rate=lambda w: w["exact_match"])
        out = estimate_metrics(wide, tuple(m for m in self.metrics if m not in self.pooled), breakdowns=BREAKDOWNS)
        out |= _oneig(wide)
        for col in BREAKDOWNS:
            for value, group in wide.groupby(col, sort=True):
                out |= {f"{name}/{col}_{value}": est for name, est in _oneig(group).items()}
        return out

    def plots(self, scores: pd.DataFrame, samples: pd.DataFrame, metrics: dict[str, Estimate]) -> dict:
        from nbeval.plots import bar_with_ci, plt  # matplotlib only when a figure is drawn

        def by(metric: str, column: str) -> dict[str, Estimate]:
            prefix = f"{metric}/{column}_"
            return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        bar_with_ci(axes[0], by(self.metrics[0].name, "tier"), "exact match by tier", ylim=(0, 1.05))
        bar_with_ci(axes[1], by(self.metrics[2].name, "length"), "CER by text length (words)")
        fig.tight_layout()
        return {"text_rendering_breakdown": fig}
