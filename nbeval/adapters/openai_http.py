"""A model behind an OpenAI-compatible images API: `nbeval serve`, or a provider's.

`POST {base_url}/images/generations` (JSON) for the first turn and `POST {base_url}/images/edits`
(multipart: the last image + this turn's instruction) for edit turns; base64 answers. Each request
of a batch is sent on its own (n=1), `concurrency` at a time, through nbeval.http's client: a
timeout, retries with backoff at least as long as the server's Retry-After, and the API key only from
the environment variable `api_key_env` (never a setting, never in the fingerprint or the manifest,
never logged, removed from any error text). A request that still fails becomes that sample's error;
the run goes on.

Fingerprint: the request settings that change images (model name, size, format, extra fields,
which extensions are sent) plus the served model's identity. `nbeval serve` reports its adapter's
fingerprint at `GET {base_url}/models/{model}`, so a served model keeps its cache wherever it runs and
a changed model behind the same URL gets a new fingerprint; any other API is identified by its
base_url and model name (pin a dated model name where the provider has them). Timeouts, retries
and concurrency change no image and are left out.

Each image's manifest (stored in the cache with it) holds the request (without the key or the
truth), the attempts it took, the answer's metadata and, from `nbeval serve`, the served adapter's
name, class, fingerprint and settings and the image's seed.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image

from nbeval.adapters.base import EditRequest, GenRequest, GenResult, ModelAdapter
from nbeval.cache import encode_png
from nbeval.http import APIClient, RequestFailed
from nbeval.images import DEFAULT_MAX_PIXELS, ImageError, load_image

log = logging.getLogger(__name__)
PROTOCOL = 1  # bump when what is sent changes in a way that changes images
ANSWER_HEADERS = ("x-request-id", "openai-model", "openai-version", "openai-processing-ms", "x-nbeval-fingerprint")


class OpenAIHTTPAdapter(ModelAdapter):
    capabilities = frozenset({"generate", "edit"})

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str = "reference",
        name: str | None = None,
        api_key_env: str | None = "NBEVAL_API_KEY",
        size: str | int | None = None,
        response_format: str | None = "b64_json",
        send_seed: bool = True,
        extensions: bool = True,
        send_truth: bool = False,
        extra: dict | None = None,
        identify: bool = True,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        retry_after_max_s: float = 120.0,
        concurrency: int = 4,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if response_format not in (None, "b64_json", "url"):
            raise ValueError(f"response_format must be b64_json, url or null, got {response_format!r}")
        self.api = APIClient(base_url, api_key_env, timeout_s, connect_timeout_s, max_retries, backoff_s, backoff_max_s, retry_after_max_s, concurrency)
        self.base_url = self.api.base_url
        self.model, self.name = model, name or f"http-{model}"
        self.size = None if size in (None, "", "null") else str(size)
        self.response_format, self.send_seed, self.extensions, self.send_truth = response_format, bool(send_seed), bool(extensions), bool(send_truth)
        self.extra = dict(extra or {})
        self.identify, self.max_pixels = bool(identify), int(max_pixels)
        self._served: dict | None = None
        self._identified = False
        self._lock = threading.RLock()  # guards the identity

    def __repr__(self) -> str:
        return f"OpenAIHTTPAdapter(name={self.name!r}, base_url={self.base_url!r}, model={self.model!r})"

    @property
    def needs_truth(self) -> bool:
        """`send_truth=true` serves the oracle (or reference_gtplan) over HTTP; never a model under test."""
        return self.send_truth

    # -- identity ---------------------------------------------------------------------------------
    def settings(self) -> dict:
        s = {"protocol": PROTOCOL, "model": self.model, "size": self.size, "response_format": self.response_format,
             "send_seed": self.send_seed, "extensions": self.extensions, "send_truth": self.send_truth, "extra": self.extra}
        served = self.served()
        if served:
            s["served"] = {"name": served["name"], "fingerprint": served["fingerprint"]}
        else:
            s["base_url"] = self.base_url
        return s

    def served(self) -> dict | None:
        """The served model's identity from `GET {base_url}/models/{model}` when the server is
        nbeval's (None for other APIs, or with identify=false); asked once."""
        with self._lock:
            if self.identify and not self._identified:
                try:
                    response, _ = self.api.send("GET", f"/models/{self.model}", accept=(200, 404, 405, 501))
                except RequestFailed as e:
                    raise RuntimeError(f"cannot identify the model at {self.base_url}: {e}") from None
                card = response.json() if response.status_code == 200 else {}
                if isinstance(card, dict) and card.get("nbeval_fingerprint"):
                    self._served = {"name": card.get("id"), "fingerprint": card["nbeval_fingerprint"], "class": card.get("nbeval_class")}
                self._identified = True
            return self._served

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- requests ---------------------------------------------------------------------------------
    def _size_field(self, size: int) -> str:
        return self.size or f"{size}x{size}"

    def _image_from(self, response: httpx.Response) -> tuple[Image.Image, dict]:
        try:
            body = response.json()
            item = body["data"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise RequestFailed(f"the answer is not an images response: {response.text[:200]!r}") from None
        if item.get("b64_json"):
            try:
                data = base64.b64decode(item["b64_json"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise RequestFailed("b64_json is not valid base64") from None
        elif item.get("url"):
            data = self.api.client.get(item["url"]).raise_for_status().content  # a provider's link: no key sent to it
        else:
            raise RequestFailed("the answer's data[0] has neither b64_json nor url")
        try:
            image = load_image(data, self.max_pixels)
        except ImageError as e:
            raise RequestFailed(f"the answer's image: {e}") from None
        meta = {k: body[k] for k in ("created", "output_format", "size", "quality", "usage", "nbeval_model", "nbeval_ignored") if k in body}
        meta.update({k: item[k] for k in ("revised_prompt", "nbeval") if k in item})
        meta["headers"] = {k: response.headers[k] for k in ANSWER_HEADERS if k in response.headers}
        return image, meta

    def _fit(self, image: Image.Image, size: int, manifest: dict) -> Image.Image:
        if image.size != (size, size):
            manifest["resized_from"] = list(image.size)
            image = image.resize((size, size), Image.Resampling.LANCZOS)
        return image

    def _one(self, path: str, size: int, request: dict, **kwargs) -> GenResult:
        t0 = time.perf_counter()
        manifest = {"endpoint": path, "request": request}
        try:
            response, attempts = self.api.send("POST", path, **kwargs)
            manifest["attempts"] = attempts
            image, meta = self._image_from(response)
            manifest["answer"] = meta
            image = self._fit(image, size, manifest)
        except (RequestFailed, httpx.HTTPError) as e:
            msg = self.api.redact(str(e) if isinstance(e, RequestFailed) else f"{type(e).__name__}: {e}")
            log.warning("%s failed: %s", path, msg)
            return GenResult(None, time.perf_counter() - t0, msg)
        manifest["adapter"] = {"name": self.name, "fingerprint": self.fingerprint}
        return GenResult(image, time.perf_counter() - t0, None, manifest)

    def _common(self, r: GenRequest | EditRequest) -> dict:
        body = {"model": self.model, "n": 1, "size": self._size_field(r.size)}
        if self.response_format:
            body["response_format"] = self.response_format
        if self.send_seed:
            body["seed"] = r.seed
        if self.extensions:
            body["nbeval_sample_id"] = r.sample_id
        return {**body, **self.extra}

    def _generate_one(self, r: GenRequest) -> GenResult:
        body = {**self._common(r), "prompt": r.prompt}
        sent = dict(body)
        if self.send_truth:
            body["nbeval_truth"] = r.truth
        return self._one("/images/generations", r.size, sent, json=body)

    def _edit_one(self, r: EditRequest) -> GenResult:
        if not r.images or not r.instructions:
            return GenResult(None, 0.0, "an edit needs an image and an instruction")
        fields = {**self._common(r), "prompt": r.instructions[-1]}
        if self.extensions:
            fields.update(nbeval_turn=r.turn, nbeval_prompt=r.prompt, nbeval_instructions=json.dumps(list(r.instructions)))
        sent = dict(fields)
        if self.send_truth:
            fields["nbeval_truth"] = json.dumps(r.truth)
        form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        files = {"image": ("image.png", encode_png(r.images[-1].convert("RGB")), "image/png")}
        return self._one("/images/edits", r.size, sent, data=form, files=files)

    def _map(self, fn, requests: list) -> list[GenResult]:
        if not requests:
            return []
        self.fingerprint  # noqa: B018 — identify the served model once, before the threads start
        if self.api.concurrency == 1 or len(requests) == 1:
            return [fn(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.api.concurrency, len(requests)), thread_name_prefix="nbeval-http") as pool:
            return list(pool.map(fn, requests))

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return self._map(self._generate_one, requests)

    def edit(self, requests: list[EditRequest]) -> list[GenResult]:
        return self._map(self._edit_one, requests)
