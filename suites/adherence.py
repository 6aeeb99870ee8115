"""CLIP prompt adherence: does the image show what the prompt claims, as a CLIP backbone sees it?

Prompts are world claims in three types, stratified: one group ("three red circles"), two groups
("two blue squares and one green triangle") and a spatial relation ("a red circle to the left of a
blue square"). Every prompt carries its hard negatives, one attribute away (colour, shape, count or
relation), so the headline — CLIP-R-precision — asks whether the image matches its own prompt better
than a near miss. The raw CLIPScores are reported too, but they depend on the backbone: compare
them only between runs that used the same weights (the scorer card names them and their sha256).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from nbeval.clipmetrics import beats, clip_score, clip_score_terms, hessel, r_precision_hits
from nbeval.readings import ClipReading, TifaReading
from nbeval.records import Sample, Score
from nbeval.stats import Estimate, bootstrap_mean
from nbeval.suite import MetricSpec, Suite, estimate_metrics, wide_table
from nbeval.world.prompts import capitalise
from nbeval.world.claims import NEGATIVE_KINDS, hard_negatives, random_claim, scene_for

CLAIM_TYPES = ("single", "pair", "relation")
_TEMPLATES = ("A picture of {}.", "{} on a white background.", "Draw {}.", "An image showing {}.")


def soft_tifa(atoms: list[dict]) -> dict[str, float]:
    """GenEval 2's Soft-TIFA of one prompt from its judged atoms: the arithmetic and the geometric mean
    of the judge's probabilities of the right answers, and the share answered right."""
    p = np.array([a["p_correct"] for a in atoms])
    return {"soft_tifa_am": float(p.mean()), "soft_tifa_gm": float(np.prod(p) ** (1 / len(p))),
            "tifa_atom_accuracy": float(np.mean([max(a["probabilities"], key=a["probabilities"].get) == a["expected"] for a in atoms]))}


class AdherenceSuite(Suite):
    name = "adherence"
    version = "2"
    scorers = {"clip": ClipReading}
    optional_scorers = {"tifa": TifaReading}  # a VLM judge's Soft-TIFA beside CLIP: scorer=[clip,vlm_tifa]
    metrics = (
        MetricSpec("r_precision", True, "CLIP-R-precision: the prompt beats every hard negative (headline)", proportion=True),
        MetricSpec("pairwise", True, "the prompt beats the hard negative of one kind: pairwise/<colour|shape|count|relation>", proportion=True),
        MetricSpec("clip_score", True, "torchmetrics-style CLIPScore, max(100·mean cos, 0): backbone-specific, not comparable across backbones"),
        MetricSpec("clipscore_hessel", True, "Hessel CLIPScore, mean 2.5·max(cos, 0): backbone-specific, not comparable across backbones"),
        # Only with a judge in the tifa role (scorer=[clip,vlm_tifa]): GenEval 2's Soft-TIFA over the claim's atoms.
        MetricSpec("soft_tifa_am", True, "Soft-TIFA: per prompt, the arithmetic mean over its atoms of the judge's probability of the right answer"),
        MetricSpec("soft_tifa_gm", True, "Soft-TIFA: per prompt, the geometric mean of the same probabilities (one missed atom weighs more)"),
        MetricSpec("tifa_atom_accuracy", True, "share of atoms whose most probable answer is the right one"),
    )
    headline = ("r_precision",)

    def __init__(self, image_size: int = 256, max_count: int = 4) -> None:
        super().__init__(image_size)
        if not 1 <= max_count <= 9:
            raise ValueError(f"max_count must be in 1..9 (a count negative may add one), got {max_count}")
        self.max_count = max_count

    def params(self) -> dict:
        return {**super().params(), "max_count": self.max_count}

    def samples(self, n: int, seed: int) -> list[Sample]:
        out = []
        for i in range(n):
            rng = self.sample_rng(seed, i)
            kind = CLAIM_TYPES[i % len(CLAIM_TYPES)]
            claim = random_claim(rng, relation=kind == "relation", max_count=self.max_count, groups={"single": 1, "pair": 2}.get(kind))
            caption = claim.caption()
            negatives = {k: c.caption() for k, c in hard_negatives(claim, rng, max_count=self.max_count + 1).items()}
            out.append(
                Sample(
                    id=f"{self.name}-{seed}-{i:05d}",
                    suite=self.name,
                    prompt=capitalise(rng.choice(_TEMPLATES).format(caption)),
                    truth=({"scene": scene_for(claim, rng).to_dict(), "claim": claim.to_dict(), "caption": caption, "negatives": negatives},),
                    seed=seed * 1_000_003 + i,
                    tags={"type": kind},
                )
            )
        return out

    def scorer_truth(self, sample: Sample, turn: int, role: str) -> dict:
        t = sample.truth[turn]
        return {"claim": t["claim"]} if role == "tifa" else {"caption": t["caption"], "negatives": t["negatives"]}

    def score(self, sample: Sample, turn: int, readings: dict[str, dict]) -> list[Score]:
        r: ClipReading = readings["clip"]
        cos, neg = np.array([r["cos"]]), np.array([[r["negatives"].get(k, np.nan) for k in NEGATIVE_KINDS]])
        values = {
            "cos": r["cos"],
            "clip_score": float(clip_score_terms(cos)[0]),  # clamped at zero on the mean, in aggregate
            "clipscore_hessel": float(hessel(cos)[0]),
            "r_precision": float(r_precision_hits(cos, neg)[0]),
            **{f"pairwise/{k}": float(b) for k, b in zip(NEGATIVE_KINDS, beats(cos, neg)[0]) if k in r["negatives"]},
        }
        detail = json.dumps({"caption": sample.truth[turn]["caption"], "cos": r["cos"], "negatives": r["negatives"]})
        rows = [Score(sample.id, turn, "clip", m, v, detail) for m, v in values.items()]
        if "tifa" in readings:
            atoms = readings["tifa"]["atoms"]
            rows += [Score(sample.id, turn, "tifa", m, v, json.dumps({"atoms": atoms})) for m, v in soft_tifa(atoms).items()]
        return rows

    def aggregate(self, scores: pd.DataFrame, samples: pd.DataFrame) -> dict[str, Estimate]:
        wide = wide_table(scores, samples)
        by_name = {s.name: s for s in self.metrics}
        out = estimate_metrics(wide, (by_name["r_precision"],), breakdowns=("type",))
        pairwise = tuple(MetricSpec(f"pairwise/{k}", True, "", proportion=True) for k in NEGATIVE_KINDS)
        out |= estimate_metrics(wide, (*pairwise, by_name["clipscore_hessel"], by_name["soft_tifa_am"], by_name["soft_tifa_gm"]))
        out |= estimate_metrics(wide, (by_name["tifa_atom_accuracy"],), breakdowns=("type",))
        mean = bootstrap_mean(wide["clip_score"].to_numpy())  # the clamp is on the mean (clipmetrics.clip_score)
        out["clip_score"] = Estimate(clip_score(mean.value), clip_score(mean.ci_low), clip_score(mean.ci_high), mean.n, mean.method)
        return out

    def plots(self, scores: pd.DataFrame, samples: pd.DataFrame, metrics: dict[str, Estimate]) -> dict:
        from nbeval.plots import bar_with_ci, plt  # matplotlib only when a figure is drawn

        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
        bar_with_ci(axes[0], {k.split("/type_")[1]: v for k, v in metrics.items() if k.startswith("r_precision/type_")}, "R-precision by prompt type", ylim=(0, 1.05))
        bar_with_ci(axes[1], {k.split("/")[1]: v for k, v in metrics.items() if k.startswith("pairwise/")}, "prompt beats the negative that changes…", ylim=(0, 1.05))
        first = scores.drop_duplicates(["sample_id", "turn"])
        details = [json.loads(d) for d in first["detail"]]
        axes[2].hist([d["cos"] for d in details], bins=30, alpha=0.7, label="prompt")
        axes[2].hist([v for d in details for v in d["negatives"].values()], bins=30, alpha=0.5, label="hard negatives")
        axes[2].set_title("cosine with the image")
        axes[2].legend()
        fig.tight_layout()
        return {"adherence_breakdown": fig}
