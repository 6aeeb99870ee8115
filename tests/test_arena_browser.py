"""A person's path through the arena in a real browser: Debian's headless Chromium, driven by
Playwright (its own browser download cannot work here). Sign in, vote on several battles, see each
reveal, reach the leaderboard; then the votes are in the database."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from conftest import need

from nbeval.arena.loadtest import demo_generations

MODELS = {"oracle": (None, 0), "oracle_dropped": ("drop", 3), "oracle_blurred": ("blur", 3)}


@pytest.fixture
def browser():
    chromium = need("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.mark.slow
def test_voter_signs_in_votes_sees_reveals_and_votes_are_stored(arena_server, browser, tmp_path):
    server = arena_server(undo_s=2)
    arena = server.admin.create_arena("browser")
    # 5 prompts × 3 pairs = 15 battles; a reveal takes a prompt's other two pairs off this voter's list
    server.admin.import_generations(arena, demo_generations(5, MODELS))
    token = server.admin.invite(arena, ["carol"])["carol"]

    page = browser.new_page()
    page.goto(server.url + "/")
    page.fill("#token", token)
    page.click("#sign-in")
    page.wait_for_url("**/battle")
    choices = ["skip", "b", "tie", "both_bad", "a"]
    for k, choice in enumerate(choices):
        assert page.inner_text("#prompt")
        for side in ("a", "b"):  # both images really loaded and decoded; a click shows one large, "close" undoes it
            assert page.eval_on_selector(f"#image-{side}", "img => img.complete && img.naturalWidth") == 256
            width = page.eval_on_selector(f"#image-{side}", "img => img.getBoundingClientRect().width")
            page.click(f"#image-{side}")
            assert page.eval_on_selector(f"#image-{side}", "img => img.getBoundingClientRect().width") > 1.5 * width
            page.click(f"#side-{side} .close")
            assert page.eval_on_selector(f"#image-{side}", "img => img.getBoundingClientRect().width") == width
        assert not any(m in page.content() for m in MODELS)
        if k == 0:  # a vote taken back within the undo window: its models were never on the page
            prompt = page.inner_text("#prompt")
            page.click("#vote-a")
            page.wait_for_url("**/reveal/**")
            assert page.locator("#withheld").count() == 1 and not any(m in page.content() for m in MODELS)
            page.click("#undo")
            page.wait_for_url("**/battle")
            assert page.inner_text("#prompt") == prompt
        page.click(f"#vote-{choice}")
        page.wait_for_url("**/reveal/**")
        page.wait_for_selector("#model-a", timeout=10_000)  # the page reloads itself once the vote can no longer be undone
        revealed = {page.inner_text("#model-a"), page.inner_text("#model-b")}
        assert len(revealed) == 2 and revealed <= set(MODELS)
        assert "recorded" in page.inner_text("#your-vote")
        page.click("#next")
        page.wait_for_url("**/battle")
    stored = pd.read_json(io.StringIO(server.admin.votes_jsonl(arena)), lines=True)
    assert list(stored["winner"]) == choices and set(stored["voter"]) == {"carol"}
    assert stored["battle_id"].is_unique
    # the leaderboard ranks every model of the decided votes (which pairs the sampler drew is random:
    # the four decided votes need not cover all three models)
    fitted = stored[stored["winner"] != "skip"]
    page.goto(server.url + "/leaderboard")
    ranked = page.eval_on_selector_all("#leaderboard tr td:first-child", "cells => cells.map(c => c.textContent)")
    assert sorted(ranked) == sorted(set(fitted["model_a"]) | set(fitted["model_b"]))
    assert page.eval_on_selector("#ratings-plot", "img => img.complete && img.naturalWidth") > 0
    page.screenshot(path=str(tmp_path / "leaderboard.png"))
    page.goto(server.url + "/battle")
    page.screenshot(path=str(tmp_path / "battle.png"))
