"""Pre-tokenization: the regex that cuts text into chunks before BPE sees it, and the
byte <-> printable-character table of byte-level BPE.

BPE never merges across a chunk boundary, so the split pattern decides what a token can
be: with these patterns a token never spans a letter and a digit, or a word and the space
after it (a word carries its *leading* space: " king" is one chunk).

Presets (all need the `regex` package: `\\p{L}` letters, `\\p{N}` numbers, possessive `?+`):

- `gpt2`: GPT-2's pattern (also HF's ByteLevel pre-tokenizer). Contractions, ` ?letters`,
  ` ?numbers` (any length), ` ?punctuation`, whitespace. Han characters are letters
  (`\\p{L}`), so a run of Han characters up to the next punctuation or space is one chunk,
  together with at most one leading space: "床前明月光，疑是地上霜" -> "床前明月光", "，", "疑是地上霜".
- `gpt4`: GPT-4's cl100k pattern (the default). Like gpt2, but numbers are cut into groups
  of at most 3 digits, contractions are case-insensitive, newlines are kept apart, and a
  letter run may take one leading non-letter, non-digit, non-newline character (a space or
  a punctuation mark). For Han text that glues punctuation to the following clause:
  "床前明月光，疑是地上霜" -> "床前明月光", "，疑是地上霜".
- `zh`: gpt4 with Han characters (`\\p{Han}`) as a class of their own: a run of Han
  characters is always a chunk by itself, never glued to a leading punctuation mark or
  space, and never to Latin letters: "床前明月光，疑是地上霜" -> "床前明月光", "，", "疑是地上霜";
  "用GPT写诗" -> "用", "GPT", "写诗". So "，" and "。" become their own tokens and a Han
  token means the same wherever it stands. A Han run is still a whole clause: BPE learns
  the frequent words inside it.

Any other string is used as a raw regex. Text between matches is kept as chunks of its
own (like HF's `Split(behavior="isolated")`), so no pattern can drop text.
"""

from __future__ import annotations

import regex

from mylm_jax.tokenizer.errors import TokenizerError

PRESET_PATTERNS = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
    "zh": r"""'(?i:[sdmt]|ll|ve|re)|\p{Han}+|[^\r\n\p{L}\p{N}]?+[^\P{L}\p{Han}]+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
}


def resolve_pattern(pattern: str) -> str:
    """A preset name -> its regex; anything else must be a regex that compiles."""
    if pattern in PRESET_PATTERNS:
        return PRESET_PATTERNS[pattern]
    if not isinstance(pattern, str) or not pattern:
        raise TokenizerError(f"pattern must be one of {', '.join(PRESET_PATTERNS)} or a regex, got {pattern!r}")
    if regex.fullmatch(r"[A-Za-z0-9_]+", pattern):
        # A bare word is almost surely a misspelt preset, not a regex matching that literal word.
        raise TokenizerError(f"unknown pattern preset {pattern!r}; choose {', '.join(PRESET_PATTERNS)} or give a regex")
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise TokenizerError(f"pattern is not a valid regex: {e}") from None
    return pattern


def make_splitter(pattern: str):
    """The function text -> list of chunks for a resolved pattern.

    The presets match every character (their last alternatives are punctuation and
    whitespace), so `findall` is exact and fast. A custom regex may leave gaps: those are
    kept as chunks so that decode(encode(text)) == text for any pattern.
    """
    compiled = regex.compile(pattern)
    if pattern in PRESET_PATTERNS.values():
        return compiled.findall

    def split_keeping_gaps(text: str) -> list[str]:
        chunks, end = [], 0
        for m in compiled.finditer(text):
            if m.start() > end:
                chunks.append(text[end:m.start()])
            if m.end() > m.start():
                chunks.append(m.group())
            end = max(end, m.end())
        if end < len(text):
            chunks.append(text[end:])
        return chunks

    return split_keeping_gaps


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: each byte -> a printable character (the byte-level BPE alphabet).

    Printable Latin-1 bytes map to themselves; the other 68 (control bytes, space, 0x7F-0xA0,
    0xAD) map to U+0100 onwards, so a space is 'Ġ' and a newline 'Ċ'. HF's tokenizer.json
    writes tokens in this alphabet.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_UNICODE = bytes_to_unicode()
# The 256 byte values in the order of their characters' code points. HF's BPE trainer numbers
# its alphabet in this order, and ties between equally frequent pairs go to the smaller ids;
# training in this order makes our merges equal HF's (see train.py).
HF_BYTE_ORDER = sorted(range(256), key=lambda b: BYTE_TO_UNICODE[b])
