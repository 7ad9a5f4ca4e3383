"""Bad requests get OpenAI-shaped JSON errors with the right status, and the server stays up;
`mylm serve` refuses a bad run directory or flag in one line."""

from __future__ import annotations

import httpx
import pytest

from tests.serve_helpers import MODEL_NAME, CONTEXT, server, shared_run

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    return server(shared_run(tmp_path_factory))[0]


@pytest.mark.parametrize("path, body, status, param, words", [
    (COMPLETIONS, b"{not json", 400, None, "not valid JSON"),
    (COMPLETIONS, b"[1, 2]", 400, None, "must be a JSON object"),
    (COMPLETIONS, {"prompt": "x", "temperature": "hot"}, 400, "temperature", "number in [0, 2]"),
    (COMPLETIONS, {"prompt": "x", "temperature": 3}, 400, "temperature", "number in [0, 2]"),
    (COMPLETIONS, {"prompt": "x", "top_p": 0}, 400, "top_p", "in (0, 1]"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens", "integer >= 1"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": 0}, 400, "max_tokens", "integer >= 1"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": CONTEXT}, 400, "max_tokens", f"at most {CONTEXT - 1}"),
    (COMPLETIONS, {"prompt": "x", "n": 0}, 400, "n", "integer in [1, 16]"),
    (COMPLETIONS, {"prompt": "x", "stream": "yes"}, 400, "stream", "true or false"),
    (COMPLETIONS, {"prompt": "x", "stop": 5}, 400, "stop", "list of at most 4 strings"),
    (COMPLETIONS, {"prompt": "x", "seed": -1}, 400, "seed", "integer"),
    (COMPLETIONS, {"prompt": {"text": "x"}}, 400, "prompt", "a string or a list of token ids"),
    (COMPLETIONS, {"prompt": [1, 99999]}, 400, "prompt", "outside the vocabulary"),
    (COMPLETIONS, {"prompt": "speak " * 200}, 400, "prompt", f"at most {CONTEXT - 1} tokens"),
    (COMPLETIONS, {"prompt": "x", "model": "gpt-4"}, 404, "model", "`gpt-4` does not exist"),
    (CHAT, {"messages": "hello"}, 400, "messages", "non-empty list"),
    (CHAT, {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", "system, user or assistant"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", "must be a string"),
    (CHAT, {"messages": [{"role": "user", "content": "speak " * 200}]}, 400, "messages",
     f"at most {CONTEXT - 1} tokens"),
    (CHAT, {"messages": HELLO, "model": "nope"}, 404, "model", "does not exist"),
])
def test_bad_requests_get_openai_errors(url, path, body, status, param, words):
    kwargs = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) \
        else {"json": {"model": MODEL_NAME, **body}}
    response = httpx.post(url + path, timeout=60, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"
    if "context" in error["message"]:
        assert error["code"] == "context_length_exceeded"
    if status == 404:
        assert error["code"] == "model_not_found"


def test_the_openai_client_sees_the_errors_and_the_server_stays_up(url):
    openai = pytest.importorskip("openai", reason="the openai client is not installed")
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4", messages=HELLO)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=MODEL_NAME, prompt="speak " * 200)
    assert httpx.get(url + "/v1/models/nope").status_code == 404
    missing = httpx.get(url + "/v2/everything")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert httpx.get(url + "/health").json()["status"] == "ok"
    ok = client.chat.completions.create(model=MODEL_NAME, messages=HELLO, max_tokens=3, temperature=0)
    assert ok.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("args, message", [
    (["serve", "nowhere"], "nowhere: no checkpoints/ directory"),
    (["serve", "nowhere", "--max-batch", "0"], "--max-batch must be at least 1"),
    (["serve", "nowhere", "--port", "70000"], "--port must be in [1, 65535]"),
])
def test_mylm_serve_refuses_bad_input_in_one_line(args, message, capsys):
    from mylm_jax.cli import main
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
