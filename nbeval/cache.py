"""Content-addressed cache shared by runs: images by sha256, plus indexes of generations and scores.

- Images are PNG files named by the sha256 of their bytes, written to a temporary name and renamed
  into place, so a reader never sees half a file and a killed writer leaves no corrupt entry.
- The indexes live in one SQLite database (WAL mode, busy timeout): several processes and several
  runs can read and write at once, and each entry is committed as soon as its work is done, so a run
  killed halfway resumes without redoing anything already finished.
- Weight files' digests are memoised beside them (`file_digest`), by (path, size, mtime): 90 MB of
  OCR weights are hashed once, not on every run, and again as soon as either changes; what only a
  model load tells (a CLIP backbone's preprocessing) is memoised by what fixes it (`memoised`).
- Generations are keyed by (model fingerprint, sample key + image size, turn) — the model is part of the key, so
  one model's images are never served as another's. Scores are keyed by (scorer fingerprint, image
  sha256, truth hash). Only successes are cached; a failure is retried on the next run.
- Aggregates (a suite's metrics with their CIs) are keyed by a hash of what they depend on
  (`runner.aggregate`: the tables' content, the suite's version, params and aggregation code); a
  suite's figures (sample grid, plots, galleries) likewise, as the PNG files drawn (`results.write_run`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import time
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    model_fp TEXT NOT NULL, sample_key TEXT NOT NULL, turn INTEGER NOT NULL,
    image_sha256 TEXT NOT NULL, seconds REAL NOT NULL, manifest TEXT NOT NULL,
    PRIMARY KEY (model_fp, sample_key, turn)
);
CREATE TABLE IF NOT EXISTS scores (
    scorer_fp TEXT NOT NULL, image_sha256 TEXT NOT NULL, truth_hash TEXT NOT NULL,
    reading TEXT NOT NULL,
    PRIMARY KEY (scorer_fp, image_sha256, truth_hash)
);
CREATE TABLE IF NOT EXISTS aggregates (key TEXT PRIMARY KEY, metrics TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS figures (key TEXT PRIMARY KEY, files TEXT NOT NULL);
"""


DIGESTS = "digests"
MEMOS = "memos"


def default_cache_dir() -> Path:
    """The run config's default `cache_dir` (conf/config.yaml), for code that runs without a config."""
    return Path(os.environ.get("NBEVAL_CACHE_DIR") or Path(os.environ.get("HOME", ".")) / ".cache" / "nbeval")


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", memo_dir: str | os.PathLike | None = None) -> str:
    """`algorithm` digest of a file's bytes, memoised on disk by (resolved path, size, mtime): weights
    checked on every run are read once, and read again when their size or mtime changes. One small
    JSON file per (path, algorithm), replaced atomically, so concurrent runs share it; a memo that
    cannot be written only costs the hash next time."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = {"path": str(path), "algorithm": algorithm, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    memo = Path(memo_dir or default_cache_dir() / DIGESTS).expanduser()
    entry = memo / f"{hashlib.sha256(f'{algorithm}:{path}'.encode()).hexdigest()[:32]}.json"
    try:
        known = json.loads(entry.read_text())
        if {k: known.get(k) for k in stamp} == stamp:
            return known["digest"]
    except (OSError, ValueError, KeyError):
        pass
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, algorithm).hexdigest()
    _write_json(entry, stamp | {"digest": digest})
    return digest


def _write_json(entry: Path, value: dict) -> None:
    """Replace `entry` atomically (concurrent runs share it); a memo that cannot be written only costs
    its computation next time."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
        os.replace(tmp, entry)
    except OSError:
        pass


def memoised(kind: str, key: dict, compute: Callable[[], dict], memo_dir: str | os.PathLike | None = None) -> dict:
    """`compute()`, memoised on disk by `key` (JSON): for what costs a model load to learn and is fixed
    by what the key names (a CLIP backbone's preprocessing, by its architecture, weights digest and
    package versions), so a run that reads nothing new never loads the model."""
    memo = Path(memo_dir or default_cache_dir() / MEMOS).expanduser()
    entry = memo / kind / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]}.json"
    try:
        known = json.loads(entry.read_text())
        if known.get("key") == key:
            return known["value"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    value = compute()
    _write_json(entry, {"key": key, "value": value})
    return value


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _use_wal(conn: sqlite3.Connection, wait: float = 60.0) -> None:
    """Switch the index to WAL (it stays so in the file). Switching ignores the busy timeout, so two
    processes opening a fresh cache at once retry instead of failing with "database is locked"."""
    deadline = time.monotonic() + wait
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Cache:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        self.images = self.root / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        # One connection per process: a connection must not cross a fork.
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(self.root / "index.sqlite", timeout=60, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=60000")
            _use_wal(conn)
            conn.executescript(_SCHEMA)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def __getstate__(self) -> dict:
        return {"root": self.root}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"])

    # -- images ---------------------------------------------------------------------------------
    def image_path(self, sha: str) -> Path:
        return self.images / sha[:2] / f"{sha}.png"

    def put_image(self, img: Image.Image) -> str:
        return self._put_png(encode_png(img.convert("RGB")))

    def _put_png(self, data: bytes) -> str:
        """Store PNG bytes under their sha256 (atomically, durably, once) and return it."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.image_path(sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        return sha

    def get_image(self, sha: str) -> Image.Image:
        with Image.open(self.image_path(sha)) as im:
            return im.convert("RGB")

    def has_image(self, sha: str) -> bool:
        return self.image_path(sha).exists()

    # -- generation index -----------------------------------------------------------------------
    def get_generation(self, model_fp: str, sample_key: str, turn: int) -> dict | None:
        row = self.conn.execute(
            "SELECT image_sha256, seconds, manifest FROM generations WHERE model_fp=? AND sample_key=? AND turn=?",
            (model_fp, sample_key, turn),
        ).fetchone()
        if row is None or not self.has_image(row[0]):
            return None
        return {"image_sha256": row[0], "seconds": row[1], "manifest": json.loads(row[2])}

    def put_generation(self, model_fp: str, sample_key: str, turn: int, image_sha256: str, seconds: float, manifest: dict) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?, ?, ?)",
            (model_fp, sample_key, turn, image_sha256, seconds, json.dumps(manifest, sort_keys=True)),
        )

    # -- score index ----------------------------------------------------------------------------
    def get_reading(self, scorer_fp: str, image_sha256: str, truth_hash: str) -> dict | None:
        row = self.conn.execute(
            "SELECT reading FROM scores WHERE scorer_fp=? AND image_sha256=? AND truth_hash=?",
            (scorer_fp, image_sha256, truth_hash),
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def put_readings(self, scorer_fp: str, items: list[tuple[str, str, dict]]) -> None:
        """Store (image sha256, truth hash, reading) triples in one transaction."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)",
                [(scorer_fp, sha, th, json.dumps(r, sort_keys=True)) for sha, th, r in items],
            )

    # -- aggregate index ------------------------------------------------------------------------
    def get_aggregate(self, key: str) -> dict | None:
        row = self.conn.execute("SELECT metrics FROM aggregates WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_aggregate(self, key: str, metrics: dict) -> None:
        """Metric name → estimate as a dict, in the suite's order (floats round-trip exactly, NaN too)."""
        self.conn.execute("INSERT OR REPLACE INTO aggregates VALUES (?, ?)", (key, json.dumps(metrics, default=lambda x: x.item())))

    # -- figure index ---------------------------------------------------------------------------
    def get_figures(self, key: str) -> dict[str, bytes] | None:
        """Relative path → PNG bytes of the figures drawn under `key`; None unless all are here."""
        row = self.conn.execute("SELECT files FROM figures WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return {rel: self.image_path(sha).read_bytes() for rel, sha in json.loads(row[0]).items()}
        except OSError:
            return None

    def put_figures(self, key: str, files: dict[str, bytes]) -> None:
        """Keep PNG files as drawn, byte for byte (beside the images, named by their sha256)."""
        shas = {rel: self._put_png(data) for rel, data in files.items()}
        self.conn.execute("INSERT OR REPLACE INTO figures VALUES (?, ?)", (key, json.dumps(shas, sort_keys=True)))

    def stats(self) -> dict[str, int]:
        n_gen = self.conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
        n_sc = self.conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
        n_img = sum(1 for _ in self.images.glob("*/*.png"))
        return {"generations": n_gen, "scores": n_sc, "images": n_img}
