"""`nbeval arena serve`: the human judge. FastAPI with server-rendered pages.

Voters sign in with an invite token and get a signed session cookie (HttpOnly, SameSite=Strict,
Secure over HTTPS) naming a server-side session, which holds their CSRF token (every form posts it
back) and ends at sign-out or when the invite expires or is revoked. A battle page shows the prompt and two
images re-encoded blind (see `store.blind_png`) under URLs made for that one view (`store.show_battle`);
the battle is the voter's until they vote (or say "can't tell", a vote left out of the ratings), re-roll
it (rate-limited) or it expires; a vote can be undone for `undo_s` while its models are still withheld.
Model names appear only on the reveal page, as the arena's `reveal` mode allows (`store.reveal`). Admin endpoints (JSON, `Authorization: Bearer
<admin key>`) create arenas, import generations, invite and revoke voters and export votes.

`Guard`, outermost, refuses oversized bodies and wrong admin keys before a body is read.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nbeval.arena import store
from nbeval.arena.db import Voter, make_engine, make_sessions
from nbeval.arena.publish import plot_ratings
from nbeval.arena.ratings import leaderboard, skip_rates
from nbeval.plots import figure_data_uri

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
SESSION_COOKIE, LOGIN_COOKIE = "nbeval_session", "nbeval_login"
SESSION_MAX_AGE_S = 12 * 3600
log = logging.getLogger("nbeval.arena")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class ServerConfig:
    db_url: str = "sqlite:///arena.db"
    admin_key: str = ""  # required: admin endpoints refuse everything without it
    votes_per_minute: int = 600  # per voter; a person needs far fewer, a script hammering is cut off
    logins_per_minute: int = 30  # per client address: invite tokens cannot be brute-forced quickly
    admin_failures_per_minute: int = 10  # wrong admin keys per client address, before all its admin requests wait
    max_import_mb: int = 64  # an admin request body (base64 images), read no further than this
    max_form_kb: int = 64  # any other request body (a voter's form)
    battle_ttl_s: int = 900  # an assigned battle not voted on within this is taken back
    rerolls_per_minute: int = 10  # per voter: passing over battles to fish for one whose sides are known is slow
    undo_s: int = 10  # a vote can be taken back this long; in reveal=after_vote arenas the models are shown only after it


class RateLimiter:
    """Token bucket per key: `per_minute` sustained, bursts up to a tenth of that (at least 5)."""

    def __init__(self, per_minute: int) -> None:
        self.rate, self.burst = per_minute / 60, max(5, per_minute // 10)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str, count: bool = True) -> float:
        """0 when the request may go ahead (and is counted, unless `count` is false: a look only),
        else seconds to wait."""
        t = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, t))
            tokens = min(self.burst, tokens + (t - last) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - count, t)
                return 0.0
            self._buckets[key] = (tokens, t)
            return (1 - tokens) / self.rate


def retry_header(wait: float) -> dict[str, str]:
    return {"Retry-After": str(int(wait) + 1)}


class Refused(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None) -> None:
        self.status, self.detail, self.headers = status, detail, headers or {}


class Guard:
    """Pure ASGI, so it acts before FastAPI reads a body (which it does before any dependency, auth
    included): an admin request needs the admin key first (wrong keys are throttled per client
    address, and while throttled even the right key waits, so guessing gains nothing); a body longer
    than its limit is refused from its Content-Length at once, or, without one, as soon as the bytes
    read pass the limit."""

    def __init__(self, app: ASGIApp, admin_key: str, admin_limit: int, form_limit: int, failures: RateLimiter) -> None:
        self.app, self.expected = app, f"Bearer {admin_key}".encode()
        self.admin_limit, self.form_limit, self.failures = admin_limit, form_limit, failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        is_admin = scope["path"].startswith("/admin")
        if is_admin and (refusal := self._admin_refusal(scope, headers.get(b"authorization", b""))):
            return await refusal(scope, receive, send)
        limit = self.admin_limit if is_admin else self.form_limit
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > limit:
            return await JSONResponse({"detail": f"request body over {limit} bytes"}, 413)(scope, receive, send)
        read = 0

        async def limited() -> Message:
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > limit:
                raise HTTPException(413, f"request body over {limit} bytes")
            return message

        await self.app(scope, limited, send)

    def _admin_refusal(self, scope: Scope, given: bytes) -> JSONResponse | None:
        client = scope["client"][0] if scope.get("client") else "?"
        if wait := self.failures.retry_after(client, count=False):
            return JSONResponse({"detail": "too many wrong admin keys; wait"}, 429, retry_header(wait))
        if hmac.compare_digest(given, self.expected):
            return None
        self.failures.retry_after(client)
        return JSONResponse({"detail": "admin key required"}, 401, {"WWW-Authenticate": "Bearer"})


class ImportItem(BaseModel):
    model: str = Field(min_length=1, max_length=200)
    sample_id: str = Field(min_length=1, max_length=200)
    prompt: str = Field(max_length=10_000)
    image_b64: str
    suite: str | None = Field(default=None, max_length=100)
    tags: list[str] = Field(default_factory=list, max_length=100)


class ImportBody(BaseModel):
    generations: list[ImportItem]


class ArenaBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    sampling: str = "uncertainty"
    image_size: int = 256
    reveal: str = "after_vote"
    aspect: str = "refuse"


class VotersBody(BaseModel):
    names: list[str] = Field(min_length=1, max_length=10_000)
    expires_in_days: float | None = Field(default=None, gt=0)


def create_app(config: ServerConfig) -> FastAPI:
    if len(config.admin_key) < 16:
        raise ValueError("the admin key must be at least 16 characters (set NBEVAL_ARENA_ADMIN_KEY)")
    sessions = make_sessions(make_engine(config.db_url))
    with sessions() as s:
        secret = store.setting(s, "session_secret", lambda: secrets.token_urlsafe(32))
    signer = URLSafeTimedSerializer(secret, salt="nbeval-arena-session")
    login_signer = URLSafeTimedSerializer(secret, salt="nbeval-arena-login")
    vote_limit, login_limit = RateLimiter(config.votes_per_minute), RateLimiter(config.logins_per_minute)
    reroll_limit = RateLimiter(config.rerolls_per_minute)
    priorities = store.PairPriorities()
    app = FastAPI(title="nbeval arena", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, admin_key=config.admin_key, admin_limit=config.max_import_mb * 2**20, form_limit=config.max_form_kb * 2**10,
                       failures=RateLimiter(config.admin_failures_per_minute))

    def db() -> Iterator[Session]:
        with sessions() as s:
            yield s

    def page(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, name, ctx, status_code=status)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(Refused)
    async def refused(request: Request, e: Refused):
        if request.url.path.startswith("/admin"):
            return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)
        response = page(request, "error.html", e.status, detail=e.detail)
        response.headers.update(e.headers)  # Retry-After on a 429 page too
        return response

    @app.exception_handler(store.ArenaError)
    async def arena_error(request: Request, e: store.ArenaError):
        return await refused(request, Refused(e.status, str(e)))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return await refused(request, Refused(e.status_code, str(e.detail), e.headers))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        """Which field and why, without echoing the input or naming the validation library."""
        fields = "; ".join(f"{'.'.join(str(x) for x in err['loc'][1:]) or 'body'}: {err['msg']}" for err in e.errors()[:5])
        return await refused(request, Refused(422, f"invalid request: {fields}"))

    def voter(request: Request, s: Session = Depends(db)) -> Voter:
        """The signed-in voter; their server-side session goes to request.state for the CSRF check."""
        try:
            session_id = signer.loads(request.cookies.get(SESSION_COOKIE) or "", max_age=SESSION_MAX_AGE_S)["s"]
        except (BadSignature, KeyError, TypeError):
            raise Refused(401, "please sign in with your invite token") from None
        live = store.live_session(s, str(session_id))
        if live is None:
            raise Refused(401, "your session has ended; sign in again")
        request.state.session, v = live
        return v

    def csrf_of(request: Request) -> str:
        return request.state.session.csrf

    def check_csrf(request: Request, csrf: str) -> None:
        if not hmac.compare_digest(csrf_of(request), csrf or ""):
            raise Refused(403, "the form expired or did not come from this site; reload the page")

    def cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict", secure=request.url.scheme == "https")

    # --- voters ---------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def sign_in_page(request: Request):
        nonce = secrets.token_urlsafe(16)
        response = page(request, "login.html", csrf=nonce)
        cookie(request, response, LOGIN_COOKIE, login_signer.dumps(nonce), 3600)
        return response

    @app.post("/login")
    def sign_in(request: Request, token: str = Form(...), csrf: str = Form(...), s: Session = Depends(db)):
        wait = login_limit.retry_after(request.client.host if request.client else "?")
        if wait:
            raise Refused(429, "too many sign-in attempts; wait a minute", retry_header(wait))
        try:
            nonce = login_signer.loads(request.cookies.get(LOGIN_COOKIE, ""), max_age=3600)
        except BadSignature:
            raise Refused(403, "the sign-in form expired; reload the page") from None
        if not hmac.compare_digest(nonce, csrf):
            raise Refused(403, "the sign-in form did not come from this site; reload the page")
        v = store.voter_for_token(s, token.strip())
        if v is None:
            raise Refused(401, "unknown invite token")
        response = RedirectResponse("/battle", status_code=303)
        cookie(request, response, SESSION_COOKIE, signer.dumps({"s": store.open_session(s, v).id}), SESSION_MAX_AGE_S)
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @app.post("/logout")
    def sign_out(request: Request, csrf: str = Form(...), v: Voter = Depends(voter), s: Session = Depends(db)):
        check_csrf(request, csrf)
        store.end_session(s, request.state.session)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/battle", response_class=HTMLResponse)
    def battle_page(request: Request, v: Voter = Depends(voter), s: Session = Depends(db)):
        shown = store.show_battle(s, v, priorities, np.random.default_rng(), config.battle_ttl_s)
        csrf = csrf_of(request)
        if shown is None:
            reveals = store.get_arena(s, v.arena_id).reveal != "never"
            return page(request, "done.html", voter=v.name, voted=store.voted_battles(s, v) if reveals else [], csrf=csrf)
        battle, view = shown
        return page(request, "battle.html", battle=battle, view=view, prompt=store.prompt_of(s, battle), voter=v.name, csrf=csrf)

    @app.post("/reroll")
    def reroll(request: Request, csrf: str = Form(...), v: Voter = Depends(voter), s: Session = Depends(db)):
        check_csrf(request, csrf)
        wait = reroll_limit.retry_after(str(v.id))
        if wait:
            raise Refused(429, "too many re-rolls; vote on this battle or wait", retry_header(wait))
        battle_id = store.reroll(s, v)
        log.info("re-roll: voter %s passed over battle %s", v.id, battle_id)
        return RedirectResponse("/battle", status_code=303)

    @app.post("/vote")
    def vote(request: Request, battle_id: str = Form(..., max_length=64), winner: str = Form(..., max_length=16), csrf: str = Form(...), v: Voter = Depends(voter), s: Session = Depends(db)):
        check_csrf(request, csrf)
        wait = vote_limit.retry_after(str(v.id))
        if wait:
            raise Refused(429, "too many votes too fast; slow down", retry_header(wait))
        store.record_vote(s, v, battle_id, winner, config.undo_s)  # returns after the commit
        return RedirectResponse(f"/reveal/{battle_id}", status_code=303)

    @app.post("/undo")
    def undo(request: Request, battle_id: str = Form(..., max_length=64), csrf: str = Form(...), v: Voter = Depends(voter), s: Session = Depends(db)):
        check_csrf(request, csrf)
        store.undo_vote(s, v, battle_id, config.undo_s, config.battle_ttl_s)
        return RedirectResponse("/battle", status_code=303)

    @app.get("/reveal/{battle_id}", response_class=HTMLResponse)
    def reveal(request: Request, battle_id: str, v: Voter = Depends(voter), s: Session = Depends(db)):
        battle = store.battle_for_voter(s, v, battle_id)
        cast, view, withheld = store.reveal(s, v, battle, config.undo_s)
        model_a, model_b = store.models_of(s, battle) if withheld is None else (None, None)
        undo_left = max(0, math.ceil(store.undo_left_s(cast, config.undo_s)))
        return page(request, "reveal.html", view=view, prompt=store.prompt_of(s, battle), model_a=model_a, model_b=model_b, withheld=withheld,
                    winner=cast.winner, battle_id=battle.id, undo_left=undo_left, csrf=csrf_of(request))

    @app.get("/i/{url_token}")
    def image(url_token: str, v: Voter = Depends(voter), s: Session = Depends(db)):
        png = store.image_for_url(s, url_token, v)
        if png is None:
            raise Refused(404, "no such image")
        return Response(png, media_type="image/png")

    @app.get("/leaderboard", response_class=HTMLResponse)
    def leaderboard_page(request: Request, v: Voter = Depends(voter), s: Session = Depends(db)):
        arena = store.get_arena(s, v.arena_id)
        votes = store.votes_frame(s, arena)
        fitted = store.decided(votes)
        board, plot = None, None
        if len(fitted) and fitted[["model_a", "model_b"]].stack().nunique() >= 2:
            board = leaderboard(fitted)
            plot = figure_data_uri(plot_ratings(board))
        return page(request, "leaderboard.html", arena=arena, board=board, plot=plot, n_votes=len(fitted), skips=skip_rates(votes) if len(votes) else None,
                    csrf=csrf_of(request))

    # --- admin ----------------------------------------------------------------------------------

    @app.post("/admin/arenas")
    def create_arena(body: ArenaBody, s: Session = Depends(db)):
        arena = store.create_arena(s, body.name, body.sampling, body.image_size, body.reveal, body.aspect)
        return {"id": arena.id, "name": arena.name, "sampling": arena.sampling, "image_size": arena.image_size, "reveal": arena.reveal, "aspect": arena.aspect}

    @app.get("/admin/arenas/{arena_id}")
    def arena_status(arena_id: str, s: Session = Depends(db)):
        arena = store.get_arena(s, arena_id)
        return {"id": arena.id, "name": arena.name, "sampling": arena.sampling, "reveal": arena.reveal, "aspect": arena.aspect, **store.counts(s, arena)}

    @app.post("/admin/arenas/{arena_id}/generations")
    def import_generations(arena_id: str, body: ImportBody, s: Session = Depends(db)):
        arena = store.get_arena(s, arena_id)
        items = []
        for g in body.generations:
            try:
                data = base64.b64decode(g.image_b64, validate=True)
            except binascii.Error:
                raise Refused(422, f"{g.model}/{g.sample_id}: image_b64 is not base64") from None
            items.append(store.Generation(g.model, g.sample_id, g.prompt, data, g.suite, tuple(g.tags)))
        return store.import_generations(s, arena, items)

    @app.post("/admin/arenas/{arena_id}/voters")
    def invite(arena_id: str, body: VotersBody, s: Session = Depends(db)):
        arena = store.get_arena(s, arena_id)
        return {"voters": [{"name": n, "token": t} for n, t in store.invite(s, arena, body.names, body.expires_in_days)]}

    @app.post("/admin/arenas/{arena_id}/voters/revoke")
    def revoke(arena_id: str, body: VotersBody, s: Session = Depends(db)):
        return {"revoked": store.revoke(s, store.get_arena(s, arena_id), body.names)}

    @app.get("/admin/arenas/{arena_id}/votes")
    def export_votes(arena_id: str, format: str = "jsonl", s: Session = Depends(db)):
        votes = store.votes_frame(s, store.get_arena(s, arena_id))
        if format == "csv":
            return PlainTextResponse(votes.to_csv(index=False), media_type="text/csv")
        if format == "jsonl":
            return PlainTextResponse(votes.to_json(orient="records", lines=True, date_format="iso"), media_type="application/x-ndjson")
        raise Refused(422, "format must be jsonl or csv")

    return app
