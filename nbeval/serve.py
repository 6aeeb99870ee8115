"""`nbeval serve model=<any adapter>`: a model adapter behind an OpenAI-compatible images API; and
`nbeval serve vlm=<any judge backend>`: a judge behind OpenAI's chat completions (`create_judge_app`,
below), so the chat client is tested against a real server and a team can share one judge.

    NBEVAL_API_KEY=… nbeval serve model=reference [model.steps=4 …] [host=127.0.0.1] [port=8000]
                               [max_batch=1] [batch_wait_ms=5] [max_queue=256] [key_env=NBEVAL_API_KEY]

Endpoints (OpenAI's shapes; errors as `{"error": {"message", "type", "param", "code"}}`):
- `POST /v1/images/generations` — JSON `model`, `prompt`, `n` (1–10), `size` ("256x256"; square only;
  "auto" = 256), `response_format` (`b64_json` only: nothing is hosted), `user`; other OpenAI fields
  (quality, style, …) are accepted, ignored and listed in the answer's `nbeval_ignored`.
- `POST /v1/images/edits` — multipart `image` (or `image[]`; the last one is edited), `prompt`,
  `model`, `n`, `size`, `response_format`; a `mask` is refused (no adapter here paints masks).
- `GET /v1/models`, `GET /v1/models/{model}` — the served model, with `nbeval_fingerprint`;
  `GET /health` — no key needed.

nbeval's extensions (optional request fields; a plain OpenAI client sends none and still works):
- `seed` (int): the adapter's seed; without it the server draws one and reports it. Image i of n
  uses seed + i.
- `nbeval_sample_id`: the adapter's sample id (the folder adapter finds files by it); default
  `req-<hash of the request>`.
- edits: `nbeval_turn`, `nbeval_prompt` (the conversation's first prompt) and
  `nbeval_instructions` (JSON list of every instruction so far, the last one equal to `prompt`), so a
  model with multi-turn context gets the conversation; without them the edit is a one-turn
  conversation `prompt` on the image.
- `nbeval_truth` (JSON object): the sample's ground truth. Never sent by the client unless
  `send_truth=true`; it exists so that the oracle (which renders the truth) and `reference_gtplan`
  can be served too. It reaches only an adapter that declares `needs_truth`; sent to any other it is
  refused (400), so a served model under test can never read the answer. Without it an adapter that
  needs it answers 422 per request.

Every answer carries the served model's identity — `nbeval_model` {name, class, fingerprint,
settings} and, per image, `nbeval` {seed, sample_id, turn, seconds} (header `X-Nbeval-Fingerprint`)
— which the `openai_http` adapter stores as the generation's manifest. A model's failure on one
request is a 422 (`model_error`, not retried by the client); a full queue is a 429 with Retry-After.

The adapter is called from one worker thread, never concurrently. `max_batch=1` (default) gives
each request its own adapter call, so an image depends only on its request: the reference model's
numerics change slightly with batch size, so larger batches trade that bit-reproducibility for
throughput (`benchmarks/results/openai_http.md`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from nbeval.adapters.base import EditRequest, GenRequest, GenResult, ModelAdapter
from nbeval.cache import encode_png
from nbeval.images import ImageError, load_image
from nbeval.records import content_hash
from nbeval.vlm.base import Answer, Judge, Question

log = logging.getLogger("nbeval.serve")

DEFAULT_KEY_ENV = "NBEVAL_API_KEY"
DEFAULT_SIZE = 256
MAX_SIZE = 2048
MAX_N = 10
MAX_UPLOAD_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    api_key: str = ""  # empty: no key needed (loopback, tests)
    max_batch: int = 1  # requests the adapter gets in one call
    batch_wait_ms: float = 5.0  # with max_batch > 1: how long the first request waits for company
    max_queue: int = 256  # requests waiting per endpoint; beyond it, 429 with Retry-After
    default_size: int = DEFAULT_SIZE


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param, self.headers = status, message, type_, code, param, headers or {}


def _error_response(status: int, message: str, type_: str, code: str | None = None, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status, headers=headers)


class GenerationBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str = Field(min_length=1, max_length=32_000)
    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    size: str | None = None
    response_format: str | None = None
    user: str | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    nbeval_sample_id: str | None = Field(None, min_length=1, max_length=500)
    nbeval_truth: dict | None = None


def _size(value: str | None, default: int) -> int:
    if value in (None, "", "auto"):
        return default
    try:
        w, h = (int(v) for v in str(value).lower().split("x"))
    except ValueError:
        raise APIError(400, f"size must look like '256x256', got {value!r}", param="size") from None
    if w != h:
        raise APIError(400, f"only square sizes are served, got {value!r}", param="size")
    if not 8 <= w <= MAX_SIZE:
        raise APIError(400, f"size must be between 8x8 and {MAX_SIZE}x{MAX_SIZE}, got {value!r}", param="size")
    return w


def _check_format(value: str | None) -> None:
    if value not in (None, "b64_json"):
        raise APIError(400, f"response_format {value!r} is not served: only b64_json (nothing is hosted)", param="response_format")


def _seed(value) -> int:
    if value is None:
        return int.from_bytes(os.urandom(4), "big")
    try:
        seed = int(value)
    except (TypeError, ValueError):
        raise APIError(400, f"seed must be an integer, got {value!r}", param="seed") from None
    if not 0 <= seed < 2**63:
        raise APIError(400, "seed must be in [0, 2**63)", param="seed")
    return seed


def _json_field(value, name: str, kind: type):
    if value is None or isinstance(value, kind):
        return value
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        raise APIError(400, f"{name} must be JSON", param=name) from None
    if not isinstance(parsed, kind):
        raise APIError(400, f"{name} must be a JSON {kind.__name__}", param=name)
    return parsed


class _Batcher:
    """Requests of one kind queue here; one task takes up to `max_batch` of them at a time and runs
    the served object (an adapter, a judge) on the shared single worker thread; a call that raises
    fails its requests with `failed(reason)`, not the server."""

    def __init__(self, fn: Callable[[list], list], executor: ThreadPoolExecutor, config: ServeConfig, failed: Callable[[str], object]) -> None:
        self.fn, self.executor, self.config, self.failed = fn, executor, config, failed
        self.queue: asyncio.Queue | None = None

    async def submit(self, request):
        if self.queue.qsize() >= self.config.max_queue:
            raise APIError(429, "the server's queue is full; retry later", "rate_limit_error", "queue_full", headers={"Retry-After": "1"})
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((request, future))
        return await future

    async def run(self) -> None:
        self.queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.config.batch_wait_ms / 1000
            while len(batch) < self.config.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                if loop.time() >= deadline:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), deadline - loop.time()))
                except TimeoutError:
                    break
            batch = [(r, f) for r, f in batch if not f.done()]  # a cancelled request needs no image
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [r for r, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for {len(batch)} requests")
            except Exception as e:  # noqa: BLE001 — a failed call fails its requests, not the server
                results = [self.failed(f"{type(e).__name__}: {e}")] * len(batch)
            for (_, f), res in zip(batch, results):
                if not f.done():
                    f.set_result(res)


@dataclass
class _Service:
    """What both APIs share: the app with its error handlers, its batchers, the key check, the model
    check and the `/health` and `/v1/models` endpoints."""

    app: FastAPI
    batchers: dict[str, _Batcher]
    check_key: Callable[[Request], None]
    check_model: Callable[[str | None], None]


def _service(name: str, identity: dict, capabilities: list[str], fns: dict[str, Callable], failed: Callable[[str], object], config: ServeConfig) -> _Service:
    if config.max_batch < 1 or config.max_queue < 1:
        raise ValueError("max_batch and max_queue must be at least 1")
    started = int(time.time())
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nbeval-model")
    batchers = {kind: _Batcher(fn, executor, config, failed) for kind, fn in fns.items()}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        tasks = [asyncio.create_task(b.run()) for b in batchers.values()]
        await asyncio.sleep(0)  # the queues exist before the first request
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=f"nbeval serve: {name}", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return _error_response(e.status, e.message, e.type, e.code, e.param, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error_response(400, f"invalid request: {param or 'body'}: {first.get('msg', 'invalid')}", "invalid_request_error", None, param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return _error_response(e.status_code, str(e.detail), "invalid_request_error" if e.status_code < 500 else "server_error")

    def check_key(request: Request) -> None:
        if not config.api_key:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {config.api_key}".encode()):
            raise APIError(401, "missing or incorrect API key (Authorization: Bearer …)", "authentication_error", "invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    def check_model(asked: str | None) -> None:
        if asked not in (None, "", name):
            raise APIError(404, f"model {asked!r} is not served here; this server serves {name!r}", "invalid_request_error", "model_not_found", "model")

    def model_card() -> dict:
        return {"id": name, "object": "model", "created": started, "owned_by": "nbeval", "nbeval_fingerprint": identity["fingerprint"],
                "nbeval_class": identity["class"], "nbeval_capabilities": capabilities}

    @app.get("/health")
    def health():
        return {"status": "ok", "model": name, "fingerprint": identity["fingerprint"]}

    @app.get("/v1/models")
    def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{asked}")
    def one_model(asked: str, request: Request):
        check_key(request)
        check_model(asked)
        return model_card()

    return _Service(app, batchers, check_key, check_model)


def _identity(obj) -> dict:
    return {"name": obj.name, "class": f"{type(obj).__module__}.{type(obj).__qualname__}", "fingerprint": obj.fingerprint, "settings": obj.settings()}


def create_app(adapter: ModelAdapter, config: ServeConfig = ServeConfig()) -> FastAPI:
    """The images API over an instantiated adapter."""
    identity = _identity(adapter)
    fns = {"generate": adapter.generate, **({"edit": adapter.edit} if "edit" in adapter.capabilities else {})}
    service = _service(adapter.name, identity, sorted(adapter.capabilities), fns, lambda why: GenResult(None, 0.0, why), config)
    app, batchers, check_key, check_model = service.app, service.batchers, service.check_key, service.check_model

    def truth_for(value: dict | None) -> dict:
        if value and not adapter.needs_truth:
            raise APIError(400, f"model {adapter.name!r} does not take ground truth: a model under test never sees the answer "
                           "(nbeval_truth is only for the oracle and reference_gtplan)", param="nbeval_truth")
        return value or {}

    def encode(img) -> str:
        return base64.b64encode(encode_png(img.convert("RGB"))).decode("ascii")

    async def answer(kind: str, requests: list, size: int, ignored: list[str]) -> JSONResponse:
        results = await asyncio.gather(*(batchers[kind].submit(r) for r in requests))
        for r, res in zip(requests, results):
            log.info("%s sample_id=%s seed=%d turn=%d seconds=%.3f %s", kind, r.sample_id, r.seed, getattr(r, "turn", 0), res.seconds,
                     "ok" if res.image is not None else f"error={res.error}")
        failed = next((res for res in results if res.image is None), None)
        if failed is not None:
            raise APIError(422, f"the model failed on this request: {failed.error or 'no image'}", "model_error", "generation_failed")
        images = await run_in_threadpool(lambda: [encode(res.image) for res in results])
        data = [{"b64_json": b64, "nbeval": {"seed": r.seed, "sample_id": r.sample_id, "turn": getattr(r, "turn", 0), "seconds": res.seconds, "manifest": res.manifest}}
                for r, res, b64 in zip(requests, results, images)]
        body = {"created": int(time.time()), "data": data, "output_format": "png", "size": f"{size}x{size}", "nbeval_model": identity}
        if ignored:
            body["nbeval_ignored"] = ignored
        return JSONResponse(body, headers={"X-Nbeval-Fingerprint": identity["fingerprint"]})

    @app.post("/v1/images/generations")
    async def generations(body: GenerationBody, request: Request):
        check_key(request)
        check_model(body.model)
        _check_format(body.response_format)
        size, seed = _size(body.size, config.default_size), _seed(body.seed)
        sample_id = body.nbeval_sample_id or "req-" + content_hash([body.prompt, seed, size])[:16]
        reqs = [GenRequest(sample_id if body.n == 1 else f"{sample_id}-{i}", body.prompt, seed + i, size, truth_for(body.nbeval_truth)) for i in range(body.n)]
        return await answer("generate", reqs, size, sorted(body.model_extra or {}))

    @app.post("/v1/images/edits")
    async def edits(request: Request):
        check_key(request)
        if "edit" not in batchers:
            raise APIError(400, f"model {adapter.name!r} cannot edit images", code="unsupported_operation")
        if int(request.headers.get("content-length") or 0) > MAX_UPLOAD_BYTES:
            raise APIError(413, f"request larger than {MAX_UPLOAD_BYTES} bytes", code="request_too_large")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise APIError(400, "edits are multipart/form-data (image file + prompt)")
        async with request.form(max_files=16, max_fields=64, max_part_size=MAX_UPLOAD_BYTES) as form:
            fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            uploads = [v for k, v in form.multi_items() if k in ("image", "image[]") and not isinstance(v, str)]
            if any(k == "mask" for k, _ in form.multi_items()):
                raise APIError(400, "masks are not supported by nbeval's adapters", param="mask")
            if not uploads:
                raise APIError(400, "an image file is required (field 'image')", param="image")
            blobs = [await u.read() for u in uploads]
        check_model(fields.get("model"))
        _check_format(fields.get("response_format"))
        prompt = fields.get("prompt", "")
        if not prompt:
            raise APIError(400, "prompt is required", param="prompt")
        try:
            n = int(fields.get("n", 1))
        except ValueError:
            raise APIError(400, "n must be an integer", param="n") from None
        if not 1 <= n <= MAX_N:
            raise APIError(400, f"n must be between 1 and {MAX_N}", param="n")
        size, seed = _size(fields.get("size"), config.default_size), _seed(fields.get("seed"))
        try:
            images = tuple(await run_in_threadpool(lambda: [load_image(b) for b in blobs]))
        except ImageError as e:
            raise APIError(400, f"image: {e}", param="image") from None
        instructions = _json_field(fields.get("nbeval_instructions"), "nbeval_instructions", list) or [prompt]
        if not all(isinstance(i, str) for i in instructions) or instructions[-1] != prompt:
            raise APIError(400, "nbeval_instructions must be a list of strings ending with the prompt", param="nbeval_instructions")
        truth = truth_for(_json_field(fields.get("nbeval_truth"), "nbeval_truth", dict))
        try:
            turn = int(fields.get("nbeval_turn", len(instructions)))
        except ValueError:
            raise APIError(400, "nbeval_turn must be an integer", param="nbeval_turn") from None
        first = fields.get("nbeval_prompt") or prompt
        sample_id = fields.get("nbeval_sample_id") or "req-" + content_hash([first, instructions, seed, size, [hashlib.sha256(b).hexdigest() for b in blobs]])[:16]
        reqs = [EditRequest(sample_id if n == 1 else f"{sample_id}-{i}", turn, first, tuple(instructions), images, seed + i, size, truth) for i in range(n)]
        known = {"image", "image[]", "prompt", "model", "n", "size", "response_format", "user", "seed",
                 "nbeval_sample_id", "nbeval_turn", "nbeval_prompt", "nbeval_instructions", "nbeval_truth"}
        return await answer("edit", reqs, size, sorted(set(fields) - known))

    return app


# --- a judge behind OpenAI's chat completions ---------------------------------------------------------


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[dict] = Field(min_length=1, max_length=64)
    model: str | None = None
    n: int = Field(1, ge=1, le=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    temperature: float | None = None
    max_tokens: int | None = Field(None, ge=1)


def _question(body: ChatBody) -> Question:
    """The last user message of a chat request → a Question: its text parts and its images (data
    URLs only: nothing is fetched)."""
    user = next((m for m in reversed(body.messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    if user is None:
        raise APIError(400, "messages must hold a user message", param="messages")
    content = user.get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content if isinstance(content, list) else None
    if parts is None:
        raise APIError(400, "a message's content is a string or a list of parts", param="messages")
    texts, images = [], []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            if not url.startswith("data:"):
                raise APIError(400, "images must be data URLs (data:image/png;base64,…): nothing is fetched", param="messages")
            try:
                images.append(load_image(base64.b64decode(url.split(",", 1)[1], validate=True)))
            except (ValueError, IndexError, ImageError) as e:
                raise APIError(400, f"image: {e}", param="messages") from None
        else:
            raise APIError(400, f"unsupported content part {kind!r}: text and image_url only", param="messages")
    return Question(tuple(images), "\n".join(texts).strip())


def create_judge_app(judge: Judge, config: ServeConfig = ServeConfig(), logprobs: bool = True) -> FastAPI:
    """OpenAI's `POST /v1/chat/completions` over a judge: the last user message's images and text are
    the question; the answer's first token alternatives come back as `logprobs` when asked for (and
    `logprobs` is on: off, it is a text-only server, as some providers are). A refusal or an
    unsupported question is a message with `refusal`; a content filter, finish reason
    "content_filter"; any other failure a 422."""
    identity = _identity(judge)
    # what the server sends back is part of what a reading holds: a text-only server is another judge to the cache
    identity["fingerprint"] = content_hash([identity["fingerprint"], {"logprobs": logprobs}])[:16]
    service = _service(judge.name, identity, ["chat"], {"ask": judge.ask}, lambda why: Answer.failed("transport", why), config)
    app = service.app

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, request: Request):
        service.check_key(request)
        service.check_model(body.model)
        question = _question(body)
        answer: Answer = await service.batchers["ask"].submit(question)
        log.info("chat images=%d kind=%s %s", len(question.images), "ok" if answer.error is None else answer.error_kind, question.text[:60])
        message: dict = {"role": "assistant", "content": answer.text, "refusal": None}
        finish, lp = "stop", None
        if answer.error_kind in ("refusal", "unsupported"):
            message |= {"content": None, "refusal": answer.error}
        elif answer.error_kind == "content_filter":
            message["content"], finish = None, "content_filter"
        elif answer.error:
            raise APIError(422, f"the judge failed on this question: {answer.error}", "model_error", "judge_failed")
        elif logprobs and body.logprobs and answer.top_logprobs:
            top = [{"token": t, "logprob": lp_} for t, lp_ in answer.top_logprobs[: max(1, body.top_logprobs or 1)]]
            lp = {"content": [{"token": answer.top_logprobs[0][0], "logprob": answer.top_logprobs[0][1], "top_logprobs": top}]}
        return JSONResponse({
            "id": "chatcmpl-" + content_hash([question.text, time.time_ns()])[:24], "object": "chat.completion", "created": int(time.time()),
            "model": judge.name, "system_fingerprint": identity["fingerprint"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": lp}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }, headers={"X-Nbeval-Fingerprint": identity["fingerprint"]})

    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Serve an app (`create_app`, `create_judge_app`) until interrupted (`nbeval serve`)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, server_header=False, log_level=log_level)
