"""VLM judges: the protocol, the world judge on real renders, `nbeval serve vlm=…` with the chat client
(log-probabilities and a text-only server), judge failures counted and never scored, and the judge
scorers in the suites' roles."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from PIL import Image

from conftest import evaluate
from nbeval.vlm import questions as q
from nbeval.vlm.base import Answer, Judge, JudgeError, Question, option_probabilities
from nbeval.world import Scene, render
from nbeval.world.scene import Shape

pytestmark = pytest.mark.xdist_group("test_vlm")  # one worker: the judge servers are started once


def _scene(*shapes) -> Image.Image:
    return render(Scene(shapes=tuple(Shape(k, c, s, x, y) for k, c, s, x, y in shapes)), 256)


def test_option_probabilities_come_from_logprobs_else_from_the_text():
    yes_no = ("yes", "no")
    probs, source = option_probabilities(Answer("Yes", [(" Yes", math.log(0.6)), ("No", math.log(0.2)), ("Maybe", math.log(0.2))]), yes_no)
    assert source == "logprobs" and probs["yes"] == pytest.approx(0.75) and probs["no"] == pytest.approx(0.25)
    probs, source = option_probabilities(Answer("No, there is none."), yes_no)
    assert (probs, source) == ({"yes": 0.0, "no": 1.0}, "text")
    with pytest.raises(JudgeError, match="unparsable"):
        option_probabilities(Answer("I cannot tell."), yes_no)
    with pytest.raises(ValueError, match="unknown judge error kind"):
        Answer.failed("nonsense", "x")


def test_every_template_parses_back_to_its_fields():
    im = Image.new("RGB", (8, 8))
    made = [q.count_question(im, "red", "circle"), q.other_question(im, [("red", "circle"), ("blue", "square")]), q.text_question(im),
            q.exact_question(im, "orange", "triangle", 1), q.exists_question(im, "orange", "square"),
            q.relation_question(im, ("red", "circle"), "below", ("blue", "square")),
            q.EDIT_SC.ask([im, im], instruction="Add a small red circle at the top left."), q.EDIT_PQ.ask([im, im]),
            q.PAIRWISE.ask([im, im], prompt="three red circles")]
    assert [q.which(x.text)[0].name for x in made] == ["count", "other", "text", "exact", "exists", "relation", "edit_sc", "edit_pq", "pairwise"]
    assert q.which(made[3].text)[1] == {"number": "one", "colour": "orange", "kinds": "triangle"}
    assert q.parse_things(q.which(made[1].text)[1]["things"]) == [("red", "circle"), ("blue", "square")]
    assert q.which("How many cats are in the picture?") is None


@pytest.fixture(scope="module")
def world():
    from nbeval.vlm.world import WorldJudge

    return WorldJudge()


def test_the_world_judge_answers_its_templates_from_real_renders_and_refuses_the_rest(world):
    img = _scene(("circle", "red", "medium", 0.25, 0.3), ("circle", "red", "medium", 0.75, 0.3), ("square", "blue", "medium", 0.5, 0.75))
    asks = [q.count_question(img, "red", "circle"), q.count_question(img, "green", "triangle"),
            q.other_question(img, [("red", "circle")]), q.other_question(img, [("red", "circle"), ("blue", "square")]),
            q.exact_question(img, "red", "circle", 2), q.exact_question(img, "red", "circle", 3), q.exists_question(img, "blue", "square"),
            q.relation_question(img, ("blue", "square"), "below", ("red", "circle")), q.relation_question(img, ("blue", "square"), "above", ("red", "circle")),
            Question((img,), "Describe this image."), Question((img, img), q.count_question(img, "red", "circle").text)]
    answers = world.ask(asks)
    assert [a.text for a in answers[:9]] == ["2", "0", "yes", "no", "yes", "no", "yes", "yes", "no"]
    assert all(a.top_logprobs == [(a.text, 0.0)] for a in answers[:9])
    assert [a.error_kind for a in answers[9:]] == ["unsupported", "unsupported"]


def test_the_world_judge_rates_true_edits_ten_and_missed_ones_zero(world):
    before = _scene(("circle", "red", "medium", 0.2, 0.2), ("square", "blue", "medium", 0.8, 0.8))
    added = _scene(("circle", "red", "medium", 0.2, 0.2), ("square", "blue", "medium", 0.8, 0.8), ("triangle", "green", "medium", 0.8, 0.2))
    add = "Add a medium green triangle at the top right."
    sc = [world.ask([q.EDIT_SC.ask([before, after], instruction=add)])[0].text for after in (added, before)]
    assert sc == ["10", "0"]
    blurred = added.filter(__import__("PIL.ImageFilter", fromlist=["x"]).GaussianBlur(3))
    pq = [int(world.ask([q.EDIT_PQ.ask([before, after])])[0].text) for after in (added, blurred)]
    assert pq[0] == 10 and pq[1] < pq[0]


class Refuser(Judge):
    """Refuses every question (as a provider's content filter might)."""

    name = "refuser"

    def ask(self, questions):
        return [Answer.failed("refusal", "I can't help with that") for _ in questions]


def test_judge_failures_are_counted_by_reason_and_never_scored(compose_cfg, tmp_path):
    from omegaconf import open_dict

    cfg = compose_cfg(["model=oracle", "suite=[counting]", "n=4", "scorer=[vlm_count]"])
    with open_dict(cfg):
        cfg.scorer.counter.judge = {"_target_": f"{__name__}.Refuser"}
    res = evaluate(cfg, tmp_path / "out")
    rec = res["suites"]["counting"]
    assert rec["n_failed_scores"] == 4 and rec["metrics"] == {}
    scores = pd.read_parquet(tmp_path / "out" / rec["tables"]["scores"])
    assert (scores["metric"] == "_error").all() and scores["error"].str.contains("refusal").all()
    assert "4 failed scores (refusal 4)" in (tmp_path / "out" / "summary.md").read_text()


# --- the judge over HTTP: nbeval serve vlm=world, the openai_chat client ---------------------------


@pytest.fixture(scope="module")
def judge_servers(tmp_path_factory):
    """`nbeval serve vlm=world`, once with log-probabilities and once as a text-only server."""
    from nbeval.testing import ServeProcess

    work = tmp_path_factory.mktemp("judges")
    with ServeProcess(["vlm=world"], work) as full, ServeProcess(["vlm=world", "logprobs=false"], work) as text_only:
        yield {"logprobs": full, "text": text_only}


def _judged(compose_cfg, tmp_path, url: str, *overrides: str) -> tuple[dict, pd.DataFrame]:
    cfg = compose_cfg(["suite=[counting]", "n=40", "scorer=[vlm_count]", "vlm=openai_chat", f"vlm.base_url={url}", "vlm.model=world", *overrides])
    out = tmp_path / "_".join(o.replace("/", "") for o in overrides)
    res = evaluate(cfg, out)
    return res, pd.read_parquet(out / res["suites"]["counting"]["tables"]["scores"])


@pytest.mark.slow
@pytest.mark.parametrize("server", ["logprobs", "text"])
def test_counting_through_a_served_judge_is_exact_on_the_oracle_and_sees_dropped_shapes(compose_cfg, tmp_path, judge_servers, server):
    url = judge_servers[server].url
    clean, scores = _judged(compose_cfg, tmp_path, url, "model=oracle")
    assert clean["suites"]["counting"]["metrics"]["exact_accuracy"]["value"] == 1.0
    asked = [a for d in scores["detail"] for a in json.loads(d).get("judge", [])]
    assert {a["source"] for a in asked} == {"logprobs" if server == "logprobs" else "text"}
    assert {a["model"] for a in asked} == {"world"} and len({a["system_fingerprint"] for a in asked}) == 1, "each reading keeps who answered"
    judge = clean["scorers"]["counter"]["judge"]
    assert judge["served"]["name"] == "world" and "base_url" not in judge, "a served nbeval judge is known by its fingerprint"
    dropped, _ = _judged(compose_cfg, tmp_path, url, "model=oracle_drop", "model.severity=2")
    m = dropped["suites"]["counting"]["metrics"]["exact_accuracy"]
    assert m["ci_high"] < 1.0


def test_the_served_judge_speaks_openai_chat_with_logprobs(judge_servers):
    import httpx

    from nbeval.vlm.openai_chat import data_url

    img = _scene(("circle", "red", "medium", 0.3, 0.3))
    body = {"model": "world", "logprobs": True, "top_logprobs": 3, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(img)}},
                                                      {"type": "text", "text": q.count_question(img, "red", "circle").text}]}]}
    r = httpx.post(judge_servers["logprobs"].url + "/chat/completions", json=body, timeout=60).json()
    choice = r["choices"][0]
    assert choice["message"]["content"] == "1" and choice["logprobs"]["content"][0]["top_logprobs"][0] == {"token": "1", "logprob": 0.0}
    assert r["model"] == "world" and r["system_fingerprint"]
    plain = httpx.post(judge_servers["text"].url + "/chat/completions", json=body, timeout=60).json()
    assert plain["choices"][0]["message"]["content"] == "1" and plain["choices"][0].get("logprobs") is None
    refused = httpx.post(judge_servers["logprobs"].url + "/chat/completions", json={**body, "messages": [{"role": "user", "content": "Hello?"}]}, timeout=60).json()
    assert refused["choices"][0]["message"]["refusal"] and refused["choices"][0]["message"]["content"] is None


# --- the judge scorers in the suites' roles (the world judge, in-process) ------------------------------


def test_soft_tifa_is_near_one_on_the_oracle_and_falls_when_colours_are_wrong(compose_cfg, tmp_path):
    base = ["suite=[adherence]", "n=12", "scorer=[clip,vlm_tifa]"]
    clean = evaluate(compose_cfg([*base, "model=oracle"]), tmp_path / "clean")["suites"]["adherence"]["metrics"]
    wrong = evaluate(compose_cfg([*base, "model=oracle_recolour", "model.severity=2"]), tmp_path / "wrong")["suites"]["adherence"]["metrics"]
    assert clean["tifa_atom_accuracy"]["value"] >= 0.9 and clean["soft_tifa_am"]["value"] >= 0.9
    assert wrong["soft_tifa_am"]["value"] < clean["soft_tifa_am"]["value"] and wrong["soft_tifa_gm"]["value"] <= wrong["soft_tifa_am"]["value"]
    assert "r_precision" in clean, "CLIP's metrics stay beside Soft-TIFA's"


def test_the_edit_judge_rates_the_oracles_true_edits_as_made(compose_cfg, tmp_path):
    cfg = compose_cfg(["model=oracle", "suite=[drift_gt]", "n=4", "suite.drift_gt.turns=2", "scorer=[pixels,counter,ocr,vlm_edit]"])
    res = evaluate(cfg, tmp_path / "out")
    m = res["suites"]["drift_gt"]["metrics"]
    assert m["edit_sc"]["value"] >= 0.9 and m["edit_pq"]["value"] >= 0.9 and "edit_sc/turn_0" not in m and "edit_sc/turn_2" in m
    gens = pd.read_parquet(tmp_path / "out" / res["suites"]["drift_gt"]["tables"]["generations"])
    assert gens["input_sha256"].isna().eq(gens["turn"] == 0).all(), "each edit turn records the image it edited"


def test_the_pairwise_judge_asks_both_orders_and_reports_its_position_bias(compose_cfg, tmp_path):
    cfg = compose_cfg(["suite=arena", "suite.arena.base=adherence", "n=12", "model=[oracle,oracle_recolour]", "model.severity=2", "judge=vlm_pairwise"])
    m = evaluate(cfg, tmp_path / "out")["suites"]["arena"]["metrics"]
    assert m["win_rate/oracle"]["value"] > 0.5
    assert 0 <= m["judge/judge_first_rate"]["value"] <= 1 and m["judge/judge_first_rate"]["n"] == 2 * 12


@pytest.mark.slow
def test_scorer_cards_for_the_palette_counter_and_the_world_judge(tmp_path):
    from conftest import run_cli

    cards = {}
    for scorer in ("counter", "vlm_count"):
        r = run_cli(["scorer-card", f"scorer=[{scorer}]", "n=24", f"cache_dir={tmp_path / 'cache'}", f"out={tmp_path / scorer}", "tracking=none"], tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "Scorer card: counter" in r.stdout
        (cards[scorer],) = (tmp_path / scorer).glob("counter-*.json")
    for scorer, path in cards.items():
        card = json.loads(path.read_text())
        rows = {(row["model"], row["severity"]): row for row in card["rows"]}
        assert rows[("oracle", None)]["value"] == 1.0, scorer
        blur = [rows[("oracle_blur", s)]["value"] for s in (1, 2, 3, 4)]
        assert card["with_damage"]["oracle_blur"] == "falls" and blur[-1] < 1.0, (scorer, blur)
        assert rows[("oracle_style", 0)]["value"] == 1.0 and ("oracle_style", 5) in rows, "a row per style severity"
        assert (tmp_path / "cache" / "cards" / f"{card['fingerprint']}.json").is_file()
    # a run with a carded scorer links its card; one without says unvalidated
    r = run_cli(["run", "model=oracle", "suite=[counting]", "n=4", "scorer=[vlm_count]", f"cache_dir={tmp_path / 'cache'}", "tracking=none",
                 f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["scorers"]["counter"]["scorer_card"] and "unvalidated" not in r.stdout


def test_every_world_edit_instruction_parses_back_to_its_operation():
    import random

    from nbeval.world import COMMON_WORDS, LayoutError, apply_edit, fit_text, place_shapes
    from nbeval.world.edits import parse_instruction, possible_ops
    from nbeval.world.layout import word_box

    rng, seen = random.Random(0), set()
    for _ in range(60):
        word = fit_text(rng, rng.choice(COMMON_WORDS), 0.08)
        try:
            scene = Scene(shapes=place_shapes(rng, [("circle", "red", "small"), ("square", "orange", "medium")], avoid=[word_box(word)]), words=(word,))
        except LayoutError:
            continue
        for op in possible_ops(scene):
            edit = apply_edit(scene, rng, op, vocabulary=COMMON_WORDS)
            parsed = parse_instruction(edit.instruction)
            assert parsed is not None and parsed["op"] == op, edit.instruction
            seen.add(op)
    assert seen == {"add", "remove", "recolour", "move", "change_text"}
    assert parse_instruction("Make it nicer.") is None


class _ChatServer:
    """A scripted chat-completions server on loopback: refuses `logprobs` with a 400 (as some provider
    models do), then answers from a script keyed by the question's first word."""

    def __init__(self, script: dict[str, dict]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.script, self.log = script, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.log.append(body)
                text = body["messages"][-1]["content"][-1]["text"]
                if body.get("logprobs"):
                    status, reply = 400, {"error": {"message": "logprobs are not supported with this model", "type": "invalid_request_error"}}
                else:
                    status, reply = 200, outer.script[text.split()[0]]
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _completion(message: dict, finish: str = "stop") -> dict:
    return {"id": "c1", "model": "provider-model-2026-01-01", "system_fingerprint": "fp_1", "choices": [{"index": 0, "message": message, "finish_reason": finish}]}


def test_the_chat_client_falls_back_to_text_and_names_every_failure():
    from nbeval.vlm.openai_chat import OpenAIChatJudge

    srv = _ChatServer({"Is": _completion({"role": "assistant", "content": "Yes."}),
                       "How": _completion({"role": "assistant", "content": None, "refusal": "I can't help with that."}),
                       "What": _completion({"role": "assistant", "content": None}, "content_filter"),
                       "Are": _completion({"role": "assistant", "content": "  "})})
    img = Image.new("RGB", (16, 16), "white")
    judge = OpenAIChatJudge(srv.url, "provider-model", identify=False, max_retries=0, concurrency=1)
    asks = [q.exists_question(img, "red", "circle"), q.count_question(img, "red", "circle"), q.text_question(img), q.exact_question(img, "red", "circle", 2)]
    ok, refused, filtered, empty = judge.ask(asks)
    assert option_probabilities(ok, YES_NO) == ({"yes": 1.0, "no": 0.0}, "text") and ok.meta["model"] == "provider-model-2026-01-01"
    assert (refused.error_kind, filtered.error_kind, empty.error_kind) == ("refusal", "content_filter", "refusal")
    assert "logprobs" in srv.log[0] and all("logprobs" not in b for b in srv.log[1:]), "after the 400, logprobs are no longer asked for"
    assert srv.log[1]["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


YES_NO = ("yes", "no")


@pytest.mark.slow
def test_a_judge_reads_text_in_the_ocr_role(compose_cfg, tmp_path):
    res = evaluate(compose_cfg(["model=oracle", "suite=[text_rendering]", "n=6", "scorer=[vlm_ocr]"]), tmp_path / "out")
    assert res["suites"]["text_rendering"]["metrics"]["exact_match"]["value"] == 1.0
    assert res["scorers"]["ocr"]["class"] == "nbeval.scorers.vlm.VLMOCR"


def test_an_arena_judges_card_is_its_agreement_with_the_truths_order(tmp_path):
    from nbeval.scorer_card import measure

    card = measure([f"cache_dir={tmp_path / 'cache'}", "tracking=none", "n=8", "judge=vlm_pairwise",
                    "card.judge.variants=[{model:oracle_recolour,severity:[1,3]}]"], "judge")
    assert card["metric"] == "win_rate/oracle" and card["scorer"]["name"] == "vlm_pairwise"
    low, high = (r["value"] for r in card["rows"])
    assert 0.5 < low <= high == 1.0 and card["with_damage"]["oracle_recolour"] in ("rises", "flat")
