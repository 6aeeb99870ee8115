"""Identity consistency: does a character stay the same character when the prompt moves it around?

A sample is one identity (head, skin, eyes, accessory and its colour) shown in K turns: the first
prompt describes it; each later turn asks for "the same character, now at the right, larger",
sometimes beside a new object. The identity scorer embeds every image (an open_clip image tower by
default); the suite compares the embeddings:
- mean_pairwise_similarity: mean cosine over the K·(K−1)/2 pairs of one sample's images (its K×K
  matrix is stored in the sample's row);
- reference_similarity: cosine of each image with the identity's reference render (alone, centred);
- verification_auc: ROC-AUC of telling same-identity image pairs from different-identity pairs by
  cosine, over all pairs of the run; its CI resamples whole samples.
Cosines depend on the backbone: compare them only between runs with the same identity weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
from PIL import Image

from nbeval.galleries import filmstrips
from nbeval.readings import IdentityReading
from nbeval.records import Sample, Score, canonical_json
from nbeval.stats import Estimate, bootstrap_mean, pair_auc
from nbeval.suite import MetricSpec, Suite
from nbeval.world import Scene
from nbeval.world.characters import CHARACTER_SIZES, Character, random_identity
from nbeval.world.layout import character_scene, place_character
from nbeval.world.prompts import article, capitalise, position_phrase

_SIZE_ORDER = tuple(CHARACTER_SIZES)


def _where(c: Character) -> str:
    return f"at the {position_phrase(c.x, c.y)}"


def _beside(scene: Scene) -> str:
    return "".join(f", beside {article(s.colour)} {s.colour} {s.kind}" for s in scene.shapes)


def _resize_phrase(before: str, after: str) -> str:
    step = _SIZE_ORDER.index(after) - _SIZE_ORDER.index(before)
    return "the same size" if step == 0 else "larger" if step > 0 else "smaller"


class IdentitySuite(Suite):
    name = "identity"
    version = "1"
    scorers = {"identity": IdentityReading}
    capabilities = frozenset({"generate", "edit"})
    metrics = (
        MetricSpec("verification_auc", True, "ROC-AUC of same vs different identity image pairs by embedding cosine (CI resamples samples)"),
        MetricSpec("mean_pairwise_similarity", True, "mean cosine between the K images of one identity (backbone-specific)"),
        MetricSpec("reference_similarity", True, "cosine of each image with the identity's reference render (backbone-specific)"),
    )
    headline = ("verification_auc", "mean_pairwise_similarity")

    def __init__(self, image_size: int = 256, k: int = 4, distractor_rate: float = 0.5) -> None:
        super().__init__(image_size)
        if k < 2:
            raise ValueError(f"k (images per identity) must be at least 2, got {k}")
        if not 0 <= distractor_rate <= 1:
            raise ValueError(f"distractor_rate must be in [0, 1], got {distractor_rate}")
        self.k, self.distractor_rate = k, distractor_rate

    def params(self) -> dict:
        return {**super().params(), "k": self.k, "distractor_rate": self.distractor_rate}

    def samples(self, n: int, seed: int) -> list[Sample]:
        out = []
        for i in range(n):
            rng = self.sample_rng(seed, i)
            ident = random_identity(rng)
            reference = Scene(characters=(Character(ident, "medium", 0.5, 0.55).to_dict(),))
            truth, turns, prev = [], [], None
            for _ in range(self.k):
                c = place_character(rng, ident)
                while prev is not None and (_where(c), c.size) == (_where(prev), prev.size):  # every turn asks for a change
                    c = place_character(rng, ident)
                scene = character_scene(rng, c, rng.random() < self.distractor_rate)
                if prev is None:
                    prompt = f"{capitalise(ident.describe())}, {c.size}, {_where(c)}{_beside(scene)}."
                else:
                    turns.append(f"The same character, now {_where(c)}, {_resize_phrase(prev.size, c.size)}{_beside(scene)}.")
                truth.append({"scene": scene.to_dict(), "identity": c.to_dict()["identity"], "reference": reference.to_dict()})
                prev = c
            out.append(Sample(f"{self.name}-{seed}-{i:05d}", self.name, prompt, tuple(truth), seed * 1_000_003 + i, tuple(turns),
                              {"head": ident.head, "accessory": ident.accessory}))
        return out

    def scorer_truth(self, sample: Sample, turn: int, role: str) -> dict:
        return {"reference": sample.truth[turn]["reference"]}

    def score(self, sample: Sample, turn: int, readings: dict[str, dict]) -> list[Score]:
        r = readings["identity"]
        return [Score(sample.id, turn, "identity", "reference_similarity", r["reference_similarity"], json.dumps({"embedding": r["embedding"]}))]

    def score_sample(self, sample: Sample, readings: dict[int, dict[str, dict]]) -> list[Score]:
        emb = np.array([readings[t]["identity"]["embedding"] for t in sorted(readings)])
        sim = emb @ emb.T
        mean = float(sim[np.triu_indices(len(sim), k=1)].mean())
        return [Score(sample.id, -1, "identity", "mean_pairwise_similarity", mean, json.dumps({"matrix": np.round(sim, 4).tolist()}))]

    @staticmethod
    def _embeddings(scores: pd.DataFrame, samples: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every turn's embedding, its sample id and its identity (a canonical JSON string)."""
        rows = scores[scores["metric"] == "reference_similarity"]
        identity = {r.sample_id: canonical_json(json.loads(r.truth)[0]["identity"]) for r in samples.itertuples()}
        emb = np.array([json.loads(d)["embedding"] for d in rows["detail"]])
        return emb, rows["sample_id"].to_numpy(), np.array([identity[s] for s in rows["sample_id"]])

    def aggregate(self, scores: pd.DataFrame, samples: pd.DataFrame) -> dict[str, Estimate]:
        per_turn = scores[scores["metric"] == "reference_similarity"]
        pairwise = scores[scores["metric"] == "mean_pairwise_similarity"]
        out = {
            "mean_pairwise_similarity": bootstrap_mean(pairwise["value"].to_numpy()),
            "reference_similarity": bootstrap_mean(per_turn.groupby("sample_id")["value"].mean().to_numpy()),
        }
        out |= {f"reference_similarity/turn_{t}": bootstrap_mean(g["value"].to_numpy()) for t, g in per_turn.groupby("turn")}
        emb, group, label = self._embeddings(scores, samples)
        if len(np.unique(group)) > 1:
            out["verification_auc"] = pair_auc(emb @ emb.T, group, label)
        return out

    def plots(self, scores: pd.DataFrame, samples: pd.DataFrame, metrics: dict[str, Estimate]) -> dict:
        from nbeval.plots import plt  # matplotlib only when a figure is drawn

        emb, group, label = self._embeddings(scores, samples)
        sim = emb @ emb.T
        a, b = np.triu_indices(len(sim), k=1)
        same = label[a] == label[b]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        axes[0].hist(sim[a, b][~same], bins=40, density=True, alpha=0.6, label="different identity")
        axes[0].hist(sim[a, b][same], bins=40, density=True, alpha=0.6, label="same identity")
        axes[0].set_title("cosine of image pairs")
        axes[0].legend()
        by_turn = sorted((int(k.split("/turn_")[1]), v) for k, v in metrics.items() if k.startswith("reference_similarity/turn_"))
        turns, vals = [t for t, _ in by_turn], [v for _, v in by_turn]
        axes[1].errorbar(turns, [v.value for v in vals], yerr=[[v.value - v.ci_low for v in vals], [v.ci_high - v.value for v in vals]], marker="o", capsize=4)
        axes[1].set_xlabel("turn")
        axes[1].set_title("similarity to the reference render, by turn")
        fig.tight_layout()
        return {"identity_similarity": fig}

    def galleries(self, scores: pd.DataFrame, samples: pd.DataFrame, generations: pd.DataFrame, image: Callable[[str], Image.Image], k: int = 6) -> dict:
        """Filmstrips of the k identities the model kept least consistent."""
        worst = scores[scores["metric"] == "mean_pairwise_similarity"].nsmallest(k, "value")
        if worst.empty:
            return {}
        picks = [(r.sample_id, f"mean pairwise similarity {r.value:.3f}") for r in worst.itertuples()]
        return {f"{self.name}_least_consistent": filmstrips(picks, samples, generations, image)}
