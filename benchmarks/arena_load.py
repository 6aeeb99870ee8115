"""Arena votes/s on loopback: 50 concurrent voters × 100 votes against `nbeval arena serve` (one
uvicorn process), on SQLite (WAL, synchronous=FULL) and on a throwaway local PostgreSQL; client and
server share this machine's cores. Each vote is what a browser does: GET the battle page, POST the
form (every 10th posted twice, the replay refused). Then, per database, a crash: the server gets
SIGKILL mid-load and restarts on the same database, which must hold every acknowledged vote once.

    python benchmarks/arena_load.py --repeats 3 --out benchmarks/results/arena_load.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from nbeval.arena.loadtest import crash_test, load_test
from nbeval.testing import throwaway_postgres


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voters", type=int, default=50)
    p.add_argument("--votes", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--crash-voters", type=int, default=20)
    p.add_argument("--kill-after", type=float, default=8.0, help="seconds of load before the SIGKILL")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    rows, crashes = [], []
    for db in ("sqlite", "postgresql"):
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            url = f"sqlite:///{Path(tmp) / 'arena.db'}" if db == "sqlite" else stack.enter_context(throwaway_postgres())
            crashes.append((db, crash_test(url, Path(tmp), a.crash_voters, a.kill_after)))
        print(db, crashes[-1][1], flush=True)
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
    lines += [
        "", f"SIGKILL mid-load: {a.crash_voters} voters flat out, the server killed after {a.kill_after:g} s and started again on the same database.", "",
        "| database | votes acknowledged | stored | lost | duplicated | in flight at the kill, stored | voters cut off | restart s | votes after restart |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {db} | {r['acknowledged']} | {r['stored']} | {r['lost']} | {r['duplicated']} | {r['unacknowledged_stored']} | {r['cut_off']} | {r['restart_s']} | {r['votes_after_restart']} |"
          for db, r in crashes],
        "", f"Command: `python benchmarks/arena_load.py --voters {a.voters} --votes {a.votes} --repeats {a.repeats} --crash-voters {a.crash_voters}"
        f" --kill-after {a.kill_after:g} --out {a.out}`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
