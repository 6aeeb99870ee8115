"""The nightly report on real runs of the oracle, tracked in a real MLflow database: a corruption
that damages one suite is flagged there and nowhere else (exit 1); the same model and seeds twice
is "no detectable change" (exit 0); a baseline on other samples is refused (exit 2). The HTML is
opened in Debian's chromium, its images load, and the screenshot is on the MLflow run."""

from __future__ import annotations

import json

import mlflow
import pytest
from conftest import need, run_cli

SUITES = "suite=[text_rendering,counting]"


@pytest.fixture
def nightly(tmp_path, mlflow_db, text_cache):
    """run(model, *overrides) → MLflow run id of a finished `nbeval run`; report(*args) → process. The
    runs use the session's text cache: the text is read once, whichever test needs it first."""
    env = {"MLFLOW_TRACKING_URI": mlflow_db(tmp_path / "mlflow.db")}
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])

    def run(model: str, *overrides: str, n: int = 10, suites: str = SUITES) -> str:
        out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}-{model}"
        r = run_cli(["run", f"model={model}", suites, f"n={n}", f"cache_dir={text_cache.root}", f"hydra.run.dir={out}", *overrides], tmp_path, env)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads((out / "results.json").read_text())["mlflow_run_id"]

    def cli(*args: str):
        return run_cli(list(args), tmp_path, env)

    return run, cli, client, tmp_path


@pytest.mark.slow
def test_report_flags_exactly_the_damaged_suite_and_passes_a_repeat(nightly):
    need("chromium")
    run, cli, client, tmp_path = nightly
    base = run("oracle")
    assert cli("baseline", "set", base).returncode == 0
    assert client.get_run(base).data.tags["nbeval.baseline"] == "true"

    typo = run("oracle_typo", "model.severity=2")  # damages rendered words only: counting's images are unchanged
    r = cli("report", "run=latest", "baseline=tags.nbeval.baseline='true'", f"out={tmp_path / 'reports'}")
    assert r.returncode == 1, r.stderr[-3000:]
    assert "| text_rendering | ▼ regressed | exact_match" in r.stdout
    assert "| counting | no detectable change |" in r.stdout
    html = (tmp_path / "reports" / typo / "index.html").read_text()
    assert "exact_match, pass → fail" in html  # the flip gallery, with both images of each flipped sample
    assert html.count('alt="baseline text_rendering-') > 0 and html.count('alt="tonight text_rendering-') > 0
    artifacts = {a.path for a in client.list_artifacts(typo, "report")}
    assert artifacts == {"report/index.html", "report/summary.md", "report/screenshot.png"}
    assert client.get_run(typo).data.tags["nbeval.report.status"] == "1"

    again = run("oracle")  # same model, same seeds: nothing may be flagged
    r = cli("report", f"run={again}", f"baseline={base}", f"out={tmp_path / 'reports'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("| no detectable change |") == 2 and "▼" not in r.stdout and "No significant regression." in r.stdout


@pytest.mark.slow
def test_report_refuses_a_baseline_on_other_samples(nightly):
    run, cli, client, tmp_path = nightly
    base = run("oracle", n=12, suites="suite=[counting]")  # which suite does not matter here: no OCR
    tonight = run("oracle", suites="suite=[counting]")
    r = cli("report", f"run={tonight}", f"baseline={base}", f"out={tmp_path / 'reports'}", "screenshot=false")
    assert r.returncode == 2
    assert "other samples" in r.stdout and "could not compare" in r.stdout
    assert "other samples" in (tmp_path / "reports" / tonight / "index.html").read_text()
    nothing = cli("report", f"run={tonight}", "baseline=tags.nbeval.baseline='true'", f"out={tmp_path / 'reports'}", "screenshot=false")
    assert nothing.returncode == 2 and "nbeval baseline set" in nothing.stdout
    assert cli("report", "run=nope", f"baseline={base}").returncode == 2
