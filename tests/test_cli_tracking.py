"""The real `nbeval` command: runs, multiruns and bad options, tracked in a real MLflow SQLite store."""

import json

import mlflow
import pytest
from mlflow import MlflowClient

from conftest import run_cli

pytestmark = pytest.mark.slow


def _env(tmp_path):
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}


def _client(tmp_path) -> MlflowClient:
    return MlflowClient(tracking_uri=_env(tmp_path)["MLFLOW_TRACKING_URI"])


def _runs(client, query=""):
    exp = client.get_experiment_by_name("nbeval")
    return client.search_runs([exp.experiment_id], filter_string=query)


def test_run_logs_params_metrics_tables_images_and_nested_suite_runs(tmp_path):
    r = run_cli(["run", "model=oracle", "suite=[counting]", "n=16", "seed=0", f"cache_dir={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'out'}"], tmp_path, _env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exact_accuracy" in r.stdout and "MLflow run" in r.stdout
    client = _client(tmp_path)
    (run,) = _runs(client, "tags.`nbeval.kind` = 'run'")
    assert run.data.metrics["counting/exact_accuracy"] == 1.0
    assert run.data.metrics["counting/mae"] == 0.0
    assert run.data.metrics["counting/exact_accuracy_ci_low"] < 1.0
    assert run.data.params["n"] == "16" and run.data.params["model._target_"] == "nbeval.adapters.oracle.OracleAdapter"
    assert run.data.tags["nbeval.model"] == "oracle" and len(run.data.tags["nbeval.model_fingerprint"]) == 16
    assert json.loads(run.data.tags["nbeval.scorer.counter"])["class"].endswith("ShapeCounter")
    (child,) = _runs(client, f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert child.data.tags["nbeval.suite"] == "counting"
    arts = {a.path for a in client.list_artifacts(child.info.run_id, "counting")}
    for name in ("counting/scores.parquet", "counting/samples.parquet", "counting/sample_grid.png", "counting/scores_table.json", "counting/plots"):
        assert name in arts
    mlflow.set_tracking_uri(_env(tmp_path)["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("nbeval")  # load_table searches the active experiment
    table = mlflow.load_table("counting/scores_table.json", run_ids=[child.info.run_id])
    assert len(table) == 16 * 4 and set(table["metric"]) == {"exact_accuracy", "geneval_pass", "mae", "bias"}
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["mlflow_run_id"] == run.info.run_id and res["schema_version"] == 1
    assert f"logged MLflow run {run.info.run_id}" in (tmp_path / "out" / "cli.log").read_text()  # the tracking process's record, in the run's log
    assert "ended without an answer" not in r.stderr  # logged by that process, not by the run's own fallback


def test_multirun_nests_jobs_under_one_parent(tmp_path):
    # ++: the sweep is composed once on the default model (the reference model, which has no severity)
    r = run_cli(["run", "-m", "model=oracle,oracle_blur", "++model.severity=4", "suite=counting", "n=16", f"cache_dir={tmp_path / 'c'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, _env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    client = _client(tmp_path)
    (parent,) = _runs(client, "tags.`nbeval.kind` = 'multirun'")
    assert parent.info.status == "FINISHED"
    jobs = _runs(client, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_model = {j.data.tags["nbeval.model"]: j for j in jobs}
    assert set(by_model) == {"oracle", "oracle_blur"}
    assert by_model["oracle"].data.metrics["counting/exact_accuracy"] == 1.0
    assert by_model["oracle_blur"].data.metrics["counting/exact_accuracy"] < 0.8
    for j in jobs:
        (suite_run,) = _runs(client, f"tags.`mlflow.parentRunId` = '{j.info.run_id}'")
        assert suite_run.data.tags["nbeval.suite"] == "counting"


@pytest.mark.parametrize(("override", "message"), [("model=nope", "model/nope"), ("nn=3", "nn"), ("suite=[counting,nope]", "suite/nope"), ("model.severity=9", "severity")])
def test_bad_options_are_named(tmp_path, override, message):
    r = run_cli(["run", override, "tracking=none", f"cache_dir={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'out'}"], tmp_path)
    assert r.returncode != 0
    assert message in r.stderr


def test_help_lists_commands_and_config_groups(tmp_path):
    r = run_cli(["--help"], tmp_path)
    assert r.returncode == 0 and "run" in r.stdout and "samples" in r.stdout
    r = run_cli(["run", "--help"], tmp_path)
    assert r.returncode == 0 and "model: " in r.stdout and "oracle_blur" in r.stdout


def test_tracking_sends_mlflow_no_telemetry_unless_the_user_turns_it_on(tmp_path):
    """MLflow 3 posts usage records from every process that imports it (its config fetch runs at
    import); nbeval's tracker imports it with that off (`preload`: what its tracking process runs first).
    Run outside pytest's and CI's environment variables, which MLflow already treats as 'off'; a user's
    own setting wins."""
    import os
    import subprocess
    import sys

    probe = ("from nbeval.tracking import MLflowTracker\n"
             f"MLflowTracker('sqlite:///{tmp_path / 'm.db'}').preload()\n"
             "from mlflow.telemetry.client import get_telemetry_client\n"
             "print(get_telemetry_client() is None)\n")
    quiet = {"PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"}
    env = {k: v for k, v in os.environ.items() if k not in quiet}
    off = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    on = subprocess.run([sys.executable, "-c", probe], env={**env, "MLFLOW_DISABLE_TELEMETRY": "false"}, capture_output=True, text=True, timeout=300)
    assert (off.stdout.strip(), on.stdout.strip()) == ("True", "False"), off.stderr[-2000:] + on.stderr[-2000:]


_RUN_JOB = """
import contextlib, sys
from pathlib import Path
from nbeval import api
from nbeval.tracking import MLflowTracker
cfg = api.compose(["model=oracle", "suite=[counting]", "n=8", "cache_dir=c", "tracking.uri=sqlite:///mlflow.db"])
if sys.argv[1] == "killed":  # the tracking process dies before the run hands it the folder
    start = MLflowTracker.ready_in_background
    def ready_then_killed(self):
        with start(self) as tracker:
            tracker._process._proc.kill()
            yield tracker
    MLflowTracker.ready_in_background = contextlib.contextmanager(ready_then_killed)
res = api.run_job(cfg, Path("out"))
print("RUN_ID", res["mlflow_run_id"], "MLFLOW_IMPORTED", "mlflow" in sys.modules)
"""


@pytest.mark.parametrize("case", ["answered", "killed"])
def test_a_run_is_logged_by_its_tracking_process_or_by_itself_when_that_is_gone(tmp_path, case):
    """`nbeval run`'s job (api.run_job) hands its folder to a process that imported MLflow while the run
    worked: the run's own process never imports MLflow (that the upload's log records reach the run's
    log: the first test). When that process is gone (killed here), the run logs the folder itself."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _RUN_JOB, case], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run_id, imported = r.stdout.split("RUN_ID ")[1].split()[0], r.stdout.split("MLFLOW_IMPORTED ")[1].strip()
    assert imported == ("False" if case == "answered" else "True")
    if case == "killed":
        assert "ended without an answer" in r.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["counting/exact_accuracy"] == 1.0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["mlflow_run_id"] == run_id
    assert not (tmp_path / "out" / "PENDING_SYNC").exists()
