"""Multi-turn edit drift: does a model make the requested change, and keep everything else, turn after turn?

A sample is a chain: a start scene (shapes and a word) and T edits from the world's edit operations,
each with its exact after-scene. Two protocols (`protocol`; configs `drift` and `drift_gt` pick one
each, and a suite is named by its config key, whatever its protocol):
- *iterative*: turn t edits the model's own turn t-1 image — the real conversational case;
- *ground-truth input* (`ground_truth`): turn t edits the true turn t-1 image, so errors cannot pile
  up and what remains is the model's per-edit damage.
Chains are the same under both protocols (the sample seed ignores the protocol), so they pair.

Per turn: `edit_success` (the requested change is there: the counter's census of the edited kind and
colour, overall and in the named region — a centre within 0.02 of a region border counts in both, for
truth and reading alike — or OCR of the new text), `preservation_*` (masked SSIM/PSNR
against the true turn-0 image, outside every region any edit of the chain may change: the same
pixels at every turn) and
`fidelity_*` (against the true image of that turn, outside this turn's edit region); both get
`_lpips` too (and chains `drift_slope_lpips`) when the pixels scorer has LPIPS weights (lower = more
similar). Per chain:
`drift_slope` (OLS slope of preservation SSIM over turns), `drift_auc` (mean preservation over the
chain, trapezoid rule), `turns_to_failure` (edits that succeed, keeping preservation ≥
`min_preservation`, before the first that does not). Chain-level means are bootstrapped over chains
(turns of one chain are not independent); per-turn breakdowns are `<metric>/turn_<t>`.

Against the model's OWN images — what a real model, which never draws the truth's flat renders, is
judged by: `self_preservation_ssim` (each turn against its own turn 0, same mask as preservation), its
per-chain slope `self_drift_slope`, and `consistency_ssim` (turn t against its own turn t−1, outside
this turn's edit region); `_lpips` twins with LPIPS weights.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import numpy as np
import pandas as pd
from PIL import Image

from nbeval.galleries import filmstrips
from nbeval.readings import CounterReading, EditReading, OCRReading, PixelsReading
from nbeval.records import Sample, Score, canonical_json
from nbeval.stats import Estimate, bootstrap_mean, proportion
from nbeval.suite import MetricSpec, Suite, wide_table
from nbeval.textmetrics import shows_text
from nbeval.world import COLOURS, COMMON_WORDS, SHAPE_KINDS, SIZES, LayoutError, Scene, apply_edit, fit_text, place_shapes, render, scene_prompt
from nbeval.world.census import census, located_objects, located_shapes
from nbeval.world.edits import changed_boxes, possible_ops
from nbeval.world.layout import word_box
from nbeval.world.prompts import N_PHRASINGS, position_phrase

PROTOCOLS = ("iterative", "ground_truth", "combined")
EDIT_JUDGED = ("edit_sc", "edit_pq", "edit_overall")  # only with an edit judge (scorer=[…,vlm_edit]); edit turns only
SELF = ("self_preservation_ssim", "self_preservation_lpips", "consistency_ssim", "consistency_lpips")  # against the model's own images
PER_TURN = ("edit_success", "preservation_ssim", "preservation_psnr", "preservation_lpips", "fidelity_ssim", "fidelity_psnr", "fidelity_lpips",
            *SELF, *EDIT_JUDGED)
_OWN_METRICS = ("ssim", "lpips")  # what the comparisons with the model's own images report (PSNR adds nothing for drift)
PIXEL_METRICS = ("ssim", "psnr", "lpips")  # lpips only in readings of a pixels scorer given LPIPS weights


def _start_scene(rng: random.Random) -> Scene:
    word = fit_text(rng, rng.choice(COMMON_WORDS), rng.uniform(0.07, 0.1))
    specs = [(rng.choice(SHAPE_KINDS), rng.choice(list(COLOURS)), rng.choice(list(SIZES))) for _ in range(rng.randint(2, 4))]
    return Scene(shapes=place_shapes(rng, specs, avoid=[word_box(word)]), words=(word,))


def _checks(op: str, target: str, before: Scene, after: Scene) -> list[tuple[str, str, str | None]]:
    """(colour, kind, region or None for the whole image) whose object count must match the truth."""
    i = int(target.split(":")[1])
    if op == "add":
        s = after.shapes[i]
        return [(s.colour, s.kind, None), (s.colour, s.kind, position_phrase(s.x, s.y))]
    if op == "remove":
        s = before.shapes[i]
        return [(s.colour, s.kind, None), (s.colour, s.kind, position_phrase(s.x, s.y))]
    if op == "move":
        a, b = before.shapes[i], after.shapes[i]
        return [(a.colour, a.kind, None), (a.colour, a.kind, position_phrase(a.x, a.y)), (b.colour, b.kind, position_phrase(b.x, b.y))]
    if op == "recolour":
        a, b = before.shapes[i], after.shapes[i]
        where = position_phrase(a.x, a.y)
        return [(c, a.kind, r) for c in (a.colour, b.colour) for r in (None, where)]
    raise ValueError(f"no census check for edit {op!r}")


def _chain_slope(turns: np.ndarray, values: np.ndarray) -> float:
    ok = ~np.isnan(values)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(turns[ok], values[ok], 1)[0])


class DriftSuite(Suite):
    name = "drift"
    version = "2"
    scorers = {"pixels": PixelsReading, "counter": CounterReading, "ocr": OCRReading}
    optional_scorers = {"edit": EditReading}  # an edit judge beside the instruments: scorer=[pixels,counter,ocr,vlm_edit]
    capabilities = frozenset({"generate", "edit"})
    metrics = (
        MetricSpec("drift_slope", True, "per-chain OLS slope of preservation SSIM over turns (0 = no drift)"),
        MetricSpec("drift_auc", True, "per-chain mean preservation SSIM over turns 0..T (trapezoid)"),
        MetricSpec("turns_to_failure", True, "edits that succeed with preservation ≥ min_preservation before the first that does not"),
        MetricSpec("edit_success", True, "the requested change is present (counter census or OCR)"),
        MetricSpec("preservation_ssim", True, "masked SSIM vs the true turn-0 image, outside every region the chain's edits may change"),
        MetricSpec("preservation_psnr", True, "masked PSNR (dB, capped) vs the true turn-0 image, same mask"),
        MetricSpec("fidelity_ssim", True, "masked SSIM vs the true image of the turn, outside this turn's edit region"),
        MetricSpec("fidelity_psnr", True, "masked PSNR (dB, capped) vs the true image of the turn, same mask"),
        MetricSpec("drift_slope_psnr", True, "per-chain OLS slope of preservation PSNR over turns (dB per turn)"),
        # Only with LPIPS on (scorer.pixels.lpips.weights): absent from runs without it.
        MetricSpec("preservation_lpips", False, "masked LPIPS vs the true turn-0 image, same mask as preservation_ssim"),
        MetricSpec("fidelity_lpips", False, "masked LPIPS vs the true image of the turn, same mask as fidelity_ssim"),
        MetricSpec("drift_slope_lpips", False, "per-chain OLS slope of preservation LPIPS over turns (0 = no drift)"),
        # Against the model's own images: meaningful for a model that draws in its own style, which the truth's renders never match.
        MetricSpec("self_drift_slope", True, "per-chain OLS slope of self_preservation_ssim over turns (0 = no drift)"),
        MetricSpec("self_preservation_ssim", True, "masked SSIM vs the model's own turn-0 image, outside every region the chain's edits may change"),
        MetricSpec("consistency_ssim", True, "masked SSIM vs the model's own previous image, outside this turn's edit region"),
        MetricSpec("self_preservation_lpips", False, "masked LPIPS vs the model's own turn-0 image (with LPIPS weights)"),
        MetricSpec("consistency_lpips", False, "masked LPIPS vs the model's own previous image (with LPIPS weights)"),
        MetricSpec("self_drift_slope_lpips", False, "per-chain OLS slope of self_preservation_lpips over turns (with LPIPS weights)"),
        # Only with an edit judge (scorer=[pixels,counter,ocr,vlm_edit]): GEdit-Bench's pair, each 0–1.
        MetricSpec("edit_sc", True, "the judge's semantic consistency of each edit: made, and nothing else changed (0–10, / 10)"),
        MetricSpec("edit_pq", True, "the judge's perceptual quality of each edited image (0–10, / 10)"),
        MetricSpec("edit_overall", True, "GEdit-Bench's overall: sqrt(edit_sc · edit_pq) per edit"),
    )
    headline = ("drift_slope", "edit_success", "preservation_ssim")

    def __init__(self, image_size: int = 256, turns: int = 5, protocol: str = "iterative", min_preservation: float = 0.9) -> None:
        super().__init__(image_size)
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
        if turns < 1:
            raise ValueError(f"a drift chain needs at least one edit turn, got turns={turns}")
        self.turns, self.protocol, self.min_preservation = int(turns), protocol, float(min_preservation)
        self._parsed: dict[tuple, tuple] = {}  # see _memo

    def params(self) -> dict:
        return {**super().params(), "turns": self.turns, "protocol": self.protocol, "min_preservation": self.min_preservation}

    # --- samples ----------------------------------------------------------------------------------
    def _chain(self, rng: random.Random) -> tuple[Scene, list]:
        while True:
            try:
                scene = _start_scene(rng)
                edits = []
                for _ in range(self.turns):
                    ops = possible_ops(scene)
                    edit = apply_edit(scene, rng, rng.choice(ops), vocabulary=COMMON_WORDS)
                    edits.append(edit)
                    scene = edit.after
                return edits[0].before, edits
            except LayoutError:
                continue  # a canvas too full for this chain: draw another from the same stream

    def samples(self, n: int, seed: int) -> list[Sample]:
        chain_params = canonical_json({"image_size": self.image_size, "turns": self.turns})
        out = []
        for i in range(n):
            rng = random.Random(f"drift:{chain_params}:{seed}:{i}")
            start, edits = self._chain(rng)
            if self.protocol == "combined":  # EdiVal's comparison: the whole chain asked at once
                truth = ({"scene": start.to_dict()}, {"scene": edits[-1].after.to_dict(), "op": "combined",
                                                      "steps": [{"op": e.op, "target": e.target, "before": e.before.to_dict()} for e in edits]})
                turns = (" ".join(e.instruction for e in edits),)
            else:
                truth = ({"scene": start.to_dict()},) + tuple({"scene": e.after.to_dict(), "op": e.op, "target": e.target} for e in edits)
                turns = tuple(e.instruction for e in edits)
            out.append(
                Sample(
                    id=f"{self.name}-{seed}-{i:05d}",
                    suite=self.name,
                    prompt=scene_prompt(start, phrasing=rng.randrange(N_PHRASINGS)),
                    truth=truth,
                    seed=seed * 1_000_003 + i,
                    turns=turns,
                    tags={"protocol": self.protocol, "ops": "+".join(e.op for e in edits)},
                )
            )
        return out

    def edit_input(self, sample: Sample, turn: int, size: int) -> Image.Image | None:
        return render(self._scene(sample, turn), size) if self.protocol == "ground_truth" else None  # combined: its own turn 0, as iterative

    # --- scoring ----------------------------------------------------------------------------------
    @staticmethod
    def _scene(sample: Sample, turn: int) -> Scene:
        return Scene.from_dict(sample.truth[turn]["scene"])

    def _memo(self, sample: Sample, turn: int, what: str, compute):
        """A turn's parsed truth, computed once: the runner asks for every turn of a chain once per
        reading (a warm run spent two seconds re-parsing scenes). Keyed by the truth object itself and
        checked to be it, so a sample never gets another's; bounded."""
        key = (id(sample.truth), turn, what)
        if (hit := self._parsed.get(key)) is not None and hit[0] is sample.truth:
            return hit[1]
        if len(self._parsed) >= 65536:
            self._parsed.clear()
        value = compute()
        self._parsed[key] = (sample.truth, value)
        return value

    def _steps(self, sample: Sample, turn: int) -> tuple[tuple[str, str, Scene, Scene], ...]:
        """The world's edits a turn asks for, as (op, target, before, after): one per turn, or the
        whole chain in the combined protocol's single turn."""
        def parse():
            t = sample.truth[turn]
            if "steps" not in t:
                return ((t["op"], t["target"], self._scene(sample, turn - 1), self._scene(sample, turn)),)
            befores = [Scene.from_dict(s["before"]) for s in t["steps"]]
            return tuple((s["op"], s["target"], b, a) for s, b, a in zip(t["steps"], befores, [*befores[1:], self._scene(sample, turn)]))

        return self._memo(sample, turn, "steps", parse)

    def _changed(self, sample: Sample, turn: int) -> tuple:
        return self._memo(sample, turn, "changed", lambda: tuple(b for _, _, before, after in self._steps(sample, turn) for b in changed_boxes(before, after)))

    def scorers_for(self, sample: Sample, turn: int) -> tuple[str, ...]:
        if turn == 0:
            return ("pixels",)
        ops = {op for op, *_ in self._steps(sample, turn)}
        readers = (("ocr",) if "change_text" in ops else ()) + (("counter",) if ops - {"change_text"} else ())
        return ("pixels", *readers, *(("edit",) if "edit" in self.scorers else ()))

    def scorer_context(self, sample: Sample, turn: int, role: str) -> tuple[str, ...]:
        if role == "pixels":
            return ("first", "previous") if turn else ("first",)
        return ("input",) if role == "edit" else ()

    def scorer_truth(self, sample: Sample, turn: int, role: str) -> dict:
        if role == "edit":
            return {"instruction": sample.turns[turn - 1]}
        if role != "pixels":
            return {}
        # One mask for every turn of a chain (everything any of its edits may change), so the preservation
        # curve compares the same pixels at every turn and its slope is drift, not a shrinking mask.
        touched = [b for t in range(1, len(sample.truth)) for b in self._changed(sample, t)]
        this_turn = self._changed(sample, turn) if turn else []
        comparisons = {
            "preservation": {"scene": sample.truth[0]["scene"], "exclude": [list(b) for b in touched]},
            "fidelity": {"scene": sample.truth[turn]["scene"], "exclude": [list(b) for b in this_turn]},
            "self_preservation": {"context": "first", "exclude": [list(b) for b in touched]},
        }
        if turn:
            comparisons["consistency"] = {"context": "previous", "exclude": [list(b) for b in this_turn]}
        return {"comparisons": comparisons}

    def _edit_success(self, sample: Sample, turn: int, readings: dict[str, dict]) -> tuple[float, dict]:
        """Every change the turn asks for is there: the census of each edited colour+kind, overall and
        in each named region an edit touched, equals the turn's truth; each changed word reads as the
        new text and no longer as the old one."""
        before, after = self._scene(sample, turn - 1), self._scene(sample, turn)
        steps = self._steps(sample, turn)
        detail: dict = {"op": sample.truth[turn]["op"]}
        words = sorted({int(target.split(":")[1]) for op, target, *_ in steps if op == "change_text"})
        texts = [(after.words[i].text, before.words[i].text) for i in words if after.words[i].text != before.words[i].text]
        if texts:
            read = readings["ocr"]["text"]
            detail |= {"read": read, "want": [w for w, _ in texts], "not": [o for _, o in texts]}
        triples = dict.fromkeys(c for op, target, b, a in steps if op != "change_text" for c in _checks(op, target, b, a))
        if triples:
            found, want = located_objects(readings["counter"]), located_shapes(after)
            detail["checks"] = [{"colour": c, "kind": k, "region": r or "anywhere", "want": census(want, c, k, r), "found": census(found, c, k, r)}
                                for c, k, r in triples]
        ok = all(shows_text(detail["read"], w, o) for w, o in texts) and all(ch["want"] == ch["found"] for ch in detail.get("checks", []))
        return float(ok), detail

    def score(self, sample: Sample, turn: int, readings: dict[str, dict]) -> list[Score]:
        rows = []
        for name, reading in readings["pixels"].items():
            detail = json.dumps({"kept": reading["kept"]})
            measures = _OWN_METRICS if name in ("self_preservation", "consistency") else PIXEL_METRICS
            rows += [Score(sample.id, turn, "pixels", f"{name}_{m}", reading[m], detail) for m in measures if reading.get(m) is not None]
        if turn:
            value, detail = self._edit_success(sample, turn, readings)
            rows.append(Score(sample.id, turn, "counter" if "checks" in detail else "ocr", "edit_success", value, json.dumps(detail)))
        if "edit" in readings:
            r = readings["edit"]
            detail = json.dumps({"judge": r["judge"]})
            rows += [Score(sample.id, turn, "edit", m, v, detail) for m, v in (("edit_sc", r["sc"]), ("edit_pq", r["pq"]), ("edit_overall", (r["sc"] * r["pq"]) ** 0.5))]
        return rows

    # --- aggregation ------------------------------------------------------------------------------
    def chains(self, scores: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
        """One row per chain: its slope, AUC, turns to failure and per-chain means."""
        return self._chains(wide_table(scores, samples))

    def _chains(self, wide: pd.DataFrame) -> pd.DataFrame:
        rows = []
        for sid, g in wide.groupby("sample_id", sort=True):
            g = g.sort_values("turn")
            turns = g["turn"].to_numpy(dtype=float)
            pres = g["preservation_ssim"].to_numpy(dtype=float) if "preservation_ssim" in g else np.full(len(g), np.nan)
            row = {"sample_id": sid, "n_turns": int(turns.max())}
            row["drift_slope"] = _chain_slope(turns, pres)
            for m in ("psnr", "lpips"):
                if f"preservation_{m}" in g:
                    row[f"drift_slope_{m}"] = _chain_slope(turns, g[f"preservation_{m}"].to_numpy(dtype=float))
            for name, column in (("self_drift_slope", "self_preservation_ssim"), ("self_drift_slope_lpips", "self_preservation_lpips")):
                if column in g:
                    row[name] = _chain_slope(turns, g[column].to_numpy(dtype=float))
            ok = ~np.isnan(pres)
            row["drift_auc"] = float(np.trapezoid(pres[ok], turns[ok]) / (turns[ok][-1] - turns[ok][0])) if ok.sum() >= 2 else float("nan")
            edits = g[g["turn"] >= 1]
            passed = (edits.get("edit_success", pd.Series(np.nan, index=edits.index)) == 1) & (edits.get("preservation_ssim", 1.0) >= self.min_preservation)
            row["turns_to_failure"] = float(len(passed) if passed.all() else int(np.argmin(passed.to_numpy())))
            for m in PER_TURN:
                if m in g:
                    row[m] = float(g.loc[g["turn"] >= (1 if m == "edit_success" or m in EDIT_JUDGED or m.startswith("consistency") else 0), m].mean())
            rows.append(row)
        return pd.DataFrame(rows)

    def aggregate(self, scores: pd.DataFrame, samples: pd.DataFrame) -> dict[str, Estimate]:
        wide = wide_table(scores, samples)
        chains = self._chains(wide)
        out: dict[str, Estimate] = {}
        for spec in self.metrics:
            if spec.name in chains:
                out[spec.name] = bootstrap_mean(chains[spec.name].to_numpy())
        for m in PER_TURN:
            if m not in wide:
                continue
            for turn, g in wide.groupby("turn", sort=True):
                values = g[m].to_numpy(dtype=float)
                if not np.isnan(values).all():
                    out[f"{m}/turn_{turn}"] = proportion(values) if m == "edit_success" else bootstrap_mean(values)
        if "edit_success" in wide:
            truths = {r.sample_id: json.loads(r.truth) for r in samples.itertuples()}
            ops = {(sid, t): truth[t]["op"] for sid, truth in truths.items() for t in range(1, len(truth))}
            edits = wide[wide["turn"] >= 1]
            by_op = edits.assign(op=[ops[(s, t)] for s, t in zip(edits["sample_id"], edits["turn"])])
            for op, g in by_op.groupby("op", sort=True):
                out[f"edit_success/op_{op}"] = proportion(g["edit_success"].to_numpy(dtype=float))
        return out

    # --- figures ----------------------------------------------------------------------------------
    def plots(self, scores: pd.DataFrame, samples: pd.DataFrame, metrics: dict[str, Estimate]) -> dict:
        from nbeval.plots import plt  # matplotlib only when a figure is drawn

        est = metrics
        panels = [("preservation_ssim", "preservation SSIM vs true turn 0"), ("self_preservation_ssim", "SSIM vs its own turn 0"),
                  ("fidelity_ssim", "fidelity SSIM vs true turn"), ("preservation_psnr", "preservation PSNR (dB)"), ("edit_success", "edit success")]
        if any(k.startswith("preservation_lpips/turn_") for k in est):  # only when the user gave LPIPS weights
            panels.insert(4, ("preservation_lpips", "preservation LPIPS (lower = kept)"))
        fig, axes = plt.subplots(1, len(panels), figsize=(3.75 * len(panels), 3.4))
        for ax, (m, title) in zip(axes, panels):
            points = sorted((int(k.split("/turn_")[1]), v) for k, v in est.items() if k.startswith(f"{m}/turn_"))
            if points:
                t = [p[0] for p in points]
                ax.plot(t, [p[1].value for p in points], marker="o")
                ax.fill_between(t, [p[1].ci_low for p in points], [p[1].ci_high for p in points], alpha=0.25)
            ax.set_title(title)
            ax.set_xlabel("turn")
        slope = est.get("drift_slope")
        if slope is not None:
            fig.suptitle(f"{self.name} ({self.protocol}): drift slope {slope.value:+.4f} SSIM/turn [{slope.ci_low:+.4f}, {slope.ci_high:+.4f}]")
        fig.tight_layout()
        return {f"{self.name}_per_turn": fig}

    def galleries(self, scores: pd.DataFrame, samples: pd.DataFrame, generations: pd.DataFrame, image: Callable[[str], Image.Image], k: int = 6) -> dict:
        """Filmstrips of the k chains with the lowest drift AUC: the truth above, the model below."""
        chains = self.chains(scores, samples).sort_values("drift_auc").head(k)
        if chains.empty:
            return {}
        picks = [(c.sample_id, f"AUC {c.drift_auc:.3f}  slope {c.drift_slope:+.4f}") for c in chains.itertuples()]
        return {f"{self.name}_worst_chains": filmstrips(picks, samples, generations, image)}
