"""What a run leaves in its folder: `results.json`, `summary.md`, and per suite a sample grid and plots.

results.json (schema_version 1) holds:
- `schema_version`, `nbeval_version`, `created_at` (UTC ISO 8601), `git_sha` (of the nbeval checkout,
  null when not a git checkout), `versions` (python and key packages), `config` (resolved Hydra config),
  `n`, `seed`;
- `models`: one `{name, fingerprint, settings}` per model of the run; `model`: that record when the
  run has one model, and for a contest (`model=[a,b]`, e.g. the arena) `name` "a vs b", a
  `fingerprint` of theirs and `settings` by model name; `scorers`: role → card (class, weights
  checksums, preprocessing) and `fingerprint`;
- `suites`: name → `version`, `params`, `samples_fingerprint` (hash of the sample keys: equal means the
  same samples), `n_samples`, `n_failed_generations`, `n_failed_scores`, `cached_generations` and
  `cached_readings` (work served by the cache),
  `seconds` (stage → s), `tables` (relative paths of the Parquet tables: samples, generations,
  scores and the suite's own, e.g. the arena's battles and leaderboard), and `metrics`:
  metric → {`value`, `ci_low`, `ci_high`, `n`, `method` ("wilson" | "bootstrap"), `higher_is_better`
  (true, false, or null when closer to zero is better)}.
- `shard` (only in a shard of a sharded run, `suite.shard=i/k`): `index`, `count`, `spec` ("i/k") and
  `tags` (the run's MLflow tags, for the merged run); its suites hold block i of k of the samples;
- `merged_from` (only in a run made by `nbeval merge`): one `{shard, run_dir, mlflow_run_id, git_sha,
  created_at}` per shard; `seconds` and `cached_readings` are then sums over the shards.
Metric names follow MLflow's: `<suite>/<metric>` there, `suites.<suite>.metrics.<metric>` here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from nbeval.cache import Cache
from nbeval.records import content_hash
from nbeval.runner import SuiteResult, write_tables
from nbeval.suite import ContestSuite

SCHEMA_VERSION = 1
log = logging.getLogger(__name__)
_PACKAGES = ("nbeval", "torch", "easyocr", "open_clip_torch", "transformers", "numpy", "pandas", "pillow", "hydra-core", "mlflow", "scipy")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_sha() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def suite_record(r: SuiteResult, out_dir: Path) -> dict:
    d = write_tables(r, out_dir)
    return {
        "version": r.suite.version,
        "params": r.suite.params(),
        "samples_fingerprint": content_hash(sorted(r.samples["sample_key"])),
        "n_samples": len(r.samples),
        "n_failed_generations": r.n_failed_generations,
        "n_failed_scores": r.n_failed_scores,
        "cached_generations": int(r.generations["cached"].sum()),
        "cached_readings": r.cached_readings,
        "seconds": {k: round(v, 3) for k, v in r.seconds.items()},
        "tables": {t: str((d / f"{t}.parquet").relative_to(out_dir)) for t in ("samples", "generations", "scores", *r.tables)},
        "metrics": {
            name: {**est.to_dict(), "higher_is_better": spec.higher_is_better if (spec := r.suite.spec(name)) else None}
            for name, est in r.metrics.items()
        },
    }


def sample_grid(r: SuiteResult, cache: Cache, k: int = 16, tile: int = 160) -> Image.Image:
    """Up to `k` generations in a square grid, each captioned with its sample id and headline value."""
    ok = r.generations[r.generations["image_sha256"].notna()].head(k)
    headline = r.suite.headline[0] if r.suite.headline else None
    values = {}
    if headline is not None and len(r.scores):
        sel = r.scores[r.scores["metric"] == headline]
        values = dict(zip(sel["sample_id"], sel["value"]))
    cols = max(1, min(4, len(ok)))
    rows = max(1, -(-len(ok) // cols))
    grid = Image.new("RGB", (cols * tile, rows * (tile + 14)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, (sid, sha) in enumerate(zip(ok["sample_id"], ok["image_sha256"])):
        x, y = (i % cols) * tile, (i // cols) * (tile + 14)
        grid.paste(cache.get_image(sha).resize((tile - 4, tile - 4)), (x + 2, y + 2))
        draw.rectangle((x + 1, y + 1, x + tile - 2, y + tile - 2), outline=(190, 190, 190))
        v = values.get(sid)
        caption = sid.split("-", 1)[-1] + (f"  {headline}={v:.2f}" if v is not None else "")
        draw.text((x + 3, y + tile), caption, fill="black", font=font)
    return grid


def build_results(cfg: dict, models: list, scorers: dict, results: list[SuiteResult], out_dir: Path) -> dict:
    from nbeval import __version__

    records = [{"name": m.name, "fingerprint": m.fingerprint, "settings": m.settings()} for m in models]
    model = records[0] if len(records) == 1 else {
        "name": " vs ".join(r["name"] for r in records),
        "fingerprint": content_hash([r["fingerprint"] for r in records])[:16],
        "settings": {r["name"]: r["settings"] for r in records},
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "nbeval_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "versions": package_versions(),
        "config": cfg,
        "n": cfg.get("n"),
        "seed": cfg.get("seed"),
        "model": model,
        "models": records,
        "scorers": {role: {**s.card(), "fingerprint": s.fingerprint} for role, s in scorers.items()},
        "suites": {r.suite.name: suite_record(r, out_dir) for r in results},
    }


def _fmt(m: dict) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def _summary_metrics(suite, metrics: dict) -> list[str]:
    """Each of the suite's metrics overall; a headline metric that exists only per group (the
    arena's `rating/<model>`) with every group, since it has no overall value to show."""
    out = []
    for spec in suite.metrics:
        if spec.name in metrics:
            out.append(spec.name)
        elif spec.name in suite.headline:
            out += [k for k in metrics if k.startswith(spec.name + "/")]
    return out


def summary_markdown(res: dict, suites: dict) -> str:
    """A short human-readable summary: headline metrics with CIs, then failures and timing."""
    lines = [f"# nbeval: {res['model']['name']} (n={res['n']}, seed={res['seed']})", ""]
    lines += ["| suite | metric | value [95% CI] | n |", "|---|---|---|---|"]
    for name, rec in res["suites"].items():
        suite = suites[name]
        for metric in _summary_metrics(suite, rec["metrics"]):
            m = rec["metrics"][metric]
            star = " **" if metric.split("/")[0] in suite.headline else " "
            lines.append(f"| {name} |{star}{metric}{star.strip()} | {_fmt(m)} | {m['n']} |")
    lines.append("")
    for name, rec in res["suites"].items():
        lines.append(
            f"- {name}: {rec['n_samples']} samples, {rec['n_failed_generations']} failed generations, "
            f"{rec['n_failed_scores']} failed scores, {rec['cached_generations']} generations and "
            f"{rec['cached_readings']} scorer readings from cache, "
            f"{rec['seconds']['total']:.1f} s"
        )
    return "\n".join(lines) + "\n"


def write_run(res: dict, results: list[SuiteResult], cache: Cache, out_dir: Path) -> None:
    """results.json and summary.md first (the results are safe), then per suite its sample grid and
    plots as PNG; a figure that fails is logged and skipped, never the run."""
    from nbeval.plots import plt

    (out_dir / "results.json").write_text(json.dumps(res, indent=2, default=str))
    (out_dir / "summary.md").write_text(summary_markdown(res, {r.suite.name: r.suite for r in results}))
    for r in results:
        d = out_dir / r.suite.name
        (d / "plots").mkdir(exist_ok=True)
        valid = r.scores[r.scores["error"].isna()]
        try:
            sample_grid(r, cache).save(d / "sample_grid.png")
            figures = r.suite.plots(valid, r.samples) if len(valid) else {}
            if isinstance(r.suite, ContestSuite):
                figures |= r.suite.contest_plots(r)
            galleries = r.suite.galleries(valid, r.samples, r.generations, cache.get_image) if len(valid) else {}
        except Exception:  # noqa: BLE001 — a plotting bug must not lose a finished evaluation
            log.exception("%s: could not draw its figures", r.suite.name)
            continue
        for name, fig in figures.items():
            fig.savefig(d / "plots" / f"{name}.png", dpi=100)
            plt.close(fig)
        for name, img in galleries.items():
            img.save(d / "plots" / f"{name}.png")
