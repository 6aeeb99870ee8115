"""A team's own prompts (`suite=prompts suite.prompts.path=<file.jsonl>`): one JSON object a line —
`id`, `prompt`, and any of `text` (words that must appear in the image), `counts` (`{"red circle": 3}`,
or `{"dog": 2}` for any colour), `atoms` (yes/no questions a right image answers "yes", for Soft-TIFA)
and `tags` (a list, for breakdowns).

Each line is read by the roles its fields need — `ocr` for text, `counter` for counts, `tifa` for atoms
(a judge: `scorer=[…,vlm_tifa]`) — and scored with the text, counting and adherence suites' own
definitions and metric names (`prompts/exact_match`, `prompts/cer`, `prompts/exact_accuracy`,
`prompts/mae`, `prompts/soft_tifa_am`, …), each overall and per tag (`<metric>/tag_<tag>`). A line
that is not valid is a sample whose score is an error row saying why, never a crash; a line that
needs a role the run has no scorer for says so the same way. The file's sha256 is part of every
sample's key, so an edited file never reuses cached images.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from nbeval.readings import CounterReading, OCRReading, TifaReading
from nbeval.records import Sample, Score, sha256_file
from nbeval.stats import Estimate
from nbeval.suite import Suite, estimate
from nbeval.textmetrics import compare
from suites.adherence import AdherenceSuite, soft_tifa
from suites.counting import CountingSuite, count_values
from suites.text_rendering import TextRenderingSuite

ROLES = {"text": "ocr", "counts": "counter", "atoms": "tifa"}  # a line's field → the role that reads it
_TEXT_METRICS = ("exact_match", "word_recall", "cer", "ned")
_COUNT_METRICS = ("exact_accuracy", "geneval_pass", "mae", "bias")
_TIFA_METRICS = ("soft_tifa_am", "soft_tifa_gm", "tifa_atom_accuracy")


class LineError(ValueError):
    """A line of the prompts file that cannot be a sample, with the reason."""


def parse_line(number: int, line: str) -> dict:
    """One line → its fields, checked; raises LineError."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise LineError(f"line {number}: not JSON ({e.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
        raise LineError(f"line {number}: needs a non-empty string `prompt`")
    if not any(k in obj for k in ROLES):
        raise LineError(f"line {number}: nothing to score: give any of {', '.join(ROLES)}")
    if "text" in obj and (not isinstance(obj["text"], str) or not obj["text"].strip()):
        raise LineError(f"line {number}: `text` must be a non-empty string")
    counts = obj.get("counts", {})
    if not isinstance(counts, dict) or not all(isinstance(k, str) and 1 <= len(k.split()) <= 2 and isinstance(v, int) and v >= 0 for k, v in counts.items()):
        raise LineError(f'line {number}: `counts` must map "<colour> <kind>" or "<kind>" to a count ≥ 0')
    atoms = obj.get("atoms", [])
    if not isinstance(atoms, list) or not all(isinstance(a, str) and a.strip() for a in atoms):
        raise LineError(f"line {number}: `atoms` must be a list of yes/no questions")
    tags = obj.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise LineError(f"line {number}: `tags` must be a list of strings")
    return obj


class PromptsSuite(Suite):
    name = "prompts"
    version = "1"
    optional_scorers = {"ocr": OCRReading, "counter": CounterReading, "tifa": TifaReading}
    metrics = tuple(
        next(m for m in suite.metrics if m.name == name)
        for suite, names in ((TextRenderingSuite, _TEXT_METRICS), (CountingSuite, _COUNT_METRICS), (AdherenceSuite, _TIFA_METRICS))
        for name in names
    )
    headline = ("exact_match", "exact_accuracy", "soft_tifa_am")

    def __init__(self, path: str, image_size: int = 256) -> None:
        super().__init__(image_size)
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"prompts file {self.path} not found (suite.prompts.path=<file.jsonl>)")
        self.sha256 = sha256_file(self.path)

    def params(self) -> dict:
        return {**super().params(), "file_sha256": self.sha256}

    def samples(self, n: int, seed: int) -> list[Sample]:
        """The first n lines that are not blank (all of them when the file is shorter)."""
        lines = [(k, line) for k, line in enumerate(self.path.read_text().splitlines(), start=1) if line.strip()][:n]
        out = []
        for i, (number, line) in enumerate(lines):
            try:
                obj, error = parse_line(number, line), None
            except LineError as e:
                obj, error = {}, str(e)
            truth = {"file_sha256": self.sha256, **{k: obj[k] for k in ROLES if k in obj}} | ({"error": error} if error else {})
            out.append(Sample(
                id=f"{self.name}-{obj.get('id', number)}", suite=self.name, prompt=obj.get("prompt") or line[:500],
                truth=(truth,), seed=seed * 1_000_003 + i, tags={"tags": obj.get("tags", []), "line": number},
            ))
        return out

    def scorers_for(self, sample: Sample, turn: int) -> tuple[str, ...]:
        return tuple(role for field, role in ROLES.items() if field in sample.truth[turn] and role in self.scorers)

    def scorer_truth(self, sample: Sample, turn: int, role: str) -> dict:
        t = sample.truth[turn]
        if role == "counter":
            return {"groups": [{"colour": k.split()[0] if len(k.split()) == 2 else None, "kind": k.split()[-1]} for k in t["counts"]]}
        return {"atoms": t["atoms"]} if role == "tifa" else {}

    def score(self, sample: Sample, turn: int, readings: dict[str, dict]) -> list[Score]:
        t = sample.truth[turn]
        if "error" in t:
            return [Score(sample.id, turn, "suite", "_error", None, "{}", f"LineError: {t['error']}")]
        missing = [role for field, role in ROLES.items() if field in t and role not in readings]
        if missing:
            return [Score(sample.id, turn, "suite", "_error", None, "{}", f"ScorerMissing: the line needs scorer role(s) {', '.join(missing)} "
                          "that the run has none for (e.g. scorer=[ocr,counter,vlm_tifa])")]
        rows = []
        if "text" in t:
            detail = json.dumps({"read": readings["ocr"]["text"], "truth": t["text"]})
            rows += [Score(sample.id, turn, "ocr", m, v, detail) for m, v in compare(t["text"], readings["ocr"]["text"]).items() if m in _TEXT_METRICS]
        if "counts" in t:
            groups = [{**g, "count": t["counts"][k]} for g, k in zip(self.scorer_truth(sample, turn, "counter")["groups"], t["counts"])]
            values, detail = count_values(readings["counter"], groups)
            rows += [Score(sample.id, turn, "counter", m, v, json.dumps(detail)) for m, v in values.items()]
        if "atoms" in t:
            atoms = readings["tifa"]["atoms"]
            rows += [Score(sample.id, turn, "tifa", m, v, json.dumps({"atoms": atoms})) for m, v in soft_tifa(atoms).items()]
        return rows

    def aggregate(self, scores: pd.DataFrame, samples: pd.DataFrame) -> dict[str, Estimate]:
        """Each metric over the lines that have it, and per tag (a line with several tags counts in each)."""
        tags = {r.sample_id: json.loads(r.tags)["tags"] for r in samples.itertuples()}
        out: dict[str, Estimate] = {}
        for spec in self.metrics:
            rows = scores[scores["metric"] == spec.name]
            if rows.empty:
                continue
            out[spec.name] = estimate(rows["value"], spec)
            for tag in sorted({t for sid in rows["sample_id"] for t in tags.get(sid, [])}):
                out[f"{spec.name}/tag_{tag}"] = estimate(rows.loc[[tag in tags.get(sid, []) for sid in rows["sample_id"]], "value"], spec)
        return out
