"""Every request field is used, harmlessly ignored, or refused with a 400 naming it: OpenAI
fields MyLM does not implement never get a 200 that quietly ignores them; max_completion_tokens
is max_tokens; types are strict; sampling settings float32 cannot sample are refused."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.serve_helpers import MODEL_NAME, server, shared_run

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello"}]
BASE = {COMPLETIONS: {"model": MODEL_NAME, "prompt": "First Citizen"}, CHAT: {"model": MODEL_NAME, "messages": HELLO}}


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    return server(shared_run(tmp_path_factory))[0]


def _post(url: str, path: str, **fields) -> httpx.Response:
    return httpx.post(url + path, json={**BASE[path], "max_tokens": 6, "temperature": 0, **fields}, timeout=60)


@pytest.mark.parametrize("path, fields, param, code", [
    (COMPLETIONS, {"logprobs": 5}, "logprobs", "unsupported_parameter"),
    (COMPLETIONS, {"logprobs": 0}, "logprobs", "unsupported_parameter"),
    (COMPLETIONS, {"echo": True}, "echo", "unsupported_parameter"),
    (COMPLETIONS, {"best_of": 3}, "best_of", "unsupported_parameter"),
    (COMPLETIONS, {"suffix": " the end"}, "suffix", "unsupported_parameter"),
    (COMPLETIONS, {"logit_bias": {"50": 100}}, "logit_bias", "unsupported_parameter"),
    (COMPLETIONS, {"presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
    (COMPLETIONS, {"frequency_penalty": -1}, "frequency_penalty", "unsupported_parameter"),
    (CHAT, {"logprobs": True, "top_logprobs": 2}, "logprobs", "unsupported_parameter"),
    (CHAT, {"top_logprobs": 2}, "top_logprobs", "unsupported_parameter"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}, "tools",
     "unsupported_parameter"),
    (CHAT, {"tool_choice": "required"}, "tool_choice", "unsupported_parameter"),
    (CHAT, {"response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter"),
    (CHAT, {"reasoning_effort": "high"}, "reasoning_effort", "unsupported_parameter"),
    (CHAT, {"audio": {"voice": "alloy"}}, "audio", "unsupported_parameter"),
    (COMPLETIONS, {"top_k": 5}, "top_k", "unknown_parameter"),
    (CHAT, {"prompt": "x"}, "prompt", "unknown_parameter"),
    (COMPLETIONS, {"messages": HELLO}, "messages", "unknown_parameter"),
    (COMPLETIONS, {"stream": True, "stream_options": {"include_usage": True, "chunk_size": 4}},
     "stream_options.chunk_size", "unknown_parameter"),
    (CHAT, {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]},
     "messages[0].tool_calls", "unsupported_parameter"),
])
def test_an_unsupported_field_is_a_400_naming_it(url, path, fields, param, code):
    r = _post(url, path, **fields)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    assert param.split(".")[-1].split("[")[0] in error["message"] and "\n" not in error["message"]


@pytest.mark.parametrize("path, fields", [
    (COMPLETIONS, {"logprobs": None, "echo": False, "best_of": 1, "suffix": None, "user": "u-1",
                   "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}}),
    (CHAT, {"logprobs": False, "top_logprobs": None, "tools": [], "tool_choice": "none", "user": "u-1",
            "response_format": {"type": "text"}, "metadata": {"k": "v"}, "store": False, "parallel_tool_calls": True,
            "n": 1, "max_completion_tokens": None}),
    (CHAT, {"messages": [{"role": "user", "content": "hello", "name": "ann", "tool_calls": None}]}),
])
def test_harmless_fields_change_nothing(url, path, fields):
    plain, extra = _post(url, path), _post(url, path, **fields)
    assert (plain.status_code, extra.status_code) == (200, 200), extra.text
    content = (lambda r: r.json()["choices"][0]["text" if path == COMPLETIONS else "message"])
    assert content(extra) == content(plain) and extra.json()["usage"] == plain.json()["usage"]


def test_max_completion_tokens_is_max_tokens_and_null_means_not_given(url):
    def tokens(**fields):
        r = httpx.post(url + COMPLETIONS, json={**BASE[COMPLETIONS], "temperature": 0, "stop": None, **fields},
                       timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["usage"]["completion_tokens"], r.json()["choices"][0]["finish_reason"]

    five, reason = tokens(max_tokens=5)
    assert five <= 5 and (five == 5 or reason == "stop")
    assert tokens(max_tokens=5, max_completion_tokens=None) == (five, reason)  # used to give all the room left
    assert tokens(max_completion_tokens=5) == (five, reason)
    assert tokens(max_completion_tokens=5, max_tokens=None) == (five, reason)
    assert tokens(max_tokens=5, max_completion_tokens=5) == (five, reason)
    r = _post(url, COMPLETIONS, max_tokens=5, max_completion_tokens=7)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
    r = _post(url, COMPLETIONS, max_tokens=None, max_completion_tokens=0)
    assert r.status_code == 400 and "max_completion_tokens must be an integer >= 1" in r.json()["error"]["message"]


def test_include_usage_is_a_real_boolean(url):
    def usage_chunks(options):
        with httpx.stream("POST", url + COMPLETIONS, json={**BASE[COMPLETIONS], "max_tokens": 4, "stream": True,
                                                           "stream_options": options}, timeout=60) as r:
            if r.status_code != 200:
                return r.status_code, json.loads(r.read())["error"]
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
            return 200, [e for e in events if e.get("usage")]

    assert usage_chunks({"include_usage": True})[1][0]["usage"]["completion_tokens"] >= 1
    assert usage_chunks({"include_usage": False}) == (200, [])
    for bad in ("no", 1, "false"):
        status, error = usage_chunks({"include_usage": bad})
        assert status == 400 and error["param"] == "stream_options.include_usage", error


@pytest.mark.parametrize("fields, param", [
    ({"n": True}, "n"), ({"max_tokens": 5.0}, "max_tokens"), ({"max_tokens": True}, "max_tokens"),
    ({"temperature": True}, "temperature"), ({"seed": "1"}, "seed"), ({"top_p": "0.5"}, "top_p"),
    ({"stream": 1}, "stream"), ({"stop": [1]}, "stop"), ({"prompt": [1, True]}, "prompt"),
    ({"temperature": float("nan")}, "temperature"), ({"top_p": float("inf")}, "top_p"),
])
def test_types_are_strict(url, fields, param):
    r = httpx.post(url + COMPLETIONS, content=json.dumps({**BASE[COMPLETIONS], **fields}),
                   headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@pytest.mark.parametrize("fields, param, words", [
    ({"top_p": 1e-40}, "top_p", "is 0 in float32"),
    ({"top_p": 1e-300}, "top_p", "is 0 in float32"),
    ({"temperature": 1e-40}, "temperature", "overflows float32 logits"),
])
def test_sampling_settings_that_mask_every_token_are_refused(url, fields, param, words):
    r = _post(url, COMPLETIONS, **fields)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"]


def test_the_smallest_top_p_allowed_samples_the_likeliest_token(url):
    from mylm_jax.generate import MIN_TOP_P
    greedy = _post(url, COMPLETIONS).json()["choices"][0]["text"]
    tiny = _post(url, COMPLETIONS, temperature=1.0, top_p=MIN_TOP_P, seed=3)
    assert tiny.status_code == 200 and tiny.json()["choices"][0]["text"] == greedy  # not NUL bytes
