"""Sessions that end and requests that are refused early, against a real server: bodies over their
limit refused while reading and before auth (sent over a raw socket, counting what was sent before
the answer came, and the server's memory), forwarded headers trusted only when configured, sign-out
and revoked or expired invites ending sessions on the server, wrong admin keys throttled, Retry-After
on every 429, Secure cookies behind HTTPS, and error messages without internals."""

from __future__ import annotations

import base64
import re
import secrets
import select
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ADMIN_KEY
from PIL import Image
from test_arena_security import signed_in

from nbeval.arena.client import form_fields
from nbeval.arena.loadtest import demo_generations

MODELS = {"oracle": (None, 0), "oracle_blurred": ("blur", 3)}
MB = 2**20


def post_raw(url: str, path: str, total: int, chunked: bool, headers: dict[str, str] | None = None) -> tuple[int, int]:
    """POST `total` bytes, stopping as soon as an answer arrives: (status, bytes sent by then)."""
    u = httpx.URL(url)
    sock = socket.create_connection((u.host, u.port), timeout=5)
    kind = "application/json" if path.startswith("/admin") else "application/x-www-form-urlencoded"
    lines = [f"POST {path} HTTP/1.1", f"Host: {u.host}", f"Content-Type: {kind}", *(f"{k}: {v}" for k, v in (headers or {}).items()),
             "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    chunk, sent = b"x" * MB, 0
    try:
        while sent < total and not select.select([sock], [], [], 0)[0]:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass  # the server answered and stopped reading
    with sock:
        return int(sock.recv(4096).split()[1]), sent


def rss_mb(pid: int) -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1]) / 1024


@pytest.fixture
def arena(arena_server):
    server = arena_server(max_import_mb=4)
    arena = server.admin.create_arena("sessions")
    server.admin.import_generations(arena, demo_generations(2, MODELS))
    return server, arena, server.admin.invite(arena, ["alice", "bob"])


def test_bodies_are_refused_while_reading_and_before_auth(arena):
    server, arena_id, _ = arena
    before = rss_mb(server.proc.pid)
    path = f"/admin/arenas/{arena_id}/generations"
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for chunked in (False, True):
        status, sent = post_raw(server.url, path, 80 * MB, chunked)  # no admin key: 401 before the body
        assert status == 401 and sent < 24 * MB, (chunked, sent)
        status, sent = post_raw(server.url, path, 80 * MB, chunked, auth)  # over max_import_mb=4
        assert status == 413 and sent < 24 * MB, (chunked, sent)
        status, sent = post_raw(server.url, "/vote", 8 * MB, chunked)  # a voter's form: 413, not 401
        assert status == 413 and sent < 8 * MB, (chunked, sent)
    assert rss_mb(server.proc.pid) - before < 40  # the issue saw 204 -> 418 MB
    assert server.admin.import_generations(arena_id, demo_generations(3, MODELS)) == {"images_added": 2, "battles_added": 1}
    # ~6 MB of noise PNGs: more than one request may carry, so the client splits them by size
    rng = np.random.default_rng(0)
    noise = [(m, f"noise{k}", f"noise {k}", Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))) for m in MODELS for k in range(3)]
    assert server.admin.import_generations(arena_id, noise, batch_mb=2) == {"images_added": 6, "battles_added": 3}


def test_forwarded_headers_are_trusted_only_when_configured(arena_server):
    plain, proxied = arena_server(), arena_server(forwarded_allow_ips="127.0.0.1")
    for server, trusted in ((plain, False), (proxied, True)):
        anon = httpx.Client(base_url=server.url)
        codes = []
        for i in range(12):  # a new forwarded address each try: only a trusting server believes it
            page = anon.get("/")
            r = anon.post("/login", data={"token": "guess", "csrf": form_fields(page.text)["csrf"]}, headers={"X-Forwarded-For": f"10.0.0.{i}"})
            codes.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1 and "wait" in r.text  # the HTML page says so too
        assert (429 not in codes) == trusted, codes
        cookie = anon.get("/", headers={"X-Forwarded-Proto": "https"}).headers["set-cookie"]
        assert ("secure" in cookie.lower()) == trusted, cookie


def test_sign_out_and_ended_invites_end_sessions_on_the_server(arena_server, db_url):
    server = arena_server(db_url)
    arena_id = server.admin.create_arena(f"sessions-{secrets.token_hex(4)}")  # PostgreSQL's database outlives a test
    server.admin.import_generations(arena_id, demo_generations(2, MODELS))
    tokens = server.admin.invite(arena_id, ["alice", "bob"])
    alice = signed_in(server.url, tokens["alice"])
    stolen = dict(alice.cookies)
    csrf = form_fields(alice.get("/battle").text)["csrf"]
    assert alice.post("/logout", data={"csrf": csrf}).status_code == 303
    assert httpx.Client(base_url=server.url, cookies=stolen).get("/battle").status_code == 401
    alice = signed_in(server.url, tokens["alice"])  # a new sign-in is a new session
    bob = signed_in(server.url, tokens["bob"])
    assert server.admin.revoke(arena_id, ["bob"]) == 1
    assert bob.get("/battle").status_code == 401 and alice.get("/battle").status_code == 200
    anon = httpx.Client(base_url=server.url)
    assert anon.post("/login", data={"token": tokens["bob"], "csrf": form_fields(anon.get("/").text)["csrf"]}).status_code == 401
    eve_token = server.admin.invite(arena_id, ["eve"], expires_in_days=3 / 86400)["eve"]
    eve = signed_in(server.url, eve_token)
    assert eve.get("/battle").status_code == 200
    time.sleep(3.5)
    assert eve.get("/battle").status_code == 401
    assert anon.post("/login", data={"token": eve_token, "csrf": form_fields(anon.get("/").text)["csrf"]}).status_code == 401


def test_wrong_admin_keys_are_throttled_even_for_the_right_key(arena):
    server, arena_id, _ = arena
    wrong = httpx.Client(base_url=server.url, headers={"Authorization": "Bearer " + ADMIN_KEY[:-1] + "x"})
    codes = [wrong.get(f"/admin/arenas/{arena_id}").status_code for _ in range(7)]
    assert codes[:5] == [401] * 5 and codes[-1] == 429
    right = server.admin.http.get(f"/admin/arenas/{arena_id}")
    assert right.status_code == 429 and int(right.headers["retry-after"]) >= 1


def test_errors_say_what_is_wrong_without_internals(arena):
    server, arena_id, tokens = arena
    path = f"/admin/arenas/{arena_id}/generations"
    bad_image = {"model": "m", "sample_id": "s", "prompt": "p", "image_b64": base64.b64encode(b"not an image").decode()}
    r = server.admin.http.post(path, json={"generations": [bad_image]})
    assert r.status_code == 400 and r.json()["detail"] == "m/s: not a readable image"
    r = server.admin.http.post(path, json={"generations": "x"})
    assert r.status_code == 422 and r.json()["detail"].startswith("invalid request: generations")
    alice = signed_in(server.url, tokens["alice"])
    page = alice.post("/vote", data={"battle_id": "x"})
    assert page.status_code == 422 and "invalid request" in page.text
    for text in (r.text, page.text):
        assert not re.search(r"0x[0-9a-f]{6,}|object at|Traceback|pydantic|BytesIO|\"input\"", text), text
