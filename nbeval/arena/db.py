"""The arena's tables (SQLAlchemy 2): arenas, blind images, battles, voters, votes.

SQLite (WAL, fully synchronous) by default so a single machine needs nothing else; PostgreSQL by
URL for a shared arena. Uniqueness that matters for honest counts — one vote per voter per battle,
one image per (model, sample) — is a database constraint, not an application check, so concurrent
requests cannot slip past it.
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
    png: Mapped[bytes] = mapped_column(LargeBinary)


class Battle(Base):
    """One pair of images of the same prompt. Side a is shown on the left; each side has its own
    random image URL, so the same image in two battles has two unrelated addresses."""

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


class Vote(Base):
    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("battle_id", "voter_id", name="one_vote_per_voter_per_battle"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    battle_id: Mapped[str] = mapped_column(ForeignKey("battles.id"), index=True)
    voter_id: Mapped[int] = mapped_column(ForeignKey("voters.id"), index=True)
    winner: Mapped[str] = mapped_column(String(16))  # a | b | tie | both_bad
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)


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
    return engine


def make_sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
