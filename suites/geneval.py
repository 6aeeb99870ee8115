"""GenEval (`suite=geneval suite.geneval.path=<evaluation_metadata.jsonl>`): GenEval's prompt file,
scored with GenEval's rules from any counter reading.

What this follows, read in djghosh13/geneval at af4902f (the facts, not the code):
- `prompts/evaluation_metadata.jsonl`: one JSON object a line — `tag` (single_object, two_object,
  counting, colors, position, color_attr), `include` and `exclude` lists of clauses `{class, count,
  color, position: [relation, index]}` (relation "left of", "right of", "above" or "below"; index: an
  earlier include, the target), `prompt`. Its 553 lines give every clause a `count`; its counting
  lines ask for exactly n through `include` n and `exclude` n + 1.
- `evaluation/evaluate_images.py`, `evaluate`: includes must all hold, any exclude fails the image.
  Per include, the first `count` objects of its class (the detector's most confident first) must
  exist (≥ count, `count` 1 when absent); with a `color`, all of those must be of it; with a
  `position`, each of them must stand in the relation to each object matched for the target include,
  which must itself have matched. An exclude fails when the class has ≥ its `count` objects.
  `relative_position`: the centres' offset, shrunk on each axis by `position_threshold` (0.1) × the
  two boxes' summed extent on it; a direction counts when its share of the offset's length exceeds
  0.5; none when the shrunk offset vanishes.
- `evaluation/summary_scores.py`: the overall score is the mean of the per-tag accuracies.

Readings: a counter with boxes (the palette counter, a detector) is judged by those rules directly,
its objects of a class in the reading's order (a detector's: best score first; the palette counter
is equally sure of all). A judge (`scorer=[vlm_count]`) draws no boxes: it is asked the groups of
`scorer_truth` (colourless ones count every colour) and each position as a yes/no relation question,
so counts come from its `counts` and positions from its `relations` answers. GenEval's detector
thresholds and its CLIP colour classifier are its instruments', not its rules: ours are the counter's.

Truth: the line's metadata and, when every included class is a world kind and every colour a world
colour, a world scene of which the rules hold (default colour: random; positions kept at twice
GenEval's threshold, slack for pixel-rounded boxes), so `model=oracle` draws it. A line the world
cannot draw (a "dog") has no scene and says why in `no_scene`: the oracle fails that generation with
it. A line that is not valid is a sample whose generation (by the oracle) or score fails with the
parse error; a file with no JSON object on any line is refused at load. The file's sha256 is in
every sample's truth, so in its key: an edited file never reuses cached images or readings.

Metrics: `overall` (GenEval's, bootstrap CI resampling within tags) and one per tag (Wilson CI).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nbeval.readings import CountedObject, CounterReading
from nbeval.records import Sample, Score
from nbeval.stats import N_BOOTSTRAP, Estimate, proportion
from nbeval.suite import MetricSpec, Suite
from nbeval.vlm.questions import named
from nbeval.world import COLOURS, SHAPE_KINDS, LayoutError, Scene, Shape, place_shapes
from nbeval.world.layout import shape_box

log = logging.getLogger(__name__)

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}  # GenEval's → claims.RELATIONS
POSITION_THRESHOLD = 0.1  # evaluate_images.py's default `position_threshold`
SCENE_POSITION_THRESHOLD = 0.2  # a truth scene keeps its relations at this one
LAYOUT_TRIES = 200  # random layouts tried for a scene with positions
MAX_PROMPT = 500  # characters of a malformed line kept as its prompt


class LineError(ValueError):
    """A line of the metadata file that is not in GenEval's schema, with the reason."""


def _clause(number: int, where: str, req: object, count_required: bool) -> None:
    if not isinstance(req, dict) or not isinstance(req.get("class"), str) or not req["class"].strip():
        raise LineError(f"line {number}: {where} must be an object with a non-empty string `class`")
    count = req.get("count", None if count_required else 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise LineError(f"line {number}: {where}.count must be an integer ≥ 1")
    if "color" in req and (not isinstance(req["color"], str) or not req["color"]):
        raise LineError(f"line {number}: {where}.color must be a non-empty string")


def parse_line(number: int, line: str) -> dict:
    """One line → its metadata, checked against GenEval's schema; raises LineError."""
    try:
        meta = json.loads(line)
    except json.JSONDecodeError as e:
        raise LineError(f"line {number}: not JSON ({e.msg})") from None
    if not isinstance(meta, dict):
        raise LineError(f"line {number}: not a JSON object")
    if meta.get("tag") not in TAGS:
        raise LineError(f"line {number}: `tag` must be one of {', '.join(TAGS)}, not {meta.get('tag')!r}")
    if not isinstance(meta.get("prompt"), str) or not meta["prompt"].strip():
        raise LineError(f"line {number}: needs a non-empty string `prompt`")
    include, exclude = meta.get("include"), meta.get("exclude", [])
    if not isinstance(include, list) or not include or not isinstance(exclude, list):
        raise LineError(f"line {number}: `include` must be a non-empty list and `exclude` a list")
    for j, req in enumerate(include):
        _clause(number, f"include[{j}]", req, count_required=False)
        pos = req.get("position")
        if pos is not None and not (isinstance(pos, list) and len(pos) == 2 and pos[0] in RELATIONS
                                    and isinstance(pos[1], int) and not isinstance(pos[1], bool) and 0 <= pos[1] < j):
            raise LineError(f"line {number}: include[{j}].position must be [relation, index of an earlier include], "
                            f"the relation one of {', '.join(RELATIONS)}")
    for j, req in enumerate(exclude):
        _clause(number, f"exclude[{j}]", req, count_required=True)
    return meta


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


# --- GenEval's rules --------------------------------------------------------------------------------


def relative_position(a: Sequence[float], b: Sequence[float], threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Where box `a` stands relative to box `b` (x0, y0, x1, y1; y down), GenEval's way (module doc)."""
    boxes = np.array([a[:4], b[:4]], dtype=float).reshape(2, 2, 2)
    (ca, cb), (da, db) = boxes.mean(axis=1), boxes[:, 1] - boxes[:, 0]
    offset = ca - cb
    shrunk = np.maximum(np.abs(offset) - threshold * (da + db), 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):  # GenEval's bound, there in pixels, here in image sides
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    return {name for name, holds in (("left of", dx < -0.5), ("right of", dx > 0.5), ("above", dy < -0.5), ("below", dy > 0.5)) if holds}


class Boxes:
    """Evidence with boxes: each class's objects in the reading's order."""

    def __init__(self, objects: list[CountedObject], threshold: float = POSITION_THRESHOLD) -> None:
        self.by_class: dict[str, list[CountedObject]] = {}
        for o in objects:
            self.by_class.setdefault(o["kind"], []).append(o)
        self.threshold = threshold

    def total(self, cls: str) -> int:
        return len(self.by_class.get(cls, []))

    def match(self, req: dict) -> tuple[list[CountedObject] | None, str | None]:
        cls, n = req["class"], req.get("count", 1)
        found = self.by_class.get(cls, [])[:n]
        if len(found) < n:
            return None, f"expected {cls}>={n}, found {len(found)}"
        if "color" in req and (k := sum(o["colour"] == req["color"] for o in found)) < n:
            return None, f"expected {req['color']} {cls}>={n}, found {k} {req['color']} among the first {n}"
        return found, None

    def related(self, req: dict, found: list[CountedObject], relation: str, target: dict, target_found: list[CountedObject]) -> str | None:
        for o in found:
            for t in target_found:
                if relation not in (rels := relative_position(o["bbox"], t["bbox"], self.threshold)):
                    return f"expected {req['class']} {relation} {target['class']}, found {' and '.join(sorted(rels)) or 'no relation'}"
        return None


def _group(req: dict) -> dict:
    """A clause as a counter's group: colour (None: any) and kind."""
    return {"colour": req.get("color"), "kind": req["class"]}


class Answers:
    """Evidence from a judge, without boxes: the counts and relation answers it was asked for."""

    def __init__(self, reading: CounterReading) -> None:
        self.counts, self.relations = reading["counts"], reading.get("relations", [])

    def total(self, cls: str) -> int:
        return self.counts.get(cls, 0)

    def match(self, req: dict) -> tuple[dict | None, str | None]:
        n, key = req.get("count", 1), named(req.get("color"), req["class"])
        if (k := self.counts.get(key, 0)) < n:
            return None, f"expected {key}>={n}, found {k}"
        return req, None

    def related(self, req: dict, found: dict, relation: str, target: dict, target_found: dict) -> str | None:
        want = {"a": _group(req), "relation": RELATIONS[relation], "b": _group(target)}
        holds = next((r["holds"] for r in self.relations if {k: r[k] for k in want} == want), None)
        if holds is None:
            return f"no answer to whether {req['class']} is {relation} {target['class']}"
        return None if holds else f"expected {req['class']} {relation} {target['class']}, the judge says no"


def reasons_against(meta: dict, evidence: Boxes | Answers) -> list[str]:
    """Why GenEval's rules fail for an image (empty: it is correct)."""
    reasons: list[str] = []
    matched: list = []
    for req in meta["include"]:
        found, reason = evidence.match(req)
        if found is not None and "position" in req:
            relation, target = req["position"]
            reason = (f"no target for {req['class']} to be {relation}" if matched[target] is None
                      else evidence.related(req, found, relation, meta["include"][target], matched[target]))
            found = None if reason else found
        if reason:
            reasons.append(reason)
        matched.append(found)
    for req in meta.get("exclude", []):
        if (k := evidence.total(req["class"])) >= req["count"]:
            reasons.append(f"expected {req['class']}<{req['count']}, found {k}")
    return reasons


def scene_for(meta: dict, rng: random.Random) -> tuple[Scene | None, str | None]:
    """A world scene of which GenEval's rules hold for `meta`, or None and why the world cannot draw it."""
    include = meta["include"]
    if alien := [r["class"] for r in include if r["class"] not in SHAPE_KINDS]:
        return None, f"class {alien[0]!r} is not one of the world's kinds ({', '.join(SHAPE_KINDS)})"
    if alien := [r["color"] for r in include if "color" in r and r["color"] not in COLOURS]:
        return None, f"colour {alien[0]!r} is not one of the world's colours ({', '.join(COLOURS)})"
    colours = [r.get("color") or rng.choice(list(COLOURS)) for r in include]
    size = "medium" if sum(r.get("count", 1) for r in include) <= 6 else "small"
    specs = [(r["class"], c, size) for r, c in zip(include, colours) for _ in range(r.get("count", 1))]
    tries = LAYOUT_TRIES if any("position" in r for r in include) else 1
    for _ in range(tries):
        try:
            shapes = place_shapes(rng, specs)
        except LayoutError as e:
            return None, f"the world cannot lay it out: {e}"
        if not reasons_against(meta, Boxes(_objects(shapes), SCENE_POSITION_THRESHOLD)):
            return Scene(shapes=shapes), None
    return None, f"no layout of world shapes meets GenEval's rules for it ({tries} tried)"


def _objects(shapes: Sequence[Shape]) -> list[CountedObject]:
    return [{"kind": s.kind, "colour": s.colour, "bbox": list(shape_box(s))} for s in shapes]


def macro_mean(groups: list[np.ndarray], confidence: float = 0.95, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> Estimate:
    """The mean of the groups' means (GenEval's overall: of the tags' accuracies), with a percentile
    bootstrap CI that resamples within each group, so every resample keeps each group and its size."""
    rng = np.random.default_rng(seed)
    boots = np.mean([g[rng.integers(0, len(g), size=(n_boot, len(g)))].mean(axis=1) for g in groups], axis=0)
    lo, hi = np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Estimate(float(np.mean([g.mean() for g in groups])), float(lo), float(hi), sum(len(g) for g in groups), "bootstrap")


class GenEvalSuite(Suite):
    name = "geneval"
    version = "1"
    scorers = {"counter": CounterReading}
    metrics = (
        MetricSpec("overall", True, "GenEval's overall score: the mean of the per-tag accuracies (an image: 1 when every rule holds)"),
        *(MetricSpec(tag, True, f"share of GenEval's {tag} prompts whose image meets every rule", proportion=True) for tag in TAGS),
    )
    headline = ("overall",)

    def __init__(self, path: str, image_size: int = 256) -> None:
        super().__init__(image_size)
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"GenEval metadata file {self.path} not found (suite.geneval.path=<evaluation_metadata.jsonl>)")
        data = self.path.read_bytes()  # hashed and parsed from the same bytes
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.path} is not JSONL (not UTF-8 text)") from None
        self.lines = [(k, line) for k, line in enumerate(text.splitlines(), start=1) if line.strip()]
        if not any(_is_object(line) for _, line in self.lines):
            raise ValueError(f"{self.path} is not JSONL: no line is a JSON object (GenEval's evaluation_metadata.jsonl has one a line)")

    def params(self) -> dict:
        return {**super().params(), "file_sha256": self.sha256}

    def samples(self, n: int, seed: int) -> list[Sample]:
        """One per line that is not blank, the first n (all of them when the file is shorter)."""
        if n > len(self.lines):
            log.warning("suite %s: n=%d, but %s has %d lines: all of them are the samples", self.name, n, self.path, len(self.lines))
        out = []
        for i, (number, line) in enumerate(self.lines[:n]):
            try:
                meta = parse_line(number, line)
            except LineError as e:
                truth, prompt, tag = {"no_scene": str(e)}, line.strip()[:MAX_PROMPT], None
            else:
                scene, why = scene_for(meta, self.sample_rng(seed, i))
                truth = {"metadata": meta, **({"scene": scene.to_dict()} if scene else {"no_scene": why})}
                prompt, tag = meta["prompt"], meta["tag"]
            out.append(Sample(id=f"{self.name}-{seed}-{i:05d}", suite=self.name, prompt=prompt, truth=({"file_sha256": self.sha256, **truth},),
                              seed=seed * 1_000_003 + i, tags={"tag": tag, "line": number}))
        return out

    def scorers_for(self, sample: Sample, turn: int) -> tuple[str, ...]:
        return tuple(self.scorers) if "metadata" in sample.truth[turn] else ()

    def scorer_truth(self, sample: Sample, turn: int, role: str) -> dict:
        """What a judge must be asked: each include as a group (colour or None), each excluded class
        (any colour), each position as a relation; a counter with boxes reads everything anyway."""
        meta = sample.truth[turn]["metadata"]
        include = meta["include"]
        groups: list[dict] = []
        for g in [_group(r) for r in include] + [{"colour": None, "kind": r["class"]} for r in meta.get("exclude", [])]:
            if g not in groups:
                groups.append(g)
        relations = [{"a": _group(r), "relation": RELATIONS[r["position"][0]], "b": _group(include[r["position"][1]])} for r in include if "position" in r]
        return {"groups": groups, "relations": relations}

    def score(self, sample: Sample, turn: int, readings: dict[str, dict]) -> list[Score]:
        t = sample.truth[turn]
        if "metadata" not in t:
            return [Score(sample.id, turn, "suite", "_error", None, "{}", f"LineError: {t['no_scene']}")]
        reading = readings["counter"]
        reasons = reasons_against(t["metadata"], Answers(reading) if "judge" in reading else Boxes(reading["objects"]))
        detail = {"tag": t["metadata"]["tag"], "reasons": reasons, "counts": reading["counts"],
                  **{k: reading[k] for k in ("relations", "judge") if k in reading}}
        return [Score(sample.id, turn, "counter", "overall", float(not reasons), json.dumps(detail))]

    def aggregate(self, scores: pd.DataFrame, samples: pd.DataFrame) -> dict[str, Estimate]:
        tag_of = {sid: json.loads(tags)["tag"] for sid, tags in zip(samples["sample_id"], samples["tags"])}
        rows = scores[scores["metric"] == "overall"]
        tags = rows["sample_id"].map(tag_of)
        by_tag = {tag: v for tag in TAGS if len(v := rows.loc[tags == tag, "value"].to_numpy(dtype=float))}
        return {"overall": macro_mean(list(by_tag.values())), **{tag: proportion(v) for tag, v in by_tag.items()}}

    def plots(self, scores: pd.DataFrame, samples: pd.DataFrame, metrics: dict[str, Estimate]) -> dict:
        from nbeval.plots import bar_with_ci, plt  # matplotlib only when a figure is drawn

        fig, ax = plt.subplots(figsize=(8, 3.8))
        bar_with_ci(ax, {k: metrics[k] for k in ("overall", *TAGS) if k in metrics}, "GenEval accuracy per tag (overall: their mean)", ylim=(0, 1.05))
        fig.tight_layout()
        return {"geneval_by_tag": fig}
