"""The reference model through HTTP (`nbeval serve` + the openai_http adapter, loopback) against the
adapter called directly: images/s through the runner (cache writes included, nothing cached), and
how many images are bit-identical to the direct adapter's at batch 1.

    python benchmarks/openai_http.py --threads 1 --n 48 --repeats 3

Client and server share the machine; the model runs on `--threads` threads in both cases.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: no progress bars in the timings' output

import torch  # noqa: E402

from nbeval.adapters.openai_http import OpenAIHTTPAdapter
from nbeval.adapters.reference import ReferenceAdapter
from nbeval.cache import Cache
from nbeval.runner import generate
from nbeval.testing import ServeProcess
from reference_model.export import hardware
from suites.counting import CountingSuite


def timed_run(model, samples, batch_size: int) -> tuple[float, dict[str, str]]:
    """Seconds for the runner to generate every sample into a fresh cache, and the images' sha256."""
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        gens = generate(model, CountingSuite(), samples, 256, Cache(d), batch_size)
        seconds = time.perf_counter() - t0
    if any(g.error for g in gens):
        raise RuntimeError(f"failed generations: {[g.error for g in gens if g.error][:3]}")
    return seconds, {g.sample_id: g.image_sha256 for g in gens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=48, help="images per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/openai_http.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    samples = CountingSuite().samples(args.n, 0)
    warm = CountingSuite().samples(4, 1)
    direct = ReferenceAdapter()
    rows, reference = [], None

    def measure(label: str, model, batch_size: int) -> None:
        nonlocal reference
        timed_run(model, warm, batch_size)  # warm-up: weights loaded, connections open
        runs = [timed_run(model, samples, batch_size) for _ in range(args.repeats)]
        rates = [args.n / s for s, _ in runs]
        shas = runs[0][1]
        reference = reference or shas
        same = sum(shas[k] == reference[k] for k in shas)
        stable = all(r[1] == shas for r in runs)
        rows.append(f"| {label} | {statistics.median(rates):.2f} [{min(rates):.2f}, {max(rates):.2f}] | {same}/{args.n} | {'yes' if stable else 'no'} |")
        print(rows[-1], flush=True)

    measure("direct, batch 1", direct, 1)
    measure("direct, batch 16 (the runner's default)", direct, 16)
    env = {"OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory() as work:
        for max_batch, settings in ((1, [(1, 16), (4, 16)]), (16, [(16, 16)])):
            with ServeProcess(["model=reference", f"max_batch={max_batch}", "batch_wait_ms=5", "log_level=warning"], Path(work), env=env) as server:
                for concurrency, batch_size in settings:
                    client = OpenAIHTTPAdapter(server.url, concurrency=concurrency)
                    measure(f"HTTP, server max_batch={max_batch}, client concurrency={concurrency}", client, batch_size)
    load = os.getloadavg()
    lines = [
        "# The reference model through HTTP vs directly",
        "",
        f"`python benchmarks/openai_http.py --threads {args.threads} --n {args.n} --repeats {args.repeats}`; {hardware('cpu')}; "
        f"torch {torch.__version__}, Python {platform.python_version()}; load average at the end {load[0]:.2f} "
        "(a nice-19 training job shared the machine).",
        f"{args.n} counting prompts at 256×256 through `nbeval.runner.generate` into a fresh cache (PNG encode + write included), "
        f"the model on {args.threads} thread(s) in-process or in the `nbeval serve` subprocess; client and server share the 2 CPUs "
        "over loopback. Median [min, max] of the repeats after a warm-up. \"Same as direct batch 1\": images bit-identical to the "
        "adapter called one request at a time; \"stable\": every repeat gave the same images.",
        "",
        "| path | images/s | same as direct batch 1 | stable |",
        "|---|---|---|---|",
        *rows,
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
