"""Arena votes/s on loopback: 50 concurrent voters × 100 votes against `nbeval arena serve` (one
uvicorn process), on SQLite (WAL, synchronous=FULL) and on a throwaway local PostgreSQL; client and
server share this machine's cores. Each vote is what a browser does: GET the battle page, POST the
form (every 10th posted twice, the replay refused).

    python benchmarks/arena_load.py --repeats 3 --out benchmarks/results/arena_load.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from nbeval.arena.loadtest import load_test
from nbeval.testing import throwaway_postgres


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voters", type=int, default=50)
    p.add_argument("--votes", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    rows = []
    for db in ("sqlite", "postgresql"):
        for k in range(a.repeats):
            with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
                url = f"sqlite:///{Path(tmp) / 'arena.db'}" if db == "sqlite" else stack.enter_context(throwaway_postgres())
                r = load_test(url, Path(tmp), a.voters, a.votes, prompts=50)
            print(db, r, flush=True)
            rows.append((db, r))
    lines = [
        "# Arena load: votes/s on loopback", "",
        f"{a.voters} concurrent voters × {a.votes} votes, one uvicorn process, client and server on the same "
        f"{os.cpu_count()}-core machine, no GPU. A vote = GET /battle + POST /vote (303 only after the commit).", "",
        "| database | run | votes acknowledged | stored | lost | duplicated | replays refused | seconds | votes/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, (db, r) in enumerate(rows):
        lines.append(f"| {db} | {k % a.repeats + 1} | {r['acknowledged']} | {r['stored']} | {r['lost']} | {r['duplicated']} | {r['replays_refused']} | {r['seconds']} | {r['votes_per_s']} |")
    lines += ["", f"Command: `python benchmarks/arena_load.py --voters {a.voters} --votes {a.votes} --repeats {a.repeats} --out {a.out}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
