"""`suite=geneval`: files in GenEval's prompt-metadata schema (its six tags, the world's classes, plus
a class the world cannot draw and a malformed line), scored with GenEval's rules from a judge's
reading and from the palette counter's boxes; the oracle scores 1.0, corrupted oracles less."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import evaluate, run_cli
from suites.geneval import TAGS, Answers, Boxes, GenEvalSuite, LineError, parse_line, reasons_against, relative_position

LINES = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
    {"tag": "two_object", "include": [{"class": "square", "count": 1}, {"class": "triangle", "count": 1}], "prompt": "a photo of a square and a triangle"},
    {"tag": "counting", "include": [{"class": "circle", "count": 3}], "exclude": [{"class": "circle", "count": 4}], "prompt": "a photo of three circles"},
    {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "blue"}], "prompt": "a photo of a blue square"},
    {"tag": "position", "include": [{"class": "circle", "count": 1}, {"class": "triangle", "count": 1, "position": ["right of", 0]}],
     "prompt": "a photo of a triangle right of a circle"},
    {"tag": "position", "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["above", 0]}],
     "prompt": "a photo of a circle above a square"},
    {"tag": "color_attr", "include": [{"class": "triangle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "green"}],
     "prompt": "a photo of a red triangle and a green square"},
    {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
]
MALFORMED = '{"tag": "counting", "include": [{"class": "circle", "count": 2'
DRAWABLE = len(LINES) - 1


@pytest.fixture
def metadata(tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("\n".join([json.dumps(x) for x in LINES] + [MALFORMED]) + "\n")
    return path


def _run(compose_cfg, tmp_path, metadata, *overrides: str) -> tuple[dict, pd.DataFrame]:
    out = tmp_path / "out"
    res = evaluate(compose_cfg(["suite=[geneval]", f"suite.geneval.path={metadata}", "n=50", *overrides]), out)
    return res["suites"]["geneval"], pd.read_parquet(out / "geneval" / "generations.parquet")


@pytest.mark.parametrize("scorer", [["scorer=[vlm_count]", "vlm=world"], []], ids=["judge", "palette"])
def test_oracle_meets_every_rule_and_undrawable_lines_fail_their_generation(compose_cfg, tmp_path, metadata, scorer):
    rec, gens = _run(compose_cfg, tmp_path, metadata, "model=oracle", *scorer)
    assert rec["metrics"]["overall"]["value"] == 1.0 and rec["metrics"]["overall"]["n"] == DRAWABLE
    assert {t: rec["metrics"][t]["value"] for t in TAGS} == dict.fromkeys(TAGS, 1.0)
    assert rec["n_samples"] == len(LINES) + 1 and rec["n_failed_generations"] == 2 and rec["n_failed_scores"] == 0
    errors = gens["error"].dropna().tolist()
    assert errors == ["ValueError: class 'dog' is not one of the world's kinds (circle, square, triangle)",
                      "ValueError: line 9: not JSON (Expecting ',' delimiter)"]


def test_corrupted_oracles_score_less_where_they_break_the_rules(compose_cfg, tmp_path, metadata):
    dropped, _ = _run(compose_cfg, tmp_path, metadata, "model=oracle_drop", "model.severity=2")
    assert dropped["metrics"]["overall"]["value"] == 0.0  # every line loses an object it asked for
    recoloured, _ = _run(compose_cfg, tmp_path, metadata, "model=oracle_recolour", "model.severity=2", "scorer=[vlm_count]", "vlm=world")
    assert {t: recoloured["metrics"][t]["value"] for t in TAGS} == {**dict.fromkeys(TAGS, 1.0), "colors": 0.0, "color_attr": 0.0}
    assert recoloured["metrics"]["overall"]["value"] == pytest.approx(4 / 6)


def test_file_sha256_is_in_every_sample_key(tmp_path, metadata):
    before = GenEvalSuite(str(metadata)).samples(3, 0)
    metadata.write_text(metadata.read_text() + json.dumps(LINES[0]) + "\n")  # the first lines unchanged
    after = GenEvalSuite(str(metadata))
    assert [s.prompt for s in after.samples(3, 0)] == [s.prompt for s in before]
    assert all(a.key != b.key for a, b in zip(after.samples(3, 0), before))
    assert after.params()["file_sha256"] == after.samples(1, 0)[0].truth[0]["file_sha256"]
    assert len(after.samples(100, 0)) == len(LINES) + 2  # n beyond the file: all of its lines


def test_a_file_that_is_not_jsonl_is_refused_at_load(tmp_path):
    path = tmp_path / "metadata.csv"
    path.write_text("tag,prompt\ncounting,two circles\n")
    with pytest.raises(ValueError, match="is not JSONL"):
        GenEvalSuite(str(path))


@pytest.mark.parametrize("line, why", [
    ('{"tag": "shapes", "include": [{"class": "circle"}], "prompt": "x"}', "`tag` must be one of"),
    ('{"tag": "counting", "include": [], "prompt": "x"}', "`include` must be a non-empty list"),
    ('{"tag": "counting", "include": [{"class": "circle", "count": 0}], "prompt": "x"}', r"include\[0\].count"),
    ('{"tag": "counting", "include": [{"class": "circle"}], "exclude": [{"class": "circle"}], "prompt": "x"}', r"exclude\[0\].count"),
    ('{"tag": "position", "include": [{"class": "circle", "position": ["left of", 0]}], "prompt": "x"}', "an earlier include"),
    ('{"tag": "position", "include": [{"class": "circle"}, {"class": "square", "position": ["near", 0]}], "prompt": "x"}', "relation one of"),
])
def test_malformed_lines_say_why(line, why):
    with pytest.raises(LineError, match=why):
        parse_line(3, line)


def test_rules_on_boxes_and_on_a_judges_answers():
    # GenEval's position rule: centre offsets shrunk by 0.1 × the summed box sizes, then a direction
    # counts when it carries more than half of the offset's length
    assert relative_position([0.6, 0.1, 0.7, 0.2], [0.1, 0.1, 0.2, 0.2]) == {"right of"}
    assert relative_position([0.3, 0.3, 0.4, 0.4], [0.1, 0.1, 0.2, 0.2]) == {"right of", "below"}
    assert relative_position([0.12, 0.1, 0.22, 0.2], [0.1, 0.1, 0.2, 0.2]) == set()  # overlapping: no relation
    meta = {"include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1, "color": "red", "position": ["left of", 0]}],
            "exclude": [{"class": "triangle", "count": 1}]}
    circle = {"kind": "circle", "colour": "blue", "bbox": [0.6, 0.4, 0.7, 0.5]}
    square = {"kind": "square", "colour": "red", "bbox": [0.1, 0.4, 0.2, 0.5]}
    assert reasons_against(meta, Boxes([circle, square])) == []
    assert reasons_against(meta, Boxes([circle, {**square, "colour": "blue"}])) == ["expected red square>=1, found 0 red among the first 1"]
    assert reasons_against(meta, Boxes([circle, {**square, "bbox": [0.8, 0.4, 0.9, 0.5]}])) == ["expected square left of circle, found right of"]
    assert reasons_against(meta, Boxes([square])) == ["expected circle>=1, found 0", "no target for square to be left of"]
    triangle = {"kind": "triangle", "colour": "red", "bbox": [0.4, 0.8, 0.5, 0.9]}
    assert reasons_against(meta, Boxes([circle, square, triangle])) == ["expected triangle<1, found 1"]
    relation = {"a": {"colour": "red", "kind": "square"}, "relation": "to the left of", "b": {"colour": None, "kind": "circle"}}
    assert reasons_against(meta, Answers({"counts": {"circle": 1, "red square": 1}, "objects": [], "relations": [{**relation, "holds": True}]})) == []
    assert reasons_against(meta, Answers({"counts": {"circle": 1, "red square": 1}, "objects": [], "relations": [{**relation, "holds": False}]})) == [
        "expected square left of circle, the judge says no"]


def test_nbeval_samples_exports_the_prompts(tmp_path, metadata):
    out = tmp_path / "prompts.jsonl"
    proc = run_cli(["samples", "suite=[geneval]", f"suite.geneval.path={metadata}", "n=4", "--out", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [x["prompt"] for x in LINES[:4]]
    assert [r["tags"]["tag"] for r in rows] == ["single_object", "two_object", "counting", "colors"]
