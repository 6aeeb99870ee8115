"""The arena as a suite: oracle variants through the real `nbeval run suite=arena model=[a,b]` path,
the suite and CLIP judges on real images, their fingerprints, and the verdict rules."""

import json

import pandas as pd
import pytest
from hydra.utils import instantiate
from mlflow import MlflowClient

from conftest import evaluate, run_cli
from nbeval.arena.judges import Battle, JudgeContext, Side, SuiteJudge, compare
from nbeval.records import content_hash
from suites.counting import CountingSuite

BATTLE_COLUMNS = ["battle_id", "sample_id", "model_a", "model_b", "winner", "judge", "judge_fingerprint", "voter", "time"]


def _arena_cli(tmp_path, *overrides, mlflow_uri: str | None = None):
    """The arena suite through `nbeval run`, tracked in MLflow at `mlflow_uri` if given."""
    out = tmp_path / "out"
    tracking, env = ("tracking=mlflow", {"MLFLOW_TRACKING_URI": mlflow_uri}) if mlflow_uri else ("tracking=none", None)
    r = run_cli(["run", "suite=arena", *overrides, tracking, f"cache_dir={tmp_path / 'c'}", f"hydra.run.dir={out}"], tmp_path, env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r, json.loads((out / "results.json").read_text()), pd.read_parquet(out / "arena" / "battles.parquet")


@pytest.mark.slow
def test_clean_oracle_outrates_a_blurred_one_through_the_cli_and_mlflow(tmp_path, mlflow_db):
    uri = mlflow_db(tmp_path / "mlflow.db")
    r, res, battles = _arena_cli(tmp_path, "model=[oracle,oracle_blur]", "model.severity=5", "n=40", mlflow_uri=uri)
    m = res["suites"]["arena"]["metrics"]
    assert m["rating/oracle"]["ci_low"] > m["rating/oracle_blur"]["ci_high"]  # CIs do not overlap
    assert m["win_rate/oracle"]["ci_low"] > 0.5
    assert "rating/oracle" in r.stdout and res["model"]["name"] == "oracle vs oracle_blur"
    assert [x["name"] for x in res["models"]] == ["oracle", "oracle_blur"] and set(res["config"]["models"]) == {"oracle", "oracle_blur"}
    # every sample is one battle, sides drawn at random, each row signed by the judge's fingerprint
    assert list(battles.columns) == BATTLE_COLUMNS and len(battles) == 40 and battles["battle_id"].is_unique
    assert 0 < (battles["model_a"] == "oracle").sum() < 40
    assert set(battles["judge"]) == {"suite"} and battles["judge_fingerprint"].nunique() == 1
    assert len(battles["judge_fingerprint"].iloc[0]) == 16
    board = pd.read_parquet(tmp_path / "out" / "arena" / "leaderboard.parquet")
    assert list(board["model"]) == ["oracle", "oracle_blur"] and list(board["battles"]) == [40, 40]
    assert {"ratings.png", "win_rates.png"} <= {p.name for p in (tmp_path / "out" / "arena" / "plots").iterdir()}
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("nbeval")
    (run,) = client.search_runs([exp.experiment_id], "tags.`nbeval.kind` = 'run'")
    assert run.data.metrics["arena/rating/oracle"] == pytest.approx(m["rating/oracle"]["value"])
    assert run.data.metrics["arena/rating/oracle_blur_ci_high"] == pytest.approx(m["rating/oracle_blur"]["ci_high"])
    assert run.data.tags["nbeval.models"] == "oracle,oracle_blur" and run.data.tags["nbeval.choice.model"] == "oracle,oracle_blur"
    (suite_run,) = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    arts = {a.path for a in client.list_artifacts(suite_run.info.run_id, "arena")}
    assert {"arena/battles.parquet", "arena/battles_table.json", "arena/leaderboard_table.json", "arena/plots"} <= arts


@pytest.mark.slow
def test_per_model_overrides_apply_to_every_listed_model_and_equal_images_tie(tmp_path):
    # oracle_blur's own config says severity 2: severity=0 reaches it only if each model is composed
    # with the run's overrides; then both draw the same images and the suite judge calls every battle a tie
    _, res, battles = _arena_cli(tmp_path, "model=[oracle,oracle_blur]", "model.severity=0", "n=12")
    assert [x["settings"]["severity"] for x in res["models"]] == [0, 0]
    assert set(battles["winner"]) == {"tie"}
    m = res["suites"]["arena"]["metrics"]
    assert m["rating/oracle"]["value"] == pytest.approx(1000) and m["win_rate/oracle"]["value"] == 0.5


@pytest.mark.slow
def test_clip_judge_prefers_the_true_colours_and_has_its_own_fingerprint(compose_cfg, tmp_path):
    overrides = ["suite=arena", "suite.arena.base=adherence", "n=20", "model=[oracle,oracle_recolour]", "model.severity=1"]
    clip = evaluate(compose_cfg([*overrides, "judge=clip"]), tmp_path / "clip")
    m = clip["suites"]["arena"]["metrics"]
    assert m["win_rate/oracle"]["ci_low"] > 0.5 and m["rating/oracle"]["value"] > m["rating/oracle_recolour"]["value"]
    by_clip = pd.read_parquet(tmp_path / "clip" / "arena" / "battles.parquet")
    assert set(by_clip["judge"]) == {"clip"}
    # the suite judge on the same images: adherence's headline (R-precision) decides, another fingerprint
    evaluate(compose_cfg(overrides), tmp_path / "suite")
    by_suite = pd.read_parquet(tmp_path / "suite" / "arena" / "battles.parquet")
    assert by_suite["judge_fingerprint"].iloc[0] != by_clip["judge_fingerprint"].iloc[0]


def test_the_arena_needs_two_models_and_other_suites_refuse_two(compose_cfg, tmp_path):
    with pytest.raises(ValueError, match="compares models, but the run has one"):
        evaluate(compose_cfg(["suite=arena", "model=oracle", "n=2"]), tmp_path / "a")
    with pytest.raises(ValueError, match=r"one model at a time.*nbeval run -m model=oracle,oracle_blur"):
        evaluate(compose_cfg(["suite=[counting]", "n=2", "model=[oracle,oracle_blur]"]), tmp_path / "b")


def _ctx(compose_cfg, **counting) -> JudgeContext:
    counter = instantiate(compose_cfg([]).scorer.counter)
    return JudgeContext(CountingSuite(**counting), lambda role: counter, None, 16)


def test_suite_judge_decides_by_headline_in_order_and_failures_lose(compose_cfg):
    ctx = _ctx(compose_cfg)
    judge = SuiteJudge()  # counting's headline: exact_accuracy (higher better), then mae (lower better)

    def verdict(a: dict, b: dict) -> str:
        return judge.judge([_battle(a, b)], ctx)[0]

    exact, off1, off3 = {"exact_accuracy": 1.0, "mae": 0.0}, {"exact_accuracy": 0.0, "mae": 1.0}, {"exact_accuracy": 0.0, "mae": 3.0}
    assert verdict(exact, off1) == "a" and verdict(off3, off1) == "b" and verdict(off1, dict(off1)) == "tie"
    assert verdict({}, off3) == "b" and verdict({}, {}) == "both_bad"  # a failed side loses, even to a bad one
    assert compare(-2.0, 1.0, None) == "b" and compare(float("nan"), 0.0, True) == "b"  # bias: closer to zero wins
    fp = judge.fingerprint(ctx)
    assert fp == SuiteJudge(["exact_accuracy", "mae"]).fingerprint(ctx)
    assert fp != SuiteJudge(["mae"]).fingerprint(ctx)
    assert fp != judge.fingerprint(_ctx(compose_cfg, max_count=5))  # base suite params are part of it
    with pytest.raises(ValueError, match="no metric"):
        SuiteJudge(["r_precision"]).judge([], ctx)


def _battle(a: dict, b: dict) -> Battle:
    sample = CountingSuite().samples(1, 0)[0]
    return Battle(content_hash([a, b])[:16], sample, Side("m1", "sha-a", a), Side("m2", "sha-b", b))
