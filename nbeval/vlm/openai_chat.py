"""`vlm=openai_chat`: a judge behind any OpenAI-compatible `POST /v1/chat/completions` — vLLM, SGLang
or Ollama serving an open VLM, a provider's model, or `nbeval serve vlm=…`.

Each question is one request: a user message whose content is the images (data URLs) then the text;
temperature 0 by default; `logprobs` + `top_logprobs` asked for, so option probabilities come from
the first answer token's alternatives. A server that gives none (or refuses the field: some provider
models answer 400 to it, then it is not sent again) leaves the parsed text, and the reading says so.
`concurrency` requests in flight, each with a timeout, retried with backoff (nbeval.http, as the
`openai_http` adapter does). The key comes only from the environment variable `api_key_env`.

Failures are answers with a reason, never scores: a `refusal` (the message's refusal field, or an
empty answer), a `content_filter` (finish reason, or a 400 that says so), a `timeout`, a `transport`
failure. Every answer keeps the server's `model`, `system_fingerprint` and `id`, so a provider
changing the model behind one name shows in the readings. The fingerprint holds what changes
answers: the URL and model name (or, from `nbeval serve`, the served judge's fingerprint), decoding
settings and the image encoding.
"""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from nbeval.cache import encode_png
from nbeval.http import APIClient, RequestFailed
from nbeval.vlm.base import Answer, Judge, Question

PROTOCOL = 1  # bump when what is sent changes in a way that changes answers
_FILTER_WORDS = ("content", "policy", "safety", "filter", "moderation")


def data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image.convert("RGB"))).decode("ascii")


class OpenAIChatJudge(Judge):
    name = "openai_chat"

    def __init__(self, base_url: str = "http://127.0.0.1:8000/v1", model: str = "world", api_key_env: str | None = "NBEVAL_API_KEY",
                 logprobs: bool = True, top_logprobs: int = 5, temperature: float = 0.0, max_tokens: int = 32, extra: dict | None = None,
                 identify: bool = True, concurrency: int = 4, timeout_s: float = 120.0, connect_timeout_s: float = 10.0,
                 max_retries: int = 5, backoff_s: float = 1.0, backoff_max_s: float = 30.0, retry_after_max_s: float = 120.0) -> None:
        self.api = APIClient(base_url, api_key_env, timeout_s, connect_timeout_s, max_retries, backoff_s, backoff_max_s, retry_after_max_s, concurrency)
        self.model, self.logprobs, self.top_logprobs = model, bool(logprobs), int(top_logprobs)
        self.temperature, self.max_tokens, self.extra, self.identify = float(temperature), int(max_tokens), dict(extra or {}), bool(identify)
        self._served: dict | None = None
        self._identified = False
        self._logprobs_refused = False
        self._lock = threading.RLock()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def settings(self) -> dict:
        s = {"protocol": PROTOCOL, "model": self.model, "logprobs": self.logprobs, "top_logprobs": self.top_logprobs,
             "temperature": self.temperature, "max_tokens": self.max_tokens, "extra": self.extra, "images": "png data URLs, before the text"}
        served = self.served()
        if served:
            s["served"] = served
        else:
            s["base_url"] = self.api.base_url
        return s

    def served(self) -> dict | None:
        """The served judge's identity from `GET {base_url}/models/{model}` when the server is
        nbeval's (None for other servers, or with identify=false); asked once."""
        with self._lock:
            if self.identify and not self._identified:
                try:
                    response, _ = self.api.send("GET", f"/models/{self.model}", accept=(200, 404, 405, 501))
                except RequestFailed as e:
                    raise RuntimeError(f"cannot identify the judge at {self.api.base_url}: {e}") from None
                card = response.json() if response.status_code == 200 else {}
                if isinstance(card, dict) and card.get("nbeval_fingerprint"):
                    self._served = {"name": card.get("id"), "fingerprint": card["nbeval_fingerprint"]}
                self._identified = True
            return self._served

    def _body(self, question: Question) -> dict:
        content = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in question.images]
        body = {"model": self.model, "messages": [{"role": "user", "content": [*content, {"type": "text", "text": question.text}]}],
                "temperature": self.temperature, "max_tokens": self.max_tokens, "n": 1, **self.extra}
        if self.logprobs and not self._logprobs_refused:
            body |= {"logprobs": True, "top_logprobs": self.top_logprobs}
        return body

    def _one(self, question: Question) -> Answer:
        try:
            try:
                response, attempts = self.api.send("POST", "/chat/completions", json=self._body(question))
            except RequestFailed as e:
                if e.status == 400 and "logprob" in str(e).lower() and not self._logprobs_refused:
                    self._logprobs_refused = True  # this server's model takes no logprobs: the parsed text, marked so
                    response, attempts = self.api.send("POST", "/chat/completions", json=self._body(question))
                else:
                    raise
        except RequestFailed as e:
            text = str(e)
            if e.status == 400 and any(w in text.lower() for w in _FILTER_WORDS):
                return Answer.failed("content_filter", text)
            return Answer.failed("timeout" if "Timeout" in text else "transport", text)
        except httpx.HTTPError as e:
            return Answer.failed("transport", self.api.redact(f"{type(e).__name__}: {e}"))
        return self.answer_of(response, attempts)

    @staticmethod
    def answer_of(response: httpx.Response, attempts: int = 1) -> Answer:
        """An OpenAI chat-completions response → an Answer."""
        try:
            body = response.json()
            choice = body["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            return Answer.failed("unparsable", f"not a chat completion: {response.text[:200]!r}")
        meta = {k: body.get(k) for k in ("model", "system_fingerprint", "id")} | {"attempts": attempts, "finish_reason": choice.get("finish_reason")}
        if choice.get("finish_reason") == "content_filter":
            return Answer.failed("content_filter", "the server's content filter stopped the answer", **meta)
        if message.get("refusal"):
            return Answer.failed("refusal", str(message["refusal"])[:500], **meta)
        text = message.get("content")
        if not isinstance(text, str) or not text.strip():
            return Answer.failed("refusal", "an empty answer", **meta)
        first = ((choice.get("logprobs") or {}).get("content") or [None])[0]
        top = [(t["token"], float(t["logprob"])) for t in (first or {}).get("top_logprobs") or []] or None
        if first and top is None and "logprob" in first:
            top = [(first["token"], float(first["logprob"]))]
        return Answer(text.strip(), top, meta=meta | {"logprobs": top is not None})

    def ask(self, questions: list[Question]) -> list[Answer]:
        if not questions:
            return []
        self.fingerprint  # noqa: B018 — identify the served judge once, before the threads start
        if self.api.concurrency == 1 or len(questions) == 1:
            return [self._one(q) for q in questions]
        with ThreadPoolExecutor(max_workers=min(self.api.concurrency, len(questions)), thread_name_prefix="nbeval-judge") as pool:
            return list(pool.map(self._one, questions))
