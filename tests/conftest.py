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
