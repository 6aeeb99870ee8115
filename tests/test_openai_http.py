"""The openai_http adapter and `nbeval serve`, for real on loopback.

- A tiny scripted HTTP server (http.server, real sockets) answers 429/5xx/4xx/slowly on cue: retries,
  Retry-After, timeouts, the concurrency limit, the key.
- `nbeval serve model=reference` in a subprocess: `nbeval run model=openai_http …` through it gives
  bit-identical images to the reference adapter called directly (one request per call, one thread,
  on both sides), for generations and multi-turn edits; the key never reaches logs, results or MLflow.
- Faults: the server SIGKILLed mid-run and restarted on the same port — the run completes through
  its retries, or (retries exhausted) records per-sample errors and the same command run again
  completes from the cache; every sample ends with exactly one image, equal to the direct one.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sqlite3
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import NBEVAL, run_cli
from nbeval.adapters.base import EditRequest, GenRequest
from nbeval.adapters.openai_http import OpenAIHTTPAdapter
from nbeval.http import retry_after_s
from nbeval.cache import Cache
from nbeval.runner import generate
from nbeval.testing import ServeProcess

pytestmark = pytest.mark.xdist_group("test_openai_http")  # one worker: the reference adapter's direct images are made once

KEY_ENV, KEY = "NBEVAL_TEST_HTTP_KEY", "sk-test-9f3b1c7e5d2a4680bead"
SERVE_ENV = {"OMP_NUM_THREADS": "1", KEY_ENV: KEY}
N_FAULT = 12


def _png(size: int = 8, colour=(10, 200, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# --- a scripted server -----------------------------------------------------------------------------

class Scripted(ThreadingHTTPServer):
    """Answers by the request's prompt: `script[prompt]` is a list of (status, headers, delay)
    consumed one per attempt (the last repeats); anything else gets an 8x8 PNG."""

    daemon_threads = True

    def __init__(self, script: dict | None = None, fingerprint: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script, self.fingerprint = script or {}, fingerprint
        self.log: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def attempts(self, prompt: str) -> list[dict]:
        return [e for e in self.log if e.get("prompt") == prompt]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        srv = self.server
        if srv.fingerprint and self.path.startswith("/v1/models/"):
            self._send(200, {"id": self.path.rsplit("/", 1)[1], "object": "model", "nbeval_fingerprint": srv.fingerprint})
        else:
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        srv = self.server
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.loads(raw) if self.headers.get("content-type", "").startswith("application/json") else {}
        prompt = body.get("prompt") or re.search(rb'name="prompt"\r\n\r\n([^\r]*)', raw).group(1).decode()
        with srv.lock:
            srv.log.append({"t": time.monotonic(), "prompt": prompt, "path": self.path, "auth": self.headers.get("authorization"), "body": body})
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            steps = srv.script.get(prompt, [])
            status, headers, delay = (steps.pop(0) if len(steps) > 1 else steps[0]) if steps else (200, {}, 0.0)
        try:
            time.sleep(delay)
        finally:  # before the answer goes out: counted after it, the client's next request could overlap this one
            with srv.lock:
                srv.in_flight -= 1
        try:
            if status == 200:
                self._send(200, {"created": 1, "data": [{"b64_json": _png(), "revised_prompt": prompt.upper()}]}, {"x-request-id": "req-1"})
            else:
                message = f"scripted {status}" + (f" for key {self.headers.get('authorization')}" if prompt == "echo" else "")
                self._send(status, {"error": {"message": message, "type": "test", "param": None, "code": None}}, headers)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def scripted():
    servers = []

    def start(script=None, fingerprint=None) -> Scripted:
        servers.append(Scripted(script, fingerprint))
        return servers[-1]

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _client(url: str, **kw) -> OpenAIHTTPAdapter:
    opts = {"model": "m", "api_key_env": KEY_ENV, "backoff_s": 0.01, "backoff_max_s": 0.05, "max_retries": 3, "timeout_s": 10, **kw}
    return OpenAIHTTPAdapter(url, **opts)


def _reqs(*prompts: str, size: int = 32) -> list[GenRequest]:
    return [GenRequest(f"s{i}", p, i, size, {"scene": "secret truth"}) for i, p in enumerate(prompts)]


# --- retries, timeouts, concurrency, the key: against the scripted server --------------------------

def test_retries_429_and_5xx_honouring_retry_after_then_succeeds(scripted):
    srv = scripted({"flaky": [(429, {"Retry-After": "0.4"}, 0), (503, {}, 0), (200, {}, 0)]})
    (res,) = _client(srv.url).generate(_reqs("flaky"))
    assert res.error is None and res.image.size == (32, 32)
    tries = srv.attempts("flaky")
    assert len(tries) == 3 and res.manifest["attempts"] == 3
    assert tries[1]["t"] - tries[0]["t"] >= 0.4, "Retry-After was not honoured"
    assert tries[2]["t"] - tries[1]["t"] < 0.3, "the 503 had no Retry-After: a short backoff"
    m = res.manifest
    assert m["resized_from"] == [8, 8] and m["answer"]["revised_prompt"] == "FLAKY" and m["answer"]["headers"]["x-request-id"] == "req-1"
    assert m["request"] == {"model": "m", "n": 1, "size": "32x32", "response_format": "b64_json", "seed": 0, "nbeval_sample_id": "s0", "prompt": "flaky"}
    assert "nbeval_truth" not in tries[0]["body"], "truth is never sent unless send_truth=true"


def test_per_sample_failures_never_stop_the_batch(scripted):
    srv = scripted({"down": [(500, {}, 0)], "bad": [(400, {}, 0)], "gone": [(404, {}, 0)]})
    res = _client(srv.url, max_retries=2).generate(_reqs("ok", "down", "bad", "gone", "ok2"))
    assert [r.error is None for r in res] == [True, False, False, False, True]
    assert "HTTP 500" in res[1].error and "after 3 attempts" in res[1].error and len(srv.attempts("down")) == 3
    assert "HTTP 400: scripted 400" in res[2].error and len(srv.attempts("bad")) == 1, "a 4xx other than 408/409/425/429 is not retried"
    assert len(srv.attempts("gone")) == 1


def test_timeout_is_a_per_sample_error(scripted):
    srv = scripted({"slow": [(200, {}, 3.0)]})
    t0 = time.monotonic()
    res = _client(srv.url, timeout_s=0.3, max_retries=1, concurrency=2).generate(_reqs("slow", "fast"))
    assert time.monotonic() - t0 < 2.5
    assert "ReadTimeout" in res[0].error and "after 2 attempts" in res[0].error and len(srv.attempts("slow")) == 2
    assert res[1].error is None


def test_connection_refused_is_retried_then_an_error():
    from nbeval.testing import free_port

    client = _client(f"http://127.0.0.1:{free_port()}/v1", max_retries=2, identify=False)
    (res,) = client.generate(_reqs("x"))
    assert "ConnectError" in res.error and "after 3 attempts" in res.error


def test_concurrency_limit(scripted):
    srv = scripted({f"p{i}": [(200, {}, 0.15)] for i in range(12)})
    t0 = time.monotonic()
    res = _client(srv.url, concurrency=3).generate(_reqs(*(f"p{i}" for i in range(12))))
    assert all(r.error is None for r in res)
    assert srv.max_in_flight == 3
    assert time.monotonic() - t0 >= 4 * 0.15


def test_retry_after_forms():
    import httpx

    assert retry_after_s(httpx.Headers({"retry-after": "2"})) == 2.0
    assert retry_after_s(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    assert 8 < retry_after_s(httpx.Headers({"retry-after": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))})) <= 10
    assert retry_after_s(httpx.Headers({"retry-after": "soon"})) is None


def test_key_from_the_environment_sent_but_never_kept_or_shown(scripted, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    srv = scripted({"echo": [(500, {}, 0)]})
    client = _client(srv.url, max_retries=1)
    with caplog.at_level("DEBUG"):
        ok, echoed = client.generate(_reqs("fine", "echo"))
    assert {e["auth"] for e in srv.log} == {f"Bearer {KEY}"}
    assert "***" in echoed.error and KEY not in echoed.error, "a server echoing the key must not put it in the results"
    blob = json.dumps([ok.manifest, client.settings(), repr(client), client.fingerprint, vars(client)], default=str)
    assert KEY not in blob and KEY not in caplog.text
    monkeypatch.delenv(KEY_ENV)
    client.generate(_reqs("fine"))
    assert srv.log[-1]["auth"] is None, "no key in the environment: no Authorization header"


def test_fingerprint_follows_settings_and_served_identity_not_key_or_transport(scripted, monkeypatch):
    plain = scripted()
    a = _client(plain.url)
    assert a.settings()["base_url"] == plain.url, "a server that does not identify its model is identified by its URL"
    assert a.fingerprint != _client(plain.url, model="other").fingerprint
    assert a.fingerprint != _client(plain.url, size="1024x1024").fingerprint
    assert a.fingerprint != _client(plain.url, extra={"quality": "high"}).fingerprint
    assert a.fingerprint == _client(plain.url, timeout_s=3, max_retries=0, concurrency=9, backoff_s=5).fingerprint
    monkeypatch.setenv(KEY_ENV, "another-key-entirely")
    assert a.fingerprint == _client(plain.url).fingerprint
    one, same, other = scripted(fingerprint="aaaa"), scripted(fingerprint="aaaa"), scripted(fingerprint="bbbb")
    assert _client(one.url).fingerprint == _client(same.url).fingerprint, "an nbeval server keeps its cache wherever it runs"
    assert _client(one.url).fingerprint != _client(other.url).fingerprint, "another model behind the URL: another fingerprint"


# --- nbeval serve, in a thread: the oracle through HTTP, errors in OpenAI's shape -----------------

def test_oracle_served_only_with_explicit_truth(inprocess, tmp_path):
    from nbeval.adapters.oracle import OracleAdapter
    from suites.drift import DriftSuite

    suite, oracle = DriftSuite(turns=2), OracleAdapter()
    url = inprocess(oracle)
    samples = suite.samples(2, 0)
    direct = generate(oracle, suite, samples, 128, Cache(tmp_path / "direct"), 8)
    with_truth = generate(OpenAIHTTPAdapter(url, model="oracle", send_truth=True), suite, samples, 128, Cache(tmp_path / "http"), 8)
    assert [g.image_sha256 for g in with_truth] == [g.image_sha256 for g in direct] and all(g.image_sha256 for g in direct)
    without = generate(OpenAIHTTPAdapter(url, model="oracle", max_retries=3), suite, samples, 128, Cache(tmp_path / "none"), 8)
    assert all(g.image_sha256 is None for g in without)
    assert "HTTP 422" in without[0].error and "needs a scene" in without[0].error and "after" not in without[0].error, "a model error is not retried"


def test_server_errors_in_openai_shape(inprocess):
    import httpx

    from nbeval.adapters.oracle import OracleAdapter

    url = inprocess(OracleAdapter(), api_key=KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(url + "/images/generations", json={"prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error" and KEY not in r.text
    cases = [({"prompt": "x", "model": "dall-e-3"}, 404, "model_not_found"), ({"prompt": "x", "size": "64x32"}, 400, None),
             ({"prompt": "x", "response_format": "url"}, 400, None), ({"prompt": "x", "n": 11}, 400, None), ({"n": 1}, 400, None),
             ({"prompt": "x", "seed": -1}, 400, None), ({"prompt": "x", "nbeval_truth": {}}, 422, "generation_failed")]
    for body, status, code in cases:
        r = httpx.post(url + "/images/generations", json=body, headers=auth)
        assert r.status_code == status, (body, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"} and r.json()["error"]["code"] == code
    r = httpx.post(url + "/images/edits", data={"prompt": "x"}, files={"mask": ("m.png", b"x")}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "mask"
    r = httpx.post(url + "/images/edits", data={"prompt": "x"}, files={"image": ("i.png", b"not a png", "image/png")}, headers=auth)
    assert r.status_code == 400 and "image" in r.json()["error"]["message"]
    cards = httpx.get(url + "/models", headers=auth).json()["data"]
    assert cards[0]["id"] == "oracle" and cards[0]["nbeval_fingerprint"] == OracleAdapter().fingerprint


# --- nbeval serve model=reference in a subprocess --------------------------------------------------

@pytest.fixture(scope="module")
def direct_reference(tmp_path_factory):
    """The reference adapter called directly, one request per call on one thread (as the server
    does): sample id → turn → image sha256, for counting (N_FAULT samples) and drift (2 chains)."""
    import torch

    from nbeval.adapters.reference import ReferenceAdapter
    from suites.counting import CountingSuite
    from suites.drift import DriftSuite

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, cache = ReferenceAdapter(), Cache(tmp_path_factory.mktemp("direct"))
        out = {}
        for suite, n in ((CountingSuite(), N_FAULT), (DriftSuite(turns=2), 2)):
            for g in generate(model, suite, suite.samples(n, 0), suite.image_size, cache, 1):
                out.setdefault(g.sample_id, {})[g.turn] = g.image_sha256
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def reference_server(tmp_path_factory):
    with ServeProcess(["model=reference", f"key_env={KEY_ENV}"], tmp_path_factory.mktemp("serve"), env=SERVE_ENV) as server:
        yield server


def _run_args(url: str, cache: Path, out: Path, n: int, *extra: str) -> list[str]:
    return ["run", "model=openai_http", f"model.base_url={url}", f"model.api_key_env={KEY_ENV}", "suite=[counting]", f"n={n}", "seed=0",
            f"cache_dir={cache}", f"hydra.run.dir={out}", *extra]


def _generations(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "counting" / "generations.parquet")


def _served(log: str) -> list[str]:
    return re.findall(r"generate sample_id=(\S+) .* ok$", log, re.M)


def _cache_rows(cache: Path) -> list[tuple]:
    with sqlite3.connect(cache / "index.sqlite") as c:
        return c.execute("SELECT model_fp, sample_key, turn, image_sha256, manifest FROM generations").fetchall()


@pytest.mark.slow
def test_run_through_http_equals_direct_and_never_shows_the_key(reference_server, direct_reference, tmp_path, mlflow_db):
    n = 6
    cache, out = tmp_path / "cache", tmp_path / "run"
    env = {KEY_ENV: KEY, "MLFLOW_TRACKING_URI": mlflow_db(tmp_path / "mlflow.db")}
    r = run_cli(_run_args(reference_server.url, cache, out, n), tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    gens = _generations(out)
    assert len(gens) == n and gens["error"].isna().all() and gens["model"].eq("http-reference").all()
    assert {row.sample_id: row.image_sha256 for row in gens.itertuples()} == {f"counting-0-{i:05d}": direct_reference[f"counting-0-{i:05d}"][0] for i in range(n)}
    rows = _cache_rows(cache)
    assert len(rows) == n
    manifest = json.loads(rows[0][4])
    served = manifest["answer"]["nbeval_model"]
    assert served["name"] == "reference" and served["settings"]["checkpoint_sha256"] and served["fingerprint"] == reference_server_fingerprint(reference_server)
    assert manifest["attempts"] == 1 and manifest["request"]["seed"] == manifest["answer"]["nbeval"]["seed"]
    # the key: sent (the server requires it) and nowhere else
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files)
    leaked = [str(p) for p in files if KEY.encode() in p.read_bytes()]
    assert not leaked and KEY not in r.stdout + r.stderr and all(KEY not in log for log in reference_server.logs())
    import mlflow

    params = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(json.loads((out / "results.json").read_text())["mlflow_run_id"]).data.params
    assert params["model.api_key_env"] == KEY_ENV and not any(KEY in v for v in params.values())

    # without the key: each sample fails alone with 401, not retried
    res = OpenAIHTTPAdapter(reference_server.url, api_key_env="NBEVAL_TEST_UNSET_KEY", identify=False).generate(_reqs("a", "b"))
    assert all("HTTP 401" in r.error and "attempts" not in r.error for r in res)


def reference_server_fingerprint(server: ServeProcess) -> str:
    import httpx

    return httpx.get(server.url.removesuffix("/v1") + "/health").json()["fingerprint"]


@pytest.mark.slow
def test_multi_turn_edits_through_http_equal_direct(reference_server, direct_reference, tmp_path, monkeypatch):
    from suites.drift import DriftSuite

    monkeypatch.setenv(KEY_ENV, KEY)
    suite = DriftSuite(turns=2)
    gens = generate(OpenAIHTTPAdapter(reference_server.url, api_key_env=KEY_ENV), suite, suite.samples(2, 0), suite.image_size, Cache(tmp_path), 8)
    assert len(gens) == 6 and all(g.image_sha256 for g in gens)
    assert {(g.sample_id, g.turn): g.image_sha256 for g in gens} == {(s, t): sha for s, turns in direct_reference.items() if s.startswith("drift") for t, sha in turns.items()}


def test_edit_request_carries_the_conversation(scripted):
    srv = scripted()
    img = Image.new("RGB", (16, 16), "white")
    req = EditRequest("s", 2, "a red square", ("add a circle", "remove the square"), (img, img), 5, 16, {"scene": 1})
    (res,) = _client(srv.url, max_retries=0).edit([req])
    assert res.error is None and srv.log[0]["path"] == "/v1/images/edits"
    assert res.manifest["request"] == {"model": "m", "n": 1, "size": "16x16", "response_format": "b64_json", "seed": 5, "nbeval_sample_id": "s",
                                       "prompt": "remove the square", "nbeval_turn": 2, "nbeval_prompt": "a red square",
                                       "nbeval_instructions": json.dumps(["add a circle", "remove the square"])}


# --- faults: the server killed mid-run ---------------------------------------------------------------

def _kill_when_served(server: ServeProcess, run: subprocess.Popen, at_least: int) -> int:
    deadline = time.monotonic() + 120
    while len(_served(server.log_path.read_text())) < at_least:
        assert run.poll() is None, "the run ended before the kill"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.kill()
    return len(_served(server.log_path.read_text()))


def _check_complete(out: Path, cache: Path, direct: dict) -> pd.DataFrame:
    """Nothing lost (every sample has an image), nothing duplicated (one row per sample, in the
    run and in the cache), nothing swapped (each image is the direct adapter's for its seed)."""
    gens = _generations(out)
    assert len(gens) == N_FAULT and gens["sample_id"].is_unique and gens["error"].isna().all()
    assert {r.sample_id: r.image_sha256 for r in gens.itertuples()} == {s: t[0] for s, t in direct.items() if s.startswith("counting")}
    rows = _cache_rows(cache)
    assert len(rows) == N_FAULT and len({r[0] for r in rows}) == 1 and len({(r[1], r[2]) for r in rows}) == N_FAULT
    return gens


@pytest.mark.slow
def test_server_killed_mid_run_and_restarted_the_run_completes_through_retries(direct_reference, tmp_path):
    server = ServeProcess(["model=reference", f"key_env={KEY_ENV}"], tmp_path, env=SERVE_ENV).start()
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = _run_args(server.url, cache, out, N_FAULT, "tracking=none", "batch_size=4", "model.concurrency=2",
                     "model.max_retries=40", "model.backoff_s=0.1", "model.backoff_max_s=0.5")
    try:
        run = subprocess.Popen(NBEVAL + args, cwd=tmp_path, env={**os.environ, KEY_ENV: KEY}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = _kill_when_served(server, run, 5)
        time.sleep(0.5)  # the run's requests now meet a closed port
        server.start()
        _, err = run.communicate(timeout=300)
    finally:
        server.stop()
    assert run.returncode == 0, err[-3000:]
    _check_complete(out, cache, direct_reference)
    lives = [_served(log) for log in server.logs()]
    assert len(lives[0]) == first < N_FAULT, "the kill landed mid-run"
    assert set(lives[0]) | set(lives[1]) == {s for s in direct_reference if s.startswith("counting")}
    assert len(lives[0]) + len(lives[1]) - N_FAULT <= 2, "only requests in flight at the kill (concurrency 2) may be served twice"
    assert max(json.loads(r[4])["attempts"] for r in _cache_rows(cache)) > 1, "some requests were retried across the restart"


@pytest.mark.slow
def test_server_down_until_the_run_ends_then_the_same_command_resumes(direct_reference, tmp_path):
    server = ServeProcess(["model=reference", f"key_env={KEY_ENV}"], tmp_path, env=SERVE_ENV).start()
    cache = tmp_path / "cache"

    def args(out: str) -> list[str]:
        return _run_args(server.url, cache, tmp_path / out, N_FAULT, "tracking=none", "batch_size=4", "model.concurrency=2",
                         "model.max_retries=1", "model.backoff_s=0.05")

    env = {**os.environ, KEY_ENV: KEY}
    try:
        run = subprocess.Popen(NBEVAL + args("first"), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _kill_when_served(server, run, 5)
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
        first = _generations(tmp_path / "first")
        failed = set(first.loc[first["error"].notna(), "sample_id"])
        assert 0 < len(failed) < N_FAULT and first["error"].dropna().str.contains("ConnectError|RemoteProtocolError|ReadError").all()
        server.start()
        again = run_cli(args("again"), tmp_path, env={KEY_ENV: KEY})
    finally:
        server.stop()
    assert again.returncode == 0, again.stderr[-3000:]
    gens = _check_complete(tmp_path / "again", cache, direct_reference)
    assert set(gens.loc[~gens["cached"], "sample_id"]) == failed, "the rerun generated exactly the samples that had failed"
    lives = [_served(log) for log in server.logs()]
    assert sorted(lives[1]) == sorted(failed), "the restarted server was asked for exactly those, once each"
    assert len(set(lives[0]) & failed) <= 2, "served but lost in the kill: at most the requests in flight"
