"""The chat template: a conversation -> (ids, loss_mask), and a visualiser.

Rendering (no newlines or spaces are added; content is encoded as plain text, so a
"<|end|>" typed by a user is text, not a turn boundary):

    <|bos|>                                   mask 0   (if the tokenizer has <|bos|>)
    <|system|>    system content    <|end|>   mask 0 0...0 0
    <|user|>      user content      <|end|>   mask 0 0...0 0
    <|assistant|> assistant content <|end|>   mask 0 1...1 1
    ...one line per message, in order

The loss mask is 1 exactly on assistant content and the <|end|> that closes it: SFT
trains the model to write answers and to stop, never to predict the prompt. To make the
model answer at inference, render the conversation so far and append <|assistant|>
(`fit_history` does that, dropping the oldest turns that no longer fit the context).
`jinja_template` is the same template for Hugging Face's `apply_chat_template`.
"""

from __future__ import annotations

import json

from mylm_jax.tokenizer import specials as sp
from mylm_jax.tokenizer.errors import TokenizerError

TRAINED_START, TRAINED_END = "[[", "]]"                 # plain-text markers
ANSI_TRAINED, ANSI_PROMPT, ANSI_RESET = "\033[42;30m", "\033[2m", "\033[0m"


def render(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Render `messages` ({"role": "system"|"user"|"assistant", "content": str}) with the
    template above; return the token ids and the loss mask (same length)."""
    if not tokenizer.has_chat_tokens:
        raise TokenizerError(f"this tokenizer has no chat tokens (needs {', '.join(sp.CHAT_TOKENS)})")
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TokenizerError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    end_of_turn = tokenizer.end_of_turn_id
    ids, mask = [], []
    if sp.BOS in tokenizer.special_tokens:
        ids.append(tokenizer.bos_id)
        mask.append(0)
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TokenizerError(f"message {i}: expected a dict with 'role' and 'content', got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in sp.ROLE_TOKENS:
            raise TokenizerError(f"message {i}: unknown role {role!r} (expected system, user or assistant)")
        if not isinstance(content, str):
            raise TokenizerError(f"message {i}: content must be a str, got {type(content).__name__}")
        body = tokenizer.encode(content)
        trained = 1 if role == "assistant" else 0
        ids += [tokenizer.special_tokens[sp.ROLE_TOKENS[role]], *body, end_of_turn]
        mask += [0] + [trained] * (len(body) + 1)
    return ids, mask


def jinja_template(tokenizer) -> str:
    """`render`'s template (+ the "<|assistant|>" that makes the model answer) as a Jinja
    template, for Hugging Face's `tokenizer.apply_chat_template(messages, add_generation_prompt=...)`:
    it writes the text whose encoding is `render`'s ids. One difference: HF recognises
    special-token strings inside the content ("<|end|>" typed by a user), `render` encodes
    content as plain text (tests/test_hf_interop.py compares the ids)."""
    if not tokenizer.has_chat_tokens:
        raise TokenizerError(f"this tokenizer has no chat tokens (needs {', '.join(sp.CHAT_TOKENS)})")
    bos = sp.BOS if sp.BOS in tokenizer.special_tokens else ""
    roles = json.dumps(sp.ROLE_TOKENS)  # a JSON object is a Jinja dict literal
    return ("{%- set roles = " + roles + " -%}{{- '" + bos + "' -}}"
            "{%- for message in messages -%}"
            "{%- if message['role'] not in roles -%}"
            "{{- raise_exception('unknown role ' ~ message['role'] ~ ' (expected system, user or assistant)') -}}"
            "{%- endif -%}"
            "{%- if message['content'] is not string -%}{{- raise_exception('content must be a string') -}}{%- endif -%}"
            "{{- roles[message['role']] + message['content'] + '" + sp.END_OF_TURN + "' -}}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- '" + sp.ASSISTANT + "' -}}{%- endif -%}")


def fit_history(tok, messages: list[dict], room: int) -> tuple[list[int], list[dict]]:
    """Render the conversation + "<|assistant|>", dropping the oldest turns (never the system
    message or the last user turn) until it fits in `room` tokens."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    while True:
        ids, _ = tok.render(system + turns)
        ids = ids + [tok.special_tokens[sp.ASSISTANT]]
        if len(ids) <= room or len(turns) <= 1:
            return ids[-room:], system + turns
        turns = turns[2:] if len(turns) > 2 else turns[1:]


def visualize(tokenizer, ids, loss_mask, color: bool = False) -> str:
    """Decode `ids`, marking the trained-on runs (mask 1) with [[ ]] (or, with
    color=True, a green background and the rest dimmed, for a terminal)."""
    ids, loss_mask = list(ids), list(loss_mask)
    if len(ids) != len(loss_mask):
        raise TokenizerError(f"ids and loss_mask differ in length ({len(ids)} vs {len(loss_mask)})")
    pieces, start = [], 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or loss_mask[end] != loss_mask[start]:
            text = tokenizer.decode(ids[start:end])  # a whole run at once: characters stay whole
            if color:
                pieces.append((ANSI_TRAINED if loss_mask[start] else ANSI_PROMPT) + text + ANSI_RESET)
            else:
                pieces.append(TRAINED_START + text + TRAINED_END if loss_mask[start] else text)
            start = end
    return "".join(pieces)
