"""HTTP engine: any OpenAI-compatible chat-completions endpoint (an API, a vLLM or TGI server).

One POST to ``{base_url}/chat/completions`` per (problem, sample) row, with the row's own seed,
sent from a small thread pool inside each generation actor (``batch_size`` requests in flight per
replica). The rate limit is shared by the actor's threads and split evenly over the replicas, and
counts retries. A request that gets 408, 429, a 5xx, a timeout or a dropped connection is retried
with exponential backoff (a server's ``Retry-After`` wins when longer); one that still fails, or
gets another 4xx or a malformed answer, becomes that row's error completion: one bad row never
fails the batch, and finished rows are never sent again.

Why not ``ray.data.llm``'s HttpRequestProcessorConfig (it works on CPU here, STACK.md): it is a
separate Ray Data pipeline with its own rows and failure handling, while this engine sits behind
the `Engine` interface in the stage's actor pool, so an http teacher keeps the stage's row-level
resume, error rows, schema and progress as they are. Only the standard library is used.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mixray.generate.config import HTTPEngineConfig, SamplingConfig
from mixray.generate.engine import Completion, Messages

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 429}  # and every 5xx
MAX_BACKOFF_S = 60.0
ERROR_BODY_CHARS = 300  # of a server's error body kept in the row's error


class RateLimiter:
    """At most ``per_s`` acquisitions per second, spaced evenly, across threads; None: no limit."""

    def __init__(self, per_s: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        assert per_s is None or per_s > 0, per_s
        self.interval = 0.0 if per_s is None else 1.0 / per_s
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self._sleep(slot - now)


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Fatal(Exception):
    pass


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: rare from APIs; the backoff applies
        return None


class HTTPEngine:
    def __init__(self, cfg: HTTPEngineConfig, *, api_key: str | None,
                 max_requests_per_s: float | None, concurrency: int,
                 chat_template_kwargs: dict[str, Any] | None = None) -> None:
        assert concurrency >= 1, concurrency
        self.cfg = cfg
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.url = f"{cfg.base_url}/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.limiter = RateLimiter(max_requests_per_s)
        self.concurrency = concurrency
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_config(cls, cfg: HTTPEngineConfig, *, replicas: int = 1, concurrency: int = 8,
                    chat_template_kwargs: dict[str, Any] | None = None) -> HTTPEngine:
        """The engine of one of ``replicas`` actors: the rate limit is split evenly among them;
        the API key is read from the environment variable ``cfg.api_key_env``."""
        api_key = None
        if cfg.api_key_env is not None:
            api_key = os.environ.get(cfg.api_key_env)
            if not api_key:
                raise ValueError(f"the http teacher's API key variable {cfg.api_key_env} is not "
                                 "set (or empty) where the generation actors run")
        rate = None if cfg.max_requests_per_s is None else cfg.max_requests_per_s / replicas
        return cls(cfg, api_key=api_key, max_requests_per_s=rate, concurrency=concurrency,
                   chat_template_kwargs=chat_template_kwargs)

    def generate(self, prompts: list[Messages], sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        if not prompts:
            return []
        if seeds is None:
            seeds = [sampling.seed + i for i in range(len(prompts))]
        assert len(seeds) == len(prompts), f"{len(seeds)} seeds for {len(prompts)} prompts"
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="mixray-http")
        return list(self._pool.map(lambda p, s: self.complete(p, sampling, s), prompts, seeds))

    def request_body(self, messages: Messages, sampling: SamplingConfig, seed: int) -> dict:
        """The request: sampling as OpenAI's API names it, the chat template's arguments as
        vLLM's and SGLang's servers take them, then `engine.extra_body` (which wins)."""
        greedy = sampling.temperature == 0.0
        body = {"model": self.cfg.model, "messages": messages,
                "max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                "top_p": 1.0 if greedy else sampling.top_p, "seed": seed, "n": 1}
        if self.chat_template_kwargs:
            body["chat_template_kwargs"] = self.chat_template_kwargs
        return body | self.cfg.extra_body

    def count_tokens(self, text: str) -> None:
        return None  # no tokenizer here: a server's reasoning_tokens, where it sends them

    def complete(self, messages: Messages, sampling: SamplingConfig, seed: int) -> Completion:
        """One row: the completion, or an error completion with the reason (never raises)."""
        body = json.dumps(self.request_body(messages, sampling, seed)).encode()
        attempts = self.cfg.max_retries + 1
        for attempt in range(attempts):
            self.limiter.acquire()
            try:
                return parse_response(self._post(body))
            except _Fatal as e:
                return _error(str(e))
            except _Retryable as e:
                if attempt + 1 == attempts:
                    log.warning("http %s: giving up after %d attempt(s): %s", self.cfg.model,
                                attempts, e)
                    return _error(f"after {attempts} attempt(s): {e}")
                wait = self.cfg.backoff_s * 2**attempt * random.uniform(0.5, 1.0)
                wait = min(MAX_BACKOFF_S, max(wait, e.retry_after or 0.0))
                log.debug("http %s: %s; retry %d in %.2f s", self.cfg.model, e, attempt + 1,
                          wait)
                time.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns")

    def _post(self, body: bytes) -> dict:
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:  # before URLError: it is one
            text = e.read()[:ERROR_BODY_CHARS].decode(errors="replace")
            reason = f"HTTP {e.code}: {text}"
            if e.code in RETRY_STATUS or e.code >= 500:
                raise _Retryable(reason, _retry_after(e.headers)) from None
            raise _Fatal(reason) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError,
                http.client.HTTPException) as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise _Fatal(f"response is not JSON ({e.msg}): {raw[:ERROR_BODY_CHARS]!r}") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def parse_response(data: Any) -> Completion:
    """An OpenAI chat-completions response -> a Completion; _Fatal when it is not one."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
        text = message.get("content") or ""
        # vLLM's and DeepSeek's reasoning parsers: reasoning_content; newer vLLM: reasoning
        reasoning = message.get("reasoning_content", message.get("reasoning"))
        finish = choice.get("finish_reason")
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens")
        reasoning_tokens = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise _Fatal(f"malformed chat-completions response ({type(e).__name__}: {e})") from None
    if not isinstance(tokens, int) or tokens < 0:
        # Mixes count tokens (mix.unit: tokens) and curation reports lengths: no guessing.
        raise _Fatal("response has no usage.completion_tokens")
    return Completion(text=text, n_tokens=tokens,
                      finish_reason="length" if finish == "length" else "stop",
                      reasoning=reasoning if isinstance(reasoning, str) else None,
                      reasoning_tokens=reasoning_tokens if isinstance(reasoning_tokens, int)
                      else None)


def _error(reason: str) -> Completion:
    return Completion(text="", n_tokens=0, finish_reason="error", error=reason)
