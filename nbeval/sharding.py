"""Sharded runs: one run's samples split across jobs (`suite.shard=i/k`), and `nbeval merge`, which
assembles the parts into the run one unsharded job would have made.

A shard is a normal run folder and MLflow run (tagged `nbeval.kind=shard`, `nbeval.shard=i/k`) whose
results.json carries a `shard` record; it holds block i of k of every suite's `samples(n, seed)`
(`runner.shard_block`: contiguous, in whole batches of the run's batch_size). The merge checks that the shards
are the parts of one run — the same config apart from the shard (and where the cache and the tracking
store live), model and scorer fingerprints, suite versions and params, every block present exactly
once and holding exactly the samples its block should — then concatenates each suite's tables in the
order an unsharded run writes them, recomputes the metrics and their CIs with the suite's own
`aggregate` on all samples (never averages of the shards'), redraws the plots and writes
results.json, summary.md and an MLflow run like any run, tagged with the shards it was made from.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nbeval.records import (
    GENERATION_COLUMNS,
    SAMPLE_COLUMNS,
    SCORE_COLUMNS,
    Sample,
    content_hash,
)

log = logging.getLogger(__name__)
SHARD_KEY = "shard"  # `suite.shard`: a run-level setting under the suite group, not a suite
_BASE_TABLES = ("samples", "generations", "scores")

MERGE_USAGE = """usage: nbeval merge <shard run folder | sweep folder> … [out=DIR] [cache_dir=DIR] [mlflow=true|false] [tracking_uri=URI]
  Assembles the shards of a sharded run into the run one unsharded job makes, e.g.
    nbeval run -m suite.shard=0/4,1/4,2/4,3/4 model=reference suite=[counting] hydra.sweep.dir=multirun/ref
    nbeval merge multirun/ref                       # → multirun/ref/merged/
  Each suite's tables are concatenated, its metrics and CIs recomputed on all samples, its plots redrawn;
  results.json, summary.md and an MLflow run (where the shards' config tracked to, under their multirun
  parent; tracking_uri= to choose, mlflow=false for none). A sweep folder holding the shards of several
  runs (e.g. -m model=a,b suite.shard=0/2,1/2) gives one merged run each, in out/<model>-<hash>/.
  Refuses shards whose configs, model, scorers or suites differ, and missing or duplicated shards.
  Images for the sample grids and galleries come from the shards' cache_dir (shared), or cache_dir=."""


class MergeError(ValueError):
    """Shards that cannot be merged, with the reason."""


def parse_shard(spec, n: int | None = None) -> tuple[int, int] | None:
    """`suite.shard` → (index, count); None (the default) for an unsharded run."""
    if spec is None or spec == "":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise ValueError(f"suite.shard={spec!r}: expected i/k with 0 <= i < k, e.g. suite.shard=0/4 (all four: nbeval run -m suite.shard=0/4,1/4,2/4,3/4)")
    index, count = int(m[1]), int(m[2])
    if n is not None and count > n:
        raise ValueError(f"suite.shard={spec}: {count} shards of n={n} samples would leave shards empty; use at most {n}")
    return index, count


def suite_configs(suite_cfg) -> dict:
    """The run's suites: the `suite` node without the run-level `shard` setting."""
    return {name: scfg for name, scfg in suite_cfg.items() if name != SHARD_KEY}


# --- the order an unsharded run writes its rows in (runner.generate / runner.score_suite) ----------


def _frame(rows: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Rows rebuilt the way the runner builds its tables (records → DataFrame), so the dtypes match."""
    return pd.DataFrame(rows.to_dict("records"), columns=columns)


def order_generations(g: pd.DataFrame, position: dict[str, int]) -> pd.DataFrame:
    """runner.generate emits turn by turn: each turn's rows in sample order, then, for the samples whose
    turn failed there, one placeholder row for every later turn (sample order, then turn)."""
    first_fail = g.loc[g["image_sha256"].isna()].groupby("sample_id")["turn"].min()
    failed_at = g["sample_id"].map(first_fail)
    placeholder = failed_at.notna() & (g["turn"] > failed_at)
    key = pd.DataFrame({
        "block": np.where(placeholder, failed_at, g["turn"]),
        "placeholder": placeholder.astype(int),
        "pos": g["sample_id"].map(position),
        "turn": g["turn"],
    })
    return g.iloc[np.lexsort([key[c].to_numpy() for c in reversed(key.columns)])]


def order_scores(s: pd.DataFrame, position: dict[str, int]) -> pd.DataFrame:
    """runner.score_suite emits the rows of each generated turn in generation order (turn, then
    sample), each turn's rows in the suite's order, then the whole-sample rows (turn −1) in sample
    order. `seq`, the row's place within its shard, keeps a (sample, turn)'s own rows in order."""
    key = pd.DataFrame({
        "whole": (s["turn"] < 0).astype(int),
        "turn": s["turn"],
        "pos": s["sample_id"].map(position),
        "seq": s["_seq"],
    })
    return s.iloc[np.lexsort([key[c].to_numpy() for c in reversed(key.columns)])]


def merge_tables(parts: list[dict[str, pd.DataFrame]], samples: list[Sample]) -> dict[str, pd.DataFrame]:
    """Each shard's samples / generations / scores (shards in index order) → the unsharded tables."""
    position = {s.id: i for i, s in enumerate(samples)}
    samples_df = _frame(pd.concat([p["samples"] for p in parts], ignore_index=True), SAMPLE_COLUMNS)
    gens = pd.concat([p["generations"] for p in parts], ignore_index=True)
    scores = pd.concat([p["scores"].assign(_seq=np.arange(len(p["scores"]))) for p in parts], ignore_index=True)
    return {
        "samples": samples_df,
        "generations": _frame(order_generations(gens, position), GENERATION_COLUMNS),
        "scores": _frame(order_scores(scores, position), SCORE_COLUMNS).astype({"value": "float64"}),
    }


# --- finding and checking shards --------------------------------------------------------------------


@dataclass
class Shard:
    dir: Path
    res: dict

    @property
    def index(self) -> int:
        return self.res["shard"]["index"]

    @property
    def count(self) -> int:
        return self.res["shard"]["count"]

    @property
    def spec(self) -> str:
        return self.res["shard"]["spec"]


def _load(d: Path) -> dict:
    try:
        return json.loads((d / "results.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MergeError(f"{d}: cannot read results.json ({e})") from e


def find_shards(paths: list[str | Path]) -> list[Shard]:
    """Shard run folders named directly, or every shard under a sweep folder (recursively)."""
    found: dict[Path, Shard] = {}
    for p in map(Path, paths):
        if (p / "results.json").is_file():
            res = _load(p)
            if "shard" not in res:
                raise MergeError(f"{p} is a whole run, not a shard (shards are run with suite.shard=i/k)")
            found.setdefault(p.resolve(), Shard(p, res))
        elif p.is_dir():
            inside = [(f.parent, _load(f.parent)) for f in sorted(p.rglob("results.json"))]
            shards = [Shard(d, res) for d, res in inside if "shard" in res]
            if not shards:
                raise MergeError(f"{p}: no shard run folders under it (folders whose results.json has a shard record)")
            for s in shards:
                found.setdefault(s.dir.resolve(), s)
        else:
            raise MergeError(f"{p}: not a run folder or a sweep folder")
    return list(found.values())


def identity(res: dict) -> dict:
    """What the shards of one run share: everything that decides its samples, images and scores."""
    config = copy.deepcopy(res["config"])
    config.get("suite", {}).pop(SHARD_KEY, None)
    for where in ("cache_dir", "tracking"):  # where things are stored, not what they are
        config.pop(where, None)
    return {
        "shard count": res["shard"]["count"],
        "config": config,
        "models": [{"name": m["name"], "fingerprint": m["fingerprint"]} for m in res["models"]],
        "scorer fingerprints": {role: card["fingerprint"] for role, card in res["scorers"].items()},
        "suites": {name: {"version": r["version"], "params": r["params"]} for name, r in res["suites"].items()},
    }


def _flat(d, prefix: str = "") -> dict[str, object]:
    if isinstance(d, dict):
        out: dict[str, object] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): d}


def differences(a: dict, b: dict, limit: int = 8) -> list[str]:
    fa, fb = _flat(a), _flat(b)
    keys = sorted(k for k in fa.keys() | fb.keys() if fa.get(k, "<absent>") != fb.get(k, "<absent>"))
    lines = [f"{k}: {fa.get(k, '<absent>')!r} vs {fb.get(k, '<absent>')!r}" for k in keys[:limit]]
    return lines + ([f"… and {len(keys) - limit} more"] if len(keys) > limit else [])


def group_shards(shards: list[Shard]) -> list[list[Shard]]:
    """Shards grouped into runs (by identity), each in index order; refuses groups with a shard
    missing or duplicated, saying how the groups differ when there are several."""
    groups: dict[str, list[Shard]] = {}
    idents: dict[str, dict] = {}
    for s in shards:
        ident = identity(s.res)
        key = content_hash(ident)
        groups.setdefault(key, []).append(s)
        idents[key] = ident
    problems = []
    for key, members in groups.items():
        count = members[0].count
        by_index: dict[int, list[Shard]] = {}
        for s in members:
            by_index.setdefault(s.index, []).append(s)
        missing = [f"{i}/{count}" for i in range(count) if i not in by_index]
        dup = {f"{i}/{count}": [str(s.dir) for s in ss] for i, ss in sorted(by_index.items()) if len(ss) > 1}
        name = f"{members[0].res['model']['name']} ({len(members)} shard{'s' * (len(members) > 1)}: {', '.join(str(s.dir) for s in members)})"
        if missing:
            problems.append(f"{name}: missing shard{'s' * (len(missing) > 1)} {', '.join(missing)}")
        if dup:
            problems.append(f"{name}: duplicated shards " + "; ".join(f"{spec} in {', '.join(d)}" for spec, d in dup.items()))
        members.sort(key=lambda s: s.index)
    if problems:
        msg = "cannot merge:\n  " + "\n  ".join(problems)
        if len(groups) > 1:
            keys = list(groups)
            msg += f"\nthe shards belong to {len(groups)} different runs; they differ in:\n    "
            msg += "\n    ".join(differences(idents[keys[0]], idents[keys[1]]))
            msg += f"\n  (first: {groups[keys[0]][0].dir}; second: {groups[keys[1]][0].dir})"
        raise MergeError(msg)
    return list(groups.values())


# --- merging -----------------------------------------------------------------------------------------


def _build_suite(name: str, scfg: dict):
    from hydra.utils import instantiate

    from nbeval.registry import load

    return instantiate(scfg) if "_target_" in scfg else load(name)(**scfg)


def merge_group(shards: list[Shard], out: Path, cache_dir: str | None = None) -> tuple[dict, list, dict]:
    """One run's shards (checked, in index order) → (results.json content, SuiteResults, suites),
    written to `out` like a run folder."""
    from nbeval import __version__
    from nbeval.cache import Cache
    from nbeval.results import git_sha, package_versions, suite_record, write_run
    from nbeval.runner import SuiteResult, shard_block
    from nbeval.suite import ContestSuite

    first = shards[0].res
    config = copy.deepcopy(first["config"])
    config["suite"][SHARD_KEY] = None
    if cache_dir:
        config["cache_dir"] = str(cache_dir)
    n, seed, count = first["n"], first["seed"], shards[0].count
    if len({s.res.get("git_sha") for s in shards}) > 1:
        log.warning("the shards ran on different nbeval commits (%s); their configs, fingerprints and suite versions agree",
                    ", ".join(sorted({str(s.res.get('git_sha')) for s in shards})))
    results, suites = [], {}
    for name, rec in first["suites"].items():
        suite = _build_suite(name, config["suite"][name])
        if isinstance(suite, ContestSuite):
            raise MergeError(f"suite {name!r} compares models and cannot be merged from shards")
        if suite.version != rec["version"] or suite.params() != rec["params"]:
            raise MergeError(f"suite {name!r} is now version {suite.version} with params {suite.params()}, "
                             f"but the shards ran version {rec['version']} with {rec['params']}: rerun them")
        samples = suite.samples(n, seed)
        parts = []
        for s in shards:
            srec = s.res["suites"][name]
            if set(srec["tables"]) != set(_BASE_TABLES):
                raise MergeError(f"{s.dir}: suite {name!r} has tables of its own ({', '.join(sorted(set(srec['tables']) - set(_BASE_TABLES)))}) that cannot be merged")
            try:
                tables = {t: pd.read_parquet(s.dir / srec["tables"][t]) for t in _BASE_TABLES}
            except (OSError, ValueError) as e:
                raise MergeError(f"{s.dir}: cannot read suite {name!r}'s tables ({e})") from e
            want = [x.key for x in samples[shard_block(len(samples), s.index, count, unit=config['batch_size'])]]
            if list(tables["samples"]["sample_key"]) != want:
                raise MergeError(f"{s.dir}: suite {name!r} shard {s.spec} holds other samples than block {s.spec} of "
                                 f"samples(n={n}, seed={seed}) ({len(tables['samples'])} rows, {len(want)} expected): "
                                 "its samples changed since it ran, or its tables were edited")
            parts.append(tables)
        tables = merge_tables(parts, samples)
        valid = tables["scores"][tables["scores"]["error"].isna()]
        metrics = suite.aggregate(valid, tables["samples"]) if len(valid) else {}
        seconds = {k: sum(s.res["suites"][name]["seconds"].get(k, 0.0) for s in shards) for k in rec["seconds"]}
        cached = sum(s.res["suites"][name]["cached_readings"] for s in shards)
        results.append(SuiteResult(suite, tables["samples"], tables["generations"], tables["scores"], metrics, cached, seconds))
        suites[name] = suite

    out.mkdir(parents=True, exist_ok=True)
    res = {k: v for k, v in first.items() if k not in ("shard", "mlflow_run_id", "suites")}
    res.update({
        "nbeval_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "versions": package_versions(),
        "config": config,
        "suites": {r.suite.name: suite_record(r, out) for r in results},
        "merged_from": [{"shard": s.spec, "run_dir": str(s.dir.resolve()), "mlflow_run_id": s.res.get("mlflow_run_id"),
                         "git_sha": s.res.get("git_sha"), "created_at": s.res.get("created_at")} for s in shards],
    })
    cache = Cache(config["cache_dir"])
    missing = sum(1 for r in results for sha in r.generations["image_sha256"].dropna() if not cache.has_image(sha))
    if missing:
        log.warning("%d images of the shards are not in cache_dir %s: sample grids and galleries need the shards' (shared) cache; pass cache_dir=", missing, config["cache_dir"])
    write_run(res, results, cache, out)
    return res, results, suites


def _parent_run(shards: list[Shard]) -> str | None:
    """The MLflow parent of the shards' multirun, when they all come from one sweep folder."""
    from nbeval.tracking import PARENT_RUN_FILE

    files = {(s.dir.resolve().parent / PARENT_RUN_FILE) for s in shards}
    if len(files) == 1 and (f := files.pop()).is_file():
        return f.read_text().strip() or None
    return None


def track(res: dict, results: list, out: Path, shards: list[Shard], tracking_uri: str | None = None) -> str | None:
    """Log the merged run like any run (kind run), tagged with the shards' run ids."""
    from hydra.utils import instantiate

    tcfg = dict(res["config"].get("tracking") or {})
    if not tcfg:
        print("the shards ran with tracking=none: no MLflow run for the merge either", flush=True)
        return None
    if tracking_uri:
        tcfg["uri"] = tracking_uri
    tracker = instantiate(tcfg)
    shard_tags = {k: v for k, v in shards[0].res["shard"].get("tags", {}).items() if k not in ("nbeval.kind", "nbeval.shard")}
    tags = {**shard_tags, "nbeval.shards": str(len(shards)),
            "nbeval.merged_from": ",".join(str(s.res.get("mlflow_run_id")) for s in shards)[:5000]}
    run_id = tracker.log_or_keep(res, results, out, parent_run_id=_parent_run(shards), tags=tags)
    if run_id:
        res["mlflow_run_id"] = run_id
        (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
        print(f"MLflow run {run_id} at {tracker.target()}", flush=True)
    else:  # the store is down: the merged run is complete in its folder, marked PENDING_SYNC
        print(f"MLflow: not logged ({tracker.target()} failed; see the warning); the run is kept for: nbeval sync {out}", flush=True)
    return run_id


def merge(paths: list[str | Path], out: Path | None = None, cache_dir: str | None = None, mlflow: bool = True, tracking_uri: str | None = None) -> list[tuple[Path, dict]]:
    """Find, check and merge; returns (run folder, results) per merged run."""
    from nbeval.results import summary_markdown

    shards = find_shards(paths)
    groups = group_shards(shards)
    if out is None:
        parents = {s.dir.resolve().parent for s in shards}
        out = (parents.pop() if len(parents) == 1 else Path.cwd()) / "merged"
    done = []
    for members in groups:
        where = out if len(groups) == 1 else out / f"{members[0].res['model']['name']}-{content_hash(identity(members[0].res))[:8]}"
        if (where / "results.json").is_file() and "merged_from" not in _load(where):
            raise MergeError(f"{where} holds a run that is not a merge; choose another out=")
        res, results, suites = merge_group(members, where, cache_dir)
        print(summary_markdown(res, suites), flush=True)
        if mlflow:
            track(res, results, where, members, tracking_uri)
        print(f"merged {len(members)} shards ({', '.join(str(s.dir) for s in members)}) into run folder: {where}", flush=True)
        done.append((where, res))
    return done


def main(argv: list[str]) -> None:
    if not argv or argv[:1] in (["-h"], ["--help"]):
        print(MERGE_USAGE, file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    paths = [a for a in argv if "=" not in a]
    unknown = set(opts) - {"out", "cache_dir", "mlflow", "tracking_uri"}
    if unknown or not paths:
        why = f"unknown options {', '.join(sorted(unknown))}" if unknown else "name the shard run folders or their sweep folder"
        print(f"nbeval merge: {why}\n{MERGE_USAGE}", file=sys.stderr)
        sys.exit(2)
    try:
        merge(paths, Path(opts["out"]) if "out" in opts else None, opts.get("cache_dir"),
              opts.get("mlflow", "true").lower() not in ("false", "0", "no"), opts.get("tracking_uri"))
    except MergeError as e:
        print(f"nbeval merge: {e}", file=sys.stderr)
        sys.exit(2)
