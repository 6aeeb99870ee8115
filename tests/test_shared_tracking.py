"""Shared tracking for real: `mlflow server` on loopback with a PostgreSQL backend store (a throwaway
cluster) and a shared artifact folder; a multirun logged to it; the server killed in the middle of an
upload and down for a whole multirun (the runs finish, exit 0 and keep everything locally); then,
the server back, `nbeval sync` uploads them — once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from mlflow import MlflowClient

from conftest import need, run_cli
from nbeval.testing import MLflowServer, free_port
from nbeval.tracking import PENDING_FILE

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(postgres_url, tmp_path):
    """A fresh database on the session's PostgreSQL cluster and an MLflow server on it (not started)."""
    need("initdb")
    name = f"mlflow_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    server = MLflowServer(postgres_url.rsplit("/", 1)[0] + f"/{name}", tmp_path / "mlartifacts", tmp_path)
    yield server
    server.stop()


def _runs(client: MlflowClient, query: str):
    exp = client.get_experiment_by_name("nbeval")
    return client.search_runs([exp.experiment_id], filter_string=query)


def _check_job(client: MlflowClient, job, folder: Path) -> None:
    """A job's run: its metrics, its nested suite run with the tables, grid and plots, and the run
    folder pointing at it."""
    assert job.info.status == "FINISHED"
    assert 0.0 <= job.data.metrics["counting/exact_accuracy"] <= 1.0 and "counting/mae" in job.data.metrics
    (suite_run,) = _runs(client, f"tags.`mlflow.parentRunId` = '{job.info.run_id}'")
    assert suite_run.data.tags["nbeval.suite"] == "counting" and "counting/exact_accuracy" in suite_run.data.metrics
    arts = {a.path for a in client.list_artifacts(suite_run.info.run_id, "counting")}
    assert {"counting/scores.parquet", "counting/samples.parquet", "counting/sample_grid.png", "counting/scores_table.json", "counting/plots"} <= arts
    assert {a.path for a in client.list_artifacts(job.info.run_id)} >= {"results.json", "summary.md", "config.json"}
    assert json.loads((folder / "results.json").read_text())["mlflow_run_id"] == job.info.run_id
    assert not (folder / PENDING_FILE).exists()


def _sweep(client: MlflowClient, sweep: Path):
    (parent,) = _runs(client, f"tags.`nbeval.kind` = 'multirun' and tags.`nbeval.sweep_dir` = '{sweep.resolve()}'")
    jobs = {j.data.tags["nbeval.model"]: j for j in _runs(client, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    return parent, jobs


# The server is killed by this child process in the middle of an upload: after the top run, its
# params, metrics and first artifacts, before the suite's nested run.
_DIE_MID_UPLOAD = """
import json, os, signal, sys
from pathlib import Path
from nbeval.tracking import MLflowTracker
folder, url, pgid = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
log_suite = MLflowTracker._log_suite
def dying(self, *args, **kwargs):
    os.killpg(pgid, signal.SIGKILL)
    return log_suite(self, *args, **kwargs)
MLflowTracker._log_suite = dying
res = json.loads((folder / "results.json").read_text())
print("RUN_ID", MLflowTracker(url).log_or_keep(res, folder))
"""


def test_multirun_on_a_shared_server_and_sync_after_it_was_down(mlflow_server, tmp_path):
    t_start = time.perf_counter()
    server, timings = mlflow_server, {}
    timings["server start"] = server.start().start_seconds
    client = MlflowClient(tracking_uri=server.url)
    common = ["suite=[counting]", "n=5", f"cache_dir={tmp_path / 'cache'}", f"tracking.uri={server.url}"]

    # 1. a multirun against the server: the parent and both jobs with metrics and artifacts
    up = tmp_path / "multirun" / "up"
    t0 = time.perf_counter()
    r = run_cli(["run", "-m", "model=oracle,oracle_blur", *common, f"hydra.sweep.dir={up}"], tmp_path)
    timings["multirun, server up"] = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ended without an answer" not in r.stderr  # each job's tracking process logged it (a REST store)
    parent, jobs = _sweep(client, up)
    assert parent.info.status == "FINISHED" and set(jobs) == {"oracle", "oracle_blur"}
    assert jobs["oracle"].data.metrics["counting/exact_accuracy"] == 1.0
    for job in jobs.values():
        _check_job(client, job, Path(job.data.tags["nbeval.run_folder"]))
    assert not list(up.rglob(PENDING_FILE))
    # the backend store is PostgreSQL, the artifacts are files in the shared folder
    with psycopg.connect(server.backend_uri.replace("postgresql+psycopg://", "postgresql://")) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 5  # parent, 2 jobs, 2 suite runs
    assert len(list((tmp_path / "mlartifacts").rglob("scores.parquet"))) == 2

    # 2. the server dies in the middle of an upload: the run is kept, marked, and the half-logged
    #    run in MLflow does not look complete (a copy of a job folder stands for a new run)
    half = tmp_path / "outputs" / "half"
    shutil.copytree(Path(jobs["oracle"].data.tags["nbeval.run_folder"]), half)
    res = json.loads((half / "results.json").read_text())
    res.pop("mlflow_run_id")
    res["created_at"] = "2026-01-01T00:00:00+00:00"
    (half / "results.json").write_text(json.dumps(res, indent=2))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _DIE_MID_UPLOAD, str(half), server.url, str(server.proc.pid)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    timings["upload cut by the server's death"] = time.perf_counter() - t0
    assert r.returncode == 0 and "RUN_ID None" in r.stdout, r.stderr[-3000:]
    marker = json.loads((half / PENDING_FILE).read_text())
    assert marker["kind"] == "run" and marker["uri"] == server.url and marker["error"]
    server.stop()

    # 3. the server down for a whole multirun: it finishes, exit 0, everything kept, marked
    down = tmp_path / "multirun" / "down"
    t0 = time.perf_counter()
    r = run_cli(["run", "-m", "model=oracle,oracle_blur", *common, f"hydra.sweep.dir={down}"], tmp_path)
    timings["multirun, server down"] = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not logged" in r.stdout and "upload it later with: nbeval sync" in r.stdout + r.stderr
    assert json.loads((down / PENDING_FILE).read_text())["kind"] == "multirun"
    job_dirs = sorted(p.parent for p in down.glob(f"*/{PENDING_FILE}"))
    assert len(job_dirs) == 2
    for d in job_dirs:
        assert json.loads((d / PENDING_FILE).read_text())["uri"] == server.url
        assert "mlflow_run_id" not in json.loads((d / "results.json").read_text())
        assert (d / "counting" / "scores.parquet").is_file() and (d / "counting" / "sample_grid.png").is_file() and (d / "summary.md").is_file()
    saved_marker = (job_dirs[0] / PENDING_FILE).read_text()

    # 4. the server back: the half-logged run is there, not FINISHED; `nbeval sync` uploads all
    timings["server restart"] = server.start().start_seconds
    (stale,) = _runs(client, "tags.`nbeval.run_folder` = '{}'".format(half.resolve()))
    assert stale.info.status in ("RUNNING", "FAILED") and "counting/exact_accuracy" in stale.data.metrics
    assert not _runs(client, f"tags.`mlflow.parentRunId` = '{stale.info.run_id}'")  # it died before the suite run
    t_sync = time.time()
    t0 = time.perf_counter()
    r = run_cli(["sync"], tmp_path)  # default: ./outputs and ./multirun
    timings["nbeval sync"] = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert r.stdout.count("uploaded ") == 3 and r.stdout.count("sweep ") == 1, r.stdout
    parent, jobs = _sweep(client, down)
    assert parent.info.status == "FINISHED" and set(jobs) == {"oracle", "oracle_blur"}
    assert jobs["oracle"].data.metrics["counting/exact_accuracy"] == 1.0
    for job in jobs.values():
        folder = Path(job.data.tags["nbeval.run_folder"])
        assert folder.parent == down.resolve()
        _check_job(client, job, folder)
        assert job.info.start_time / 1000 < t_sync  # the run sits at the time it ran, not when it was uploaded
    (complete,) = _runs(client, "tags.`nbeval.run_folder` = '{}'".format(half.resolve()))  # the half-logged one was deleted
    assert complete.info.run_id != stale.info.run_id
    _check_job(client, complete, half)
    assert not list(tmp_path.rglob(PENDING_FILE))
    assert len(list((tmp_path / "mlartifacts").rglob("scores.parquet"))) == 5

    # 5. idempotent: nothing left to upload; a folder marked again is recognised, not uploaded twice
    r = run_cli(["sync"], tmp_path)
    assert r.returncode == 0 and "nothing to upload" in r.stdout, r.stdout + r.stderr[-2000:]
    (job_dirs[0] / PENDING_FILE).write_text(saved_marker)
    r = run_cli(["sync", str(down)], tmp_path)
    assert r.returncode == 0 and "present " in r.stdout and "uploaded " not in r.stdout, r.stdout + r.stderr[-2000:]
    assert len(_runs(client, "tags.`nbeval.run_folder` = '{}'".format(job_dirs[0].resolve()))) == 1
    assert not (job_dirs[0] / PENDING_FILE).exists()

    timings["total"] = time.perf_counter() - t_start
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def test_unreachable_server_keeps_the_run_and_sync_uploads_it_elsewhere(tmp_path, mlflow_db):
    """No PostgreSQL needed: a server that is not there fails the upload at once (no minutes of
    retries), the run exits 0 with its folder marked; `nbeval sync --uri` uploads it to another store."""
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    r = run_cli(["run", "model=oracle", "suite=[counting]", "n=3", f"cache_dir={tmp_path / 'c'}", f"tracking.uri={dead}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not logged" in r.stdout and seconds < 60
    marker = json.loads((tmp_path / "run" / PENDING_FILE).read_text())
    assert marker["uri"] == dead and "not reachable" in marker["error"] and marker["tags"]["nbeval.choice.model"] == "oracle"
    r = run_cli(["sync", "run", "--dry-run"], tmp_path)
    assert r.returncode == 0 and "would upload" in r.stdout and (tmp_path / "run" / PENDING_FILE).exists()
    r = run_cli(["sync", "run"], tmp_path)  # still down: stays pending, exit 1
    assert r.returncode == 1 and "pending " in r.stdout
    store = mlflow_db(tmp_path / "mlflow.db")
    r = run_cli(["sync", "run", "--uri", store], tmp_path)
    assert r.returncode == 0 and "uploaded " in r.stdout, r.stdout + r.stderr[-3000:]
    client = MlflowClient(tracking_uri=store)
    (run,) = _runs(client, "tags.`nbeval.kind` = 'run'")
    assert run.info.status == "FINISHED" and run.data.metrics["counting/exact_accuracy"] == 1.0
    assert run.data.tags["nbeval.choice.model"] == "oracle"  # the run's own tags, kept in the marker
    assert json.loads((tmp_path / "run" / "results.json").read_text())["mlflow_run_id"] == run.info.run_id
