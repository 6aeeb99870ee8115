"""The cache under stress: a run SIGKILLed halfway resumes without redoing work and ends with the
same results; two runs at once on one cache both finish and leave it consistent."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import time

import pandas as pd
import pytest

from conftest import NBEVAL, run_cli

pytestmark = pytest.mark.slow


def _args(cache, out, n=12, suite="[text_rendering]"):
    # batches of 4: the readings land in the cache four at a time, so a kill can fall between them
    return ["run", "model=oracle", f"suite={suite}", f"n={n}", "seed=0", "batch_size=4", "tracking=none", f"cache_dir={cache}", f"hydra.run.dir={out}"]


def _count(db, table):
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=30) as c:
        try:
            return c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        except sqlite3.OperationalError:  # schema not created yet
            return 0


def _results(out):
    return json.loads((out / "results.json").read_text())


def _scores(out, suite="text_rendering"):
    df = pd.read_parquet(out / suite / "scores.parquet")
    return df.sort_values(["sample_id", "metric"]).reset_index(drop=True)[["sample_id", "turn", "metric", "value", "detail"]]


def test_sigkill_halfway_then_resume_redoes_nothing_and_matches(tmp_path):
    cache, db = tmp_path / "cache", tmp_path / "cache" / "index.sqlite"
    proc = subprocess.Popen(NBEVAL + _args(cache, tmp_path / "killed"), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _count(db, "scores") < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_gen, done_read = _count(db, "generations"), _count(db, "scores")
    assert proc.returncode == -signal.SIGKILL
    assert 4 <= done_read < 12, "the kill must land halfway through scoring"

    resumed = run_cli(_args(cache, tmp_path / "resumed"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rec = _results(tmp_path / "resumed")["suites"]["text_rendering"]
    assert rec["cached_generations"] == done_gen == 12
    assert rec["cached_readings"] == done_read

    fresh = run_cli(_args(tmp_path / "fresh_cache", tmp_path / "fresh"), tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    pd.testing.assert_frame_equal(_scores(tmp_path / "resumed"), _scores(tmp_path / "fresh"))
    assert rec["metrics"] == _results(tmp_path / "fresh")["suites"]["text_rendering"]["metrics"]

    again = run_cli(_args(cache, tmp_path / "again"), tmp_path)
    assert again.returncode == 0
    rec = _results(tmp_path / "again")["suites"]["text_rendering"]
    assert rec["cached_generations"] == 12 and rec["cached_readings"] == 12


def test_two_runs_at_once_on_one_cache(tmp_path):
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen(NBEVAL + _args(cache, tmp_path / f"out{i}", suite="[counting,text_rendering]") + ["suite.text_rendering.tiers=[words_1,digits]"],
                         cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    a, b = _results(tmp_path / "out0"), _results(tmp_path / "out1")
    for suite in ("counting", "text_rendering"):
        assert a["suites"][suite]["metrics"] == b["suites"][suite]["metrics"]
    with sqlite3.connect(cache / "index.sqlite") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        shas = [r[0] for r in c.execute("SELECT image_sha256 FROM generations")]
    assert len(shas) == 24
    for sha in shas:
        path = cache / "images" / sha[:2] / f"{sha}.png"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert not list(cache.glob("images/*/*.tmp"))
