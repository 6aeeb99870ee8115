"""Every suite's metrics, CIs included, equal to the last digit those the code computed when
tests/data/golden_metrics.json was recorded (its `command`): speed work (cached aggregates,
vectorised bootstraps, plots from the computed metrics) must change no number. Each recorded run is
made once per session, cold and then warm (everything from its cache, aggregates included), and
every suite of both compared against it. It takes 6 minutes on a quiet 2-core machine (one thread), so it is
left out of the default run (CI) and run before speed work lands: `pytest -m golden`."""

from __future__ import annotations

import json

import pytest
import torch

from golden.metrics import FILE, RUNS, canonical, metrics

pytestmark = pytest.mark.xdist_group("test_golden_metrics")  # one worker: each recorded run is made once per session, not once per worker

GOLDEN = json.loads(FILE.read_text())["runs"]


@pytest.fixture(scope="session")
def computed(tmp_path_factory):
    """(run name, "cold" | "warm") → suite → metrics, as the current code computes them (each run made
    on first use, its warm repeat right after on the same cache) on one torch thread, as they were
    recorded: float32 convolutions (SSIM's) change in their last bits with the thread count."""
    made: dict[tuple[str, str], dict] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def get(run: str, cache: str) -> dict:
        if (run, cache) not in made:
            workdir = tmp_path_factory.mktemp(run)
            made[run, "cold"] = metrics(RUNS[run], workdir, "cold")
            made[run, "warm"] = metrics(RUNS[run], workdir, "warm")
        return made[run, cache]

    yield get
    torch.set_num_threads(threads)


@pytest.mark.golden
@pytest.mark.parametrize("cache", ["cold", "warm"])
@pytest.mark.parametrize("run,suite", [(run, suite) for run, rec in GOLDEN.items() for suite in rec["metrics"]])
def test_metrics_equal_the_recorded_ones(computed, run, suite, cache):
    assert canonical(computed(run, cache)[suite]) == canonical(GOLDEN[run]["metrics"][suite])

