"""The arena refuses what it must: missing and forged tokens and sessions, forged forms, tampered and
foreign battle ids, replayed votes, and every way we know to learn which model made an image
before voting (page, URL, file name, bytes, size, headers, metadata, the reveal page)."""

from __future__ import annotations

import io
import re

import httpx
import pytest
from conftest import ADMIN_KEY

from nbeval.arena.loadtest import demo_generations
from itsdangerous import URLSafeTimedSerializer
from PIL import Image, ImageCms, PngImagePlugin

from nbeval.arena.client import form_fields

MODELS = {"oracle": (None, 0), "oracle_blurred": ("blur", 3)}


def signed_in(url: str, token: str) -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=30)
    page = http.get("/")
    r = http.post("/login", data={"token": token, "csrf": form_fields(page.text)["csrf"]})
    assert r.status_code == 303, r.text
    return http


def png_chunks(data: bytes) -> list[str]:
    names, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        names.append(data[pos + 4 : pos + 8].decode("ascii"))
        pos += 12 + length
    return names


@pytest.fixture
def arena(arena_server):
    server = arena_server(undo_s=0)  # models shown right after each vote
    items = demo_generations(4, MODELS)
    # one image arrives carrying metadata that names its model: it must not survive the import
    info = PngImagePlugin.PngInfo()
    info.add_text("model", "oracle_blurred")
    exif = Image.Exif()
    exif[0x010F] = "oracle_blurred"  # EXIF Make
    buf = io.BytesIO()
    model, sid, prompt, img = items[-1]
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img.resize((256, 256)).save(buf, format="PNG", pnginfo=info, exif=exif, icc_profile=icc)  # at display size: nothing to resize
    assert {"tEXt", "eXIf", "iCCP"} <= set(png_chunks(buf.getvalue()))
    items[-1] = (model, sid, prompt, buf.getvalue())
    first, other = server.admin.create_arena("main"), server.admin.create_arena("other")
    server.admin.import_generations(first, items)
    server.admin.import_generations(other, demo_generations(2, MODELS, seed=1))
    tokens = server.admin.invite(first, ["alice", "bob"])
    foreign = server.admin.invite(other, ["mallory"])["mallory"]
    return server, first, other, tokens, foreign


def battle(http: httpx.Client) -> tuple[str, dict]:
    page = http.get("/battle")
    assert page.status_code == 200
    return page.text, form_fields(page.text)


def test_missing_and_forged_tokens_and_sessions_are_refused(arena):
    server, *_ , tokens, _ = arena
    anon = httpx.Client(base_url=server.url)
    assert anon.get("/battle").status_code == 401
    assert anon.post("/vote", data={"battle_id": "x", "winner": "a", "csrf": "x"}).status_code == 401
    assert anon.get("/leaderboard").status_code == 401
    # sign-in needs the form's own nonce (login CSRF) and a real invite token
    assert anon.post("/login", data={"token": tokens["alice"], "csrf": "guess"}).status_code == 403
    page = anon.get("/")
    assert anon.post("/login", data={"token": "not-a-token", "csrf": form_fields(page.text)["csrf"]}).status_code == 401
    # a session cookie signed with another secret, or edited to become another voter
    forged = URLSafeTimedSerializer("not-the-secret", salt="nbeval-arena-session").dumps({"v": 1, "c": "c"})
    assert httpx.Client(base_url=server.url, cookies={"nbeval_session": forged}).get("/battle").status_code == 401
    alice = signed_in(server.url, tokens["alice"])
    raw = alice.cookies["nbeval_session"]
    payload, rest = raw.split(".", 1)
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + rest
    assert httpx.Client(base_url=server.url, cookies={"nbeval_session": tampered}).get("/battle").status_code == 401


def test_guessing_invite_tokens_is_rate_limited(arena):
    server = arena[0]
    anon = httpx.Client(base_url=server.url)
    codes = []
    for _ in range(12):
        page = anon.get("/")
        codes.append(anon.post("/login", data={"token": "guess", "csrf": form_fields(page.text)["csrf"]}).status_code)
    assert codes[0] == 401 and codes[-1] == 429


def test_forged_forms_tampered_battles_and_replays_are_refused(arena):
    server, first, other, tokens, foreign = arena
    alice, bob = signed_in(server.url, tokens["alice"]), signed_in(server.url, tokens["bob"])
    _, form = battle(alice)
    bob_csrf = battle(bob)[1]["csrf"]
    assert alice.post("/vote", data={**form, "winner": "a", "csrf": "forged"}).status_code == 403
    assert alice.post("/vote", data={**form, "winner": "a", "csrf": bob_csrf}).status_code == 403
    assert alice.post("/vote", data={"battle_id": form["battle_id"], "winner": "a"}).status_code == 422  # no csrf at all
    # tampered, unknown, oversized and foreign battle ids
    bid = form["battle_id"]
    flipped = bid[:-1] + ("A" if bid[-1] != "A" else "B")
    mallory = signed_in(server.url, foreign)
    foreign_bid = battle(mallory)[1]["battle_id"]
    for bad in (flipped, "0", "x" * 32, foreign_bid):
        assert alice.post("/vote", data={**form, "battle_id": bad, "winner": "a"}).status_code == 404, bad
    assert alice.post("/vote", data={**form, "battle_id": "x" * 5000, "winner": "a"}).status_code == 422
    assert mallory.post("/vote", data={**battle(mallory)[1], "battle_id": bid, "winner": "a"}).status_code == 404
    assert alice.post("/vote", data={**form, "winner": "model_a"}).status_code == 400
    # the real vote once, then replays (same session, and the same form from a second sign-in)
    assert alice.post("/vote", data={**form, "winner": "b"}).status_code == 303
    assert alice.post("/vote", data={**form, "winner": "a"}).status_code == 409
    alice2 = signed_in(server.url, tokens["alice"])
    assert alice2.post("/vote", data={**form, "csrf": battle(alice2)[1]["csrf"], "winner": "a"}).status_code == 409
    assert server.admin.status(first)["votes"] == 1
    votes = server.admin.votes_jsonl(first).splitlines()
    assert len(votes) == 1 and '"winner":"b"' in votes[0] and '"voter":"alice"' in votes[0]


def test_nothing_tells_which_model_made_an_image_before_the_vote(arena):
    server, first, other, tokens, foreign = arena
    alice = signed_in(server.url, tokens["alice"])
    html, form = battle(alice)
    for name in MODELS:
        assert name not in html
    assert not re.search(r"blur|oracle|corrupt", html, re.I)
    urls = re.findall(r'src="(/i/[^"]+)"', html)
    assert len(urls) == 2
    bodies = [alice.get(u) for u in urls]
    for r in bodies:
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert not {"etag", "last-modified", "content-disposition", "server"} & set(r.headers)
        assert png_chunks(r.content) == ["IHDR", *["IDAT"] * (png_chunks(r.content).count("IDAT")), "IEND"]
    a, b = bodies
    assert len(a.content) == len(b.content)  # same byte length whatever the content
    assert sorted(a.headers.keys()) == sorted(b.headers.keys())
    assert {k: v for k, v in a.headers.items() if k != "date"} == {k: v for k, v in b.headers.items() if k != "date"}
    # every image in the arena, including the one imported with metadata naming its model
    seen, sizes = set(), set()
    for _ in range(8):
        page, f = battle(alice)
        if "battle_id" not in f:
            break
        for u in re.findall(r'src="(/i/[^"]+)"', page):
            data = alice.get(u).content
            sizes.add(len(data))
            assert b"oracle" not in data and set(png_chunks(data)) == {"IHDR", "IDAT", "IEND"}
            seen.add(u)
        assert alice.get(f"/reveal/{f['battle_id']}").status_code == 403  # no reveal before the vote
        assert alice.post("/vote", data={**f, "winner": "tie"}).status_code == 303
        revealed = alice.get(f"/reveal/{f['battle_id']}")
        assert revealed.status_code == 200 and all(m in revealed.text for m in MODELS)
    assert len(sizes) == 1 and len(seen) == 8  # 4 prompts × 2 models, each battle side its own URL
    # image URLs need a session of the same arena; admin endpoints need the admin key
    assert httpx.get(server.url + urls[0]).status_code == 401
    mallory = signed_in(server.url, foreign)
    assert mallory.get(urls[0]).status_code == 404
    assert alice.get(f"/admin/arenas/{first}/votes").status_code == 401
    assert httpx.get(f"{server.url}/admin/arenas/{first}/votes", headers={"Authorization": "Bearer " + ADMIN_KEY[:-1] + "x"}).status_code == 401
    assert httpx.get(f"{server.url}/docs").status_code == 404 and httpx.get(f"{server.url}/openapi.json").status_code == 404
