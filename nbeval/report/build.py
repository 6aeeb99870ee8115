"""`nbeval report`: load tonight's run and its baseline from MLflow, compare, render, check in a
browser, log everything to tonight's run, and return the exit code CI gates on:
0 no significant regression, 1 a significant regression, 2 the report could not compare the runs."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from nbeval.report.compare import REGRESSED, compare, family_size, incompatibilities
from nbeval.report.load import ReportError, experiment_ids, load_run, resolve_baseline, resolve_run
from nbeval.report.render import flip_galleries, history_plots, suite_plots, write_report

log = logging.getLogger(__name__)
STATUS_TEXT = {
    0: "No significant regression.",
    1: "Significant regression: see the suites marked regressed.",
    2: "The report could not compare the runs: see below.",
}


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def build_report(run: str, baseline: str, out_root: Path, tracking_uri: str, experiment: str = "nbeval",
                 alpha: float = 0.05, history: int = 30, screenshot: str = "auto") -> tuple[int, Path | None]:
    """Returns (exit code, report folder). `screenshot`: true | false | auto (when chromium is here)."""
    from nbeval.report.browser import chromium_path, render_check
    from nbeval.tracking import import_mlflow

    mlflow = import_mlflow()

    client = mlflow.MlflowClient(tracking_uri)
    exp_ids = experiment_ids(client, experiment)
    tonight = load_run(client, resolve_run(client, exp_ids, run), out_root / ".downloads")
    out = out_root / tonight.run_id
    problems, base = [], None
    try:
        base = load_run(client, resolve_baseline(client, exp_ids, baseline, tonight), out_root / ".downloads")
        problems = incompatibilities(tonight, base)
    except ReportError as e:
        problems = [str(e)]
    comparisons = [] if problems else compare(tonight, base, alpha)
    status = 2 if problems else 1 if any(sc.verdict == REGRESSED for sc in comparisons) else 0
    family = family_size(tonight, base) if base and not problems else 1
    context = {
        "tonight": tonight, "baseline": base, "comparisons": comparisons, "problems": problems, "status": status,
        "status_text": STATUS_TEXT[status], "alpha": alpha, "family": family, "level": alpha / family,
        "tonight_time": _when(tonight.start_time), "baseline_time": _when(base.start_time) if base else "—",
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "history": history_plots(client, exp_ids, tonight, comparisons, history) if comparisons else {},
        "plots": suite_plots(tonight),
        "galleries": flip_galleries(comparisons, tonight, base) if comparisons else {},
        "only_tonight": sorted(set(tonight.suites) - set(base.suites)) if base else [],
        "only_baseline": sorted(set(base.suites) - set(tonight.suites)) if base else [],
    }
    html, md = write_report(out, context)
    artifacts = [html, md]
    if screenshot == "true" or (screenshot == "auto" and chromium_path()):
        shot = out / "screenshot.png"
        check = render_check(html, shot)
        if check["broken"]:
            raise ReportError(f"{check['broken']} of {check['images']} images in {html} did not load in chromium")
        artifacts.append(shot)
        log.info("report rendered in chromium: %d images, all loaded", check["images"])
    for path in artifacts:
        client.log_artifact(tonight.run_id, str(path), "report")
    client.set_tag(tonight.run_id, "nbeval.report.status", str(status))
    if base:
        client.set_tag(tonight.run_id, "nbeval.report.baseline", base.run_id)
    return status, out
