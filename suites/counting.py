"""Object counting: are there exactly as many objects as the prompt asked for?

Requested counts 1–8 are stratified (round robin) and alternate between one kind and two kinds
("three red circles and two blue squares"). The shape counter reads every (colour, kind) in the image.
- exact_accuracy: every requested (colour, kind) has its exact count and nothing else is present;
- geneval_pass: GenEval's counting rule — per requested object class (kind), the detected number
  equals the requested one; colours and extra classes are ignored;
- mae / bias: mean absolute / signed error of the counts of the requested groups;
- off-by-k: how often a requested group's count is off by k (−3…+3, clipped).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from nbeval.readings import CounterReading
from nbeval.records import Sample, Score
from nbeval.stats import Estimate, proportion
from nbeval.suite import MetricSpec, Suite, estimate_metrics, wide_table
from nbeval.world import COLOURS, SHAPE_KINDS, Scene, place_shapes, scene_prompt
from nbeval.world.prompts import N_PHRASINGS

OFF_BY_RANGE = range(-3, 4)


def _key(group: dict) -> str:
    """A group's key in a counter reading's counts: "<colour> <kind>", or "<kind>" when no colour is asked."""
    return f"{group['colour']} {group['kind']}" if group.get("colour") else group["kind"]


def count_values(reading: dict, groups: list[dict]) -> tuple[dict[str, float], dict]:
    """The counting metrics of one image from a counter reading and the requested groups ({colour or
    None, kind, count}), and what they were computed from: the definitions every suite that counts uses."""
    found: dict[str, int] = reading["counts"]

    def count(g: dict) -> int:
        if g.get("colour") or g["kind"] in found:
            return found.get(_key(g), 0)
        return sum(v for k, v in found.items() if k.split()[-1] == g["kind"])  # no colour asked: every colour counts

    errors = [count(g) - g["count"] for g in groups]
    kinds = {g["kind"] for g in groups if not g.get("colour")}
    requested = {_key(g) for g in groups}
    extra = sum(v for k, v in found.items() if k not in requested and k.split()[-1] not in kinds)
    by_kind: dict[str, int] = {}
    for key, v in found.items():
        by_kind[key.split()[-1]] = by_kind.get(key.split()[-1], 0) + v
    want_kind: dict[str, int] = {}
    for g in groups:
        want_kind[g["kind"]] = want_kind.get(g["kind"], 0) + g["count"]
    values = {
        "exact_accuracy": float(all(e == 0 for e in errors) and extra == 0),
        "geneval_pass": float(all(by_kind.get(k, 0) == v for k, v in want_kind.items())),
        "mae": float(np.mean(np.abs(errors))),
        "bias": float(np.mean(errors)),
    }
    detail = {"found": found, "requested": {_key(g): g["count"] for g in groups}, "errors": errors, "extra": extra,
              **({"judge": reading["judge"]} if "judge" in reading else {})}
    return values, detail


class CountingSuite(Suite):
    name = "counting"
    version = "1"
    scorers = {"counter": CounterReading}
    metrics = (
        MetricSpec("exact_accuracy", True, "all requested groups exact, nothing else present", proportion=True),
        MetricSpec("geneval_pass", True, "GenEval counting rule: per requested kind, count equals request", proportion=True),
        MetricSpec("mae", False, "mean absolute count error over requested groups"),
        MetricSpec("bias", None, "mean signed count error (positive = too many); ideal 0"),
        MetricSpec("off_by_k", None, "share of requested groups whose count is off by k (k = −3…+3, clipped)", proportion=True),
    )
    headline = ("exact_accuracy", "mae")

    def __init__(self, image_size: int = 256, max_count: int = 8, max_second: int = 4) -> None:
        super().__init__(image_size)
        if not 1 <= max_count <= 10:
            raise ValueError(f"max_count must be in 1..10, got {max_count}")
        self.max_count, self.max_second = max_count, max_second

    def params(self) -> dict:
        return {**super().params(), "max_count": self.max_count, "max_second": self.max_second}

    def samples(self, n: int, seed: int) -> list[Sample]:
        out = []
        for i in range(n):
            rng = self.sample_rng(seed, i)
            count = i % self.max_count + 1
            two_kinds = (i // self.max_count) % 2 == 1
            kinds = rng.sample(SHAPE_KINDS, 2 if two_kinds else 1)
            colours = rng.sample(list(COLOURS), len(kinds))
            counts = [count] + ([rng.randint(1, self.max_second)] if two_kinds else [])
            size = "large" if sum(counts) <= 3 and rng.random() < 0.5 else rng.choice(["small", "medium"])
            specs = [(k, c, size) for k, c, m in zip(kinds, colours, counts) for _ in range(m)]
            scene = Scene(shapes=place_shapes(rng, specs))
            groups = [{"kind": k, "colour": c, "count": m} for k, c, m in zip(kinds, colours, counts)]
            out.append(
                Sample(
                    id=f"{self.name}-{seed}-{i:05d}",
                    suite=self.name,
                    prompt=scene_prompt(scene, phrasing=rng.randrange(N_PHRASINGS), grouped=True),
                    truth=({"scene": scene.to_dict(), "groups": groups},),
                    seed=seed * 1_000_003 + i,
                    tags={"count": count, "kinds": len(kinds)},
                )
            )
        return out

    def scorer_truth(self, sample: Sample, turn: int, role: str) -> dict:
        """The requested groups: what a counter that is asked about them (a judge) needs; the palette
        counter reads everything and ignores it."""
        return {"groups": [{"colour": g["colour"], "kind": g["kind"]} for g in sample.truth[turn]["groups"]]}

    def score(self, sample: Sample, turn: int, readings: dict[str, dict]) -> list[Score]:
        values, detail = count_values(readings["counter"], sample.truth[turn]["groups"])
        return [Score(sample.id, turn, "counter", m, v, json.dumps(detail)) for m, v in values.items()]

    @staticmethod
    def _group_errors(scores: pd.DataFrame) -> np.ndarray:
        """Signed error of every requested group, from the score details."""
        details = scores.drop_duplicates(["sample_id", "turn"])["detail"]
        return np.array([e for d in details for e in json.loads(d)["errors"]], dtype=int)

    def aggregate(self, scores: pd.DataFrame, samples: pd.DataFrame) -> dict[str, Estimate]:
        out = estimate_metrics(wide_table(scores, samples), self.metrics, breakdowns=("count", "kinds"))
        errors = np.clip(self._group_errors(scores), OFF_BY_RANGE.start, OFF_BY_RANGE.stop - 1)
        for k in OFF_BY_RANGE:
            out[f"off_by_k/{k}"] = proportion((errors == k).astype(float))
        return out

    def plots(self, scores: pd.DataFrame, samples: pd.DataFrame, metrics: dict[str, Estimate]) -> dict:
        from nbeval.plots import bar_with_ci, plt  # matplotlib only when a figure is drawn

        by_count = {k: v for k, v in metrics.items() if k.startswith(f"{self.metrics[0].name}/count_")}
        first = scores.drop_duplicates(["sample_id", "turn"])
        requested = [next(iter(json.loads(d)["requested"].values())) for d in first["detail"]]
        found = [r + json.loads(d)["errors"][0] for r, d in zip(requested, first["detail"])]
        top = max(requested + found + [1])
        confusion = np.zeros((top + 1, top + 1), dtype=int)
        for r, f in zip(requested, found):
            confusion[f, r] += 1
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
        bar_with_ci(axes[0], {k.split("/count_")[1]: v for k, v in by_count.items() if "/count_" in k}, "exact accuracy by requested count", ylim=(0, 1.05))
        errs = np.clip(self._group_errors(scores), -3, 3)
        axes[1].bar([f"{k:+d}" for k in OFF_BY_RANGE], [(errs == k).mean() if len(errs) else 0 for k in OFF_BY_RANGE], color="#dd8452")
        axes[1].set_title("off-by-k (found − requested, per group)")
        axes[2].imshow(confusion, origin="lower", cmap="Blues")
        for (y, x), v in np.ndenumerate(confusion):
            if v:
                axes[2].text(x, y, str(v), ha="center", va="center", fontsize=7, color="white" if v > confusion.max() / 2 else "black")
        axes[2].set_xlabel("requested (first group)")
        axes[2].set_ylabel("found")
        axes[2].set_title("count confusion matrix")
        fig.tight_layout()
        return {"counting_breakdown": fig}
