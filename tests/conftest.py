"""Shared fixtures: the real configs composed with outputs and caches under tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from nbeval import api
from nbeval.cache import Cache
from nbeval.testing import NBEVAL

pytest_plugins = ["nbeval.testing.fixtures"]  # nbeval_serve: what users' own tests get too


def _share_the_cores() -> None:
    """Under pytest-xdist, each worker, and every command it starts, runs torch on its share of the
    cores (unless OMP_NUM_THREADS says otherwise). Oversubscribed, OpenMP's threads spin against each
    other: two processes reading OCR on 2 cores read 0.69 images/s each at 2 threads, 1.44 at 1."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and "OMP_NUM_THREADS" not in os.environ:
        import torch

        share = max(1, len(os.sched_getaffinity(0)) // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


_share_the_cores()


@pytest.fixture
def compose_cfg(tmp_path):
    """compose(overrides) → the real config (`api.compose`, `model=[a,b]` included), with the cache in
    tmp_path and no tracking unless asked."""

    def _compose(overrides: list[str] = ()):
        GlobalHydra.instance().clear()
        return api.compose([f"cache_dir={tmp_path / 'cache'}", "tracking=none", *overrides])

    yield _compose
    GlobalHydra.instance().clear()


def evaluate(cfg, out_dir: Path) -> dict:
    """A whole run, as `nbeval run` makes it: evaluate, then write and track (results.json's content)."""
    return api.finalize(api.evaluate(cfg), out_dir, api.make_tracker(cfg.tracking))


@pytest.fixture
def cache(tmp_path) -> Cache:
    return Cache(tmp_path / "cache")


@pytest.fixture(scope="session")
def mlflow_db(tmp_path_factory):
    """mlflow_db(path) → the sqlite URI of a new, empty MLflow database at `path`: a copy of one this
    worker created once. Creating one runs MLflow's alembic migrations, 5 s of a small run's 11 (only
    tests/test_cli_tracking.py still lets `nbeval run` create its database)."""
    import mlflow

    template = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{template}").search_experiments()  # creates and migrates it

    def make(path: Path) -> str:
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"

    return make


@pytest.fixture(scope="session")
def ocr_scorer():
    """One easyocr reader for the whole session: it takes seconds to load."""
    from nbeval.scorers.ocr import EasyOCRScorer

    return EasyOCRScorer()


@pytest.fixture(scope="session")
def text_cache(tmp_path_factory) -> Cache:
    """One cache for the tests that read the oracle's text renders, shared by every xdist worker (the
    folder above each worker's base temp, as xdist's docs do): readings are keyed by the image's bytes
    and the cache takes concurrent writers. Their samples are prefixes of one list (text_rendering's
    samples for n=10, 18, 24 begin the 60 of the clean check), so the clean oracle's readings and those
    of typo severity 2 serve the validity sweeps, OneIG's score and the nightly report alike; whichever
    test comes first reads them."""
    root = tmp_path_factory.getbasetemp()
    return Cache((root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "text_cache")


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real `nbeval` command in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(NBEVAL + args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


# --- the arena: a real server on loopback, a real PostgreSQL ---------------------------------------

ADMIN_KEY = "test-admin-key-0123456789"


def need(program: str) -> str:
    """Path of a system program a test needs. CI installs them all, so there a missing one fails;
    elsewhere the test is skipped with the install command."""
    from nbeval.testing import postgres_program

    path = postgres_program(program)
    if path is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{program} is not installed (apt-get install chromium postgresql)")
    return path


@pytest.fixture(scope="session")
def postgres_url():
    from nbeval.testing import throwaway_postgres

    need("initdb")
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An arena database URL: a test taking it runs on SQLite (in tmp_path) and on a throwaway PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'arena.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def arena_server(tmp_path):
    """Start servers on demand: arena_server(db_url=None, **serve options) → ArenaServer (SQLite in
    tmp_path by default); all are stopped at the end of the test."""
    from nbeval.testing import ArenaServer

    servers = []

    def start(db_url: str | None = None, **options) -> ArenaServer:
        servers.append(ArenaServer(db_url or f"sqlite:///{tmp_path / 'arena.db'}", tmp_path, ADMIN_KEY, **options))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


# --- nbeval serve in a thread (a real HTTP server over an adapter built in the test) ---------------


@pytest.fixture
def inprocess():
    """serve(adapter, **ServeConfig) → base URL of create_app(adapter) under uvicorn in a thread."""
    import uvicorn

    from nbeval.serve import ServeConfig, create_app
    from nbeval.testing import free_port

    servers = []

    def serve(adapter, **config) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(adapter, ServeConfig(**config)), host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
        while not server.started:
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}/v1"

    yield serve
    for s in servers:
        s.should_exit = True
