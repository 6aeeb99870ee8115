"""Sharded runs: one run's samples split across jobs (`suite.shard=i/k`), and `nbeval merge`, which
assembles the parts into the run one unsharded job would have made.

A shard is a normal run folder and MLflow run (tagged `nbeval.kind=shard`, `nbeval.shard=i/k`) whose
results.json carries a `shard` record; it holds block i of k of every suite's `samples(n, seed)`
(`runner.shard_block`: contiguous, in whole batches of the run's batch_size). The merge checks that the shards
are the parts of one run — the same config apart from the shard (and where the cache and the tracking
store live), model and scorer fingerprints, suite versions and params, every block present exactly
once and holding exactly the samples its block should — then concatenates each suite's tables in the
order an unsharded run writes them, recomputes the metrics and their CIs with the suite's own
`aggregate` on all samples (never averages of the shards'; through the aggregate cache, so a re-merge or
a merge of tables an unsharded run already aggregated repeats no bootstrap), redraws the plots and writes
results.json, summary.md and an MLflow run like any run, tagged with the shards it was made from.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nbeval.api import SHARD_KEY, build_suite
from nbeval.records import GENERATION_COLUMNS, SAMPLE_COLUMNS, SCORE_COLUMNS, content_hash
from nbeval.results import Run
from nbeval.runner import aggregate, run_order, shard_samples
from nbeval.suite import ContestSuite, SuiteResult

log = logging.getLogger(__name__)
_BASE_TABLES = ("samples", "generations", "scores")


class MergeError(ValueError):
    """Shards that cannot be merged, with the reason."""


def _frame(rows: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Rows rebuilt the way the runner builds its tables (records → DataFrame), so the dtypes match."""
    return pd.DataFrame(rows.to_dict("records"), columns=columns)


def merge_tables(parts: list[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Each shard's samples / generations / scores (shards in index order) → the unsharded tables:
    concatenated and sorted by the runner's own order columns (`runner.run_order`)."""
    cat = {t: pd.concat([p[t] for p in parts], ignore_index=True) for t in _BASE_TABLES}
    return {
        "samples": _frame(cat["samples"].sort_values("sample_index", kind="stable"), SAMPLE_COLUMNS).astype({"sample_index": "int64"}),
        "generations": _frame(run_order(cat["generations"]), GENERATION_COLUMNS).astype({"sample_index": "int64"}),
        "scores": _frame(run_order(cat["scores"]), SCORE_COLUMNS).astype({"value": "float64", "sample_index": "int64"}),
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


def merge_group(shards: list[Shard], cache_dir: str | None = None) -> Run:
    """One run's shards (checked, in index order) → the whole run, for `api.finalize`."""
    from nbeval.cache import Cache

    first = shards[0].res
    config = copy.deepcopy(first["config"])
    config["suite"][SHARD_KEY] = None
    if cache_dir:
        config["cache_dir"] = str(cache_dir)
    n, seed, count = first["n"], first["seed"], shards[0].count
    cache = Cache(config["cache_dir"])
    if len({s.res.get("git_sha") for s in shards}) > 1:
        log.warning("the shards ran on different nbeval commits (%s); their configs, fingerprints and suite versions agree",
                    ", ".join(sorted({str(s.res.get('git_sha')) for s in shards})))
    results = []
    for name, rec in first["suites"].items():
        suite = build_suite(name, config["suite"][name])
        if isinstance(suite, ContestSuite):
            raise MergeError(f"suite {name!r} compares models and cannot be merged from shards")
        if suite.version != rec["version"] or suite.params() != rec["params"]:
            raise MergeError(f"suite {name!r} is now version {suite.version} with params {suite.params()}, "
                             f"but the shards ran version {rec['version']} with {rec['params']}: rerun them")
        parts = []
        for s in shards:
            srec = s.res["suites"][name]
            if set(srec["tables"]) != set(_BASE_TABLES):
                raise MergeError(f"{s.dir}: suite {name!r} has tables of its own ({', '.join(sorted(set(srec['tables']) - set(_BASE_TABLES)))}) that cannot be merged")
            try:
                tables = {t: pd.read_parquet(s.dir / srec["tables"][t]) for t in _BASE_TABLES}
            except (OSError, ValueError) as e:
                raise MergeError(f"{s.dir}: cannot read suite {name!r}'s tables ({e})") from e
            want = [x.key for x in shard_samples(suite, n, seed, config["batch_size"], (s.index, count))[0]]
            if list(tables["samples"]["sample_key"]) != want:
                raise MergeError(f"{s.dir}: suite {name!r} shard {s.spec} holds other samples than block {s.spec} of "
                                 f"samples(n={n}, seed={seed}) ({len(tables['samples'])} rows, {len(want)} expected): "
                                 "its samples changed since it ran, or its tables were edited")
            parts.append(tables)
        tables = merge_tables(parts)
        valid = tables["scores"][tables["scores"]["error"].isna()]
        metrics = aggregate(suite, valid, tables["samples"], cache) if len(valid) else {}  # a re-merge repeats no bootstrap
        seconds = {k: sum(s.res["suites"][name]["seconds"].get(k, 0.0) for s in shards) for k in rec["seconds"]}
        cached = sum(s.res["suites"][name]["cached_readings"] for s in shards)
        results.append(SuiteResult(suite, tables["samples"], tables["generations"], tables["scores"], metrics, cached, seconds))
    missing = sum(1 for r in results for sha in r.generations["image_sha256"].dropna() if not cache.has_image(sha))
    if missing:
        log.warning("%d images of the shards are not in cache_dir %s: sample grids and galleries need the shards' (shared) cache; pass cache_dir=", missing, config["cache_dir"])
    shard_tags = {k: v for k, v in first["shard"].get("tags", {}).items() if k not in ("nbeval.kind", "nbeval.shard")}
    tags = {**shard_tags, "nbeval.shards": str(len(shards)),
            "nbeval.merged_from": ",".join(str(s.res.get("mlflow_run_id")) for s in shards)[:5000]}
    merged_from = [{"shard": s.spec, "run_dir": str(s.dir.resolve()), "mlflow_run_id": s.res.get("mlflow_run_id"),
                    "git_sha": s.res.get("git_sha"), "created_at": s.res.get("created_at")} for s in shards]
    return Run(config, first["models"], first["scorers"], results, tags=tags, merged_from=merged_from)


def parent_run(shards: list[Shard]) -> str | None:
    """The MLflow parent of the shards' multirun, when they all come from one sweep folder."""
    from nbeval.tracking import PARENT_RUN_FILE

    files = {(s.dir.resolve().parent / PARENT_RUN_FILE) for s in shards}
    if len(files) == 1 and (f := files.pop()).is_file():
        return f.read_text().strip() or None
    return None


def merge(paths: list[str | Path], out: Path | None = None, cache_dir: str | None = None) -> list[tuple[Path, Run, list[Shard]]]:
    """Find, check and merge: (run folder to write, the merged Run, its shards) per run found."""
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
        done.append((where, merge_group(members, cache_dir), members))
    return done
