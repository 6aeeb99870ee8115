"""The arena's tables (SQLAlchemy 2): arenas, blind images, battles, views, voters, their sessions, votes.

SQLite (WAL, fully synchronous) by default so a single machine needs nothing else; PostgreSQL by
URL for a shared arena. Uniqueness that matters for honest counts — one vote per voter per battle,
one image per (model, sample) — is a database constraint, not an application check, so concurrent
requests cannot slip past it. Columns added since a database was created are added to it when a
server opens it (`_migrate`), so an arena keeps its votes across upgrades.
"""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def opaque_id() -> str:
    """Random URL-safe id (128 bits): reveals nothing and cannot be guessed from its neighbours."""
    return secrets.token_urlsafe(16)


class Base(DeclarativeBase):
    pass


class Setting(Base):
    """Server-wide values every worker must agree on (the cookie-signing secret)."""

    __tablename__ = "arena_settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Arena(Base):
    __tablename__ = "arenas"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=opaque_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    sampling: Mapped[str] = mapped_column(String(16), default="uncertainty")  # or "uniform" (audits)
    reveal: Mapped[str] = mapped_column(String(16), default="after_vote")  # | end | never (see store.REVEALS)
    aspect: Mapped[str] = mapped_column(String(8), default="refuse")  # | crop (see store.ASPECTS)
    image_size: Mapped[int] = mapped_column(Integer, default=256)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)


class BlindImage(Base):
    """A generation re-encoded for blind display; `png` is all a voter ever receives of it."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("arena_id", "model", "sample_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    arena_id: Mapped[str] = mapped_column(ForeignKey("arenas.id"), index=True)
    model: Mapped[str] = mapped_column(String(200))
    sample_id: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    source_sha256: Mapped[str] = mapped_column(String(64))  # of the bytes as imported
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)  # as imported (None: imported before sizes were kept)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    png: Mapped[bytes] = mapped_column(LargeBinary)
    suite: Mapped[str | None] = mapped_column(String(100), nullable=True)  # the sample's, for per-category leaderboards
    tags: Mapped[str | None] = mapped_column(Text, nullable=True)  # the sample's, a JSON list of "key=value"


class Battle(Base):
    """One pair of images of the same prompt. Side a is shown on the left. Images are served under
    per-view URLs (`View`); url_a/url_b are no longer served and stay only because existing
    databases hold them as NOT NULL."""

    __tablename__ = "battles"
    __table_args__ = (UniqueConstraint("arena_id", "image_a_id", "image_b_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=opaque_id)
    arena_id: Mapped[str] = mapped_column(ForeignKey("arenas.id"), index=True)
    sample_id: Mapped[str] = mapped_column(String(200))
    image_a_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    image_b_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    url_a: Mapped[str] = mapped_column(String(32), unique=True, default=opaque_id)
    url_b: Mapped[str] = mapped_column(String(32), unique=True, default=opaque_id)


class Voter(Base):
    __tablename__ = "voters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    arena_id: Mapped[str] = mapped_column(ForeignKey("arenas.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)  # the invite token itself is never stored
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # the invite, and every session it opened
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class VoterSession(Base):
    """A signed-in browser: the cookie names the row, so signing out (or revoking the voter) ends it
    on the server, not only in that browser."""

    __tablename__ = "voter_sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=opaque_id)
    voter_id: Mapped[int] = mapped_column(ForeignKey("voters.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(32), default=opaque_id)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class View(Base):
    """A battle assigned to one voter: shown only to them, under URLs that are new each time the page
    is shown (so an image has no address that outlives one view or can be shared), votable until
    `expires_at`. `ended`: voted, rerolled, or None while open; the rows are the log of re-rolls."""

    __tablename__ = "views"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    battle_id: Mapped[str] = mapped_column(ForeignKey("battles.id"), index=True)
    voter_id: Mapped[int] = mapped_column(ForeignKey("voters.id"), index=True)
    url_a: Mapped[str] = mapped_column(String(32), unique=True, default=opaque_id)
    url_b: Mapped[str] = mapped_column(String(32), unique=True, default=opaque_id)
    shown_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    ended: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Vote(Base):
    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("battle_id", "voter_id", name="one_vote_per_voter_per_battle"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    battle_id: Mapped[str] = mapped_column(ForeignKey("battles.id"), index=True)
    voter_id: Mapped[int] = mapped_column(ForeignKey("voters.id"), index=True)
    winner: Mapped[str] = mapped_column(String(16))  # a | b | tie | both_bad
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)
    revealed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # when the voter could learn the models


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA synchronous=FULL")  # an acknowledged vote survives a power cut
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    """Engine for `url` with the tables created. `sqlite:///arena.db` or `postgresql+psycopg://…`."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=40)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_size=20, max_overflow=40, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    _migrate(engine)
    return engine


# (table, column, SQL type and default, statement filling existing rows or None). Votes cast before
# `revealed_at` existed were revealed at once (the only mode then), so they count as revealed.
ADDED_COLUMNS = [
    ("arenas", "reveal", "VARCHAR(16) NOT NULL DEFAULT 'after_vote'", None),
    ("arenas", "aspect", "VARCHAR(8) NOT NULL DEFAULT 'refuse'", None),
    ("images", "width", "INTEGER", None),
    ("images", "height", "INTEGER", None),
    ("images", "suite", "VARCHAR(100)", None),
    ("images", "tags", "TEXT", None),
    ("voters", "expires_at", "TIMESTAMP", None),
    ("voters", "revoked_at", "TIMESTAMP", None),
    ("votes", "revealed_at", "TIMESTAMP", "UPDATE votes SET revealed_at = created_at"),
]


def _migrate(engine: Engine) -> None:
    """Add the columns a database created by an earlier version lacks (create_all adds only tables)."""
    have = {t: {c["name"] for c in inspect(engine).get_columns(t)} for t in {t for t, *_ in ADDED_COLUMNS}}
    timestamp = "TIMESTAMP WITH TIME ZONE" if engine.dialect.name == "postgresql" else "TIMESTAMP"
    with engine.begin() as conn:
        for table, column, ddl, fill in ADDED_COLUMNS:
            if column not in have[table]:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl.replace('TIMESTAMP', timestamp)}"))
                if fill:
                    conn.execute(text(fill))


def make_sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
