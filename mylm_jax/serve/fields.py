"""Which request fields the server uses, which it may ignore, and which it refuses.

A field that asks for something MyLM does not do must never get a 200 that quietly ignores
it, so every field of a request body is one of:

    used        the endpoint's own fields (`prompt` or `messages`) and the sampling fields
                both endpoints share; checked by protocol.py
    harmless    an OpenAI field whose value asks for nothing here (`logprobs: null`,
                `echo: false`, `frequency_penalty: 0`, `tools: []`, ...) or that only
                labels the request (`user`, `metadata`): ignored
    refused     anything else: a 400 naming the field, OpenAI's fields with "is not
                supported" (`logprobs: 5`, `best_of: 3`, `tools: [...]`), other names with
                "unrecognized request argument"

docs/serving.md lists the three; a field that becomes supported moves from HARMLESS /
UNSUPPORTED to USED.
"""

from __future__ import annotations

from mylm_jax.serve.protocol import ApiError, show

SHARED = frozenset({"model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed",
                    "stream", "stream_options"})
USED = {"completions": SHARED | {"prompt"}, "chat": SHARED | {"messages"}}


def _absent(value) -> bool:
    return value is None


def _false(value) -> bool:
    return value is None or value is False


def _zero(value) -> bool:
    return value is None or (type(value) in (int, float) and value == 0)


def _empty(value) -> bool:
    return value is None or value == [] or value == {}


def _anything(value) -> bool:
    return True


# field -> the test its value must pass to be ignored. A value that fails it is refused.
HARMLESS = {
    "user": _anything, "metadata": _anything, "store": _anything, "service_tier": _anything,
    "prompt_cache_key": _anything, "safety_identifier": _anything, "parallel_tool_calls": _anything,
    "logprobs": _false, "echo": _false, "top_logprobs": _zero,
    "frequency_penalty": _zero, "presence_penalty": _zero,
    "best_of": lambda v: v is None or (type(v) is int and v == 1),
    "logit_bias": _empty, "tools": _empty, "functions": _empty,
    "suffix": lambda v: v is None or v == "",
    "tool_choice": lambda v: v is None or v in ("none", "auto"),  # with no tools, "auto" is "none"
    "function_call": lambda v: v is None or v in ("none", "auto"),
    "response_format": lambda v: v is None or v == {"type": "text"},
    "modalities": lambda v: v is None or v == ["text"],
}
# OpenAI's other request fields: always refused, named as OpenAI's, not as unknown words.
UNSUPPORTED = frozenset({"audio", "prediction", "reasoning_effort", "verbosity", "web_search_options"})


def check_fields(body: dict, endpoint: str) -> None:
    """A 400 for the first field of `body` that is neither used nor harmless (see the docstring)."""
    used = USED[endpoint]
    for key, value in body.items():
        if key in used or (key in HARMLESS and HARMLESS[key](value)):
            continue
        if key in HARMLESS or key in UNSUPPORTED:
            raise ApiError(400, f"{key} is not supported by this server (got {show(value)}); "
                                "docs/serving.md lists the fields it takes", key, "unsupported_parameter")
        other = next((name for name, fields in USED.items() if key in fields), None)
        where = f" ({key} belongs to /v1/{'chat/' if other == 'chat' else ''}completions)" if other else ""
        raise ApiError(400, f"unrecognized request argument: {key}{where}", key, "unknown_parameter")
