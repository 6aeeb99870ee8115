"""Where a profiled `nbeval run` spent its time, by stage (cumulative seconds of the functions that
are the run's stages), for benchmarks/results/speed.md:

    python -m cProfile -o run.prof .venv/bin/nbeval run …
    python benchmarks/profile_summary.py run.prof
"""

from __future__ import annotations

import pstats
import sys

STAGES = {  # label → (file suffix, function name)
    "whole command": ("nbeval/cli.py", "main"),
    "evaluate (samples, generate, read, aggregate)": ("nbeval/api.py", "evaluate"),
    "  samples": ("nbeval/runner.py", "shard_samples"),
    "  generate (cache lookups)": ("nbeval/runner.py", "generate"),
    "  read (cache lookups + scorers)": ("nbeval/runner.py", "read"),
    "  scorer fingerprints": ("nbeval/scorers/base.py", "fingerprint"),
    "  aggregate": ("nbeval/runner.py", "aggregate"),
    "finalize (tables, results, plots)": ("nbeval/api.py", "finalize"),
    "  plots and galleries": ("nbeval/results.py", "write_run"),
}


def summary(path: str) -> list[tuple[str, float]]:
    stats = pstats.Stats(path).stats  # (file, line, name) → (cc, nc, tt, ct, callers)
    out = []
    for label, (suffix, name) in STAGES.items():
        cum = sum(v[3] for (f, _, n), v in stats.items() if f.endswith(suffix) and n == name)
        if not cum and name == "aggregate":  # before the aggregate cache: the suites' own aggregate()
            cum = sum(v[3] for (f, _, n), v in stats.items() if "/suites/" in f and n == "aggregate")
        out.append((label, cum))
    return out


if __name__ == "__main__":
    for label, seconds in summary(sys.argv[1]):
        print(f"{label:50s} {seconds:8.1f} s")
