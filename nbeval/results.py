"""What a run is (`Run`) and what it leaves in its folder: `results.json` (written once), `summary.md`,
and per suite its tables, a sample grid and plots.

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
  created_at}` per shard; `seconds` and `cached_readings` are then sums over the shards;
- `mlflow_run_id`: added once the run is in MLflow (by the run, or later by `nbeval sync`).
Tables (Parquet): samples, generations and scores carry `sample_index`, the sample's place in its
suite's `samples(n, seed)`; generations and scores are sorted by turn (whole-sample rows, turn −1,
last), then `sample_index` — in a whole run and in a merge of its shards alike.
Metric names follow MLflow's: `<suite>/<metric>` there, `suites.<suite>.metrics.<metric>` here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from nbeval.cache import Cache
from nbeval.records import content_hash
from nbeval.suite import ContestSuite, Suite, SuiteResult

SCHEMA_VERSION = 1
CARDS_FOLDER = "cards"  # under the cache_dir: one scorer card (nbeval scorer-card) per scorer fingerprint
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


@dataclass
class Run:
    """A finished evaluation, before it is written: made by `api.evaluate` (or by `nbeval merge` from
    the shards of one), written and tracked by `api.finalize`."""

    config: dict  # the resolved config, as results.json records it
    models: list[dict]  # {name, fingerprint, settings} per model
    scorers: dict[str, dict]  # role → the scorer's card with its fingerprint
    results: list[SuiteResult]
    shard: tuple[int, int] | None = None  # this run is shard i of k (`suite.shard=i/k`)
    tags: dict[str, str] = field(default_factory=dict)  # MLflow tags of the run
    merged_from: list[dict] | None = None  # the shards a merged run was made from
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    @property
    def suites(self) -> dict[str, Suite]:
        return {r.suite.name: r.suite for r in self.results}


def cards_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / CARDS_FOLDER


def find_card(cache_dir: str | Path, fingerprint: str) -> str | None:
    """The scorer card of the scorer with this fingerprint, if one was made with this cache."""
    path = cards_dir(cache_dir) / f"{fingerprint}.json"
    return str(path) if path.is_file() else None


def model_record(model) -> dict:
    return {"name": model.name, "fingerprint": model.fingerprint, "settings": model.settings()}


def write_tables(result: SuiteResult, out_dir: Path) -> Path:
    """The tables of one suite as Parquet, under `<out_dir>/<suite>/<table>.parquet`: samples,
    generations, scores and the suite's own."""
    d = out_dir / result.suite.name
    d.mkdir(parents=True, exist_ok=True)
    tables = {"samples": result.samples, "generations": result.generations, "scores": result.scores, **result.tables}
    for name, table in tables.items():
        table.to_parquet(d / f"{name}.parquet", index=False)
    return d


def suite_record(r: SuiteResult, out_dir: Path) -> dict:
    d = write_tables(r, out_dir)
    return {
        "version": r.suite.version,
        "params": r.suite.params(),
        "samples_fingerprint": content_hash(sorted(r.samples["sample_key"])),
        "n_samples": len(r.samples),
        "n_failed_generations": r.n_failed_generations,
        "n_failed_scores": r.n_failed_scores,
        "failure_reasons": r.failure_reasons,
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


def build_results(run: Run, out_dir: Path) -> dict:
    """results.json's content; writes each suite's tables on the way (their paths are in it)."""
    from nbeval import __version__

    records = run.models
    model = records[0] if len(records) == 1 else {
        "name": " vs ".join(r["name"] for r in records),
        "fingerprint": content_hash([r["fingerprint"] for r in records])[:16],
        "settings": {r["name"]: r["settings"] for r in records},
    }
    res = {
        "schema_version": SCHEMA_VERSION,
        "nbeval_version": __version__,
        "created_at": run.created_at,
        "git_sha": git_sha(),
        "versions": package_versions(),
        "config": run.config,
        "n": run.config.get("n"),
        "seed": run.config.get("seed"),
        "model": model,
        "models": records,
        "scorers": run.scorers,
        "suites": {r.suite.name: suite_record(r, out_dir) for r in run.results},
    }
    if run.shard:  # a part of a run: `nbeval merge` assembles the parts (and reuses the run's tags for the whole)
        res["shard"] = {"index": run.shard[0], "count": run.shard[1], "spec": f"{run.shard[0]}/{run.shard[1]}", "tags": dict(run.tags)}
    if run.merged_from is not None:
        res["merged_from"] = run.merged_from
    return res


def write_json(path: Path, obj: dict) -> None:
    """Atomically: a reader (or a run killed mid-write) never sees half a results.json."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


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


def _reasons(reasons: dict | None) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in reasons.items())})" if reasons else ""


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
    unvalidated = [role for role, card in res["scorers"].items() if not card.get("scorer_card")]
    if unvalidated:
        lines.append(f"- unvalidated scorers: {', '.join(unvalidated)} (no scorer card for their fingerprints; make one with "
                     "`nbeval scorer-card` and this run's scorer list)")
    for role, card in res["scorers"].items():
        if card.get("scorer_card"):
            lines.append(f"- scorer {role}: card {card['scorer_card']}")
    for name, rec in res["suites"].items():
        lines.append(
            f"- {name}: {rec['n_samples']} samples, {rec['n_failed_generations']} failed generations, "
            f"{rec['n_failed_scores']} failed scores{_reasons(rec.get('failure_reasons'))}, {rec['cached_generations']} generations and "
            f"{rec['cached_readings']} scorer readings from cache, "
            f"{rec['seconds']['total']:.1f} s"
        )
    return "\n".join(lines) + "\n"


def figures_key(r: SuiteResult) -> str | None:
    """What a suite's figures are drawn from: its tables and metrics, the suite (class, version,
    params, the code `code_fingerprint` covers), the drawing code here and in nbeval.plots, and the
    versions of matplotlib and Pillow that encode them. None for a contest suite (its figures read
    the whole result) or tables pandas cannot hash: those are always drawn."""
    from nbeval.runner import code_fingerprint, frame_hash

    if isinstance(r.suite, ContestSuite):
        return None
    try:
        return content_hash({
            "suite": f"{type(r.suite).__module__}.{type(r.suite).__qualname__}", "name": r.suite.name, "version": r.suite.version,
            "params": r.suite.params(), "code": code_fingerprint(type(r.suite)),
            "drawing": {m: (Path(__file__).parent / f"{m}.py").read_text() for m in ("results", "plots")},
            "versions": {p: metadata.version(p) for p in ("matplotlib", "pillow")},
            # not `cached`: how this run got an image, not what it is (no figure draws it), so a warm run's key is its cold run's
            "tables": [frame_hash(t) for t in (r.samples, r.generations.drop(columns="cached"), r.scores)],
            "metrics": {name: est.to_dict() for name, est in r.metrics.items()},
        })
    except TypeError:
        return None


def write_run(res: dict, results: list[SuiteResult], cache: Cache, out_dir: Path) -> None:
    """results.json and summary.md first (the results are safe), then per suite its sample grid and
    plots as PNG: from the cache when the same figures were drawn from the same tables and metrics
    (`figures_key`), else drawn and kept there; a figure that fails is logged and skipped, never the run."""
    write_json(out_dir / "results.json", res)
    (out_dir / "summary.md").write_text(summary_markdown(res, {r.suite.name: r.suite for r in results}))
    for r in results:
        d = out_dir / r.suite.name
        (d / "plots").mkdir(exist_ok=True)
        key = figures_key(r)
        known = cache.get_figures(key) if key else None
        if known is not None:
            for rel, data in known.items():
                (d / rel).write_bytes(data)
            continue
        from nbeval.plots import plt

        valid = r.scores[r.scores["error"].isna()]
        try:
            sample_grid(r, cache).save(d / "sample_grid.png")
            figures = r.suite.plots(valid, r.samples, r.metrics) if len(valid) else {}
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
        if key:
            drawn = ["sample_grid.png", *(f"plots/{name}.png" for name in [*figures, *galleries])]
            cache.put_figures(key, {rel: (d / rel).read_bytes() for rel in drawn})
