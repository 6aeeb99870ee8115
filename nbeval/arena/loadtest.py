"""Load on loopback: many voters at once against a real `nbeval arena serve`, on SQLite or on a
throwaway PostgreSQL cluster, then a check that every acknowledged vote is stored exactly once.

    python -m nbeval.arena.loadtest --db sqlite --voters 50 --votes 100
    python -m nbeval.arena.loadtest --db postgresql          # needs Debian's postgresql installed

The tests (tests/test_arena_load.py) and the benchmark (benchmarks/arena_load.py) use these pieces.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd

from nbeval.arena.client import AdminClient, form_fields, sign_in
from nbeval.testing import ArenaServer, throwaway_postgres

WINNERS = ("a", "b", "tie", "both_bad")


@dataclass
class VoterLog:
    name: str
    acknowledged: list[str] = field(default_factory=list)  # battle ids whose vote got a 303
    refused_replays: int = 0
    accepted_replays: int = 0  # must stay 0
    throttled: int = 0
    cut_off: bool = False  # the server went away mid-request (a crash test): that vote was never acknowledged


async def _voter(base_url: str, name: str, token: str, votes: int, replay_every: int, offset: int, until_crash: bool = False) -> VoterLog:
    log = VoterLog(name)
    try:
        await _vote(log, base_url, token, votes, replay_every, offset)
    except httpx.TransportError:
        if not until_crash:
            raise
        log.cut_off = True
    return log


async def _vote(log: VoterLog, base_url: str, token: str, votes: int, replay_every: int, offset: int) -> None:
    name = log.name
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
        await sign_in(http, token)
        while len(log.acknowledged) < votes:
            fields = form_fields((await http.get("/battle")).text)
            if "battle_id" not in fields:
                break  # nothing left to vote on
            form = {**fields, "winner": WINNERS[(offset + len(log.acknowledged)) % 4]}
            while (r := await http.post("/vote", data=form)).status_code == 429:
                log.throttled += 1
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            if r.status_code != 303:
                raise RuntimeError(f"{name}: vote answered {r.status_code}: {r.text[:200]}")
            log.acknowledged.append(fields["battle_id"])
            if replay_every and len(log.acknowledged) % replay_every == 0:
                again = await http.post("/vote", data=form)
                if again.status_code == 409:
                    log.refused_replays += 1
                elif again.status_code != 429:
                    log.accepted_replays += 1


@dataclass
class LoadResult:
    voters: list[VoterLog]
    seconds: float

    @property
    def votes(self) -> int:
        return sum(len(v.acknowledged) for v in self.voters)

    @property
    def votes_per_s(self) -> float:
        return self.votes / self.seconds


def run_load(base_url: str, tokens: dict[str, str], votes_per_voter: int, replay_every: int = 10, until_crash: bool = False) -> LoadResult:
    """Every voter at once, each as fast as the server answers, one request in flight per voter
    (like a person's browser: read the battle page, post the form); every `replay_every`-th vote is
    posted a second time, which the server must refuse. `until_crash`: a voter whose connection
    fails stops there (`cut_off`) instead of raising."""

    async def all_voters():
        return await asyncio.gather(*(_voter(base_url, n, t, votes_per_voter, replay_every, i, until_crash) for i, (n, t) in enumerate(tokens.items())))

    t0 = time.perf_counter()
    logs = asyncio.run(all_voters())
    return LoadResult(list(logs), time.perf_counter() - t0)


def stored_votes(admin: AdminClient, arena_id: str) -> pd.DataFrame:
    return pd.read_json(io.StringIO(admin.votes_jsonl(arena_id)), lines=True)


def lost_and_duplicated(result: LoadResult, stored: pd.DataFrame) -> tuple[int, int]:
    """(acknowledged votes missing from the database, stored votes beyond one per acknowledgement)."""
    acked = pd.DataFrame([(v.name, b) for v in result.voters for b in v.acknowledged], columns=["voter", "battle_id"])
    merged = acked.merge(stored[["voter", "battle_id"]].assign(stored=1), how="left", on=["voter", "battle_id"])
    return int(merged["stored"].isna().sum()), len(stored) - int(merged["stored"].notna().sum())


def demo_generations(n: int, models: dict[str, tuple[str | None, int]] | None = None, seed: int = 0) -> list[tuple]:
    """(model, sample_id, prompt, image) for `n` counting prompts drawn by oracle variants
    (name → (corruption, severity)): real renders, no model weights needed."""
    from nbeval.adapters.base import GenRequest
    from nbeval.adapters.oracle import OracleAdapter
    from suites.counting import CountingSuite

    models = models or {"oracle": (None, 0), "oracle_blurred": ("blur", 3), "oracle_dropped": ("drop", 2)}
    samples = CountingSuite().samples(n, seed)
    out = []
    for name, (corruption, severity) in models.items():
        results = OracleAdapter(name, corruption, severity).generate([GenRequest(s.id, s.prompt, s.seed, 128, s.truth[0]) for s in samples])
        out += [(name, s.id, s.prompt, r.image) for s, r in zip(samples, results)]
    return out


def load_test(db_url: str, workdir: Path, voters: int, votes: int, prompts: int) -> dict:
    """Seed an arena (3 oracle variants × `prompts`), let `voters` cast `votes` each, check the store."""
    server = ArenaServer(db_url, workdir, admin_key=os.urandom(16).hex(), logins_per_minute=100_000)
    try:
        arena = server.admin.create_arena("load test", reveal="end")  # after_vote would leave each voter one battle per prompt
        seeded = server.admin.import_generations(arena, demo_generations(prompts))
        tokens = server.admin.invite(arena, [f"voter{i:03d}" for i in range(voters)])
        result = run_load(server.url, tokens, votes)
        stored = stored_votes(server.admin, arena)
    finally:
        server.stop()
    lost, duplicated = lost_and_duplicated(result, stored)
    return {"voters": voters, "acknowledged": result.votes, "stored": len(stored), "lost": lost, "duplicated": duplicated,
            "replays_refused": sum(v.refused_replays for v in result.voters), "replays_accepted": sum(v.accepted_replays for v in result.voters),
            "throttled": sum(v.throttled for v in result.voters), "seconds": round(result.seconds, 2),
            "votes_per_s": round(result.votes_per_s, 1), **seeded}


def crash_test(db_url: str, workdir: Path, voters: int, kill_after_s: float, prompts: int = 50) -> dict:
    """`voters` vote flat out; after `kill_after_s` the server gets SIGKILL (a crash: no shutdown, no
    flush beyond what each commit did), then starts again on the same database. Every acknowledged
    vote must be stored exactly once; a vote in flight at the kill may be stored or not (at most one
    per voter, `unacknowledged_stored`), and the restarted server must take votes again."""
    server = ArenaServer(db_url, workdir, admin_key=os.urandom(16).hex(), logins_per_minute=100_000)
    try:
        arena = server.admin.create_arena(f"crash test {os.urandom(4).hex()}", reveal="end")
        server.admin.import_generations(arena, demo_generations(prompts))
        tokens = server.admin.invite(arena, [f"voter{i:03d}" for i in range(voters)])
        killer = threading.Timer(kill_after_s, server.kill)
        killer.start()
        result = run_load(server.url, tokens, 3 * prompts, until_crash=True)
        killer.join()
        server.start()
        stored = stored_votes(server.admin, arena)
        after = run_load(server.url, dict(list(tokens.items())[:1]), 1, replay_every=0)  # a voter's fresh sign-in votes again
    finally:
        server.stop()
    lost, _ = lost_and_duplicated(result, stored)
    acked = {(v.name, b) for v in result.voters for b in v.acknowledged}
    keys = list(zip(stored["voter"], stored["battle_id"]))
    return {"voters": voters, "kill_after_s": kill_after_s, "acknowledged": result.votes, "stored": len(stored), "lost": lost,
            "duplicated": len(keys) - len(set(keys)), "unacknowledged_stored": len(set(keys) - acked),
            "cut_off": sum(v.cut_off for v in result.voters), "votes_after_restart": after.votes, "restart_s": round(server.start_seconds, 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nbeval.arena.loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default="sqlite", help="sqlite, postgresql (a throwaway local cluster) or a SQLAlchemy URL")
    p.add_argument("--voters", type=int, default=50)
    p.add_argument("--votes", type=int, default=100, help="votes per voter")
    p.add_argument("--prompts", type=int, default=50, help="prompts; battles = 3 × prompts (each voter votes at most once per battle)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nbeval-load-") as tmp, contextlib.ExitStack() as stack:
        url = {"sqlite": f"sqlite:///{Path(tmp) / 'arena.db'}"}.get(a.db) or (stack.enter_context(throwaway_postgres()) if a.db == "postgresql" else a.db)
        report = load_test(url, Path(tmp), a.voters, a.votes, a.prompts)
    print(report)
    sys.exit(1 if report["lost"] or report["duplicated"] or report["replays_accepted"] else 0)


if __name__ == "__main__":
    main()
