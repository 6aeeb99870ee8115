"""Shared fixtures: the real configs composed with outputs and caches under tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from nbeval.cache import Cache
from nbeval.cli import CONFIG_MODULE

NBEVAL = [sys.executable, "-m", "nbeval.cli"]


@pytest.fixture
def compose_cfg(tmp_path):
    """compose(overrides) → the real config, with the cache in tmp_path and no tracking unless asked."""

    def _compose(overrides: list[str] = ()):
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            base = [f"cache_dir={tmp_path / 'cache'}", "tracking=none"]
            return compose("config", overrides=base + list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def cache(tmp_path) -> Cache:
    return Cache(tmp_path / "cache")


@pytest.fixture(scope="session")
def ocr_scorer():
    """One easyocr reader for the whole session: it takes seconds to load."""
    from nbeval.scorers.ocr import EasyOCRScorer

    return EasyOCRScorer(threads=2)


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real `nbeval` command in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(NBEVAL + args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


# --- the arena: a real server on loopback, a real PostgreSQL ---------------------------------------

ADMIN_KEY = "test-admin-key-0123456789"


def need(program: str) -> str:
    """Path of a system program a test needs. CI installs them all, so there a missing one fails;
    elsewhere the test is skipped with the install command."""
    from nbeval.arena.loadtest import postgres_program

    path = postgres_program(program)
    if path is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{program} is not installed (apt-get install chromium postgresql)")
    return path


@pytest.fixture(scope="session")
def postgres_url():
    from nbeval.arena.loadtest import throwaway_postgres

    need("initdb")
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def arena_server(tmp_path):
    """Start servers on demand: arena_server(db_url=None, **serve options) → ArenaServer (SQLite in
    tmp_path by default); all are stopped at the end of the test."""
    from nbeval.arena.loadtest import ArenaServer

    servers = []

    def start(db_url: str | None = None, **options) -> ArenaServer:
        servers.append(ArenaServer(db_url or f"sqlite:///{tmp_path / 'arena.db'}", tmp_path, ADMIN_KEY, **options))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()
