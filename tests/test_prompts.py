"""`suite=prompts`: a team's own prompts file, mixing valid and malformed lines, scored by the roles its
fields need, on images a model made elsewhere (real renders of the world, through `model=folder`)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import evaluate
from nbeval.world import Scene, render
from nbeval.world.scene import Shape, Word

LINES = [
    {"id": "sign", "prompt": "A white sign that says HELLO WORLD", "text": "HELLO WORLD", "tags": ["text"]},
    {"id": "reds", "prompt": "Three red circles", "counts": {"red circle": 3}, "tags": ["count"]},
    {"id": "any", "prompt": "Two circles of any colour", "counts": {"circle": 2}, "tags": ["count"]},
    {"id": "both", "prompt": "A blue square above the word OK", "text": "OK", "counts": {"blue square": 1},
     "atoms": ["Is there a blue square in the image?"], "tags": ["text", "count"]},
    {"id": "free", "prompt": "A happy dog", "atoms": ["Is the dog happy?"]},
]
BAD = ['{"id": "broken", "prompt": "unterminated', '{"id": "noprompt", "text": "X"}', '{"id": "badcounts", "prompt": "x", "counts": {"red circle": -1}}']


def _scene(sample_id: str) -> Scene:
    circles = lambda colours: tuple(Shape("circle", c, "small", 0.2 + 0.3 * i, 0.3) for i, c in enumerate(colours))  # noqa: E731
    return {
        "sign": Scene(words=(Word("HELLO WORLD", 0.07, 0.5, 0.5),)),
        "reds": Scene(shapes=circles(["red", "red", "red"])),
        "any": Scene(shapes=circles(["green", "blue"])),
        "both": Scene(shapes=(Shape("square", "blue", "medium", 0.5, 0.25),), words=(Word("OK", 0.1, 0.5, 0.75),)),
    }.get(sample_id, Scene())


@pytest.fixture
def prompts_run(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join([json.dumps(x) for x in LINES] + BAD + [""]) + "\n")
    images = tmp_path / "images"
    images.mkdir()
    ids = [x["id"] for x in LINES] + [str(len(LINES) + 1 + k) for k in range(len(BAD))]  # a malformed line's id is its line number
    for i in ids:
        render(_scene(i), 256).save(images / f"prompts-{i}.png")
    return path, images


@pytest.mark.slow
def test_a_prompts_file_is_scored_by_the_roles_each_line_needs(compose_cfg, tmp_path, prompts_run):
    path, images = prompts_run
    cfg = compose_cfg(["suite=[prompts]", f"suite.prompts.path={path}", "model=folder", f"model.path={images}", "n=100",
                       "scorer=[ocr,counter,vlm_tifa]"])
    res = evaluate(cfg, tmp_path / "out")
    rec = res["suites"]["prompts"]
    m = rec["metrics"]
    assert rec["n_samples"] == len(LINES) + len(BAD) and rec["n_failed_generations"] == 0
    assert m["exact_match"]["value"] == 1.0 and m["exact_match"]["n"] == 2 and m["exact_match/tag_text"]["n"] == 2
    assert m["exact_accuracy"]["value"] == 1.0 and m["exact_accuracy"]["n"] == 3 and m["exact_accuracy/tag_count"]["n"] == 3
    assert m["soft_tifa_am"]["value"] == 1.0 and m["soft_tifa_am"]["n"] == 1, "the world judge answers its own template"
    scores = pd.read_parquet(tmp_path / "out" / rec["tables"]["scores"])
    errors = dict(zip(scores.loc[scores["error"].notna(), "sample_id"], scores.loc[scores["error"].notna(), "error"]))
    assert errors["prompts-free"].startswith("JudgeError: unsupported"), "a free-form atom the world judge refuses is a failed reading"
    assert "not JSON" in errors["prompts-6"] and "non-empty string `prompt`" in errors["prompts-7"] and "`counts`" in errors["prompts-8"]
    assert rec["n_failed_scores"] == 4 and rec["failure_reasons"] == {"LineError": 3, "unsupported": 1}
    assert rec["params"]["file_sha256"] and res["suites"]["prompts"]["version"] == "1"


def test_a_line_needing_a_role_without_a_scorer_says_so_and_the_file_is_in_the_key(compose_cfg, tmp_path, prompts_run):
    from nbeval.api import build_suite

    path, images = prompts_run
    cfg = compose_cfg(["suite=[prompts]", f"suite.prompts.path={path}", "model=folder", f"model.path={images}", "n=2", "scorer=[counter]"])
    res = evaluate(cfg, tmp_path / "out")
    scores = pd.read_parquet(tmp_path / "out" / res["suites"]["prompts"]["tables"]["scores"])
    (error,) = scores.loc[scores["sample_id"] == "prompts-sign", "error"]
    assert "needs scorer role(s) ocr" in error
    assert res["suites"]["prompts"]["metrics"]["exact_accuracy"]["value"] == 1.0
    before = [s.key for s in build_suite("prompts", cfg.suite.prompts).samples(2, 0)]
    path.write_text(path.read_text() + json.dumps({"id": "more", "prompt": "One more line", "text": "MORE"}) + "\n")
    after = [s.key for s in build_suite("prompts", cfg.suite.prompts).samples(2, 0)]
    assert all(a != b for a, b in zip(after, before)), "an edited file gives every sample a new key, its unchanged lines too"
