"""Sampling speed of the reference model: seconds per 128×128 image at batch 1, images/s at larger
batches, for the default settings and the cheaper ones.

    python benchmarks/reference_sampling.py --threads 2 --device cpu
    python benchmarks/reference_sampling.py --repeats 10 --batches 16 64 --settings 2/3 1/3 --out benchmarks/results/reference_sampling_one_step.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from nbeval.adapters.reference import DEFAULT_CHECKPOINT
from reference_model.export import CHECKPOINTS, hardware
from reference_model.model import ReferenceModel, Settings
from suites.counting import CountingSuite
from suites.text_rendering import TextRenderingSuite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20, help="images timed one by one")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--settings", nargs="+", metavar="STEPS/HEAD_STEPS", help="time these (no CFG) instead of the default rows, e.g. 2/3 1/3")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/reference_sampling.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = ReferenceModel.load(CHECKPOINTS / f"{args.checkpoint}.safetensors", args.device)
    samples = TextRenderingSuite().samples(64, 0) + CountingSuite().samples(64, 0)
    prompts = [s.prompt for s in samples]
    variants = {
        "8 steps, 10 head steps, CFG 1.5 (reference-cpu's card)": Settings(steps=8, head_steps=10, cfg_scale=1.5),
        "8 steps, 10 head steps, no CFG": Settings(steps=8, head_steps=10, cfg_scale=1.0),
        "4 steps, 5 head steps, no CFG (the preset until 2026-11-29)": Settings(steps=4, head_steps=5, cfg_scale=1.0),
        f"{Settings().steps} steps, {Settings().head_steps} head steps, CFG {Settings().cfg_scale} (the preset's)": Settings(),
    }
    if args.settings:
        pairs = [tuple(map(int, v.split("/"))) for v in args.settings]
        variants = {f"{st} step{'s' * (st != 1)}, {hs} head steps, no CFG": Settings(steps=st, head_steps=hs, cfg_scale=1.0) for st, hs in pairs}
    model.generate(prompts[:2], [0, 1], Settings())  # warm-up
    lines = [
        "# Reference model sampling speed",
        "",
        f"`python benchmarks/reference_sampling.py --checkpoint {args.checkpoint} --threads {args.threads} --device {args.device} --repeats {args.repeats} "
        f"--batches {' '.join(map(str, args.batches))}{' --settings ' + ' '.join(args.settings) if args.settings else ''} --out {args.out}`;",
        f"{hardware(args.device)}; torch {torch.__version__}, Python {platform.python_version()}; load average before the run {os.getloadavg()[0]:.1f}.",
        "Plan + tokens + decode, 128×128 output; prompts from the text_rendering and counting suites. Each image is",
        "drawn alone on one thread, as many side by side as there are threads (bit-identical at any batch size).",
        "",
        "| settings | batch 1: s/image (median [min, max]) | " + " | ".join(f"batch {b}: images/s" for b in args.batches) + " |",
        "|---|---|" + "---|" * len(args.batches),
    ]
    for label, settings in variants.items():
        times = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            model.generate([prompts[i * 5 % len(prompts)]], [i], settings)
            times.append(time.perf_counter() - t0)
        rates = []
        for b in args.batches:
            t0 = time.perf_counter()
            model.generate(prompts[:b], list(range(b)), settings)
            rates.append(b / (time.perf_counter() - t0))
        row = f"| {label} | {statistics.median(times):.3f} [{min(times):.3f}, {max(times):.3f}] | " + " | ".join(f"{r:.1f}" for r in rates) + " |"
        print(row, flush=True)
        lines.append(row)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
