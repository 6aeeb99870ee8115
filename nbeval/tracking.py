"""MLflow tracking: one run per (model, suite set), a nested run per suite, under a multirun parent.

Everything is logged from the finished run folder, after the work: tracking never slows or breaks
the evaluation itself; `nbeval run` logs it from a process started with the run, which imports MLflow
while the run works (`ready_in_background`, nbeval/tracking_process.py). Tracking goes where
MLFLOW_TRACKING_URI points (default sqlite:///mlflow.db), or to a shared MLflow server
(`tracking.uri=http://host:5000`).

When the tracking store cannot be reached or fails during the upload, nothing is lost: the run folder
already holds everything (results.json, summary.md, per suite its tables, sample grid and plots) and
keeps a `PENDING_SYNC` marker (JSON: where it was to go, its parent and tags, and why it failed);
`nbeval sync` (nbeval/sync.py) uploads such folders later through the same `log_run`. The marker is
written *before* an upload starts and removed when it has finished, so a process killed during the
upload leaves it too. A run folder's MLflow identity is the tag `nbeval.run_uid` (a hash of its
results.json), so an upload is never made twice; the top run's status becomes FINISHED last, after
every nested run and artifact, so only FINISHED means complete: a half-logged run (RUNNING or FAILED,
with that uid) is deleted by the next upload of its folder and logged anew.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import importlib
import json
import logging
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from nbeval.records import content_hash
from nbeval.results import write_json

log = logging.getLogger(__name__)
PARENT_RUN_FILE = "mlflow_parent_run_id"
PENDING_FILE = "PENDING_SYNC"
CORE_TABLES = ("samples", "generations", "scores")
_MAX_PARAM = 500


def import_mlflow():
    """mlflow, with its usage telemetry off unless the user's environment says otherwise: MLflow 3
    posts usage records to its own servers from every process that imports it, and nbeval sends
    nothing anywhere but to the tracking store it was given. Read once, when mlflow is first imported."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    return mlflow


def run_uid(out_dir: Path) -> str:
    """A run folder's identity in MLflow (tag `nbeval.run_uid`): the hash of its results.json, less
    the MLflow run id written back into it. It includes created_at and the timings, so two runs of
    the same config differ."""
    res = json.loads((Path(out_dir) / "results.json").read_text())
    res.pop("mlflow_run_id", None)
    return content_hash(res)[:32]


def record_run_id(out_dir: Path, run_id: str) -> None:
    """Write the MLflow run id into the folder's results.json (the run's and `nbeval sync`'s one way)."""
    path = Path(out_dir) / "results.json"
    res = json.loads(path.read_text())
    if res.get("mlflow_run_id") != run_id:
        write_json(path, {**res, "mlflow_run_id": run_id})


def read_pending(folder: Path) -> dict | None:
    path = Path(folder) / PENDING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_pending(folder: Path, record: dict) -> Path:
    """Write the marker atomically (a reader never sees half a file)."""
    path = Path(folder) / PENDING_FILE
    tmp = path.with_name(PENDING_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def folder_lock(folder: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on a run folder while it is uploaded (flock on the folder itself), so a
    `nbeval sync` never uploads a folder that its own run is still uploading. Yields False when
    `wait` is False and another process holds it."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip()[:2000]}"


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested config → {"a.b.c": "value"}, values cut to MLflow's param length (full config is logged as a file)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if not isinstance(v, str) else v
            out[key] = out[key][:_MAX_PARAM]
    return out


def metric_items(suite: str, metrics: dict[str, dict]) -> dict[str, float]:
    """`<suite>/<metric>` plus `_ci_low` / `_ci_high` companions; NaNs are left out."""
    out: dict[str, float] = {}
    for name, m in metrics.items():
        for suffix, field in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
            v = m[field]
            if v == v:  # not NaN
                out[f"{suite}/{name}{suffix}"] = float(v)
    return out


class TrackingProcess:
    """nbeval/tracking_process.py as a child process, from the run's side: it imports MLflow from the
    start, then logs the run folder it is handed (its protocol: that module's docstring)."""

    def __init__(self, settings: dict) -> None:
        # its own session: a Ctrl-C meant for the run does not print the child's traceback; the run's
        # `close` stops it, and a run that is killed outright leaves it to finish the upload it was given
        self._proc = subprocess.Popen([sys.executable, "-m", "nbeval.tracking_process", json.dumps(settings)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)

    def log_or_keep(self, out_dir: Path, parent_run_id: str | None, tags: dict) -> tuple[bool, str | None]:
        """(answered, the MLflow run id or None when the run was kept for `nbeval sync`). Not
        answered: the process is gone, the caller logs the folder itself."""
        request = {"out_dir": str(Path(out_dir).resolve()), "parent_run_id": parent_run_id, "tags": tags}
        try:
            out, _ = self._proc.communicate(json.dumps(request) + "\n")
            answer = json.loads(out.strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):  # a broken pipe, no answer line
            self._proc.wait()
            log.warning("the MLflow tracking process ended without an answer (exit code %s); logging from the run's own process", self._proc.returncode)
            return False, None
        for level, name, message in answer["records"]:
            logging.getLogger(name).log(level, "%s", message)
        return True, answer["run_id"]

    def close(self) -> None:
        """Stop it when it was never asked (the run failed or was interrupted)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


class NullTracker:
    """`tracking=none`: results stay in the run folder only."""

    active = False

    def ready_in_background(self) -> contextlib.nullcontext:
        return contextlib.nullcontext(self)

    def target(self) -> str:
        return "none (tracking=none)"

    def log_or_keep(self, res: dict, out_dir: Path, parent_run_id: str | None = None, tags: dict | None = None) -> None:
        return None


class MLflowTracker:
    """Where runs are logged. `http_retries` / `http_timeout` bound one upload to an MLflow server
    (MLflow's own defaults retry for minutes; MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT in the
    environment win), and a server that does not answer a small query within `check_timeout` seconds
    fails the upload at once."""

    def __init__(self, uri: str | None = None, experiment: str = "nbeval", http_retries: int = 2, http_timeout: int = 60, check_timeout: float = 10.0) -> None:
        self.uri, self.experiment = uri, experiment
        self.http_retries, self.http_timeout, self.check_timeout = http_retries, http_timeout, check_timeout
        self._experiment_id: str | None = None
        self._process: TrackingProcess | None = None

    active = True

    def target(self) -> str:
        """The tracking URI in full (this tracker's, else MLFLOW_TRACKING_URI, else MLflow's default),
        a relative SQLite path made absolute: a later `nbeval sync` may run in another folder."""
        uri = self.uri or os.environ.get("MLFLOW_TRACKING_URI") or import_mlflow().get_tracking_uri()
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and ":memory:" not in uri:
            uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
        return uri

    def check(self) -> None:
        """Raise ConnectionError when an HTTP tracking server does not answer a small query of its
        store within `check_timeout` (refused, timed out, 5xx): a server whose database is down
        accepts connections and then hangs, and MLflow's client would wait out every retry. TLS
        errors are left to MLflow's client (it may be configured with its own CA)."""
        uri = self.target()
        if not uri.startswith(("http://", "https://")):
            return
        url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{urllib.parse.urlencode({'experiment_name': self.experiment})}"
        try:
            with urllib.request.urlopen(url, timeout=self.check_timeout) as r:
                status = r.status
        except urllib.error.HTTPError as e:  # 404: no such experiment yet, 401/403: credentials — it answers
            status = e.code
        except urllib.error.URLError as e:
            if isinstance(e.reason, ssl.SSLError):
                return
            raise ConnectionError(f"MLflow tracking server {uri} is not reachable: {e.reason}") from e
        except (OSError, ValueError) as e:  # timed out reading, bad URL
            raise ConnectionError(f"MLflow tracking server {uri} did not answer within {self.check_timeout} s: {e}") from e
        if status >= 500:
            raise ConnectionError(f"MLflow tracking server {uri} answered {status}")

    def preload(self) -> None:
        """Import what logging a run needs — MLflow, the store module for this URI — without opening
        the store (a store that is down fails the upload, not this)."""
        import_mlflow()
        import mlflow.tracking.context.registry  # noqa: F401 — log_run's tags
        import pyarrow.parquet  # noqa: F401 — the suites' tables

        remote = self.target().startswith(("http://", "https://"))
        importlib.import_module("mlflow.store.tracking." + ("rest_store" if remote else "sqlalchemy_store"))

    @contextlib.contextmanager
    def ready_in_background(self) -> Iterator[MLflowTracker]:
        """Within: `log_or_keep` hands the run folder to a process started on entry, which has imported
        MLflow meanwhile (nbeval.tracking_process); the caller's process never imports it."""
        process = TrackingProcess({"uri": self.uri, "experiment": self.experiment, "http_retries": self.http_retries,
                                   "http_timeout": self.http_timeout, "check_timeout": self.check_timeout})
        self._process = process
        try:
            yield self
        finally:
            self._process = None
            process.close()

    @contextlib.contextmanager
    def _mlflow(self):
        """mlflow, pointed at this tracker's store and experiment, under one attempt's HTTP limits."""
        mlflow = import_mlflow()

        limits = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.http_retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.http_timeout)}
        added = {k: v for k, v in limits.items() if k not in os.environ}
        os.environ.update(added)
        try:
            self.check()
            mlflow.set_tracking_uri(self.target())
            self._experiment_id = mlflow.set_experiment(self.experiment).experiment_id
            yield mlflow
        finally:
            for k in added:
                os.environ.pop(k, None)

    def start_parent(self, name: str, tags: dict[str, str]) -> str:
        with self._mlflow() as mlflow:
            run = mlflow.start_run(run_name=name, tags={"nbeval.kind": "multirun", **tags})
            mlflow.end_run("RUNNING")
            return run.info.run_id

    def end_parent(self, run_id: str) -> None:
        with self._mlflow() as mlflow:
            mlflow.MlflowClient().set_terminated(run_id, "FINISHED")

    def keep_pending(self, folder: Path, error: BaseException | str, **fields) -> Path:
        """Mark a folder for `nbeval sync`: what to upload where (this tracker's store), and why not yet."""
        return write_pending(folder, {"uri": self.target(), "experiment": self.experiment, "since": _now(),
                                      "error": error if isinstance(error, str) else error_text(error), **fields})

    def find_logged(self, out_dir: Path) -> str | None:
        """The run already logged from this folder (tag nbeval.run_uid, status FINISHED), if any.
        Half-logged ones (an upload that died: RUNNING or FAILED) are deleted with their nested runs."""
        uid = run_uid(out_dir)
        with self._mlflow() as mlflow:
            client, done = mlflow.MlflowClient(), None
            for run in client.search_runs([self._experiment_id], f"tags.`nbeval.run_uid` = '{uid}'"):
                if run.info.status == "FINISHED" and done is None:
                    done = run.info.run_id
                    continue
                for child in client.search_runs([self._experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"):
                    client.delete_run(child.info.run_id)
                client.delete_run(run.info.run_id)
                log.warning("deleted the half-logged MLflow run %s of %s (status %s); it is logged anew", run.info.run_id, out_dir, run.info.status)
            return done

    def log_run(self, res: dict, out_dir: Path, parent_run_id: str | None = None, tags: dict | None = None) -> str:
        """Log a finished run folder; returns the MLflow run id; raises when the store fails (see
        `log_or_keep`). Everything comes from the folder — `res` is its results.json, the tables are
        its Parquet files — so `nbeval sync` logs a folder later exactly like this. A folder already
        logged is not logged again. The run starts at the results' `created_at`, so a run uploaded
        late sits where it ran in time."""
        from mlflow.tracking.context.registry import resolve_tags
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        out_dir = Path(out_dir)
        if done := self.find_logged(out_dir):
            log.info("%s is already in MLflow: run %s", out_dir, done)
            return done
        suites = list(res["suites"])
        run_tags = {
            "nbeval.kind": "run",
            "nbeval.model": res["model"]["name"],
            "nbeval.model_fingerprint": res["model"]["fingerprint"],
            "nbeval.models": ",".join(m["name"] for m in res["models"]),
            "nbeval.suites": ",".join(suites),
            "nbeval.git_sha": res["git_sha"] or "unknown",
            "nbeval.n": str(res["n"]),
            "nbeval.seed": str(res["seed"]),
            **{f"nbeval.suite.{s}.version": r["version"] for s, r in res["suites"].items()},
            **{f"nbeval.suite.{s}.samples_fingerprint": r["samples_fingerprint"] for s, r in res["suites"].items()},
            **{f"nbeval.scorer.{role}": json.dumps(card, sort_keys=True)[:5000] for role, card in res["scorers"].items()},
            **(tags or {}),
        }
        name = f"{res['model']['name']} · {'+'.join(suites)}"
        own = {"nbeval.run_uid": run_uid(out_dir), "nbeval.run_folder": str(out_dir.resolve()), MLFLOW_RUN_NAME: name}
        if parent_run_id:
            own[MLFLOW_PARENT_RUN_ID] = parent_run_id
        start = int(dt.datetime.fromisoformat(res["created_at"]).timestamp() * 1000) if res.get("created_at") else None
        t0 = time.perf_counter()
        with self._mlflow() as mlflow:
            created = mlflow.MlflowClient().create_run(self._experiment_id, start_time=start, tags=resolve_tags({**run_tags, **own}), run_name=name)
            with mlflow.start_run(run_id=created.info.run_id) as run:  # FINISHED when this block ends, after everything
                mlflow.log_params(flatten(res["config"]))
                mlflow.log_dict(res["config"], "config.json")
                for role, card in res["scorers"].items():  # metric cards: weights, preprocessing, exact definitions
                    mlflow.log_dict(card, f"scorers/{role}.json")
                all_metrics: dict[str, float] = {}
                for s, r in res["suites"].items():
                    all_metrics.update(metric_items(s, r["metrics"]))
                    all_metrics[f"{s}/n_failed_generations"] = r["n_failed_generations"]
                    all_metrics[f"{s}/n_failed_scores"] = r["n_failed_scores"]
                _log_metrics(mlflow, all_metrics)
                mlflow.log_artifact(str(out_dir / "results.json"))
                mlflow.log_artifact(str(out_dir / "summary.md"))
                for s, rec in res["suites"].items():
                    self._log_suite(mlflow, s, rec, out_dir, run_tags)
        log.info("logged MLflow run %s in %.1f s", run.info.run_id, time.perf_counter() - t0)
        return run.info.run_id

    def log_or_keep(self, res: dict, out_dir: Path, parent_run_id: str | None = None, tags: dict | None = None) -> str | None:
        """`log_run` and the run id recorded in results.json, or — when the store cannot be reached or
        fails during the upload — keep the run for `nbeval sync`: the folder keeps its PENDING_SYNC
        marker (with the error), a warning says so, and None is returned. Never raises for the store:
        the evaluation succeeded and all of it is in the folder."""
        out_dir = Path(out_dir)
        if self._process is not None:
            process, self._process = self._process, None
            answered, run_id = process.log_or_keep(out_dir, parent_run_id, dict(tags or {}))
            if answered:
                return run_id
        fields = {"kind": "run", "parent_run_id": parent_run_id, "tags": dict(tags or {})}
        with folder_lock(out_dir):
            self.keep_pending(out_dir, "the upload did not finish (the process ended during it)", **fields)
            try:
                run_id = self.log_run(res, out_dir, parent_run_id, tags)
            except Exception as e:  # noqa: BLE001 — any failure of the store: the results are safe in the folder
                self.keep_pending(out_dir, e, **fields)
                log.warning("MLflow tracking at %s failed (%s): the run is kept in %s (marker %s); upload it later with: nbeval sync %s",
                            self.target(), error_text(e)[:300], out_dir, PENDING_FILE, out_dir)
                log.debug("the tracking failure", exc_info=True)
                return None
            record_run_id(out_dir, run_id)
            (out_dir / PENDING_FILE).unlink(missing_ok=True)
        return run_id

    def log_scorer_card(self, card: dict, files: list[Path]) -> str | None:
        """A scorer card (nbeval.scorer_card) as a run of the experiment `<experiment>-scorer-cards`,
        tagged with the scorer's role and fingerprint; a store that is down is a warning, not a failure."""
        try:
            with self._mlflow() as mlflow:
                mlflow.set_experiment(f"{self.experiment}-scorer-cards")
                tags = {"nbeval.kind": "scorer_card", "nbeval.scorer_role": card["role"], "nbeval.scorer_fingerprint": card["fingerprint"]}
                with mlflow.start_run(run_name=f"{card['role']} {card['fingerprint']}", tags=tags) as run:
                    mlflow.log_params({"role": card["role"], "suite": card["suite"], "metric": card["metric"], "n": card["n"], "seed": card["seed"]})
                    _log_metrics(mlflow, {f"{r['model']}{'' if r['severity'] is None else '_' + str(r['severity'])}/{card['metric']}{suffix}": r[field]
                                          for r in card["rows"] if r["value"] is not None
                                          for suffix, field in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high"))})
                    for f in files:
                        mlflow.log_artifact(str(f))
                    return run.info.run_id
        except Exception as e:  # noqa: BLE001 — the card is in its files either way
            log.warning("MLflow tracking at %s failed (%s): the scorer card is only in %s", self.target(), error_text(e)[:300], files[0].parent)
            return None

    def finish_multirun(self, record: dict, sweep: Path) -> str:
        """What a multirun's parent run missed while the store was down: create it (once: tag
        nbeval.run_uid), nest under it the jobs that were logged without it, leave its id in the sweep
        folder for the jobs still pending, and mark it FINISHED. Returns its run id."""
        with self._mlflow() as mlflow:
            client, run_id = mlflow.MlflowClient(), record.get("parent_run_id")
            if not run_id:
                found = client.search_runs([self._experiment_id], f"tags.`nbeval.run_uid` = '{record['uid']}'")
                run_id = found[0].info.run_id if found else self.start_parent(record["name"], {**record["tags"], "nbeval.run_uid": record["uid"]})
                (Path(sweep) / PARENT_RUN_FILE).write_text(run_id)
                sweep_dir = record["tags"].get("nbeval.sweep_dir", "")
                for r in client.search_runs([self._experiment_id], f"tags.`nbeval.sweep_dir` = '{sweep_dir}'"):
                    if r.info.run_id != run_id and r.data.tags.get("nbeval.kind") != "multirun" and "mlflow.parentRunId" not in r.data.tags:
                        client.set_tag(r.info.run_id, "mlflow.parentRunId", run_id)
            client.set_terminated(run_id, "FINISHED")
        return run_id

    def _log_suite(self, mlflow, name: str, rec: dict, out_dir: Path, parent_tags: dict) -> None:
        import pandas as pd

        tags = {**parent_tags, "nbeval.kind": "suite", "nbeval.suite": name}
        tables = {t: pd.read_parquet(out_dir / path) for t, path in rec["tables"].items()}
        with mlflow.start_run(run_name=name, nested=True, tags=tags):
            mlflow.log_params({"suite": name, "suite.version": rec["version"], **flatten(rec["params"], "suite.")})
            _log_metrics(mlflow, metric_items(name, rec["metrics"]))
            mlflow.log_dict(rec, f"{name}/suite_results.json")
            table = tables["scores"].merge(tables["samples"][["sample_id", "prompt", "tags"]], on="sample_id", how="left")
            mlflow.log_table(table, artifact_file=f"{name}/scores_table.json")  # log_table appends: once per suite
            for table_name, extra in tables.items():  # the suite's own tables, e.g. the arena's battles
                if table_name not in CORE_TABLES:
                    mlflow.log_table(extra, artifact_file=f"{name}/{table_name}_table.json")
            mlflow.log_artifacts(str(out_dir / name), artifact_path=name)  # tables, sample grid, plots


def _log_metrics(mlflow, metrics: dict[str, float]) -> None:
    items = list(metrics.items())
    for i in range(0, len(items), 1000):  # SQL stores: one batch per call, ≤ 1000 per batch
        mlflow.log_metrics(dict(items[i : i + 1000]))
