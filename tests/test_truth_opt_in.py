"""Ground truth is opt-in: a model that does not declare `needs_truth` never gets the sample's truth —
called by a run directly, in the arena, or behind `nbeval serve` — and one that declares it does."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import open_dict
from PIL import Image

from conftest import evaluate
from nbeval.adapters.base import EditRequest, GenRequest, GenResult, ModelAdapter


class Recording(ModelAdapter):
    """A blank image for every request; each request's truth appended to a JSONL file."""

    capabilities = frozenset({"generate", "edit"})

    def __init__(self, log: str, name: str = "recording", needs_truth: bool = False) -> None:
        self.log, self.name, self.needs_truth = Path(log), name, needs_truth

    def settings(self) -> dict:
        return {"log": str(self.log), "needs_truth": self.needs_truth}

    def _record(self, kind: str, requests: list) -> list[GenResult]:
        with self.log.open("a") as f:
            for r in requests:
                f.write(json.dumps({"kind": kind, "model": self.name, "truth": r.truth}) + "\n")
        return [GenResult(Image.new("RGB", (r.size, r.size), "white")) for r in requests]

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return self._record("generate", requests)

    def edit(self, requests: list[EditRequest]) -> list[GenResult]:
        return self._record("edit", requests)


def recorded(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _node(log: Path, **kw) -> dict:
    return {"_target_": f"{__name__}.Recording", "log": str(log), **kw}


@pytest.mark.parametrize("needs_truth", [False, True])
def test_a_run_gives_truth_only_to_a_model_that_declares_it(compose_cfg, tmp_path, needs_truth):
    cfg = compose_cfg(["suite=[counting,drift]", "n=2", "suite.drift.turns=2"])
    log = tmp_path / "requests.jsonl"
    with open_dict(cfg):
        cfg.model = _node(log, needs_truth=needs_truth)
    evaluate(cfg, tmp_path / "out")
    seen = recorded(log)
    assert {r["kind"] for r in seen} == {"generate", "edit"} and len(seen) == 2 + 2 * 3
    if needs_truth:
        assert all("scene" in r["truth"] for r in seen)
    else:
        assert all(r["truth"] == {} for r in seen)


def test_the_arena_gives_no_truth_to_its_models(compose_cfg, tmp_path):
    cfg = compose_cfg(["suite=arena", "n=3", "model=[oracle,oracle_blur]"])
    log = tmp_path / "requests.jsonl"
    with open_dict(cfg):
        cfg.models = {"a": _node(log, name="a"), "b": _node(log, name="b")}
    res = evaluate(cfg, tmp_path / "out")
    seen = recorded(log)
    assert {r["model"] for r in seen} == {"a", "b"} and len(seen) == 6
    assert all(r["truth"] == {} for r in seen)
    assert res["suites"]["arena"]["metrics"]["win_rate/a"]["value"] == 0.5  # the same blank images: every battle a tie


def test_nbeval_serve_gives_no_truth_to_a_model_that_does_not_declare_it(compose_cfg, inprocess, tmp_path):
    log = tmp_path / "requests.jsonl"
    url = inprocess(Recording(str(log)))
    base = ["n=2", "model=openai_http", f"model.base_url={url}", "model.model=recording"]
    evaluate(compose_cfg([*base, "suite=[counting,drift]", "suite.drift.turns=1"]), tmp_path / "plain")
    assert len(recorded(log)) == 2 + 2 * 2 and all(r["truth"] == {} for r in recorded(log))
    # a client that sends it anyway (send_truth=true is for serving the oracle) is refused, per sample
    res = evaluate(compose_cfg([*base, "suite=[counting]", "model.send_truth=true", "model.max_retries=0"]), tmp_path / "sent")
    gens = pd.read_parquet(tmp_path / "sent" / res["suites"]["counting"]["tables"]["generations"])
    assert gens["image_sha256"].isna().all() and gens["error"].str.contains("does not take ground truth").all()
    assert len(recorded(log)) == 6, "the refused requests never reached the model"


def test_the_oracle_is_served_by_nbeval_serve_only_to_a_client_that_sends_the_truth(compose_cfg, nbeval_serve, tmp_path):
    """The real `nbeval serve model=oracle` (the users' fixture): it needs the truth, so it gets it."""
    server = nbeval_serve("model=oracle")
    base = ["suite=[counting]", "n=4", "model=openai_http", f"model.base_url={server.url}", "model.model=oracle", "model.max_retries=0"]
    res = evaluate(compose_cfg([*base, "model.send_truth=true"]), tmp_path / "truth")
    assert res["suites"]["counting"]["metrics"]["exact_accuracy"]["value"] == 1.0
    res = evaluate(compose_cfg(base), tmp_path / "none")
    assert res["suites"]["counting"]["n_failed_generations"] == 4
