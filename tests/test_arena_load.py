"""Load on loopback: 50 voters at once cast 500 votes against the real server, on SQLite and on a
real PostgreSQL (the concurrency is the 50 voters; the 5,000-vote run and its votes/s are the
benchmark's: benchmarks/arena_load.py). Every acknowledged vote must be in the database exactly once, nothing else may be,
and the replays the voters post must all be refused; and a server killed (SIGKILL) mid-load loses
and duplicates no acknowledged vote."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa

from nbeval.arena.loadtest import crash_test, load_test

VOTERS, VOTES_EACH = 50, 10  # every 10th vote is replayed


@pytest.mark.slow
def test_500_votes_from_50_concurrent_voters_none_lost_none_duplicated(db_url, tmp_path):
    # 3 models × 50 prompts = 150 battles: more than each voter's 10 votes
    report = load_test(db_url, tmp_path, VOTERS, VOTES_EACH, prompts=50)
    assert report["images_added"] == 150 and report["battles_added"] == 150
    assert report["acknowledged"] == report["stored"] == VOTERS * VOTES_EACH
    assert report["lost"] == 0 and report["duplicated"] == 0
    assert report["replays_refused"] == VOTERS * VOTES_EACH // 10 and report["replays_accepted"] == 0


@pytest.mark.slow
def test_a_server_killed_mid_load_loses_and_duplicates_no_acknowledged_vote(db_url, tmp_path):
    report = crash_test(db_url, tmp_path, voters=20, kill_after_s=8)
    assert report["cut_off"] == 20 and report["acknowledged"] > 20  # killed mid-load, after votes were acknowledged
    assert report["lost"] == 0 and report["duplicated"] == 0
    assert report["stored"] == report["acknowledged"] + report["unacknowledged_stored"] and report["unacknowledged_stored"] <= 20
    assert report["votes_after_restart"] == 1
    if db_url.startswith("sqlite"):
        engine = sa.create_engine(db_url)
        with engine.connect() as c:
            assert c.execute(sa.text("PRAGMA integrity_check")).scalar() == "ok"
        engine.dispose()


# A new interpreter (the queries' first use in a process is what raced): 50 threads wait at a barrier,
# then each reads the votes of one arena, as the server's request threads do when they rank pairs.
_FIRST_USE_BY_50_THREADS = """
import sys, threading
from nbeval.arena import db, store
sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can: the race shows in 1 of 2 processes
sessions = db.make_sessions(db.make_engine(sys.argv[1]))
with sessions() as s:
    arena_id = store.create_arena(s, "race").id
barrier, failures = threading.Barrier(50), []
def read_votes():
    with sessions() as s:
        arena = store.get_arena(s, arena_id)
        barrier.wait()
        try:
            assert store.votes_frame(s, arena).empty
        except Exception as e:
            failures.append(repr(e)[:200])
threads = [threading.Thread(target=read_votes) for _ in range(50)]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(failures), failures[:1])
"""


def test_fifty_request_threads_reading_votes_at_once_in_a_new_process_all_succeed(tmp_path):
    """The load test once ended in 500s: the server's threads raced to build a module-level SQLAlchemy
    alias on its first use and left it broken for the process (`store._battles_with_models` now
    aliases per query). Before the fix 11 of 20 such processes failed; six in a row would all pass by
    chance about once in a hundred."""
    procs = [subprocess.Popen([sys.executable, "-c", _FIRST_USE_BY_50_THREADS, f"sqlite:///{tmp_path / f'arena{i}.db'}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert out.startswith("0 []"), out
