"""The drift suite: chains with exact truth, both protocols, and its validity on the oracle."""

from __future__ import annotations

import json
import os

import pytest
from hydra.utils import instantiate
from PIL import Image, ImageFilter

from nbeval.adapters.base import EditRequest, GenRequest, GenResult, ModelAdapter
from nbeval.adapters.oracle import OracleAdapter
from nbeval.runner import score_suite
from nbeval.scorers.pixels import MaskedSimilarity
from nbeval.world import Scene, render
from suites.drift import DriftSuite


class IgnoresInstructions(ModelAdapter):
    """Draws turn 0 right, then returns its input image, blurred a little, whatever it is asked."""

    name = "ignores_instructions"
    capabilities = frozenset({"generate", "edit"})
    needs_truth = True  # it draws turn 0 from the truth, as the oracle does

    def __init__(self, blur: float = 0.0) -> None:
        self.blur = blur

    def settings(self) -> dict:
        return {"blur": self.blur}

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return [GenResult(render(Scene.from_dict(r.truth["scene"]), r.size)) for r in requests]

    def edit(self, requests: list[EditRequest]) -> list[GenResult]:
        return [GenResult(r.images[-1].filter(ImageFilter.GaussianBlur(self.blur)) if self.blur else r.images[-1]) for r in requests]


@pytest.fixture
def scorers(compose_cfg, ocr_scorer):
    cfg = compose_cfg(["suite=[drift]"])
    made = {"pixels": instantiate(cfg.scorer.pixels), "counter": instantiate(cfg.scorer.counter), "ocr": ocr_scorer}
    return made.__getitem__


def _run(suite, model, scorers, cache, n=8):
    return score_suite(suite, model, scorers, cache, n, 0, 8)


def test_chains_are_exact_and_the_same_under_both_protocols():
    it, gt = DriftSuite(protocol="iterative", turns=4), DriftSuite(protocol="ground_truth", turns=4)
    a, b = it.samples(12, 3), gt.samples(12, 3)
    assert [s.truth for s in a] == [s.truth for s in b] and [s.turns for s in a] == [s.turns for s in b]
    assert a == it.samples(12, 3)
    for s in a:
        assert len(s.turns) == 4 and len(s.truth) == 5
        for t in range(1, 5):
            assert Scene.from_dict(s.truth[t]["scene"]) != Scene.from_dict(s.truth[t - 1]["scene"]), "every edit changes the scene"
    assert it.edit_input(a[0], 2, 64) is None, "iterative: the model edits its own image"
    true_prev = gt.edit_input(a[0], 2, 64)
    assert true_prev.tobytes() == render(Scene.from_dict(a[0].truth[2]["scene"]), 64).tobytes()
    with pytest.raises(ValueError, match="protocol"):
        DriftSuite(protocol="sideways")


def test_masked_similarity_ignores_only_the_excluded_boxes():
    scorer = MaskedSimilarity()
    ref = render(Scene(), 128)
    painted = ref.copy()
    painted.paste((200, 30, 30), (20, 20, 40, 40))
    inside = scorer.compare(painted, ref, [[0.1, 0.1, 0.35, 0.35]])
    assert inside["ssim"] == pytest.approx(1.0, abs=1e-4) and inside["psnr"] == 60.0 and 0.5 < inside["kept"] < 1
    outside = scorer.compare(painted, ref, [[0.6, 0.6, 0.9, 0.9]])
    assert outside["ssim"] < 0.99 and outside["psnr"] < 40


def test_oracle_chains_show_no_drift_and_growing_blur_shows_a_growing_slope(scorers, cache):
    suite = DriftSuite(turns=4)
    clean = _run(suite, OracleAdapter(), scorers, cache).metrics
    assert clean["drift_slope"].value == pytest.approx(0.0, abs=1e-4) and clean["edit_success"].value == 1.0
    assert clean["preservation_ssim"].value == pytest.approx(1.0, abs=1e-4) and clean["turns_to_failure"].value == 4
    slopes = []
    for severity in (1, 3):
        m = _run(suite, OracleAdapter(corruption="drift", severity=severity), scorers, cache).metrics
        assert m["drift_slope"].ci_high < 0, f"severity {severity}: slope CI must exclude zero"
        slopes.append(m["drift_slope"].value)
    assert slopes[1] < slopes[0] < 0


def test_a_model_that_ignores_instructions_fails_every_edit_and_drifts_only_when_iterating(scorers, cache):
    model = IgnoresInstructions(blur=0.8)
    ground_truth = _run(DriftSuite(turns=4, protocol="ground_truth"), model, scorers, cache)
    assert ground_truth.metrics["edit_success"].value == 0.0
    failed = ground_truth.scores[ground_truth.scores["metric"] == "edit_success"]
    assert {json.loads(d)["op"] for d in failed["detail"]} >= {"add", "remove", "recolour", "move"}
    iterative = _run(DriftSuite(turns=4), model, scorers, cache)
    # Iterating, a later edit can hold by accident (removing what an ignored earlier edit never added).
    assert iterative.metrics["edit_success"].value < 0.1 and iterative.metrics["turns_to_failure"].value == 0
    # Fed the truth each turn, its one blur per turn does not pile up; fed its own images, it does.
    assert iterative.metrics["drift_slope"].ci_high < ground_truth.metrics["drift_slope"].ci_low
    assert abs(ground_truth.metrics["drift_slope"].value) < 0.01


def test_a_failed_turn_ends_its_chain_with_error_rows_and_a_rerun_is_served_from_cache(scorers, cache):
    class FailsAtTurnTwo(IgnoresInstructions):
        def edit(self, requests):
            return [GenResult(None, 0.0, "refused") if r.turn == 2 else out for r, out in zip(requests, super().edit(requests))]

    suite = DriftSuite(turns=4)
    first = _run(suite, FailsAtTurnTwo(), scorers, cache, n=3)
    gens = first.generations
    assert len(gens) == 3 * 5
    assert (gens[gens["turn"] == 2]["error"] == "refused").all()
    assert (gens[gens["turn"] >= 3]["error"] == "turn 2 failed").all()
    assert gens[gens["turn"] < 2]["error"].isna().all()
    again = _run(suite, FailsAtTurnTwo(), scorers, cache, n=3)
    assert again.generations["cached"].sum() == 3 * 2


def test_drift_runs_from_the_command_line_on_the_oracle(compose_cfg, tmp_path):
    from conftest import evaluate

    cfg = compose_cfg(["model=oracle", "suite=[drift,drift_gt]", "n=3", "suite.drift.turns=2", "suite.drift_gt.turns=2"])
    res = evaluate(cfg, tmp_path / "out")
    for name in ("drift", "drift_gt"):
        metrics = res["suites"][name]["metrics"]
        assert metrics["edit_success"]["value"] == 1.0 and metrics["drift_slope"]["value"] == pytest.approx(0.0, abs=1e-4)
        assert metrics["preservation_ssim/turn_2"]["value"] == pytest.approx(1.0, abs=1e-4)
        assert not [m for m in metrics if "lpips" in m], "LPIPS is off unless weights are given"
        assert (tmp_path / "out" / name / "plots" / f"{name}_worst_chains.png").exists()
        with Image.open(tmp_path / "out" / name / "plots" / f"{name}_per_turn.png") as fig:
            assert fig.width == pytest.approx(5 * 375, abs=10), "five panels; LPIPS's only with its weights"


def test_a_suite_is_named_by_its_config_key_whatever_its_protocol(tmp_path, mlflow_db):
    """`suite.drift.protocol=ground_truth` once renamed the suite `drift_gt` while the run keyed it
    `drift`: the summary and the tracking looked it up by name and the run crashed before logging."""
    from mlflow import MlflowClient

    from conftest import run_cli

    db = mlflow_db(tmp_path / "mlflow.db")
    out = tmp_path / "out"
    r = run_cli(["run", "model=oracle", "suite=[drift]", "suite.drift.protocol=ground_truth", "n=4", "suite.drift.turns=2",
                 f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"], tmp_path, {"MLFLOW_TRACKING_URI": db})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert list(res["suites"]) == ["drift"] and res["suites"]["drift"]["params"]["protocol"] == "ground_truth"
    assert res["suites"]["drift"]["metrics"]["edit_success"]["value"] == 1.0
    run = MlflowClient(db).get_run(res["mlflow_run_id"])
    assert run.data.metrics["drift/edit_success"] == 1.0 and run.data.tags["nbeval.suites"] == "drift"


def test_drift_against_the_models_own_images(compose_cfg, tmp_path):
    """The oracle keeps its own turn 0 exactly (1.0, slope 0); blur that grows every turn drifts from
    its own images as from the truth's, with a slope whose CI excludes zero."""
    from conftest import evaluate

    base = ["suite=[drift]", "n=8", "suite.drift.turns=3"]
    clean = evaluate(compose_cfg([*base, "model=oracle"]), tmp_path / "clean")["suites"]["drift"]["metrics"]
    assert clean["self_preservation_ssim"]["value"] == pytest.approx(1.0, abs=1e-4) and clean["consistency_ssim"]["value"] == pytest.approx(1.0, abs=1e-4)
    assert clean["self_drift_slope"]["value"] == pytest.approx(0.0, abs=1e-4) and "consistency_ssim/turn_0" not in clean
    blurred = evaluate(compose_cfg([*base, "model=oracle_drift", "model.severity=3"]), tmp_path / "blurred")["suites"]["drift"]["metrics"]
    assert blurred["self_drift_slope"]["ci_high"] < 0 and blurred["consistency_ssim"]["value"] < 1.0


def test_the_combined_protocol_asks_the_whole_chain_at_once(compose_cfg, tmp_path, scorers, cache):
    """EdiVal's comparison: the chain's instructions as one turn; the oracle makes every change,
    a model that ignores instructions none."""
    combined = DriftSuite(turns=3, protocol="combined")
    (sample,) = combined.samples(1, 0)
    (chain,) = DriftSuite(turns=3).samples(1, 0)
    assert sample.turns == (" ".join(chain.turns),) and sample.truth[-1]["scene"] == chain.truth[-1]["scene"]
    assert [s["op"] for s in sample.truth[1]["steps"]] == chain.tags["ops"].split("+")
    right = _run(combined, OracleAdapter(), scorers, cache, n=6)
    assert right.metrics["edit_success"].value == 1.0 and right.metrics["fidelity_ssim"].value == pytest.approx(1.0, abs=1e-4)
    wrong = _run(combined, IgnoresInstructions(), scorers, cache, n=6)
    assert wrong.metrics["edit_success"].value == 0.0
    assert "drift_combined" in compose_cfg(["suite=[drift_combined]"]).suite and compose_cfg(["suite=[drift_combined]"]).suite.drift_combined.protocol == "combined"


def test_pixels_truth_is_the_same_in_every_process():
    """The pixels scorer's truth is part of its cache key: one that followed a set's order (the hash
    seed) missed the cache on half of a warm run's drift readings."""
    import subprocess
    import sys

    code = ("from nbeval.records import content_hash; from suites.drift import DriftSuite; d = DriftSuite(); "
            "print(content_hash([d.scorer_truth(s, t, 'pixels') for s in d.samples(12, 0) for t in range(len(s.truth))]))")
    hashes = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(seed)}, capture_output=True, text=True, check=True).stdout
              for seed in (1, 2, 3)}
    assert len(hashes) == 1
