"""Scorer throughput (images/s) on oracle renders of each scorer's own suite, after a warm-up batch.

    python benchmarks/scorers.py --n 96 --out benchmarks/results/scorers.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from nbeval.adapters.base import GenRequest
from nbeval.adapters.oracle import OracleAdapter

SUITE_OF = {"ocr": "text_rendering", "counter": "counting", "clip": "adherence", "identity": "identity"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=96)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    with initialize_config_module(config_module="nbeval.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"suite=[{','.join(SUITE_OF.values())}]"])
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    lines = [
        "# Scorer throughput",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), no GPU; torch threads as configured (easyocr: its default).",
        f"Command: `python benchmarks/scorers.py --n {args.n} --out {args.out}`",
        "",
        "| scorer | suite | images | batch | seconds | images/s | warm-up s (load + first batch) |",
        "|---|---|---|---|---|---|---|",
    ]
    for role, suite_name in SUITE_OF.items():
        suite = instantiate(cfg.suite[suite_name])
        samples = suite.samples(args.n + args.batch, 0)
        reqs = [GenRequest(s.id, s.prompt, s.seed, suite.image_size, s.truth[0]) for s in samples]
        images = [r.image for r in OracleAdapter().generate(reqs)]
        truths = [suite.scorer_truth(s, 0, role) for s in samples]
        t0 = time.perf_counter()
        scorer = instantiate(cfg.scorer[role])
        scorer.score(images[: args.batch], truths[: args.batch])  # warm-up: loads weights
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(args.batch, len(images), args.batch):
            scorer.score(images[i : i + args.batch], truths[i : i + args.batch])
        dt = time.perf_counter() - t0
        lines.append(f"| {role} | {suite_name} | {args.n} | {args.batch} | {dt:.1f} | {args.n / dt:.1f} | {load:.1f} |")
        print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
