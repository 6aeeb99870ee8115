"""Runs as the report needs them, read back from MLflow: results.json from the run, and each
suite's per-sample tables and plots from its nested suite run."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

RUN_FILTER = "tags.nbeval.kind = 'run'"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per suite folder is noise in a CI log


class ReportError(RuntimeError):
    """The report cannot be built (exit code 2); the message says why."""


@dataclass
class SuiteData:
    name: str
    record: dict  # results.json's suites.<name>
    samples: pd.DataFrame
    generations: pd.DataFrame
    scores: pd.DataFrame
    plots: dict[str, Path] = field(default_factory=dict)  # plot name → PNG the suite drew


@dataclass
class RunData:
    run_id: str
    start_time: int  # ms since the epoch
    tags: dict[str, str]
    results: dict
    suites: dict[str, SuiteData]

    @property
    def label(self) -> str:
        return f"{self.results['model']['name']} · {self.run_id[:8]}"


def _runs(client, experiment_ids: list[str], filter_string: str, max_results: int):
    return client.search_runs(experiment_ids, filter_string, max_results=max_results, order_by=["attributes.start_time DESC"])


def experiment_ids(client, experiment: str) -> list[str]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ReportError(f"MLflow has no experiment {experiment!r} at {client.tracking_uri}: run `nbeval run` first")
    return [exp.experiment_id]


def resolve_run(client, exp_ids: list[str], spec: str) -> str:
    """`latest` → the newest finished run; else a run id."""
    if spec == "latest":
        runs = _runs(client, exp_ids, f"{RUN_FILTER} and attributes.status = 'FINISHED'", 1)
        if not runs:
            raise ReportError("no finished nbeval run in the experiment")
        return runs[0].info.run_id
    return spec


def resolve_baseline(client, exp_ids: list[str], spec: str, tonight: RunData) -> str:
    """A run id, or an MLflow filter (e.g. tags.nbeval.baseline='true'): the newest matching run
    other than tonight's that started before it."""
    if "=" not in spec and " " not in spec:
        return spec
    try:
        runs = _runs(client, exp_ids, f"{RUN_FILTER} and {spec} and attributes.start_time <= {tonight.start_time}", 50)
    except Exception as e:  # MLflow raises its own types for a bad filter
        raise ReportError(f"baseline query {spec!r} is not a valid MLflow filter: {e}") from e
    runs = [r for r in runs if r.info.run_id != tonight.run_id]
    if not runs:
        raise ReportError(f"no run before {tonight.run_id[:8]} matches the baseline query {spec!r} (promote one: nbeval baseline set <run>)")
    return runs[0].info.run_id


def load_run(client, run_id: str, dst: Path | None = None) -> RunData:
    """The run's results.json and, per suite, its tables and plots (downloaded under `dst`)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise ReportError(f"no MLflow run {run_id!r}: {e.message}") from e
    dst = Path(dst or tempfile.mkdtemp(prefix="nbeval-report-")) / run_id
    dst.mkdir(parents=True, exist_ok=True)
    try:
        results = json.loads(Path(client.download_artifacts(run_id, "results.json", str(dst))).read_text())
    except Exception as e:  # noqa: BLE001 — any download failure means the same thing here
        raise ReportError(f"run {run_id[:8]} has no results.json artifact: is it an nbeval run? ({e})") from e
    children = {r.data.tags.get("nbeval.suite"): r for r in client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}' and tags.nbeval.kind = 'suite'")}
    suites = {}
    for name, record in results["suites"].items():
        child = children.get(name)
        if child is None:
            raise ReportError(f"run {run_id[:8]} lacks the nested run of suite {name!r}")
        folder = Path(client.download_artifacts(child.info.run_id, name, str(dst)))
        tables = {t: pd.read_parquet(folder / f"{t}.parquet") for t in ("samples", "generations", "scores")}
        plots = {p.stem: p for p in sorted((folder / "plots").glob("*.png"))} if (folder / "plots").is_dir() else {}
        suites[name] = SuiteData(name, record, plots=plots, **tables)
    return RunData(run_id, run.info.start_time, dict(run.data.tags), results, suites)
