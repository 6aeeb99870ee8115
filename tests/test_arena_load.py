"""Load on loopback: 50 voters at once cast 5,000 votes against the real server, on SQLite and on a
real PostgreSQL. Every acknowledged vote must be in the database exactly once, nothing else may be,
and the replays the voters post must all be refused. (Votes/s: benchmarks/arena_load.py.)"""

from __future__ import annotations

import pytest

from nbeval.arena.loadtest import load_test

VOTERS, VOTES_EACH = 50, 100  # every 10th vote is replayed


@pytest.mark.slow
def test_5000_votes_from_50_concurrent_voters_none_lost_none_duplicated(db_url, tmp_path):
    # 3 models × 50 prompts = 150 battles: more than each voter's 100 votes
    report = load_test(db_url, tmp_path, VOTERS, VOTES_EACH, prompts=50)
    assert report["images_added"] == 150 and report["battles_added"] == 150
    assert report["acknowledged"] == report["stored"] == VOTERS * VOTES_EACH
    assert report["lost"] == 0 and report["duplicated"] == 0
    assert report["replays_refused"] == VOTERS * VOTES_EACH // 10 and report["replays_accepted"] == 0
