"""Throughput of a sharded joblib multirun against one process on the same work, cold caches:

    single:  OMP_NUM_THREADS=2 nbeval run model=M suite=[S] n=N tracking=none
    sharded: OMP_NUM_THREADS=1 nbeval run -m suite.shard=0/4,1/4,2/4,3/4 model=M suite=[S] n=N tracking=none hydra.launcher.n_jobs=J
             nbeval merge <sweep> mlflow=false

Each run gets a fresh cache, so every image is generated and read. Prints and writes a Markdown table
(wall time, images/s) and whether the merged metrics equal the single process's.

    python benchmarks/sharding.py --model reference --suites counting --n 200 --variants single:2 shards:4:2:1 shards:4:4:1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

NBEVAL = [sys.executable, "-m", "nbeval.cli"]


def _run(cmd: list[str], threads: int, log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with log.open("w") as f:
        r = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}; see {log}")
    return seconds


def _images(run_dir: Path) -> int:
    res = json.loads((run_dir / "results.json").read_text())
    return sum(int(pd.read_parquet(run_dir / r["tables"]["generations"])["image_sha256"].notna().sum()) for r in res["suites"].values())


def _metrics(run_dir: Path) -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    return {f"{s}/{k}": v for s, r in res["suites"].items() for k, v in r["metrics"].items()}


def _compare(a: dict, b: dict) -> str:
    if a == b:
        return "identical"
    diff = max((abs(a[k][f] - b[k][f]) for k in a.keys() & b.keys() for f in ("value", "ci_low", "ci_high") if a[k][f] == a[k][f]), default=float("nan"))
    return f"differ (max |Δ| {diff:.2g}; {len(a.keys() ^ b.keys())} metrics only on one side)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="reference")
    ap.add_argument("--suites", default="counting")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=["single:2", "shards:4:2:1"],
                    help="single:THREADS, or shards:K:N_JOBS:THREADS (K shards, N_JOBS joblib processes at once, THREADS each)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/nbeval-sharding-bench"))
    ap.add_argument("--out", type=Path, default=None, help="append the Markdown table to this file")
    args = ap.parse_args()
    common = [f"model={args.model}", f"suite=[{args.suites}]", f"n={args.n}", f"seed={args.seed}", "tracking=none"]
    rows, reference = [], None
    for variant in args.variants:
        kind, *nums = variant.split(":")
        work = args.work / variant.replace(":", "_")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        if kind == "single":
            (threads,) = map(int, nums)
            cmd = [*NBEVAL, "run", *common, f"cache_dir={work / 'cache'}", f"hydra.run.dir={work / 'run'}"]
            seconds, merge_s, run_dir = _run(cmd, threads, work / "run.log"), 0.0, work / "run"
            label = f"1 process, OMP_NUM_THREADS={threads}"
        else:
            k, jobs, threads = map(int, nums)
            shards = ",".join(f"{i}/{k}" for i in range(k))
            cmd = [*NBEVAL, "run", "-m", f"suite.shard={shards}", *common, f"cache_dir={work / 'cache'}",
                   f"hydra.sweep.dir={work / 'sweep'}", f"hydra.launcher.n_jobs={jobs}"]
            seconds = _run(cmd, threads, work / "sweep.log")
            merge_s = _run([*NBEVAL, "merge", str(work / "sweep"), "mlflow=false"], threads, work / "merge.log")
            run_dir = work / "sweep" / "merged"
            label = f"{k} shards, joblib n_jobs={jobs}, OMP_NUM_THREADS={threads}"
        images = _images(run_dir)
        metrics = _metrics(run_dir)
        same = "—" if reference is None else _compare(reference, metrics)
        reference = reference or metrics
        total = seconds + merge_s
        rows.append(f"| {label} | {seconds:.1f} | {merge_s:.1f} | {total:.1f} | {images} | {images / total:.2f} | {same} |")
        print(rows[-1], flush=True)
    head = [
        f"### {args.model} × [{args.suites}], n={args.n}, seed={args.seed} — {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "",
        "| variant | run wall s | merge s | total s | images | images/s | metrics vs the first row |",
        "|---|---|---|---|---|---|---|",
    ]
    text = "\n".join(head + rows) + "\n\nCommand: `python benchmarks/sharding.py " + " ".join(sys.argv[1:]) + "`\n"
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
