"""The OpenAI wire format: request checks with OpenAI-style errors, and the JSON the server sends.

Errors have OpenAI's shape and status:

    400 {"error": {"message": "max_tokens must be an integer >= 1, got 0", "type":
         "invalid_request_error", "param": "max_tokens", "code": null}}
    404 ... "code": "model_not_found"       an unknown model name
    400 ... "code": "context_length_exceeded"   prompt (+ max_tokens) longer than the context

Fields that OpenAI defines and MyLM does not use (user, logprobs: null, ...) are ignored, as
are unknown ones; a known field of the wrong type or out of range is a 400 naming it.
"""

from __future__ import annotations

import json
import time
import uuid

MAX_N = 16         # choices per request
MAX_STOP = 4       # stop strings per request (OpenAI's limit)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _number(body: dict, key: str, default, low: float, high: float, integer: bool = False, low_open=False):
    value = body.get(key)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    in_range = ok_type and not isinstance(value, bool) and (value > low if low_open else value >= low) and value <= high
    if not in_range:
        bounds = f"in ({low}, {high}]" if low_open else (f">= {low}" if high == float("inf") else f"in [{low}, {high}]")
        raise ApiError(400, f"{key} must be {kind} {bounds}, got {json.dumps(value)}", key)
    return value


def _boolean(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{key} must be true or false, got {json.dumps(value)}", key)
    return value


def sampling_fields(body: dict, model_name: str) -> dict:
    """The settings both endpoints share, checked: model, max_tokens, temperature, top_p, n, stop, seed, stream."""
    model = body.get("model", model_name)
    if not isinstance(model, str):
        raise ApiError(400, f"model must be a string, got {json.dumps(model)}", "model")
    if model != model_name:
        raise ApiError(404, f"The model `{model}` does not exist (this server has `{model_name}`)", "model",
                       "model_not_found")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP:
        raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOP} strings, "
                            f"got {json.dumps(body.get('stop'))}", "stop")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, f"stream_options must be an object, got {json.dumps(options)}", "stream_options")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return {
        "max_tokens": _number({"max_tokens": max_tokens}, "max_tokens", None, 1, float("inf"), integer=True),
        "temperature": float(_number(body, "temperature", 1.0, 0, 2)),
        "top_p": float(_number(body, "top_p", 1.0, 0, 1, low_open=True)),
        "n": _number(body, "n", 1, 1, MAX_N, integer=True),
        "seed": _number(body, "seed", None, 0, 2 ** 63 - 1, integer=True),
        "stop": stop,
        "stream": _boolean(body, "stream"),
        "include_usage": bool((options or {}).get("include_usage")),
    }


def completion_prompt(body: dict) -> str | list[int]:
    """The `prompt` of /v1/completions: a string or a list of token ids (one prompt)."""
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # what some clients send for one prompt
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
        return prompt
    raise ApiError(400, "prompt must be a string or a list of token ids (one prompt per request), "
                        f"got {json.dumps(prompt)[:80]}", "prompt")


def chat_messages(body: dict) -> list[dict]:
    """`messages` as [{"role", "content": str}] (content parts of type text are joined)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role == "developer":
            role = "system"  # OpenAI's newer name for it
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{i}].role must be system, user or assistant, got {json.dumps(role)}",
                           f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string, got {json.dumps(content)[:80]}",
                           f"messages[{i}].content")
        out.append({"role": role, "content": content})
    return out


def fit_context(prompt_len: int, max_tokens: int | None, context: int, param: str) -> int:
    """The number of new tokens: max_tokens, or all the room left; a 400 when it does not fit."""
    if prompt_len >= context:
        raise ApiError(400, f"the prompt is {prompt_len} tokens; this model's context is {context} tokens, so a "
                            f"prompt may be at most {context - 1} tokens (one is left for the answer)",
                       param, "context_length_exceeded")
    room = context - prompt_len
    if max_tokens is not None and max_tokens > room:
        raise ApiError(400, f"max_tokens is {max_tokens}, but the prompt's {prompt_len} tokens leave room for at "
                            f"most {room} in this model's context of {context} tokens", "max_tokens",
                       "context_length_exceeded")
    return room if max_tokens is None else max_tokens


class Reply:
    """The JSON of one response (and its stream chunks): id, created, model, object kinds."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _envelope(self, obj: str, choices: list, usage: dict | None = None) -> dict:
        out = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out

    def whole(self, texts: list[str], reasons: list[str], usage: dict) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]
            return self._envelope("chat.completion", choices, usage)
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return self._envelope("text_completion", choices, usage)

    def chunk(self, choice: int, text: str | None, reason: str | None = None, role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            body = {"index": choice, "delta": delta, "logprobs": None, "finish_reason": reason}
            return self._envelope("chat.completion.chunk", [body])
        return self._envelope("text_completion", [{"index": choice, "text": text or "", "logprobs": None,
                                                   "finish_reason": reason}])

    def usage_chunk(self, usage: dict) -> dict:
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [], usage)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(data: dict | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
