"""Judge throughput: the world judge (`vlm=world`) in-process, and behind `nbeval serve vlm=world` through
the chat client (`vlm=openai_chat`) at concurrency 1 and 8 — questions answered per second, and that
every path gives the same answers.

    python benchmarks/judge_throughput.py --n 60 --repeats 3

The questions are what `scorer=[vlm_count]` asks on counting's oracle renders (one count question per
requested group and one "anything else?"). Client and server share the machine; nothing is cached.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from nbeval.adapters.base import GenRequest
from nbeval.adapters.oracle import OracleAdapter
from nbeval.scorers.vlm import VLMCounter
from nbeval.testing import ServeProcess
from nbeval.vlm.openai_chat import OpenAIChatJudge
from nbeval.vlm.world import WorldJudge
from reference_model.export import hardware
from suites.counting import CountingSuite


def questions(n: int) -> list:
    suite = CountingSuite()
    samples = suite.samples(n, 0)
    images = [r.image for r in OracleAdapter().generate([GenRequest(s.id, s.prompt, s.seed, 256, s.truth[0]) for s in samples])]
    scorer = VLMCounter(WorldJudge())
    return [q for s, im in zip(samples, images) for q in scorer.questions(im, suite.scorer_truth(s, 0, "counter"))]


def timed(judge, asks: list, repeats: int) -> tuple[list[float], list[str | None]]:
    judge.ask(asks[:4])  # warm-up: instruments loaded, connections open
    rates, answers = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        got = judge.ask(asks)
        rates.append(len(asks) / (time.perf_counter() - t0))
        answers = [a.text for a in got]
    return rates, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=60, help="counting samples (about 2.5 questions each)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/judge_throughput.md"))
    args = ap.parse_args()
    asks = questions(args.n)
    rows = []
    rates, direct = timed(WorldJudge(), asks, args.repeats)
    rows.append(("world judge in-process", rates, direct))
    with tempfile.TemporaryDirectory() as work, ServeProcess(["vlm=world"], Path(work)) as server:
        for concurrency in (1, 8):
            rates, got = timed(OpenAIChatJudge(server.url, "world", concurrency=concurrency), asks, args.repeats)
            rows.append((f"`nbeval serve vlm=world` + openai_chat, concurrency {concurrency}", rates, got))
    lines = [
        "# Judge throughput: the world judge, in-process and over HTTP", "",
        f"`python benchmarks/judge_throughput.py --n {args.n} --repeats {args.repeats}`; {hardware('cpu')}; Python {platform.python_version()}; "
        f"load average at the end {os.getloadavg()[0]:.2f}.",
        f"{len(asks)} questions (what `scorer=[vlm_count]` asks on {args.n} counting oracle renders), nothing cached; median "
        "[min, max] questions/s of the repeats after a warm-up. The server answers on one worker thread, one question per judge call "
        "(`max_batch=1`); the client sends `concurrency` requests at a time.", "",
        "| path | questions/s | same answers as in-process |", "|---|---|---|",
    ]
    for label, rates, got in rows:
        lines.append(f"| {label} | {statistics.median(rates):.1f} [{min(rates):.1f}, {max(rates):.1f}] | {sum(a == b for a, b in zip(got, direct))}/{len(asks)} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
