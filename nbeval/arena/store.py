"""What the arena does with its tables: import generations blind, pair them into battles, invite
voters, pick each voter's next battle, record votes exactly once, and export them as battles.

Web handlers and admin tools call these functions with a session; nothing here knows about HTTP.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import secrets
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from nbeval.arena.db import Arena, Battle, BlindImage, Setting, Vote, Voter, opaque_id
from nbeval.arena.ratings import OUTCOMES, leaderboard
from nbeval.arena.sampling import pair_weights, uncertainty_draw

BACKGROUND = (128, 128, 128)  # letterbox colour for non-square images


class ArenaError(ValueError):
    """A request the arena refuses; `status` is the HTTP status a web front end should answer."""

    status = 400


class NotFound(ArenaError):
    status = 404


class Conflict(ArenaError):
    status = 409


class AlreadyVoted(Conflict):
    pass


def blind_png(data: bytes, size: int) -> bytes:
    """Re-encode an image so that nothing about it but its pixels survives: no EXIF, no PNG text, no
    ICC profile, the same width and height for every image (letterboxed to `size`²), and an
    uncompressed PNG whose byte length is therefore the same for every image, so even the file size
    says nothing about which model made it."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except Exception as e:  # PIL raises many types for bad input
        raise ArenaError(f"not a readable image: {e}") from e
    if rgb.size != (size, size):
        rgb = ImageOps.pad(rgb, (size, size), method=Image.Resampling.LANCZOS, color=BACKGROUND)
    pixels_only = Image.frombytes("RGB", rgb.size, rgb.tobytes())  # PIL carries `info` (ICC, EXIF…) through convert()
    out = io.BytesIO()
    pixels_only.save(out, format="PNG", compress_level=0)
    return out.getvalue()


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def setting(s: Session, key: str, make) -> str:
    """A server-wide value, created once by whichever worker asks first (`make()`)."""
    row = s.get(Setting, key)
    if row is None:
        s.add(Setting(key=key, value=make()))
        try:
            s.commit()
        except IntegrityError:  # another worker won the race: use theirs
            s.rollback()
        row = s.get(Setting, key)
    return row.value


def create_arena(s: Session, name: str, sampling: str = "uncertainty", image_size: int = 256) -> Arena:
    if sampling not in ("uncertainty", "uniform"):
        raise ArenaError("sampling must be 'uncertainty' or 'uniform'")
    if not 32 <= image_size <= 1024:
        raise ArenaError("image_size must be within 32..1024")
    if s.scalar(select(Arena).where(Arena.name == name)) is not None:
        raise Conflict(f"an arena named {name!r} exists")
    arena = Arena(id=opaque_id(), name=name, sampling=sampling, image_size=image_size)
    s.add(arena)
    s.commit()
    return arena


def get_arena(s: Session, arena_id: str) -> Arena:
    arena = s.get(Arena, arena_id)
    if arena is None:
        raise NotFound("no such arena")
    return arena


@dataclass(frozen=True)
class Generation:
    model: str
    sample_id: str
    prompt: str
    image: bytes


def import_generations(s: Session, arena: Arena, items: list[Generation]) -> dict[str, int]:
    """Store the images blind and pair every new one with the other models' images of its sample.
    Re-importing the same bytes is a no-op (imports can be retried); different bytes for an existing
    (model, sample) are refused rather than silently replacing what voters already judged."""
    added = 0
    for g in items:
        if not g.model or not g.sample_id:
            raise ArenaError("every generation needs a model and a sample_id")
        sha = hashlib.sha256(g.image).hexdigest()
        old = s.scalar(select(BlindImage).where(BlindImage.arena_id == arena.id, BlindImage.model == g.model, BlindImage.sample_id == g.sample_id))
        if old is not None:
            if old.source_sha256 != sha:
                raise Conflict(f"{g.model}/{g.sample_id} was imported with other bytes")
            continue
        s.add(BlindImage(arena_id=arena.id, model=g.model, sample_id=g.sample_id, prompt=g.prompt, source_sha256=sha, png=blind_png(g.image, arena.image_size)))
        added += 1
    s.flush()
    battles = _pair_new_images(s, arena)
    s.commit()
    return {"images_added": added, "battles_added": battles}


def _pair_new_images(s: Session, arena: Arena) -> int:
    """A battle for each pair of different models' images of one sample that has none yet; which
    side each image takes is random, decided once."""
    rows = s.execute(select(BlindImage.id, BlindImage.sample_id, BlindImage.model).where(BlindImage.arena_id == arena.id)).all()
    existing = {frozenset(p) for p in s.execute(select(Battle.image_a_id, Battle.image_b_id).where(Battle.arena_id == arena.id)).all()}
    by_sample: dict[str, list] = {}
    for r in rows:
        by_sample.setdefault(r.sample_id, []).append(r)
    added = 0
    for sample_id, imgs in by_sample.items():
        for x, y in itertools.combinations(sorted(imgs, key=lambda r: r.model), 2):
            if frozenset((x.id, y.id)) in existing:
                continue
            a, b = (x, y) if secrets.randbelow(2) else (y, x)
            s.add(Battle(id=opaque_id(), arena_id=arena.id, sample_id=sample_id, image_a_id=a.id, image_b_id=b.id, url_a=opaque_id(), url_b=opaque_id()))
            added += 1
    return added


def invite(s: Session, arena: Arena, names: list[str]) -> list[tuple[str, str]]:
    """(name, invite token) per voter. Only a hash of each token is stored: show them once."""
    out = []
    for name in names:
        token = secrets.token_urlsafe(24)
        s.add(Voter(arena_id=arena.id, name=name, token_sha256=token_sha256(token)))
        out.append((name, token))
    s.commit()
    return out


def voter_for_token(s: Session, token: str) -> Voter | None:
    return s.scalar(select(Voter).where(Voter.token_sha256 == token_sha256(token)))


ImageA, ImageB = aliased(BlindImage), aliased(BlindImage)


def _battles_with_models(arena_id: str):
    return (
        select(Battle.id, Battle.sample_id, ImageA.model.label("model_a"), ImageB.model.label("model_b"))
        .join(ImageA, ImageA.id == Battle.image_a_id)
        .join(ImageB, ImageB.id == Battle.image_b_id)
        .where(Battle.arena_id == arena_id)
    )


class PairPriorities:
    """Uncertainty weights of model pairs from the arena's current leaderboard, refitted at most
    every `every_s` seconds per arena (a fit costs milliseconds, but not on every page view)."""

    def __init__(self, every_s: float = 10.0, rounds: int = 50) -> None:
        self.every_s, self.rounds = every_s, rounds
        self._cache: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def weights(self, s: Session, arena: Arena) -> dict[frozenset, float]:
        with self._lock:
            hit = self._cache.get(arena.id)
            if hit and time.monotonic() - hit[0] < self.every_s:
                return hit[1]
        votes = votes_frame(s, arena)
        w = {}
        if len(votes) and votes[["model_a", "model_b"]].stack().nunique() >= 2:
            board = leaderboard(votes, rounds=self.rounds, seed=0)
            w = {frozenset(p): v for p, v in pair_weights(board).items()}
        with self._lock:
            self._cache[arena.id] = (time.monotonic(), w)
        return w


def next_battle(s: Session, voter: Voter, priorities: PairPriorities, rng: np.random.Generator) -> Battle | None:
    """A battle this voter has not voted on: by pair uncertainty (pairs with no votes yet weigh as
    much as the most uncertain pair), or uniformly for an audit arena. None when all are done."""
    voted = select(Vote.battle_id).where(Vote.voter_id == voter.id)
    cands = s.execute(_battles_with_models(voter.arena_id).where(Battle.id.not_in(voted))).all()
    if not cands:
        return None
    arena = s.get(Arena, voter.arena_id)
    if arena.sampling == "uniform":
        pick = cands[rng.integers(len(cands))]
    else:
        pairs = sorted({frozenset((c.model_a, c.model_b)) for c in cands}, key=sorted)
        pair = uncertainty_draw(pairs, priorities.weights(s, arena), rng)
        in_pair = [c for c in cands if frozenset((c.model_a, c.model_b)) == pair]
        pick = in_pair[rng.integers(len(in_pair))]
    return s.get(Battle, pick.id)


def battle_for_voter(s: Session, voter: Voter, battle_id: str) -> Battle:
    """The battle, if it is in the voter's arena; an unknown or foreign id is simply not found."""
    battle = s.get(Battle, battle_id) if isinstance(battle_id, str) and len(battle_id) <= 32 else None
    if battle is None or battle.arena_id != voter.arena_id:
        raise NotFound("no such battle")
    return battle


def record_vote(s: Session, voter: Voter, battle_id: str, winner: str) -> Vote:
    """Commit one vote; returns only after the commit, so an acknowledgement means it is stored.
    The unique constraint (battle, voter) refuses a second vote even from concurrent requests."""
    if winner not in OUTCOMES:
        raise ArenaError(f"winner must be one of {OUTCOMES}")
    battle = battle_for_voter(s, voter, battle_id)
    vote = Vote(battle_id=battle.id, voter_id=voter.id, winner=winner)
    s.add(vote)
    try:
        s.commit()
    except IntegrityError as e:
        s.rollback()
        raise AlreadyVoted("you have already voted on this battle") from e
    return vote


def vote_of(s: Session, voter: Voter, battle_id: str) -> Vote | None:
    return s.scalar(select(Vote).where(Vote.battle_id == battle_id, Vote.voter_id == voter.id))


def models_of(s: Session, battle: Battle) -> tuple[str, str]:
    return s.get(BlindImage, battle.image_a_id).model, s.get(BlindImage, battle.image_b_id).model


def prompt_of(s: Session, battle: Battle) -> str:
    return s.get(BlindImage, battle.image_a_id).prompt


def image_for_url(s: Session, url_token: str, arena_id: str) -> bytes | None:
    """The blind PNG behind one side's random URL, if that battle is in `arena_id`."""
    if not isinstance(url_token, str) or len(url_token) > 32:
        return None
    for url_col, image_col in ((Battle.url_a, Battle.image_a_id), (Battle.url_b, Battle.image_b_id)):
        image_id = s.scalar(select(image_col).where(url_col == url_token, Battle.arena_id == arena_id))
        if image_id is not None:
            return s.get(BlindImage, image_id).png
    return None


def votes_frame(s: Session, arena: Arena) -> pd.DataFrame:
    """Every vote as one battle row in our schema: battle_id, sample_id, model_a, model_b, winner,
    judge ('human'), voter, time — what `nbeval arena leaderboard battles=…` reads."""
    q = (
        _battles_with_models(arena.id)
        .add_columns(Vote.winner, Voter.name.label("voter"), Vote.created_at.label("time"))
        .join(Vote, Vote.battle_id == Battle.id)
        .join(Voter, Voter.id == Vote.voter_id)
        .order_by(Vote.id)
    )
    rows = s.execute(q).all()
    cols = ["battle_id", "sample_id", "model_a", "model_b", "winner", "voter", "time"]
    df = pd.DataFrame([tuple(r) for r in rows], columns=cols)
    return df.assign(judge="human")[["battle_id", "sample_id", "model_a", "model_b", "winner", "judge", "voter", "time"]]


def counts(s: Session, arena: Arena) -> dict[str, int]:
    def n(model, *where) -> int:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)))

    return {
        "images": n(BlindImage, BlindImage.arena_id == arena.id),
        "battles": n(Battle, Battle.arena_id == arena.id),
        "voters": n(Voter, Voter.arena_id == arena.id),
        "votes": int(s.scalar(select(func.count()).select_from(Vote).join(Battle, Battle.id == Vote.battle_id).where(Battle.arena_id == arena.id))),
    }
