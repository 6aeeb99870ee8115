"""MLflow tracking: one run per (model, suite set), a nested run per suite, under a multirun parent.

Everything is logged from the finished run folder, after the work: tracking never slows or breaks
the evaluation itself. Tracking goes where MLFLOW_TRACKING_URI points (default sqlite:///mlflow.db).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from nbeval.runner import SuiteResult

log = logging.getLogger(__name__)
PARENT_RUN_FILE = "mlflow_parent_run_id"
_MAX_PARAM = 500


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


class MLflowTracker:
    def __init__(self, uri: str | None = None, experiment: str = "nbeval") -> None:
        self.uri, self.experiment = uri, experiment

    def _client(self):
        import mlflow

        if self.uri:
            mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(self.experiment)
        return mlflow

    def start_parent(self, name: str, tags: dict[str, str]) -> str:
        mlflow = self._client()
        run = mlflow.start_run(run_name=name, tags={"nbeval.kind": "multirun", **tags})
        mlflow.end_run("RUNNING")
        return run.info.run_id

    def end_parent(self, run_id: str) -> None:
        mlflow = self._client()
        mlflow.MlflowClient().set_terminated(run_id, "FINISHED")

    def log_run(self, res: dict, results: list[SuiteResult], out_dir: Path, parent_run_id: str | None = None, tags: dict | None = None) -> str:
        """Log a finished run folder; returns the MLflow run id."""
        mlflow = self._client()
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
        t0 = time.perf_counter()
        with mlflow.start_run(run_name=f"{res['model']['name']} · {'+'.join(suites)}", parent_run_id=parent_run_id, tags=run_tags) as run:
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
            for r in results:
                self._log_suite(mlflow, r, res["suites"][r.suite.name], out_dir, run_tags)
        log.info("logged MLflow run %s in %.1f s", run.info.run_id, time.perf_counter() - t0)
        return run.info.run_id

    def _log_suite(self, mlflow, r: SuiteResult, rec: dict, out_dir: Path, parent_tags: dict) -> None:
        name = r.suite.name
        tags = {**parent_tags, "nbeval.kind": "suite", "nbeval.suite": name}
        with mlflow.start_run(run_name=name, nested=True, tags=tags):
            mlflow.log_params({"suite": name, "suite.version": rec["version"], **flatten(rec["params"], "suite.")})
            _log_metrics(mlflow, metric_items(name, rec["metrics"]))
            mlflow.log_dict(rec, f"{name}/suite_results.json")
            table = r.scores.merge(r.samples[["sample_id", "prompt", "tags"]], on="sample_id", how="left")
            mlflow.log_table(table, artifact_file=f"{name}/scores_table.json")  # log_table appends: once per suite
            for table_name, extra in r.tables.items():  # the suite's own tables, e.g. the arena's battles
                mlflow.log_table(extra, artifact_file=f"{name}/{table_name}_table.json")
            mlflow.log_artifacts(str(out_dir / name), artifact_path=name)  # tables, sample grid, plots


def _log_metrics(mlflow, metrics: dict[str, float]) -> None:
    items = list(metrics.items())
    for i in range(0, len(items), 1000):  # SQL stores: one batch per call, ≤ 1000 per batch
        mlflow.log_metrics(dict(items[i : i + 1000]))
