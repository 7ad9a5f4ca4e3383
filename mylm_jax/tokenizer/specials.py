"""Special tokens: the default set, their roles, and which of them `encode` may recognise.

Special tokens get the last ids of the vocabulary, after the 256 bytes and the merged
tokens, in the order given. They are never produced by BPE: `encode` emits one only where
the caller allows it (`allowed_special`); otherwise "<|endoftext|>" in a text is just 13
characters of plain text, so user-written text can never forge a document boundary or a
chat turn.

| token           | role                                                              |
|-----------------|-------------------------------------------------------------------|
| <|endoftext|>   | end of a document (eos); also separates packed documents          |
| <|bos|>         | beginning of a document or of a rendered conversation (bos)       |
| <|pad|>         | padding; never trained on                                         |
| <|system|>      | starts a system turn                                              |
| <|user|>        | starts a user turn                                                |
| <|assistant|>   | starts an assistant turn                                          |
| <|end|>         | ends any turn (the model learns to emit it after its answer)      |
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mylm_jax.tokenizer.errors import TokenizerError

EOS = "<|endoftext|>"
BOS = "<|bos|>"
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|end|>"
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END_OF_TURN)
DEFAULT_SPECIAL_TOKENS = (EOS, BOS, PAD, SYSTEM, USER, ASSISTANT, END_OF_TURN)


def check_special_tokens(special_tokens: Sequence[str]) -> list[str]:
    """Validate a list of special-token strings (non-empty strings, no duplicates)."""
    if isinstance(special_tokens, str):
        raise TokenizerError("special_tokens must be a list of strings, not one string")
    tokens = list(special_tokens)
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise TokenizerError(f"special tokens must be non-empty strings, got {token!r}")
    duplicates = sorted({t for t in tokens if tokens.count(t) > 1})
    if duplicates:
        raise TokenizerError(f"duplicate special tokens: {', '.join(duplicates)}")
    return tokens


def resolve_allowed(allowed_special: str | Iterable[str], special_tokens: dict[str, int]) -> frozenset[str]:
    """`allowed_special` ("all", or a collection of special-token strings) -> a set of strings."""
    if allowed_special == "all":
        return frozenset(special_tokens)
    if isinstance(allowed_special, str):
        raise TokenizerError(f"allowed_special must be 'all' or a set of special tokens, got {allowed_special!r}")
    allowed = frozenset(allowed_special)
    unknown = sorted(allowed - special_tokens.keys())
    if unknown:
        raise TokenizerError(f"allowed_special names tokens that are not special tokens: {', '.join(unknown)}")
    return allowed
