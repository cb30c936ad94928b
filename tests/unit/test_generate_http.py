"""The HTTP engine against a local stub of an OpenAI-compatible server (no Ray, no model): row
results, retries of transient failures, error rows for the rest, the key header, the rate limit."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from mixray.generate.config import HTTPEngineConfig, SamplingConfig
from mixray.generate.http import HTTPEngine, RateLimiter

SAMPLING = SamplingConfig(max_new_tokens=8, temperature=0.5, seed=3)


class _Stub(BaseHTTPRequestHandler):
    """Behaviour by the user turn: fail-always (500), fail-once (503 then fine), too-many (429
    with Retry-After then fine), bad-request (400), no-usage, not-json; else a completion."""

    calls: ClassVar[Counter] = Counter()
    bodies: ClassVar[list[dict]] = []
    headers_seen: ClassVar[list[dict]] = []
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:  # the name is http.server's API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        turn = body["messages"][-1]["content"]
        with self.lock:
            self.calls[turn] += 1
            self.bodies.append(body)
            self.headers_seen.append(dict(self.headers))
            n = self.calls[turn]
        if self.path != "/v1/chat/completions":
            return self._send(404, b"no such route")
        if turn == "fail-always" or (turn == "fail-once" and n == 1):
            return self._send(500 if turn == "fail-always" else 503, b"engine exploded")
        if turn == "too-many" and n == 1:
            return self._send(429, b"slow down", {"Retry-After": "0"})
        if turn == "bad-request":
            return self._send(400, b"prompt too long")
        if turn == "not-json":
            return self._send(200, b"<html>")
        usage = {} if turn == "no-usage" else {"usage": {"completion_tokens": 3}}
        answer = {"choices": [{"message": {"role": "assistant", "content": f"echo {turn}"},
                               "finish_reason": "length" if turn == "long" else "stop"}]}
        self._send(200, json.dumps(answer | usage).encode())


@pytest.fixture()
def server() -> Iterator[str]:
    _Stub.calls, _Stub.bodies, _Stub.headers_seen = Counter(), [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _engine(url: str, **kw) -> HTTPEngine:
    cfg = HTTPEngineConfig(kind="http", base_url=url, model="served", max_retries=2,
                           backoff_s=0.01, timeout_s=5, **kw)
    return HTTPEngine.from_config(cfg, concurrency=4)


def test_rows_retries_and_error_rows(server: str) -> None:
    turns = ["fine", "long", "fail-once", "too-many", "fail-always", "bad-request", "no-usage",
             "not-json"]
    engine = _engine(server)
    out = engine.generate([[{"role": "user", "content": t}] for t in turns], SAMPLING,
                          seeds=list(range(100, 100 + len(turns))))
    engine.close()
    got = dict(zip(turns, out, strict=True))
    assert len(out) == len(turns)
    for ok in ("fine", "fail-once", "too-many"):  # transient failures are retried away
        assert got[ok].finish_reason == "stop" and got[ok].n_tokens == 3 and got[ok].error is None
    assert got["long"].finish_reason == "length"
    errors = {t: c.error for t, c in got.items() if c.finish_reason == "error"}
    assert set(errors) == {"fail-always", "bad-request", "no-usage", "not-json"}
    assert all(got[t].n_tokens == 0 and got[t].text == "" for t in errors)
    assert "HTTP 500" in errors["fail-always"] and "3 attempt" in errors["fail-always"]
    assert "HTTP 400" in errors["bad-request"] and "usage" in errors["no-usage"]
    # 5xx and 429 are retried up to max_retries; 400, malformed and usage-less answers are not
    assert _Stub.calls["fail-always"] == 3 and _Stub.calls["fail-once"] == 2
    assert _Stub.calls["too-many"] == 2
    assert _Stub.calls["bad-request"] == _Stub.calls["no-usage"] == _Stub.calls["fine"] == 1
    first = next(b for b in _Stub.bodies if b["messages"][-1]["content"] == "fine")
    assert first["model"] == "served" and first["seed"] == 100 and first["max_tokens"] == 8
    assert first["temperature"] == 0.5


def test_api_key_comes_from_the_named_variable(server: str, monkeypatch) -> None:
    monkeypatch.setenv("MIXRAY_TEST_KEY", "secret-123")
    engine = _engine(server, api_key_env="MIXRAY_TEST_KEY")
    assert engine.generate([[{"role": "user", "content": "fine"}]], SAMPLING)[0].error is None
    assert _Stub.headers_seen[-1]["Authorization"] == "Bearer secret-123"
    monkeypatch.delenv("MIXRAY_TEST_KEY")
    with pytest.raises(ValueError, match="MIXRAY_TEST_KEY"):
        _engine(server, api_key_env="MIXRAY_TEST_KEY")


def test_unreachable_server_gives_error_rows() -> None:
    # Port 9 (discard) is closed here: connection refused, retried, then an error row.
    engine = _engine("http://127.0.0.1:9/v1")
    [row] = engine.generate([[{"role": "user", "content": "fine"}]], SAMPLING)
    assert row.finish_reason == "error" and "3 attempt" in row.error


def test_rate_limiter_spaces_requests_across_threads() -> None:
    now, slept = [0.0], []

    def sleep(s: float) -> None:
        slept.append(s)

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.acquire()
    # at 4/s the five slots are 0, 0.25, 0.5, 0.75, 1.0 s: four waits, 2.5 s in all
    assert slept == pytest.approx([0.25, 0.5, 0.75, 1.0])
    RateLimiter(None).acquire()  # no limit: returns at once


def test_rate_limit_is_split_over_replicas() -> None:
    cfg = HTTPEngineConfig(kind="http", base_url="http://x/v1", model="m", max_requests_per_s=6)
    assert HTTPEngine.from_config(cfg, replicas=3).limiter.interval == pytest.approx(0.5)
