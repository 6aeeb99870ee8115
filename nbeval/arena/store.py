"""What the arena does with its tables: import generations blind, pair them into battles, invite
voters, assign each voter their next battle (a `View`), record votes exactly once, reveal models as
the arena's `reveal` mode allows, and export votes as battles.

Blindness across battles: an image's bytes are the same wherever it appears, so its URL must not be:
every showing of a battle gets new URLs that only that voter can load, and a voter is never assigned
a battle holding an image whose model was revealed to them.

Web handlers and admin tools call these functions with a session; nothing here knows about HTTP.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from sqlalchemy import delete, func, or_, select, union, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from nbeval.arena.db import Arena, Battle, BlindImage, Setting, View, Vote, Voter, VoterSession, now, opaque_id
from nbeval.arena.ratings import SKIP, WINNERS, leaderboard
from nbeval.arena.sampling import pair_weights, uncertainty_draw

BACKGROUND = (128, 128, 128)  # letterbox colour for non-square images
# what to do with images of one sample whose aspect ratios differ, which letterbox bars would show
# (one model's images barred, the other's not, says which is which): refuse them at import, or
# centre-crop every image of the arena to a square, so that no image has bars
ASPECTS = ("refuse", "crop")
ASPECT_TOLERANCE = 0.01  # relative difference of width/height below which two images count as one shape
# when a voter learns which models made a battle's images: after their vote, once they have voted on
# every battle offered to them, or never (votes only; the admin export still names the models)
REVEALS = ("after_vote", "end", "never")


class ArenaError(ValueError):
    """A request the arena refuses; `status` is the HTTP status a web front end should answer."""

    status = 400


class NotFound(ArenaError):
    status = 404


class Conflict(ArenaError):
    status = 409


class AlreadyVoted(Conflict):
    pass


class Forbidden(ArenaError):
    status = 403


class Expired(ArenaError):
    status = 410


class TooLate(Conflict):
    """An undo after the vote's undo window closed (or its models were revealed)."""


def blind_png(data: bytes, size: int, crop: bool = False) -> tuple[bytes, tuple[int, int]]:
    """Re-encode an image so that nothing about it but its pixels survives: no EXIF, no PNG text, no
    ICC profile, the same width and height for every image (letterboxed to `size`², or centre-cropped
    to it with `crop`), and an uncompressed PNG whose byte length is therefore the same for every
    image, so even the file size says nothing about which model made it. Returns it with the
    source's (width, height), which the import compares within a sample."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except Exception as e:  # PIL raises many types for bad input; their messages hold object addresses
        raise ArenaError("not a readable image") from e
    source = rgb.size
    if crop:
        rgb = ImageOps.fit(rgb, (size, size), method=Image.Resampling.LANCZOS)
    elif rgb.size != (size, size):
        rgb = ImageOps.pad(rgb, (size, size), method=Image.Resampling.LANCZOS, color=BACKGROUND)
    pixels_only = Image.frombytes("RGB", rgb.size, rgb.tobytes())  # PIL carries `info` (ICC, EXIF…) through convert()
    out = io.BytesIO()
    pixels_only.save(out, format="PNG", compress_level=0)
    return out.getvalue(), source


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


def create_arena(s: Session, name: str, sampling: str = "uncertainty", image_size: int = 256, reveal: str = "after_vote", aspect: str = "refuse") -> Arena:
    if sampling not in ("uncertainty", "uniform"):
        raise ArenaError("sampling must be 'uncertainty' or 'uniform'")
    if reveal not in REVEALS:
        raise ArenaError(f"reveal must be one of {REVEALS}")
    if aspect not in ASPECTS:
        raise ArenaError(f"aspect must be one of {ASPECTS}")
    if not 32 <= image_size <= 1024:
        raise ArenaError("image_size must be within 32..1024")
    if s.scalar(select(Arena).where(Arena.name == name)) is not None:
        raise Conflict(f"an arena named {name!r} exists")
    arena = Arena(id=opaque_id(), name=name, sampling=sampling, image_size=image_size, reveal=reveal, aspect=aspect)
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
    suite: str | None = None  # the sample's suite and tags, exported with its votes (leaderboards by category)
    tags: tuple[str, ...] = ()


def import_generations(s: Session, arena: Arena, items: list[Generation]) -> dict[str, int]:
    """Store the images blind and pair every new one with the other models' images of its sample.
    Re-importing the same bytes is a no-op (imports can be retried); different bytes for an existing
    (model, sample) are refused rather than silently replacing what voters already judged. A sample
    has one prompt: a generation whose prompt differs from its sample's is refused (the whole
    import), since a battle page showing one model's prompt would tell which side that model is.
    Likewise, in an aspect=refuse arena, an image whose aspect ratio differs from its sample's."""
    added, prompts = 0, {}
    for g in items:
        if not g.model or not g.sample_id:
            raise ArenaError("every generation needs a model and a sample_id")
        if g.sample_id not in prompts:
            prompts[g.sample_id] = _sample_prompt(s, arena.id, g.sample_id) or g.prompt
        if g.prompt != prompts[g.sample_id]:
            raise Conflict(f"sample {g.sample_id!r}: {g.model}'s prompt differs from the prompt the sample was imported with")
        sha = hashlib.sha256(g.image).hexdigest()
        old = s.scalar(select(BlindImage).where(BlindImage.arena_id == arena.id, BlindImage.model == g.model, BlindImage.sample_id == g.sample_id))
        if old is not None:
            if old.source_sha256 != sha:
                raise Conflict(f"{g.model}/{g.sample_id} was imported with other bytes")
            continue
        try:
            png, (w, h) = blind_png(g.image, arena.image_size, crop=arena.aspect == "crop")
        except ArenaError as e:
            raise ArenaError(f"{g.model}/{g.sample_id}: {e}") from e
        if arena.aspect == "refuse":
            _check_aspect(s, arena, g, w, h)
        s.add(BlindImage(arena_id=arena.id, model=g.model, sample_id=g.sample_id, prompt=g.prompt, source_sha256=sha, png=png, width=w, height=h,
                         suite=g.suite, tags=json.dumps(list(g.tags))))
        added += 1
    s.flush()
    battles = _pair_new_images(s, arena)
    s.commit()
    return {"images_added": added, "battles_added": battles}


def _check_aspect(s: Session, arena: Arena, g: Generation, w: int, h: int) -> None:
    """Refuse an image shaped unlike its sample's other images (their letterbox bars would differ)."""
    q = select(BlindImage.model, BlindImage.width, BlindImage.height).where(
        BlindImage.arena_id == arena.id, BlindImage.sample_id == g.sample_id, BlindImage.width.is_not(None)
    )
    other = s.execute(q.limit(1)).first()
    if other and abs((w / h) / (other.width / other.height) - 1) > ASPECT_TOLERANCE:
        raise Conflict(f"sample {g.sample_id!r}: {g.model}'s image is {w}x{h}, {other.model}'s {other.width}x{other.height}; their letterbox bars "
                       "would tell the models apart (create the arena with aspect=crop to centre-crop every image to a square)")


def _sample_prompt(s: Session, arena_id: str, sample_id: str) -> str | None:
    """The prompt of a sample: its first-imported image's, the same whichever side that image is on."""
    q = select(BlindImage.prompt).where(BlindImage.arena_id == arena_id, BlindImage.sample_id == sample_id)
    return s.scalar(q.order_by(BlindImage.id).limit(1))


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
            s.add(Battle(id=opaque_id(), arena_id=arena.id, sample_id=sample_id, image_a_id=a.id, image_b_id=b.id))
            added += 1
    return added


def invite(s: Session, arena: Arena, names: list[str], expires_in_days: float | None = None) -> list[tuple[str, str]]:
    """(name, invite token) per voter. Only a hash of each token is stored: show them once. With
    `expires_in_days`, the token and every session it opened end then."""
    expires_at = now() + dt.timedelta(days=expires_in_days) if expires_in_days is not None else None
    out = []
    for name in names:
        token = secrets.token_urlsafe(24)
        s.add(Voter(arena_id=arena.id, name=name, token_sha256=token_sha256(token), expires_at=expires_at))
        out.append((name, token))
    s.commit()
    return out


def revoke(s: Session, arena: Arena, names: list[str]) -> int:
    """End the invites (and so the sessions) of the arena's voters with these names; how many."""
    q = update(Voter).where(Voter.arena_id == arena.id, Voter.name.in_(names), Voter.revoked_at.is_(None)).values(revoked_at=now())
    n = s.execute(q).rowcount
    s.commit()
    return n


def _active(q):
    """Only voters whose invite is neither revoked nor expired."""
    return q.where(Voter.revoked_at.is_(None), or_(Voter.expires_at.is_(None), Voter.expires_at > now()))


def voter_for_token(s: Session, token: str) -> Voter | None:
    return s.scalar(_active(select(Voter).where(Voter.token_sha256 == token_sha256(token))))


def open_session(s: Session, voter: Voter) -> VoterSession:
    session = VoterSession(id=opaque_id(), voter_id=voter.id, csrf=opaque_id())
    s.add(session)
    s.commit()
    return session


def live_session(s: Session, session_id: str) -> tuple[VoterSession, Voter] | None:
    """The session and its voter, unless it was signed out or the voter's invite ended."""
    q = _active(select(VoterSession, Voter).join(Voter, Voter.id == VoterSession.voter_id)).where(VoterSession.id == session_id, VoterSession.revoked_at.is_(None))
    row = s.execute(q).first()
    return (row[0], row[1]) if row else None


def end_session(s: Session, session: VoterSession) -> None:
    session.revoked_at = now()
    s.commit()


def _battles_with_models(arena_id: str, *image_a_columns: str):
    """(battle id, sample id, model_a, model_b, and these columns of image A's) of an arena's battles.
    Each call aliases the images anew: SQLAlchemy (2.1.9) builds an alias's columns on first use, and
    request threads racing to build a shared module-level alias's left it broken for the process
    ("Did not locate an expression in selectable", then every query with it failed: a 500 on every
    page that ranks pairs, seen under 50 concurrent voters on PostgreSQL)."""
    image_a, image_b = aliased(BlindImage), aliased(BlindImage)
    return (
        select(Battle.id, Battle.sample_id, image_a.model.label("model_a"), image_b.model.label("model_b"),
               *(getattr(image_a, c) for c in image_a_columns))
        .join(image_a, image_a.id == Battle.image_a_id)
        .join(image_b, image_b.id == Battle.image_b_id)
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
        votes = decided(votes_frame(s, arena))
        w = {}
        if len(votes) and votes[["model_a", "model_b"]].stack().nunique() >= 2:
            board = leaderboard(votes, rounds=self.rounds, seed=0)
            w = {frozenset(p): v for p, v in pair_weights(board).items()}
        with self._lock:
            self._cache[arena.id] = (time.monotonic(), w)
        return w


def _revealed_images(voter: Voter):
    """Ids of the images whose model this voter has been shown."""
    revealed = (Vote.voter_id == voter.id, Vote.revealed_at.is_not(None))
    return union(
        select(Battle.image_a_id).join(Vote, Vote.battle_id == Battle.id).where(*revealed),
        select(Battle.image_b_id).join(Vote, Vote.battle_id == Battle.id).where(*revealed),
    )


def _candidates(s: Session, voter: Voter) -> list:
    """Battles this voter may still be assigned: not voted on, not passed over by a re-roll, and
    holding no image whose model was revealed to them."""
    voted = select(Vote.battle_id).where(Vote.voter_id == voter.id)
    rerolled = select(View.battle_id).where(View.voter_id == voter.id, View.ended == "rerolled")
    revealed = _revealed_images(voter)
    q = _battles_with_models(voter.arena_id).where(
        Battle.id.not_in(voted), Battle.id.not_in(rerolled), Battle.image_a_id.not_in(revealed), Battle.image_b_id.not_in(revealed)
    )
    return s.execute(q).all()


def next_battle(s: Session, voter: Voter, priorities: PairPriorities, rng: np.random.Generator) -> Battle | None:
    """One of the voter's candidate battles (`_candidates`): by pair uncertainty (pairs with no votes
    yet weigh as much as the most uncertain pair), or uniformly for an audit arena. None when none."""
    cands = _candidates(s, voter)
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


def _open_view(s: Session, voter: Voter, battle_id: str | None = None) -> View | None:
    """The voter's latest unexpired, unended view (of `battle_id`, if given)."""
    q = select(View).where(View.voter_id == voter.id, View.ended.is_(None), View.expires_at > now())
    if battle_id is not None:
        q = q.where(View.battle_id == battle_id)
    return s.scalar(q.order_by(View.id.desc()).limit(1))


def _fresh_urls(view: View) -> View:
    view.url_a, view.url_b = opaque_id(), opaque_id()
    return view


def show_battle(s: Session, voter: Voter, priorities: PairPriorities, rng: np.random.Generator, ttl_s: float) -> tuple[Battle, View] | None:
    """The battle to show this voter now, under new image URLs: the one assigned to them if it is
    still open (reloading the page does not draw another), else a newly assigned one that they can
    vote on for `ttl_s` seconds. None when no battle is left for them."""
    view = _open_view(s, voter)
    if view is None:
        battle = next_battle(s, voter, priorities, rng)
        if battle is None:
            return None
        view = View(battle_id=battle.id, voter_id=voter.id, expires_at=now() + dt.timedelta(seconds=ttl_s))
        s.add(view)
    _fresh_urls(view)
    s.commit()
    return s.get(Battle, view.battle_id), view


def reroll(s: Session, voter: Voter) -> str | None:
    """Pass over the voter's open battle (it is not offered to them again); its id, None if none.
    The view stays, ended 'rerolled', as the record of the re-roll."""
    view = _open_view(s, voter)
    if view is None:
        return None
    view.ended = "rerolled"
    s.commit()
    return view.battle_id


def battle_for_voter(s: Session, voter: Voter, battle_id: str) -> Battle:
    """The battle, if it is in the voter's arena; an unknown or foreign id is simply not found."""
    battle = s.get(Battle, battle_id) if isinstance(battle_id, str) and len(battle_id) <= 32 else None
    if battle is None or battle.arena_id != voter.arena_id:
        raise NotFound("no such battle")
    return battle


def record_vote(s: Session, voter: Voter, battle_id: str, winner: str, undo_s: float = 0) -> Vote:
    """Commit one vote (or a "can't tell" skip) on a battle assigned to this voter and still open;
    returns only after the commit, so an acknowledgement means it is stored. The unique constraint
    (battle, voter) refuses a second vote even from concurrent requests. In a reveal=after_vote arena
    the vote is revealed `undo_s` after it is cast, when it can no longer be undone (`undo_vote`): a
    voter who could undo after seeing the models could vote again knowing them. Its images leave the
    voter's candidates at once either way."""
    if winner not in WINNERS:
        raise ArenaError(f"winner must be one of {WINNERS}")
    battle = battle_for_voter(s, voter, battle_id)
    if vote_of(s, voter, battle.id) is not None:
        raise AlreadyVoted("you have already voted on this battle")
    view = _open_view(s, voter, battle.id)
    if view is None:
        if s.scalar(select(View.id).where(View.voter_id == voter.id, View.battle_id == battle.id, View.ended.is_(None))) is not None:
            raise Expired("this battle expired before your vote; vote on the next one")
        raise Forbidden("this battle was not shown to you")
    cast = now()
    revealed_at = cast + dt.timedelta(seconds=undo_s) if s.get(Arena, voter.arena_id).reveal == "after_vote" else None
    vote = Vote(battle_id=battle.id, voter_id=voter.id, winner=winner, created_at=cast, revealed_at=revealed_at)
    view.ended = "voted"
    s.add(vote)
    try:
        s.commit()
    except IntegrityError as e:
        s.rollback()
        raise AlreadyVoted("you have already voted on this battle") from e
    return vote


def undo_vote(s: Session, voter: Voter, battle_id: str, undo_s: float, ttl_s: float) -> None:
    """Take back the voter's vote on `battle_id` if it was cast less than `undo_s` ago and its models
    have not been revealed to them; the battle is theirs to vote on again (under new image URLs).
    One conditional DELETE, so an undo racing the window's end or a reveal either happens or not."""
    battle = battle_for_voter(s, voter, battle_id)
    t = now()
    gone = s.execute(
        delete(Vote).where(
            Vote.battle_id == battle.id,
            Vote.voter_id == voter.id,
            Vote.created_at > t - dt.timedelta(seconds=undo_s),
            or_(Vote.revealed_at.is_(None), Vote.revealed_at > t),
        )
    ).rowcount
    if not gone:
        s.rollback()
        raise TooLate("this vote can no longer be undone" if vote_of(s, voter, battle.id) else "you have no vote on this battle")
    view = s.scalar(select(View).where(View.voter_id == voter.id, View.battle_id == battle.id, View.ended == "voted"))
    view.ended, view.expires_at = None, t + dt.timedelta(seconds=ttl_s)
    _fresh_urls(view)
    s.commit()


def undo_left_s(vote: Vote, undo_s: float) -> float:
    """Seconds until `vote` can no longer be undone (≤ 0: already too late)."""
    created = vote.created_at if vote.created_at.tzinfo else vote.created_at.replace(tzinfo=dt.timezone.utc)  # SQLite drops the zone
    return (created + dt.timedelta(seconds=undo_s) - now()).total_seconds()


def voted_battles(s: Session, voter: Voter) -> list[str]:
    """Ids of the battles this voter voted on, in voting order (their reveal pages)."""
    return list(s.scalars(select(Vote.battle_id).where(Vote.voter_id == voter.id).order_by(Vote.id)))


def vote_of(s: Session, voter: Voter, battle_id: str) -> Vote | None:
    return s.scalar(select(Vote).where(Vote.battle_id == battle_id, Vote.voter_id == voter.id))


def reveal(s: Session, voter: Voter, battle: Battle, undo_s: float = 0) -> tuple[Vote, View, str | None]:
    """The voter's vote on `battle`, a view of it under new URLs, and why its models are withheld
    (None once the arena lets them see the models: after_vote once the vote's undo window has closed,
    end once no battle is left for them and none of their votes can still be undone, then all their
    votes together, never not at all). The page is the vote's acknowledgement either way."""
    vote = vote_of(s, voter, battle.id)
    if vote is None:
        raise Forbidden("vote on this battle first; the models are revealed after your vote")
    withheld = None
    mode = s.get(Arena, voter.arena_id).reveal
    t = now()
    if not s.scalar(select(func.count()).select_from(Vote).where(Vote.id == vote.id, Vote.revealed_at <= t)):
        if mode == "never":
            withheld = "This arena does not show which model made which image."
        elif mode == "after_vote":
            withheld = "Which model made which image is shown once this vote can no longer be undone."
        elif _candidates(s, voter):
            withheld = "Which model made which image is shown once you have voted on every battle."
        elif s.scalar(select(Vote.id).where(Vote.voter_id == voter.id, Vote.created_at > t - dt.timedelta(seconds=undo_s)).limit(1)):
            withheld = "Which model made which image is shown once your last vote can no longer be undone."
        else:
            s.execute(update(Vote).where(Vote.voter_id == voter.id, Vote.revealed_at.is_(None)).values(revealed_at=t))
    view = s.scalar(select(View).where(View.voter_id == voter.id, View.battle_id == battle.id, View.ended == "voted"))
    if view is None:  # a vote cast before views existed
        view = View(battle_id=battle.id, voter_id=voter.id, expires_at=t, ended="voted")
        s.add(view)
    _fresh_urls(view)
    s.commit()
    return vote, view, withheld


def models_of(s: Session, battle: Battle) -> tuple[str, str]:
    return s.get(BlindImage, battle.image_a_id).model, s.get(BlindImage, battle.image_b_id).model


def prompt_of(s: Session, battle: Battle) -> str:
    return _sample_prompt(s, battle.arena_id, battle.sample_id)


def image_for_url(s: Session, url_token: str, voter: Voter) -> bytes | None:
    """The blind PNG behind one side of a view, if the view is this voter's and still open (or their
    voted battle's, for the reveal page)."""
    if not isinstance(url_token, str) or len(url_token) > 32:
        return None
    usable = or_(View.ended == "voted", View.ended.is_(None) & (View.expires_at > now()))
    view = s.scalar(select(View).where(or_(View.url_a == url_token, View.url_b == url_token), View.voter_id == voter.id, usable))
    if view is None:
        return None
    battle = s.get(Battle, view.battle_id)
    return s.get(BlindImage, battle.image_a_id if view.url_a == url_token else battle.image_b_id).png


def votes_frame(s: Session, arena: Arena) -> pd.DataFrame:
    """Every vote as one battle row in our schema: battle_id, sample_id, model_a, model_b, winner
    (skip where the voter could not tell), judge ('human'), voter, time, and the sample's suite and
    tags (a list: `leaderboards_by(votes, "tags")` counts a vote in each) — what `nbeval arena
    leaderboard battles=… [by=suite|tags]` reads."""
    q = (
        _battles_with_models(arena.id, "suite", "tags")
        .add_columns(Vote.winner, Voter.name.label("voter"), Vote.created_at.label("time"))
        .join(Vote, Vote.battle_id == Battle.id)
        .join(Voter, Voter.id == Vote.voter_id)
        .order_by(Vote.id)
    )
    rows = s.execute(q).all()
    cols = ["battle_id", "sample_id", "model_a", "model_b", "suite", "tags", "winner", "voter", "time"]
    df = pd.DataFrame([tuple(r) for r in rows], columns=cols)
    df["tags"] = [json.loads(t) if t else [] for t in df["tags"]]
    return df.assign(judge="human")[["battle_id", "sample_id", "model_a", "model_b", "winner", "judge", "voter", "time", "suite", "tags"]]


def decided(votes: pd.DataFrame) -> pd.DataFrame:
    """The votes that say which image is better (or that they tie): what the ratings are fitted on."""
    return votes[votes["winner"] != SKIP]


def counts(s: Session, arena: Arena) -> dict[str, int]:
    def n(model, *where) -> int:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)))

    return {
        "images": n(BlindImage, BlindImage.arena_id == arena.id),
        "battles": n(Battle, Battle.arena_id == arena.id),
        "voters": n(Voter, Voter.arena_id == arena.id),
        "votes": int(s.scalar(select(func.count()).select_from(Vote).join(Battle, Battle.id == Vote.battle_id).where(Battle.arena_id == arena.id))),
        "skips": int(s.scalar(select(func.count()).select_from(Vote).join(Battle, Battle.id == Vote.battle_id).where(Battle.arena_id == arena.id, Vote.winner == SKIP))),
        "rerolls": int(s.scalar(select(func.count()).select_from(View).join(Battle, Battle.id == View.battle_id).where(Battle.arena_id == arena.id, View.ended == "rerolled"))),
    }
