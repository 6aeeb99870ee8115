"""One client for OpenAI-compatible HTTP APIs — the image models' (`model=openai_http`) and the
judges' (`vlm=openai_chat`): the key from the environment, a connection pool per process, timeouts,
and retries with backoff.

429, 408, 409, 425, 5xx answers, refused connections and timeouts are retried up to `max_retries`
times with exponential backoff and equal jitter, never sooner than the server's Retry-After (capped
at `retry_after_max_s`); other 4xx fail at once. The API key is read from the environment variable
named by `api_key_env` when a request is sent: it is never a setting, never part of a fingerprint or
a manifest, never logged, and removed from any error text a server might echo it in.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time

import httpx

log = logging.getLogger(__name__)
if logging.getLogger("httpx").level == logging.NOTSET:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request is noise in a run's log

RETRY_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx


class RequestFailed(Exception):
    """A request that failed for good (after its retries, or a refusal not worth retrying);
    `status` is the last HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def retry_after_s(headers: httpx.Headers) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms` (OpenAI), or Retry-After in seconds or
    as an HTTP date."""
    if "retry-after-ms" in headers:
        try:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_message(response: httpx.Response) -> str:
    try:
        err = response.json().get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err)
        if err:
            return str(err)
    except (ValueError, AttributeError):
        pass
    return response.text[:300] or response.reason_phrase


class APIClient:
    def __init__(self, base_url: str, api_key_env: str | None = None, timeout_s: float = 120.0, connect_timeout_s: float = 10.0,
                 max_retries: int = 5, backoff_s: float = 1.0, backoff_max_s: float = 30.0, retry_after_max_s: float = 120.0,
                 concurrency: int = 4) -> None:
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError("need concurrency >= 1, max_retries >= 0, timeout_s > 0 and backoff_s >= 0")
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env or None
        self.timeout = httpx.Timeout(float(timeout_s), connect=min(float(connect_timeout_s), float(timeout_s)))
        self.max_retries, self.backoff_s, self.backoff_max_s, self.retry_after_max_s = int(max_retries), float(backoff_s), float(backoff_max_s), float(retry_after_max_s)
        self.concurrency = int(concurrency)
        self._client: httpx.Client | None = None
        self._client_pid: int | None = None
        self._lock = threading.RLock()

    @property
    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():  # never share a connection pool across a fork
                limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
                self._client, self._client_pid = httpx.Client(timeout=self.timeout, limits=limits), os.getpid()
            return self._client

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None, "_client_pid": None, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def key(self) -> str:
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    def redact(self, text: str) -> str:
        key = self.key()
        return text.replace(key, "***") if key else text

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Exponential backoff with equal jitter; never shorter than the server's Retry-After."""
        d = min(self.backoff_max_s, self.backoff_s * 2**attempt)
        d = d / 2 + random.uniform(0, d / 2)
        asked = retry_after_s(response.headers) if response is not None else None
        return max(d, min(asked, self.retry_after_max_s)) if asked is not None else d

    def send(self, method: str, path: str, accept: tuple[int, ...] = (200,), **kwargs) -> tuple[httpx.Response, int]:
        """The answer to one request and the attempts it took. Raises RequestFailed."""
        key = self.key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for attempt in range(self.max_retries + 1):
            response, why = None, ""
            try:
                response = self.client.request(method, self.base_url + path, headers=headers, **kwargs)
            except httpx.TransportError as e:  # refused, reset, timed out: worth another try
                why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            else:
                if response.status_code in accept:
                    return response, attempt + 1
                why = f"HTTP {response.status_code}: {error_message(response)}"
                if response.status_code < 500 and response.status_code not in RETRY_STATUS:
                    raise RequestFailed(self.redact(f"{method} {path}: {why}"), response.status_code)
            why = self.redact(why)
            if attempt == self.max_retries:
                raise RequestFailed(f"{method} {path}: {why} (after {attempt + 1} attempts)", response.status_code if response is not None else None)
            delay = self._delay(attempt, response)
            log.info("%s %s: %s; retry %d/%d in %.1f s", method, path, why, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")
