"""Scorer throughput (images/s) on oracle renders of each scorer's own suite, after a warm-up batch.

    python benchmarks/scorers.py --n 96 --out benchmarks/results/scorers.md
    python benchmarks/scorers.py --n 96 --scorers pixels --lpips-weights alexnet.pth --out benchmarks/results/scorers_lpips.md

The pixels scorer reads drift's turn-0 images, two comparisons (preservation, fidelity) per image.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from nbeval.adapters.base import GenRequest
from nbeval.adapters.oracle import OracleAdapter
from nbeval.records import sha256_file

SUITE_OF = {"ocr": "text_rendering", "counter": "counting", "clip": "adherence", "identity": "identity", "pixels": "drift"}


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())


def images_per_second(score, images: list, truths: list, batch: int) -> float:
    """Wall-clock images/s of `score(images, truths)` over every batch after the first, which the
    caller has already run as the warm-up."""
    t0 = time.perf_counter()
    for i in range(batch, len(images), batch):
        score(images[i : i + batch], truths[i : i + batch])
    return (len(images) - batch) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=96)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--scorers", nargs="*", default=list(SUITE_OF), choices=list(SUITE_OF))
    p.add_argument("--lpips-weights", default=None, help="also time the pixels scorer with LPIPS on these torchvision alexnet weights")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    with initialize_config_module(config_module="nbeval.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"suite=[{','.join(SUITE_OF.values())}]"])
        lpips = compose("config", overrides=[f"scorer.pixels.lpips.weights={args.lpips_weights}"]) if args.lpips_weights else None
    runs = [(role, role, cfg.scorer[role]) for role in args.scorers] + ([("pixels + LPIPS alex", "pixels", lpips.scorer.pixels)] if lpips else [])
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    lpips_arg = f" --lpips-weights {Path(args.lpips_weights).name}" if args.lpips_weights else ""
    cpu = cpu_model()
    lines = [
        "# Scorer throughput",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), no GPU; torch threads {torch.get_num_threads()} (easyocr: its default); load average {os.getloadavg()[0]:.1f} at start.",
        f"Command: `{threads}python benchmarks/scorers.py --n {args.n} --scorers {' '.join(args.scorers)}{lpips_arg} --out {args.out}`",
        *([f"LPIPS backbone weights: `{Path(args.lpips_weights).name}`, sha256 {sha256_file(Path(args.lpips_weights).expanduser())}"] if lpips else []),
        "",
        "| scorer | suite | images | batch | seconds | images/s | warm-up s (load + first batch) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, role, scorer_cfg in runs:
        suite_name = SUITE_OF[role]
        suite = instantiate(cfg.suite[suite_name])
        samples = suite.samples(args.n + args.batch, 0)
        reqs = [GenRequest(s.id, s.prompt, s.seed, suite.image_size, s.truth[0]) for s in samples]
        images = [r.image for r in OracleAdapter().generate(reqs)]
        # turn 0's earlier images ("first") are the image itself, as the runner hands them in
        truths = [suite.scorer_truth(s, 0, role) | {"context": {name: im for name in suite.scorer_context(s, 0, role)}} for s, im in zip(samples, images)]
        t0 = time.perf_counter()
        scorer = instantiate(scorer_cfg)
        scorer.read(images[: args.batch], truths[: args.batch])  # warm-up: loads weights
        load = time.perf_counter() - t0
        rate = images_per_second(scorer.read, images, truths, args.batch)
        lines.append(f"| {label} | {suite_name} | {args.n} | {args.batch} | {args.n / rate:.1f} | {rate:.1f} | {load:.1f} |")
        print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
