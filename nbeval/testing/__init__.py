"""Real servers for tests — nbeval's and a team's own: `nbeval serve`, the arena, an MLflow server and
a throwaway PostgreSQL, each in its own process on a free loopback port.

    from nbeval.testing import ServeProcess
    with ServeProcess(["model=oracle"], tmp_path) as server:      # nbeval serve, until /health answers
        ...  nbeval run model=openai_http model.base_url={server.url} …

pytest fixture over them: `pytest_plugins = ["nbeval.testing.fixtures"]` (nbeval_serve).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

NBEVAL = [sys.executable, "-m", "nbeval.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server program in a subprocess (its own process group) on a loopback port, started until
    `health` answers below 500. stop() (SIGTERM), kill() (SIGKILL, as a crash) and start() again on
    the same port; each life's log is kept in `workdir`."""

    label = "server"

    def __init__(self, command: list[str], workdir: Path, port: int | None = None, env: dict | None = None, health: str = "/health") -> None:
        """`command` may hold "{port}", filled in with the port."""
        self.port = port or free_port()
        self.command = [c.replace("{port}", str(self.port)) for c in command]
        self.workdir, self.env, self.health = Path(workdir), dict(env or {}), health
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.lives, self.start_seconds = 0, 0.0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.label}-{self.port}-{self.lives}.log"

    def start(self, timeout: float = 120) -> ServerProcess:
        """Start it and wait until it answers (`start_seconds`: how long that took)."""
        t0 = time.monotonic()
        self.lives += 1
        with self.log_path.open("w") as out:
            self.proc = subprocess.Popen(self.command, cwd=self.workdir, env={**os.environ, **self.env}, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.base_url + self.health, timeout=1).status_code < 500:
                    self.start_seconds = time.monotonic() - t0
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise TimeoutError(f"{self.label} did not answer within {timeout} s: {self.log_tail()}")
            time.sleep(0.1)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # its group: a server may start workers of its own

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text()[-chars:] if self.log_path.exists() else ""

    def logs(self) -> list[str]:
        """Every life's log, oldest first."""
        return [(self.workdir / f"{self.label}-{self.port}-{i}.log").read_text() for i in range(1, self.lives + 1)]

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServeProcess(ServerProcess):
    """`nbeval serve <args>` (Hydra overrides and serve options); `url` is its API base (…/v1)."""

    label = "serve"

    def __init__(self, args: list[str], workdir: Path, port: int | None = None, env: dict | None = None) -> None:
        super().__init__([*NBEVAL, "serve", *args, "port={port}"], workdir, port, env)
        self.url = self.base_url + "/v1"


class ArenaServer(ServerProcess):
    """`nbeval arena serve` on `db_url`, started at once, with an admin client (`admin`) pointed at it."""

    label = "arena-server"

    def __init__(self, db_url: str, workdir: Path, admin_key: str, **options) -> None:
        from nbeval.arena.client import AdminClient

        args = [f"db={db_url}", "port={port}", *(f"{k}={v}" for k, v in options.items())]
        super().__init__([*NBEVAL, "arena", "serve", *args], workdir, env={"NBEVAL_ARENA_ADMIN_KEY": admin_key}, health="/")
        self.url = self.base_url
        self.start(timeout=60)
        self.admin = AdminClient(self.url, admin_key)


class MLflowServer(ServerProcess):
    """`mlflow server` over `backend_uri`, artifacts in `artifacts` (served), one worker, without
    MLflow's job runner (a second process, not needed for tracking)."""

    label = "mlflow-server"

    def __init__(self, backend_uri: str, artifacts: Path, workdir: Path) -> None:
        super().__init__([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts),
                          "--serve-artifacts", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"],
                         workdir, env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        self.url, self.backend_uri = self.base_url, backend_uri


def postgres_program(name: str) -> str | None:
    """A PostgreSQL server program from PATH or Debian's versioned folder."""
    return shutil.which(name) or next((str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A fresh PostgreSQL cluster on a free loopback port (trust auth), removed afterwards; yields
    its SQLAlchemy URL. Run as root, the server runs as the `postgres` user (it refuses root)."""
    initdb, pg_ctl = postgres_program("initdb"), postgres_program("pg_ctl")
    if not (initdb and pg_ctl):
        raise FileNotFoundError("PostgreSQL server programs not found: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="nbeval-pg-"))
    data, as_user = root / "data", []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]

    def pg(*args: str) -> None:
        r = subprocess.run(as_user + list(args), capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{' '.join(args)}: {r.stdout}{r.stderr}")

    port = free_port()
    try:
        pg(initdb, "-D", str(data), "-A", "trust", "-U", "postgres")
        pg(pg_ctl, "-D", str(data), "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200", "-l", str(root / "log"), "-w", "start")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            pg(pg_ctl, "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)
