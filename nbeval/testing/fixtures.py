"""pytest fixtures over nbeval.testing, for nbeval's tests and a team's own:

    # conftest.py
    pytest_plugins = ["nbeval.testing.fixtures"]

    def test_my_model_over_http(nbeval_serve, tmp_path):
        server = nbeval_serve("model=diffusers", "model.path=/models/mine")   # running until the test ends
        ...  nbeval run model=openai_http model.base_url={server.url} model.model=diffusers …
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from nbeval.testing import ServeProcess


@pytest.fixture
def nbeval_serve(tmp_path) -> Iterator[Callable[..., ServeProcess]]:
    """nbeval_serve(*args, env=None) → a started `nbeval serve <args>`; all are stopped after the test."""
    servers: list[ServeProcess] = []

    def start(*args: str, env: dict | None = None) -> ServeProcess:
        servers.append(ServeProcess(list(args), tmp_path, env=env).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()
