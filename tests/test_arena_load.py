"""Load on loopback: 50 voters at once cast 500 votes against the real server, on SQLite and on a
real PostgreSQL (the concurrency is the 50 voters; the 5,000-vote run and its votes/s are the
benchmark's: benchmarks/arena_load.py). Every acknowledged vote must be in the database exactly once, nothing else may be,
and the replays the voters post must all be refused; and a server killed (SIGKILL) mid-load loses
and duplicates no acknowledged vote."""

from __future__ import annotations

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
