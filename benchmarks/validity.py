"""Scorer validity: every suite's headline metrics on the oracle, clean and under each corruption
at severity 0–5. Writes a Markdown table (the figures quoted in README and issue notes).

    python benchmarks/validity.py --suite counting --n 200 --out benchmarks/results/validity_counting.md
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from nbeval.adapters.corruptions import CORRUPTIONS, MAX_SEVERITY
from nbeval.adapters.oracle import OracleAdapter
from nbeval.cache import Cache
from nbeval.runner import score_suite


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corruptions", nargs="*", default=list(CORRUPTIONS))
    p.add_argument("--metrics", nargs="*", default=None, help="metric names to tabulate (default: the suite's own)")
    p.add_argument("--cache", default=None, help="cache folder (default: a temporary one)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    with initialize_config_module(config_module="nbeval.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"suite=[{args.suite}]"])
    suite = instantiate(cfg.suite[args.suite])
    scorers = {role: instantiate(cfg.scorer[role]) for role in suite.scorers}
    cache = Cache(args.cache or tempfile.mkdtemp(prefix="nbeval-validity-"))
    own = [m.name for m in suite.metrics if m.name not in ("off_by_k", "pairwise")]
    metrics: list[str] = []
    lines = [f"# Validity of `{args.suite}` scorers on the oracle (n={args.n}, seed={args.seed})", ""]
    t0 = time.time()
    for corruption in [None, *args.corruptions]:
        for sev in [0] if corruption is None else range(1, MAX_SEVERITY + 1):
            model = OracleAdapter(corruption=corruption, severity=sev)
            r = score_suite(suite, model, scorers.__getitem__, cache, args.n, args.seed, 16)
            if not metrics:  # known after the first run: some of a suite's metrics need optional weights (drift's LPIPS)
                metrics = args.metrics or [m for m in own if m in r.metrics]
                lines += ["| corruption | severity | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
            cells = [f"{r.metrics[m].value:.3f} [{r.metrics[m].ci_low:.2f}, {r.metrics[m].ci_high:.2f}]" for m in metrics]
            lines.append(f"| {corruption or 'clean'} | {sev} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    picked = f" --metrics {' '.join(args.metrics)}" if args.metrics else ""
    cmd = f"python benchmarks/validity.py --suite {args.suite} --n {args.n} --corruptions {' '.join(args.corruptions)}{picked} --out {args.out}"
    lines += ["", f"Command: `{cmd}` ({time.time() - t0:.0f} s on this 2-core machine)."]
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
