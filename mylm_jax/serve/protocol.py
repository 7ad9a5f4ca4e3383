"""The OpenAI wire format: request checks with OpenAI-style errors, and the JSON the server sends.

Errors have OpenAI's shape and status:

    400 {"error": {"message": "max_tokens must be an integer >= 1, got 0", "type":
         "invalid_request_error", "param": "max_tokens", "code": null}}
    404 ... "code": "model_not_found"       an unknown model name
    400 ... "code": "context_length_exceeded"   prompt (+ max_tokens) longer than the context

A known field of the wrong type or out of range is a 400 naming it; which fields are used,
ignored or refused is fields.py's table. Types are strict: true is not an integer, "5" is not
a number, and an integer literal too long for Python to convert is kept as its text (so the
field it is in is named, never a 500).
"""

from __future__ import annotations

import json
import time
import uuid

from mylm_jax.generate import sampling_problem

MAX_N = 16         # choices per request
MAX_STOP = 4       # stop strings per request (OpenAI's limit)
# Longer integer literals are kept as text: no field accepts a value that long, and Python
# refuses to convert very long ones (its int max-str-digits limit), which would be a 500.
MAX_INT_DIGITS = 40


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class LongNumber:
    """An integer literal of more than MAX_INT_DIGITS digits, kept as its text: not an int and
    not a str, so every field's type check refuses it."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return f"{self.text[:12]}... (an integer of {len(self.text.lstrip('-'))} digits)"


def _parse_int(text: str):
    return int(text) if len(text) <= MAX_INT_DIGITS else LongNumber(text)


def show(value, limit: int = 80) -> str:
    """A request value as an error message quotes it: JSON, cut to `limit` characters."""
    try:
        text = str(value) if isinstance(value, LongNumber) else json.dumps(value, default=str)
    except RecursionError:
        return "(a value nested too deeply to show)"
    return text if len(text) <= limit else text[:limit] + "..."


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw, parse_int=_parse_int)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None
    except RecursionError:
        raise ApiError(400, "the request body is not valid JSON here: it is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _number(body: dict, key: str, default, low: float, high: float, integer: bool = False, low_open=False):
    value = body.get(key)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    ok_type = type(value) is int or (not integer and type(value) is float)  # not bool, not LongNumber
    in_range = ok_type and (value > low if low_open else value >= low) and value <= high
    if not in_range:
        bounds = f"in ({low}, {high}]" if low_open else (f">= {low}" if high == float("inf") else f"in [{low}, {high}]")
        raise ApiError(400, f"{key} must be {kind} {bounds}, got {show(value)}", key)
    return value


def _boolean(body: dict, key: str, name: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{name or key} must be true or false, got {show(value)}", name or key)
    return value


def _max_tokens(body: dict) -> int | None:
    """max_tokens, or its newer name max_completion_tokens (null: not given); both must agree."""
    given = {key: body[key] for key in ("max_tokens", "max_completion_tokens") if body.get(key) is not None}
    values = [_number(given, key, None, 1, float("inf"), integer=True) for key in given]
    if len(set(values)) > 1:
        raise ApiError(400, f"max_tokens ({values[0]}) and max_completion_tokens ({values[1]}) disagree; "
                            "send one of them", "max_completion_tokens")
    return values[0] if values else None


STREAM_OPTIONS = ("include_usage", "include_obfuscation")  # the second is about padding; nothing to pad here


def _include_usage(body: dict) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise ApiError(400, f"stream_options must be an object, got {show(options)}", "stream_options")
    for key in options:
        if key not in STREAM_OPTIONS:
            raise ApiError(400, f"unrecognized request argument: stream_options.{key}", f"stream_options.{key}",
                           "unknown_parameter")
        _boolean(options, key, f"stream_options.{key}")
    return bool(options.get("include_usage"))


def sampling_fields(body: dict, model_name: str) -> dict:
    """The settings both endpoints share, checked: model, max_tokens, temperature, top_p, n, stop, seed, stream."""
    model = body.get("model", model_name)
    if not isinstance(model, str):
        raise ApiError(400, f"model must be a string, got {show(model)}", "model")
    if model != model_name:
        raise ApiError(404, f"The model `{model[:80]}` does not exist (this server has `{model_name}`)", "model",
                       "model_not_found")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP:
        raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOP} strings, "
                            f"got {show(body.get('stop'))}", "stop")
    fields = {
        "max_tokens": _max_tokens(body),
        "temperature": float(_number(body, "temperature", 1.0, 0, 2)),
        "top_p": float(_number(body, "top_p", 1.0, 0, 1, low_open=True)),
        "n": _number(body, "n", 1, 1, MAX_N, integer=True),
        "seed": _number(body, "seed", None, 0, 2 ** 63 - 1, integer=True),
        "stop": stop,
        "stream": _boolean(body, "stream"),
        "include_usage": _include_usage(body),
    }
    problem = sampling_problem(fields["temperature"], fields["top_p"])  # what float32 cannot sample with
    if problem:
        raise ApiError(400, f"{problem[0]} {problem[1]}", problem[0])
    return fields


def completion_prompt(body: dict) -> str | list[int]:
    """The `prompt` of /v1/completions: a string or a list of token ids (one prompt)."""
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # what some clients send for one prompt
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(type(i) is int for i in prompt):
        return prompt
    raise ApiError(400, "prompt must be a string or a list of token ids (one prompt per request), "
                        f"got {show(prompt)}", "prompt")


MESSAGE_KEYS = ("role", "content", "name")  # name (a participant's) only labels the message: ignored


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
            raise ApiError(400, f"messages[{i}].role must be system, user or assistant, got {show(role)}",
                           f"messages[{i}].role")
        extra = next((key for key, value in m.items() if key not in MESSAGE_KEYS and value is not None), None)
        if extra:
            raise ApiError(400, f"messages[{i}].{extra} is not supported by this server", f"messages[{i}].{extra}",
                           "unsupported_parameter")
        content = m.get("content")
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts, got "
                                f"{show(content)}", f"messages[{i}].content")
        out.append({"role": role, "content": content})
    return out


def check_length(chars: int, context: int, longest_token: int, param: str) -> None:
    """A 400 for a prompt of `chars` characters that cannot fit before it is tokenized: a token
    is at most `longest_token` bytes and a character at least one, so it has at least
    chars / longest_token tokens. A huge prompt is refused at once, not after seconds of BPE."""
    if chars > (context - 1) * longest_token:
        raise ApiError(400, f"the prompt is {chars} characters, at least {-(-chars // longest_token)} tokens; this "
                            f"model's context is {context} tokens, so a prompt may be at most {context - 1} tokens "
                            "(one is left for the answer)", param, "context_length_exceeded")


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
