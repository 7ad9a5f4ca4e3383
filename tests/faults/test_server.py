"""`mylm serve` exposed: no request can hold the server, its event loop or its slots longer
than its limits allow, absurd input is a 400, and a broken model is an error, not NUL bytes.

    a body over --max-body-bytes        413 before it is read (Content-Length, or chunked)
    a 5 MB prompt                       refused at once; /health answers meanwhile, and while
                                        any prompt is tokenized (off the event loop)
    too much waiting work               429 + Retry-After (--max-queue, --max-total-tokens);
                                        a request too big to ever run is a 400
    a client that goes away             its slot is free at once, streaming or not
    slow headers / a slow body          closed within --header-timeout / 408 at --body-timeout
    SIGTERM                             waiting requests 503 at once, the rest cut at --drain-timeout
    huge integers, deep nesting         400, no traceback in the log
    NaN logits                          a 500 naming them

Everything talks to 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.serve_helpers import MODEL_NAME, loaded, own_server, server, shared_run, wait_until

ROOT = Path(__file__).resolve().parents[2]
COMPLETIONS = "/v1/completions"
KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def url(run):
    return server(run)[0]


@pytest.fixture(scope="module")
def keyed(run):
    """A server with an API key, room for 8 MB bodies, one-second header, body and idle
    deadlines, and at most 8 connections."""
    background, engine = own_server(run, api_key=KEY, max_body_bytes=8 << 20, header_timeout=1.0, body_timeout=1.0,
                                    idle_timeout=1.0, max_connections=8)
    return background.url, engine


@pytest.fixture(scope="module")
def slow(run):
    """One slot, one place in the queue, a token budget of 100 in flight, and decode steps of
    50 ms: a request of 60 tokens runs for about three seconds."""
    background, engine = own_server(run, slots=1, step_delay=0.05, max_queue=1, max_total_tokens=100)
    return background.url, engine


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _post_head(path: str, length: int | None = None, chunked: bool = False, extra: str = "") -> bytes:
    framing = "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {length}\r\n"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}{extra}"
            "\r\n").encode()


def _read_response(sock: socket.socket) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one HTTP response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed without a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(rest) < int(headers["content-length"]):
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), headers, json.loads(rest)


def _closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes `sock` (reads until EOF); fails after `limit`."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except socket.timeout:
        pytest.fail(f"the connection was still open after {limit} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def _openai_error(body: dict, code: str | None = None) -> dict:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    if code is not None:
        assert error["code"] == code, error
    return error


# --------------------------------------------------------------------------- body size


def test_a_body_over_the_limit_is_refused_before_it_is_read(url):
    # The headers say 5 MB and no byte of it is sent: the 413 comes anyway.
    with _connect(url) as sock:
        sock.sendall(_post_head(COMPLETIONS, length=5_000_000))
        status, headers, body = _read_response(sock)
        assert status == 413 and headers["connection"] == "close"
        assert "at most 1048576 (--max-body-bytes)" in _openai_error(body, "request_too_large")["message"]
    # Chunked (no length): refused once the count passes the limit, the stream never ended.
    with _connect(url) as sock:
        sock.sendall(_post_head(COMPLETIONS, chunked=True))
        piece = b" " * 65536
        with pytest.raises(OSError):  # the server closes the connection and stops reading
            for _ in range(200):  # 13 MB at most
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        status, _, body = _read_response(sock)
        assert status == 413 and "more than 1048576 bytes" in body["error"]["message"]
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_a_5_mb_prompt_is_refused_at_once_while_health_answers(keyed):
    url, _ = keyed
    letters = random.Random(0).choices(string.ascii_lowercase + " ", weights=[1] * 26 + [5], k=5_000_000)
    prompt = "".join(letters)  # words of random letters: tokenizing them takes seconds, no cache helps
    result = {}

    def post():
        start = time.monotonic()
        r = httpx.post(url + COMPLETIONS, headers=AUTH, json={"prompt": prompt}, timeout=120)
        result.update(status=r.status_code, body=r.json(), seconds=time.monotonic() - start)

    poster = threading.Thread(target=post)
    poster.start()
    latencies = []
    while poster.is_alive() or not latencies:
        start = time.monotonic()
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        latencies.append(time.monotonic() - start)
    poster.join(timeout=120)
    assert result["status"] == 400
    assert "at most 63 tokens" in _openai_error(result["body"], "context_length_exceeded")["message"]
    assert result["seconds"] < 3, result["seconds"]  # refused by its length, not after tokenizing it
    assert max(latencies) < 1, latencies


class _SlowTokenizer:
    """The run's tokenizer, whose encode first computes for `seconds` (holding the GIL, as
    Python tokenization does)."""

    def __init__(self, tok, seconds: float):
        self._tok, self.seconds = tok, seconds

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def encode(self, text, *args, **kwargs):
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            sum(range(1000))
        return self._tok.encode(text, *args, **kwargs)


def test_tokenization_runs_off_the_event_loop(keyed, monkeypatch):
    url, engine = keyed
    monkeypatch.setattr(engine, "tok", _SlowTokenizer(engine.tok, 3.0))
    result = {}

    def post():  # max_tokens past the context: a 400 right after the (slow) tokenization
        r = httpx.post(url + COMPLETIONS, headers=AUTH, json={"prompt": "First Citizen", "max_tokens": 64},
                       timeout=60)
        result.update(status=r.status_code, body=r.json())

    poster = threading.Thread(target=post)
    started = time.monotonic()
    poster.start()
    latencies = []
    while poster.is_alive():
        start = time.monotonic()
        httpx.get(url + "/health", timeout=30)
        latencies.append(time.monotonic() - start)
        time.sleep(0.05)
    assert time.monotonic() - started >= 3  # the tokenizer did run for its three seconds...
    assert result["status"] == 400 and result["body"]["error"]["param"] == "max_tokens"
    assert len(latencies) >= 10 and max(latencies) < 1, latencies  # ... and /health answered meanwhile


# --------------------------------------------------------------------------- work in flight


def _stream_in_background(url: str, body: dict, out: dict) -> threading.Thread:
    """Stream a completion in a thread: out gets its status and its lines (or, for an error
    status, its JSON body)."""
    def go():
        with httpx.stream("POST", url + COMPLETIONS, json={**body, "stream": True}, timeout=60) as r:
            out["status"] = r.status_code
            if r.status_code != 200:
                out["body"] = json.loads(r.read())
            else:
                out["lines"] = [line for line in r.iter_lines() if line]
        out["at"] = time.monotonic()
    thread = threading.Thread(target=go)
    thread.start()
    return thread


def _post_in_background(url: str, body: dict, out: dict) -> threading.Thread:
    def go():
        r = httpx.post(url + COMPLETIONS, json=body, timeout=60)
        out.update(status=r.status_code, body=r.json(), at=time.monotonic())
    thread = threading.Thread(target=go)
    thread.start()
    return thread


def test_waiting_work_is_bounded_with_429_and_retry_after(slow):
    url, engine = slow
    ask = {"model": MODEL_NAME, "prompt": "First Citizen", "temperature": 0}  # 3 prompt tokens
    running, waiting = {}, {}
    a = _stream_in_background(url, {**ask, "max_tokens": 60}, running)  # 63 tokens of the budget of 100
    assert wait_until(lambda: engine.batcher.stats()["busy"] == 1)
    # The slot is taken and the queue is free, but 63 + 43 tokens would pass the budget.
    tokens = httpx.post(url + COMPLETIONS, json={**ask, "max_tokens": 40}, timeout=30)
    assert tokens.status_code == 429 and tokens.headers["retry-after"] == "1"
    assert "(--max-total-tokens)" in _openai_error(tokens.json(), "rate_limit_exceeded")["message"]
    b = _post_in_background(url, {**ask, "max_tokens": 10}, waiting)  # 13 more: it may wait
    assert wait_until(lambda: engine.admission.sequences == 2)
    full = httpx.post(url + COMPLETIONS, json={**ask, "max_tokens": 2}, timeout=30)
    assert full.status_code == 429 and full.headers["retry-after"] == "1"
    assert "queues at most 1 (--max-queue)" in _openai_error(full.json(), "rate_limit_exceeded")["message"]
    # More choices than slots + queue could ever hold: no use retrying.
    never = httpx.post(url + COMPLETIONS, json={**ask, "max_tokens": 2, "n": 3}, timeout=30)
    assert never.status_code == 400 and _openai_error(never.json())["param"] == "n"
    a.join(timeout=60)
    b.join(timeout=60)
    assert running["status"] == 200 and waiting["status"] == 200
    assert waiting["body"]["usage"]["completion_tokens"] >= 1
    assert wait_until(lambda: (engine.admission.sequences, engine.admission.tokens) == (0, 0), timeout=5)


def test_a_request_bigger_than_the_per_request_budget_is_400(url):
    # n = 16 with no max_tokens: 16 choices of all the room left, past 4 contexts (256 tokens).
    r = httpx.post(url + COMPLETIONS, json={"model": MODEL_NAME, "prompt": "First", "n": 16}, timeout=30)
    assert r.status_code == 400
    error = _openai_error(r.json(), "request_too_large")
    assert error["param"] == "max_tokens" and "at most 256 per request (--max-request-tokens)" in error["message"]


def test_clients_that_disconnect_free_their_slots_streaming_or_not(slow):
    url, engine = slow
    assert wait_until(lambda: engine.admission.sequences == 0)
    body = json.dumps({"model": MODEL_NAME, "prompt": "First Citizen", "max_tokens": 45}).encode()  # 2+ s each
    socks = []
    for _ in range(2):  # the first takes the slot, the second waits for it; neither streams
        sock = _connect(url)
        sock.sendall(_post_head(COMPLETIONS, length=len(body)) + body)
        socks.append(sock)
    assert wait_until(lambda: engine.batcher.stats()["busy"] == 1 and engine.admission.sequences == 2)
    for sock in socks:
        sock.close()
    closed = time.monotonic()
    # Running on, the first would hold the slot for two seconds more, then the second.
    assert wait_until(lambda: engine.batcher.stats()["busy"] == 0 and engine.admission.sequences == 0, timeout=1.0)
    assert time.monotonic() - closed < 1.0
    steps = engine.batcher.stats()["steps"]
    time.sleep(0.5)
    assert engine.batcher.stats()["steps"] == steps  # nothing is generated for nobody
    # A stream closed after its first event frees its slot too.
    with httpx.stream("POST", url + COMPLETIONS, json={"model": MODEL_NAME, "prompt": "First", "max_tokens": 60,
                                                       "stream": True}, timeout=30) as r:
        next(r.iter_lines())
    assert wait_until(lambda: engine.batcher.stats()["busy"] == 0 and engine.admission.sequences == 0, timeout=1.0)


# --------------------------------------------------------------------------- slow clients


def test_a_connection_that_sends_half_a_header_is_closed_within_the_timeout(keyed):
    url, _ = keyed
    with _connect(url) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        assert 0.5 < _closed_after(sock, limit=5) < 3  # --header-timeout 1
    with _connect(url) as sock:  # one that sends nothing at all
        assert 0.5 < _closed_after(sock, limit=5) < 3
    with _connect(url) as sock:  # a kept-alive connection whose second request stalls midway
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.recv(65536)
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        assert _closed_after(sock, limit=5) < 3
    assert httpx.get(url + "/health").status_code == 200


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(keyed):
    url, _ = keyed
    with _connect(url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert 0.5 < _closed_after(sock, limit=5) < 3  # --idle-timeout 1


def test_connections_past_the_limit_get_503(keyed):
    url, _ = keyed
    idle = [_connect(url) for _ in range(8)]  # --max-connections 8 (closed by the header timeout soon)
    try:
        assert httpx.get(url + "/health").status_code == 503
    finally:
        for sock in idle:
            sock.close()
    assert wait_until(lambda: httpx.get(url + "/health").status_code == 200, timeout=5)


def test_a_body_that_does_not_arrive_in_time_is_408(keyed):
    url, _ = keyed
    with _connect(url) as sock:
        sock.sendall(_post_head(COMPLETIONS, length=100, extra=f"Authorization: Bearer {KEY}\r\n") + b'{"prompt"')
        start = time.monotonic()
        status, headers, body = _read_response(sock)
        assert status == 408 and headers["connection"] == "close" and time.monotonic() - start < 3
        assert "(--body-timeout)" in _openai_error(body, "request_timeout")["message"]


# --------------------------------------------------------------------------- shutdown


def test_shutdown_refuses_waiting_requests_with_503_and_cuts_the_rest_at_the_drain_timeout(run, caplog):
    background, engine = own_server(run, slots=1, step_delay=0.2, drain_timeout=1.0)
    url = background.url
    ask = {"model": MODEL_NAME, "prompt": "First Citizen", "max_tokens": 60, "temperature": 0}
    # Compiled first, as `mylm serve` compiles before it listens: the drain acts between device calls.
    assert httpx.post(url + COMPLETIONS, json={**ask, "max_tokens": 2}, timeout=120).status_code == 200
    running, queued, queued_stream = {}, {}, {}
    a = _stream_in_background(url, ask, running)  # 60 steps of 0.2 s: twelve seconds
    assert wait_until(lambda: engine.batcher.stats()["busy"] == 1)
    b = _post_in_background(url, ask, queued)
    c = _stream_in_background(url, ask, queued_stream)
    assert wait_until(lambda: engine.admission.sequences == 3)
    start = time.monotonic()
    with caplog.at_level(logging.ERROR):
        background.stop()  # what SIGTERM does (uvicorn's should_exit)
    stopped = time.monotonic() - start
    for t in (a, b, c):
        t.join(timeout=30)
    for refused in (queued, queued_stream):  # a real status, for the stream too: not a 200 carrying an error
        assert refused["status"] == 503 and _openai_error(refused["body"], None)["type"] == "server_error"
        assert "shutting down; this request had not started" in refused["body"]["error"]["message"]
        assert refused["at"] - start < 0.8  # at once, not at the drain's deadline
    # The running answer is cut at the deadline: an error event, then the end of the stream.
    assert running["status"] == 200 and running["lines"][-1] == "data: [DONE]"
    cut = json.loads(running["lines"][-2][len("data: "):])
    assert "shut down before this answer was finished" in cut["error"]["message"]
    assert len(running["lines"]) < 40  # far from its 60 tokens
    assert 1.0 <= stopped < 1.0 + 3, stopped  # --drain-timeout 1, not the twelve seconds the answer needed
    assert not background.thread.is_alive()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text  # nothing cancelled


# --------------------------------------------------------------------------- absurd input


@pytest.mark.parametrize("raw, param, words", [
    (b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", "max_tokens", "an integer of 5000 digits"),
    (b'{"prompt": "x", "seed": -' + b"9" * 5000 + b"}", "seed", "an integer of 5000 digits"),
    (b'{"prompt": [1, ' + b"7" * 4400 + b"]}", "prompt", "list of token ids"),
    (b'{"prompt": "x", "n": 1' + b"0" * 100 + b"}", "n", "integer in [1, 16]"),
    (b'{"prompt": "x", "user": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "nested too deeply"),
    (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, None, "nested too deeply"),
])
def test_absurd_numbers_and_deep_nesting_are_400_without_a_traceback(url, raw, param, words, caplog):
    with caplog.at_level(logging.ERROR):
        r = httpx.post(url + COMPLETIONS, content=raw, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    error = _openai_error(r.json())
    assert error["param"] == param and words in error["message"], error
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR], caplog.text


def test_nan_logits_are_a_500_naming_them_never_nul_bytes(run):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    model, _, _ = loaded(run)
    graphdef, state = nnx.split(model)
    broken = nnx.merge(graphdef, jax.tree.map(lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.floating) else x,
                                              state))
    background, _ = own_server(run, model=broken)
    ask = {"model": MODEL_NAME, "prompt": "First Citizen", "max_tokens": 5}
    for stream in (False, True):
        r = httpx.post(background.url + COMPLETIONS, json={**ask, "stream": stream}, timeout=60)
        assert r.status_code == 500, r.text
        error = _openai_error(r.json())
        assert error["type"] == "server_error" and "logits are not finite (NaN/inf)" in error["message"]
    background.stop()


# --------------------------------------------------------------------------- the command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mylm_serve_takes_its_key_from_the_environment_and_stops_promptly_on_sigterm(run):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MYLM_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "mylm_jax.cli", "serve", str(run), "--port", str(port),
                             "--max-batch", "1", "--header-timeout", "1", "--drain-timeout", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up():
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        assert wait_until(lambda: up() or proc.poll() is not None, timeout=240, every=0.5) and proc.poll() is None
        assert httpx.get(url + "/v1/models", timeout=10).status_code == 401
        assert httpx.get(url + "/v1/models", headers=AUTH, timeout=10).json()["data"][0]["id"] == Path(run).name
        assert httpx.get(url + "/v1/models", headers={**AUTH, "Host": "attacker.example"}, timeout=10).status_code \
            == 400
        with _connect(url) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
            assert _closed_after(sock, limit=10) < 5  # --header-timeout 1 reached uvicorn
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        out, _ = proc.communicate(timeout=30)
        # uvicorn re-raises the signal once it has stopped, so the exit status is SIGTERM's
        assert time.monotonic() - start < 15 and proc.returncode in (0, -signal.SIGTERM), out
        assert "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
