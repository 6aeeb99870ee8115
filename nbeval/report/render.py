"""The report as files: index.html (self-contained: every image and plot embedded) and summary.md,
from the Jinja2 templates in `reports/` (installed as `nbeval.reports`)."""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from PIL import Image

from nbeval.cache import Cache
from nbeval.plots import figure_data_uri, png_data_uri
from nbeval.report.compare import IMPROVED, REGRESSED, SuiteComparison
from nbeval.report.load import RUN_FILTER, RunData

GALLERY_PER_DIRECTION = 8


def _image_uri(cache: Cache, sha: str | None, side: int = 160) -> str | None:
    if not isinstance(sha, str):
        return None
    try:
        img = cache.get_image(sha)
    except (FileNotFoundError, OSError):
        return None
    img = img.convert("RGB").resize((side, side), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return png_data_uri(buf.getvalue())


@dataclass
class Flip:
    sample_id: str
    prompt: str
    baseline_image: str | None
    tonight_image: str | None
    baseline_read: str
    tonight_read: str


def _flip(sample_id: str, metric: str, tonight, baseline, t_cache: Cache, b_cache: Cache) -> Flip:
    """Both runs' image of the sample's last scored turn, and what the scorer read there."""
    def side(suite, cache):
        rows = suite.scores[(suite.scores["sample_id"] == sample_id) & (suite.scores["metric"] == metric)]
        turn = int(rows["turn"].max()) if len(rows) else 0
        gen = suite.generations[(suite.generations["sample_id"] == sample_id) & (suite.generations["turn"] == turn)]
        detail = rows.loc[rows["turn"] == turn, "detail"].iloc[0] if len(rows) else ""
        return _image_uri(cache, gen["image_sha256"].iloc[0] if len(gen) else None), detail or ""

    prompt = tonight.samples.set_index("sample_id").at[sample_id, "prompt"]
    (b_img, b_read), (t_img, t_read) = side(baseline, b_cache), side(tonight, t_cache)
    return Flip(sample_id, prompt, b_img, t_img, b_read, t_read)


def flip_galleries(comparisons: list[SuiteComparison], tonight: RunData, baseline: RunData) -> dict[str, list[dict]]:
    """suite → [{metric, direction, flips}] for every binary check with samples that flipped."""
    t_cache, b_cache = Cache(tonight.results["config"]["cache_dir"]), Cache(baseline.results["config"]["cache_dir"])
    out: dict[str, list[dict]] = {}
    for sc in comparisons:
        for m in sc.metrics:
            for direction, ids in m.flips.items():
                if ids:
                    flips = [_flip(s, m.metric, tonight.suites[sc.suite], baseline.suites[sc.suite], t_cache, b_cache) for s in ids[:GALLERY_PER_DIRECTION]]
                    out.setdefault(sc.suite, []).append({"metric": m.metric, "direction": direction.replace("_to_", " → "), "total": len(ids), "flips": flips})
    return out


def history_plots(client, exp_ids: list[str], tonight: RunData, comparisons: list[SuiteComparison], last_n: int) -> dict[str, str]:
    """suite → plot of its paired metrics over the last `last_n` runs of the same model (and preset)
    up to tonight, each with its 95% CI band."""
    from nbeval.plots import plt

    model = tonight.tags.get("nbeval.model", "")
    preset = tonight.tags.get("nbeval.config")
    filt = f"{RUN_FILTER} and tags.nbeval.model = '{model}' and attributes.start_time <= {tonight.start_time}"
    if preset:
        filt += f" and tags.nbeval.config = '{preset}'"
    runs = client.search_runs(exp_ids, filt, max_results=last_n, order_by=["attributes.start_time DESC"])[::-1]
    out = {}
    for sc in comparisons:
        metrics = [m.metric for m in sc.metrics if m.paired][:6]
        if not metrics or len(runs) < 2:
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 2.6), squeeze=False)
        when = [dt.datetime.fromtimestamp(r.info.start_time / 1000, dt.timezone.utc) for r in runs]
        for ax, metric in zip(axes[0], metrics):
            key = f"{sc.suite}/{metric}"
            vals = [r.data.metrics.get(key) for r in runs]
            lo = [r.data.metrics.get(key + "_ci_low", v) for r, v in zip(runs, vals)]
            hi = [r.data.metrics.get(key + "_ci_high", v) for r, v in zip(runs, vals)]
            x = list(range(len(runs)))
            ax.fill_between(x, [v if v is not None else float("nan") for v in lo], [v if v is not None else float("nan") for v in hi], alpha=0.25, color="#4c72b0")
            ax.plot(x, [v if v is not None else float("nan") for v in vals], "o-", color="#4c72b0", ms=3)
            ax.set_title(metric, fontsize=9)
            ax.set_xticks(x[:: max(1, len(x) // 4)], [when[i].strftime("%m-%d %H:%M") for i in x[:: max(1, len(x) // 4)]], fontsize=7, rotation=20)
        fig.suptitle(f"{sc.suite}: last {len(runs)} runs of {model}", fontsize=10)
        fig.tight_layout()
        out[sc.suite] = figure_data_uri(fig)
    return out


def _fmt(v) -> str:
    return "—" if v is None or v != v else f"{v:.3f}"


def _environment(html: bool):
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(str(files("nbeval.reports"))), autoescape=html, trim_blocks=True, lstrip_blocks=True)
    env.filters["f3"] = _fmt
    env.filters["verdict"] = lambda v: VERDICT_MARK.get(v, v)
    return env


def write_report(out: Path, context: dict) -> tuple[Path, Path]:
    """index.html and summary.md in `out` from the templates."""
    out.mkdir(parents=True, exist_ok=True)
    html, md = out / "index.html", out / "summary.md"
    html.write_text(_environment(html=True).get_template("report.html.j2").render(**context))
    md.write_text(_environment(html=False).get_template("summary.md.j2").render(**context))
    return html, md


def suite_plots(run: RunData) -> dict[str, dict[str, str]]:
    """suite → plot name → data URI: the plots the suites drew for tonight's run (drift curves,
    count confusion matrix, CER by length, arena ratings …)."""
    return {name: {p: png_data_uri(path.read_bytes()) for p, path in s.plots.items()} for name, s in run.suites.items()}


VERDICT_MARK = {REGRESSED: "▼ regressed", IMPROVED: "▲ improved"}
