"""Blindness across battles, against a real server: an image's URL is good for one view by one voter;
a battle is the voter's it was shown to, expires unvoted, and cannot be voted on by anyone else;
re-rolls are counted and throttled; a voter is never shown an image whose model they have seen, and
reveal=end|never hold the models back. Images are told apart by prompt and bytes' hash, which are the
same in every battle (what a voter comparing notes could use), not by URL."""

from __future__ import annotations

import hashlib
import io
import re
import secrets
import time

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from test_arena_security import signed_in

from nbeval.arena.client import form_fields
from nbeval.arena.loadtest import demo_generations

MODELS = {"oracle": (None, 0), "oracle_blurred": ("blur", 3), "oracle_dropped": ("drop", 2)}


def image_urls(html: str) -> list[str]:
    return re.findall(r'src="(/i/[^"]+)"', html)


def identities(http, html: str) -> list[tuple[str, str]]:
    """(prompt, sha256 of the bytes) of a page's two images: an image's identity whatever its URL
    (the hash alone is not: a blank canvas looks the same under every prompt)."""
    prompt = re.search(r'class="prompt"[^>]*>([^<]*)<', html)[1]
    return [(prompt, hashlib.sha256(http.get(u).content).hexdigest()) for u in image_urls(html)]


def setup(server, reveal: str = "after_vote", prompts: int = 3, voters: tuple[str, ...] = ("alice", "bob", "carol")) -> tuple[str, dict[str, str]]:
    arena = server.admin.create_arena(f"blind-{reveal}-{secrets.token_hex(4)}", sampling="uniform", reveal=reveal)  # PostgreSQL's database outlives a test
    server.admin.import_generations(arena, demo_generations(prompts, MODELS))
    return arena, server.admin.invite(arena, list(voters))


def test_image_urls_are_new_each_view_and_only_for_that_voter(arena_server, db_url):
    server = arena_server(db_url)
    _, tokens = setup(server)
    alice, bob, carol = (signed_in(server.url, tokens[n]) for n in ("alice", "bob", "carol"))
    first = alice.get("/battle").text
    again = alice.get("/battle").text  # a reload shows the same battle, not another one
    assert form_fields(first)["battle_id"] == form_fields(again)["battle_id"]
    old, new = image_urls(first), image_urls(again)
    assert len(new) == 2 and not set(old) & set(new)
    assert all(alice.get(u).status_code == 404 for u in old)  # the previous view's URLs are dead
    assert [alice.get(u).content for u in new] != [b"", b""] and all(alice.get(u).status_code == 200 for u in new)
    bob.get("/battle")
    assert all(bob.get(u).status_code == 404 for u in new)  # another voter of the same arena
    # a battle not shown to the voter cannot be voted on, by a voter who has seen nothing or anything else
    bid = form_fields(again)["battle_id"]
    r = carol.post("/vote", data={"battle_id": bid, "winner": "a", "csrf": form_fields(carol.get("/leaderboard").text)["csrf"]})
    assert r.status_code == 403 and "not shown to you" in r.text
    bob_form = form_fields(bob.get("/battle").text)
    if bob_form["battle_id"] != bid:
        assert bob.post("/vote", data={**bob_form, "battle_id": bid, "winner": "a"}).status_code == 403
    assert alice.post("/vote", data={**form_fields(again), "winner": "a"}).status_code == 303
    assert all(alice.get(u).status_code == 200 for u in image_urls(alice.get(f"/reveal/{bid}").text))


def test_an_assigned_battle_expires_unvoted(arena_server, db_url):
    server = arena_server(db_url, battle_ttl_s=2)
    _, tokens = setup(server, voters=("alice",))
    alice = signed_in(server.url, tokens["alice"])
    html = alice.get("/battle").text
    time.sleep(2.5)
    assert all(alice.get(u).status_code == 404 for u in image_urls(html))
    r = alice.post("/vote", data={**form_fields(html), "winner": "a"})
    assert r.status_code == 410 and "expired" in r.text
    fresh = alice.get("/battle").text  # a new assignment, votable
    assert alice.post("/vote", data={**form_fields(fresh), "winner": "a"}).status_code == 303


def test_rerolls_are_throttled_logged_and_not_offered_again(arena_server):
    server = arena_server()
    arena, tokens = setup(server, prompts=4, voters=("alice",))  # 12 battles
    alice = signed_in(server.url, tokens["alice"])
    passed, codes = set(), []
    for _ in range(7):
        form = form_fields(alice.get("/battle").text)
        r = alice.post("/reroll", data={"csrf": form["csrf"]})
        codes.append(r.status_code)
        if r.status_code == 303:
            passed.add(form["battle_id"])
        else:
            assert int(r.headers["retry-after"]) >= 1
    assert codes[:5] == [303] * 5 and codes[-1] == 429  # a burst of 5, then 10 a minute
    assert server.admin.status(arena)["rerolls"] == len(passed) == 5
    seen = set()
    while "battle_id" in (form := form_fields(alice.get("/battle").text)):
        seen.add(form["battle_id"])
        assert alice.post("/vote", data={**form, "winner": "tie"}).status_code == 303
    assert seen and not seen & passed


def test_a_voter_never_sees_an_image_whose_model_was_revealed_to_them(arena_server, db_url):
    server = arena_server(db_url, undo_s=0)  # models shown right after each vote
    arena, tokens = setup(server, prompts=4, voters=("alice",))  # 4 prompts × 3 pairs: every pair shares an image with another
    alice = signed_in(server.url, tokens["alice"])
    known: dict[tuple[str, str], str] = {}  # image identity → model, learnt from reveals
    votes = 0
    while "battle_id" in (form := form_fields(html := alice.get("/battle").text)):
        shown = identities(alice, html)
        assert not set(shown) & known.keys(), f"battle {votes + 1} shows an image already revealed"
        assert alice.post("/vote", data={**form, "winner": "a"}).status_code == 303
        page = alice.get(f"/reveal/{form['battle_id']}").text
        models = re.findall(r'id="model-[ab]">([^<]+)<', page)
        known |= dict(zip(shown, models))
        votes += 1
    assert votes == 4 and len(known) == 8  # one battle per prompt: the third image of each stays unseen
    assert server.admin.status(arena)["votes"] == 4


@pytest.mark.parametrize("reveal", ["end", "never"])
def test_reveals_deferred_to_the_end_or_never(arena_server, reveal):
    server = arena_server(undo_s=0)
    _, tokens = setup(server, reveal=reveal, prompts=2, voters=("alice",))  # 6 battles, all votable
    alice = signed_in(server.url, tokens["alice"])
    voted = []
    while "battle_id" in (form := form_fields(alice.get("/battle").text)):
        assert alice.post("/vote", data={**form, "winner": "b"}).status_code == 303
        r = alice.get(f"/reveal/{form['battle_id']}")  # the vote's acknowledgement, without the models
        if len(voted) < 5:
            assert r.status_code == 200 and "recorded" in r.text and 'id="withheld"' in r.text and not any(m in r.text for m in MODELS)
        voted.append(form["battle_id"])
    assert len(voted) == 6
    done = alice.get("/battle").text
    for bid in voted:
        r = alice.get(f"/reveal/{bid}")
        if reveal == "end":
            assert f"/reveal/{bid}" in done and r.status_code == 200 and re.search(r'id="model-a">oracle', r.text)
        else:
            assert "/reveal/" not in done and r.status_code == 200 and "does not show" in r.text and not any(m in r.text for m in MODELS)


def models_on(page: str) -> list[str]:
    return re.findall(r'id="model-[ab]">([^<]+)<', page)


def test_cant_tell_is_a_vote_and_a_vote_can_be_undone_until_its_models_are_shown(arena_server, db_url):
    server = arena_server(db_url, undo_s=3)
    arena, tokens = setup(server, prompts=2, voters=("alice",))
    alice = signed_in(server.url, tokens["alice"])
    form = form_fields(alice.get("/battle").text)
    bid = form["battle_id"]
    assert alice.post("/vote", data={**form, "winner": "a"}).status_code == 303
    page = alice.get(f"/reveal/{bid}").text
    # within the undo window the models are withheld (else a voter could undo knowing them), the page
    # offers the undo and reloads itself when the window closes
    assert "recorded" in page and 'id="withheld"' in page and not models_on(page) and not any(m in page for m in MODELS)
    assert 'id="undo"' in page and re.search(r'http-equiv="refresh" content="[123]"', page)
    undo = form_fields(page)
    assert alice.post("/undo", data={"battle_id": bid, "csrf": undo["csrf"]}).status_code == 303
    assert alice.get(f"/reveal/{bid}").status_code == 403 and server.admin.status(arena)["votes"] == 0
    again = form_fields(html := alice.get("/battle").text)
    assert again["battle_id"] == bid and all(alice.get(u).status_code == 200 for u in image_urls(html))  # the battle is hers again
    assert alice.post("/vote", data={**again, "winner": "skip"}).status_code == 303  # "can't tell" is a vote too
    page = alice.get(f"/reveal/{bid}").text
    assert "Your vote: can&#39;t tell" in page and not models_on(page)
    time.sleep(3.2)
    page = alice.get(f"/reveal/{bid}").text
    assert len(models_on(page)) == 2 and 'id="undo"' not in page
    r = alice.post("/undo", data={"battle_id": bid, "csrf": undo["csrf"]})
    assert r.status_code == 409 and "no longer" in r.text
    status = server.admin.status(arena)
    assert status["votes"] == 1 and status["skips"] == 1
    # the skip is stored with its battle and exported; the ratings leave it out, the leaderboard counts it
    while "battle_id" in (f := form_fields(alice.get("/battle").text)):
        assert alice.post("/vote", data={**f, "winner": "b"}).status_code == 303
    votes = server.admin.votes_jsonl(arena)
    assert votes.count('"winner":"skip"') == 1 and votes.count('"winner":"b"') == 1  # 2 prompts: one battle each
    board = alice.get("/leaderboard").text
    assert "from 1 votes" in board and re.search(r"all pairs</td><td>2</td><td>1</td><td>50.0%", board)


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_a_database_from_before_views_is_migrated_and_its_reveals_count(arena_server, tmp_path, request, db):
    url = f"sqlite:///{tmp_path / 'old.db'}" if db == "sqlite" else request.getfixturevalue("postgres_url")
    server = arena_server(url)
    arena, tokens = setup(server, prompts=2, voters=("alice",))
    alice = signed_in(server.url, tokens["alice"])
    form = form_fields(alice.get("/battle").text)
    assert alice.post("/vote", data={**form, "winner": "a"}).status_code == 303
    server.stop()
    engine = sa.create_engine(url)
    with engine.begin() as c:  # back to the schema the previous version created
        for table in ("views", "voter_sessions"):
            c.execute(sa.text(f"DROP TABLE {table}"))
        old_columns = (("arenas", "reveal"), ("arenas", "aspect"), ("images", "width"), ("images", "height"), ("voters", "expires_at"), ("voters", "revoked_at"), ("votes", "revealed_at"),
                       ("images", "suite"), ("images", "tags"))
        for table, column in old_columns:
            c.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    engine.dispose()
    server = arena_server(url)
    assert server.admin.status(arena)["reveal"] == "after_vote"
    alice = signed_in(server.url, tokens["alice"])
    old = alice.get(f"/reveal/{form['battle_id']}")  # the vote from before: revealed then, revealable now
    assert old.status_code == 200 and all(alice.get(u).status_code == 200 for u in image_urls(old.text))
    revealed = set(identities(alice, old.text))
    rest = 0
    while "battle_id" in (f := form_fields(html := alice.get("/battle").text)):
        assert not set(identities(alice, html)) & revealed
        assert alice.post("/vote", data={**f, "winner": "b"}).status_code == 303
        rest += 1
    assert rest == 1 and server.admin.status(arena)["votes"] == 2


def test_one_prompt_per_sample_refused_at_import_and_shown_whatever_the_sides(arena_server, tmp_path):
    server = arena_server()
    arena = server.admin.create_arena("prompts", sampling="uniform")
    items = demo_generations(4, {"oracle": (None, 0), "oracle_blurred": ("blur", 3)})
    first, second = items[:4], items[4:]
    server.admin.import_generations(arena, first[2:3])

    def restyled(item: tuple) -> tuple:
        model, sid, prompt, img = item
        return model, sid, prompt + " (in a blurred style)", img

    for bad, sid in (([*second[:2], restyled(second[2])], second[2][1]),  # against a stored sample
                     ([first[3], restyled(second[3])], second[3][1])):  # within one request
        with pytest.raises(RuntimeError, match=rf"409 .*sample '{sid}'"):
            server.admin.import_generations(arena, bad)
    assert server.admin.status(arena)["images"] == 1  # a refused import stores nothing
    assert server.admin.import_generations(arena, items) == {"images_added": 7, "battles_added": 4}
    # a database from before the check, holding a second prompt on the side-a image of every battle
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'arena.db'}")
    with engine.begin() as c:
        c.execute(sa.text("UPDATE battles SET image_a_id = image_b_id, image_b_id = image_a_id WHERE image_a_id < image_b_id"))
        c.execute(sa.text("UPDATE images SET prompt = 'TELL ' || prompt WHERE id IN (SELECT image_a_id FROM battles)"))
    engine.dispose()
    alice = signed_in(server.url, server.admin.invite(arena, ["alice"])["alice"])
    shown = set()
    while "battle_id" in (form := form_fields(html := alice.get("/battle").text)):
        shown.add(re.search(r'id="prompt">([^<]*)<', html)[1])
        assert alice.post("/vote", data={**form, "winner": "a"}).status_code == 303
    assert shown == {p for _, _, p, _ in first}


def test_images_shaped_unlike_their_sample_are_refused_or_cropped(arena_server):
    server = arena_server()

    def pair(sample: str, size_b: tuple[int, int]) -> list[tuple]:
        return [("wide", sample, f"prompt {sample}", Image.new("RGB", size_b, "blue")), ("square", sample, f"prompt {sample}", Image.new("RGB", (256, 256), "red"))]

    refuse = server.admin.create_arena("aspect-refuse")
    assert server.admin.import_generations(refuse, pair("s1", (512, 512)))["images_added"] == 2  # another size, the same shape
    with pytest.raises(RuntimeError, match=r"409 .*sample 's2': square's image is 256x256, wide's 320x240"):
        server.admin.import_generations(refuse, pair("s2", (320, 240)))
    crop = server.admin.create_arena("aspect-crop", aspect="crop")
    assert server.admin.import_generations(crop, pair("s2", (320, 240)))["images_added"] == 2
    alice = signed_in(server.url, server.admin.invite(crop, ["alice"])["alice"])
    for u in image_urls(alice.get("/battle").text):  # no letterbox bars: every pixel is the image's colour
        pixels = np.asarray(Image.open(io.BytesIO(alice.get(u).content)))
        assert pixels.shape == (256, 256, 3) and len(np.unique(pixels.reshape(-1, 3), axis=0)) == 1
