"""The human arena end to end from the command line: two finished `nbeval run` folders become an
arena (create, import, invite), voters vote through the web app, and the exported votes feed
`nbeval arena leaderboard` like any battles file."""

from __future__ import annotations

import asyncio
import json

import httpx
import pandas as pd
import pytest
from conftest import ADMIN_KEY, run_cli

from nbeval.arena.client import form_fields, sign_in
from nbeval.arena.ratings import leaderboard


@pytest.mark.slow
def test_runs_become_an_arena_whose_votes_make_a_leaderboard(arena_server, tmp_path):
    runs = []
    for model, severity in (("oracle", 0), ("oracle_drop", 3)):
        out = tmp_path / model
        r = run_cli(["run", f"model={model}", f"model.severity={severity}", "suite=[counting]", "n=6",
                     "tracking=none", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"], tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(str(out))
    server = arena_server()
    env = {"NBEVAL_ARENA_ADMIN_KEY": ADMIN_KEY}

    def admin(*args: str) -> str:
        r = run_cli(["arena", *args, f"url={server.url}"], tmp_path, env)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    arena = admin("create", "name=cli").strip()
    imported = json.loads(admin("import", f"arena={arena}", "suite=counting", f"runs={','.join(runs)}"))
    assert imported == {"generations": 12, "images_added": 12, "battles_added": 6}
    again = json.loads(admin("import", f"arena={arena}", "suite=counting", f"runs={runs[0]}"))
    assert again == {"generations": 6, "images_added": 0, "battles_added": 0}  # a retried import changes nothing
    tokens = dict(line.split("\t") for line in admin("invite", f"arena={arena}", "names=dana,eli").splitlines())

    async def vote_all(token: str) -> int:
        async with httpx.AsyncClient(base_url=server.url) as http:
            await sign_in(http, token)
            n = 0
            while "battle_id" in (form := form_fields((await http.get("/battle")).text)):
                assert (await http.post("/vote", data={**form, "winner": "a"})).status_code == 303
                n += 1
            return n

    assert [asyncio.run(vote_all(t)) for t in tokens.values()] == [6, 6]
    admin("export", f"arena={arena}", f"out={tmp_path / 'votes.jsonl'}")
    votes = pd.read_json(tmp_path / "votes.jsonl", lines=True)
    assert len(votes) == 12 and set(votes["voter"]) == {"dana", "eli"} and set(votes["model_a"]) | set(votes["model_b"]) == {"oracle", "oracle_drop"}
    r = run_cli(["arena", "leaderboard", f"battles={tmp_path / 'votes.jsonl'}", f"out={tmp_path / 'board'}", "mlflow=false"], tmp_path)
    assert r.returncode == 0, r.stderr
    board = pd.read_csv(tmp_path / "board" / "leaderboard.csv")
    assert sorted(board["model"]) == ["oracle", "oracle_drop"] and list(board["battles"]) == [12, 12]
    # human votes carry their sample's suite and tags, so they rank per category like any battles file
    samples = pd.read_parquet(tmp_path / "oracle" / "counting" / "samples.parquet").set_index("sample_id")
    assert set(votes["suite"]) == {"counting"}
    for v in votes.itertuples():
        assert v.tags == [f"{k}={t}" for k, t in json.loads(samples.at[v.sample_id, "tags"]).items()] and v.tags
    for by in ("suite", "tags"):
        r = run_cli(["arena", "leaderboard", f"battles={tmp_path / 'votes.jsonl'}", f"out={tmp_path / 'board'}", "mlflow=false", f"by={by}"], tmp_path)
        assert r.returncode == 0, r.stderr
        per = pd.read_csv(tmp_path / "board" / f"leaderboard_by_{by}.csv")
        categories = {"counting"} if by == "suite" else {t for tags in votes["tags"] for t in tags}
        assert set(per["category"]) == categories and set(per["model"]) == {"oracle", "oracle_drop"}
        for category, rows in per.groupby("category"):
            in_category = votes[[category == v.suite or category in v.tags for v in votes.itertuples()]]
            assert rows["battles"].tolist() == [len(in_category)] * 2
            alone = leaderboard(in_category, rounds=100).set_index("model")["rating"]  # the CLI's default rounds and seed
            assert (rows.set_index("model")["rating"] - alone[rows["model"]]).abs().max() < 1e-6

    bad = run_cli(["arena", "import", f"url={server.url}", f"arena={arena}", "suite=counting", f"runs={tmp_path / 'nope'}"], tmp_path, env)
    assert bad.returncode == 1 and "generations.parquet not found" in bad.stderr
    unauth = run_cli(["arena", "create", f"url={server.url}", "name=x"], tmp_path, {"NBEVAL_ARENA_ADMIN_KEY": "wrong-key-wrong-key"})
    assert unauth.returncode == 1 and "401" in unauth.stderr
