"""The `Tokenizer`: encode / decode text, special tokens, save / load, identity.

A tokenizer is fully defined by three things: the split pattern, the merge list (each
merge a pair of token ids, in the order learnt) and the special tokens (in order). The
vocabulary follows from them (encode.build_vocab):

    ids 0..255            the bytes (id b is the byte b)
    ids 256..256+M-1      merged tokens, in the order training created them
    the last ids          the special tokens, in the order given

Saved format (JSON, `save` / `load`):

    {"format": "mylm-bpe-tokenizer", "version": 1,
     "pattern": "<regex>", "pattern_name": "gpt4" | null,
     "merges": [[left_id, right_id], ...],
     "special_tokens": {"<|endoftext|>": id, ...},
     "vocab_size": N, "fingerprint": "<sha256 hex>"}

`fingerprint()` is a sha256 of (pattern, merges, special tokens): the identity that token
shards and checkpoints record, so data encoded by one tokenizer is never read with another.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import regex

from mylm_jax.fileio import atomic_write
from mylm_jax.tokenizer import chat, hf_export
from mylm_jax.tokenizer import specials as sp
from mylm_jax.tokenizer.encode import ChunkEncoder, build_vocab, encode_in_processes
from mylm_jax.tokenizer.errors import TokenizerError
from mylm_jax.tokenizer.patterns import PRESET_PATTERNS, make_splitter, resolve_pattern

FORMAT = "mylm-bpe-tokenizer"
VERSION = 1
PARALLEL_MIN_CHARS = 1 << 18  # below this much text, worker start-up costs more than it saves


class Tokenizer:
    """Byte-level BPE tokenizer. Build one with `train_tokenizer` or `Tokenizer.load`."""

    def __init__(self, merges: Sequence[tuple[int, int]], special_tokens: Sequence[str] = sp.DEFAULT_SPECIAL_TOKENS,
                 pattern: str = "gpt4"):
        self.pattern = resolve_pattern(pattern)
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.token_bytes, merge_ids = build_vocab(self.merges)  # id -> bytes, for ids below the specials
        names = sp.check_special_tokens(special_tokens)
        first_special = len(self.token_bytes)
        self.special_tokens: dict[str, int] = {name: first_special + i for i, name in enumerate(names)}
        self._decode_table = self.token_bytes + [name.encode("utf-8") for name in names]
        self._split = make_splitter(self.pattern)
        self._chunks = ChunkEncoder(self.merges, merge_ids, self.token_bytes)
        self._special_splitters: dict[frozenset, regex.Pattern] = {}

    # --- identity ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._decode_table)

    @property
    def pattern_name(self) -> str | None:
        return next((name for name, p in PRESET_PATTERNS.items() if p == self.pattern), None)

    def fingerprint(self) -> str:
        canonical = json.dumps({"kind": "byte-level-bpe", "pattern": self.pattern, "merges": self.merges,
                                "special_tokens": list(self.special_tokens)}, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, pattern={self.pattern_name or 'custom'}, "
                f"special_tokens={len(self.special_tokens)})")

    def __reduce__(self):  # pickle (for spawned workers) the definition, not the cache
        return (Tokenizer, (self.merges, list(self.special_tokens), self.pattern))

    # --- special tokens ------------------------------------------------------------------

    def _special_id(self, token: str) -> int:
        if token not in self.special_tokens:
            raise TokenizerError(f"this tokenizer has no {token} special token")
        return self.special_tokens[token]

    @property
    def eos_id(self) -> int:
        return self._special_id(sp.EOS)

    @property
    def bos_id(self) -> int:
        return self._special_id(sp.BOS)

    @property
    def pad_id(self) -> int:
        return self._special_id(sp.PAD)

    @property
    def end_of_turn_id(self) -> int:
        return self._special_id(sp.END_OF_TURN)

    @property
    def has_chat_tokens(self) -> bool:
        return all(token in self.special_tokens for token in sp.CHAT_TOKENS)

    # --- encode / decode -----------------------------------------------------------------

    def encode(self, text: str, allowed_special: str | Iterable[str] = ()) -> list[int]:
        """Text -> token ids. Special tokens are recognised only if in `allowed_special`
        ("all" or a set of special-token strings); elsewhere they are plain text."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects a str, got {type(text).__name__}")
        ids: list[int] = []
        allowed = sp.resolve_allowed(allowed_special, self.special_tokens) if allowed_special else ()
        if not allowed:
            self._chunks.encode_chunks(self._split(text), ids)
            return ids
        # A capturing split puts the special tokens at the odd positions.
        for i, part in enumerate(self._special_splitter(allowed).split(text)):
            if i % 2:
                ids.append(self.special_tokens[part])
            elif part:
                self._chunks.encode_chunks(self._split(part), ids)
        return ids

    def _special_splitter(self, allowed: frozenset) -> regex.Pattern:
        splitter = self._special_splitters.get(allowed)
        if splitter is None:
            # Longest first, so a special token that contains another wins (as in HF).
            alternatives = "|".join(regex.escape(t) for t in sorted(allowed, key=len, reverse=True))
            splitter = self._special_splitters[allowed] = regex.compile(f"({alternatives})")
        return splitter

    def encode_batch(self, texts: Sequence[str], allowed_special: str | Iterable[str] = (),
                     processes: int | None = None) -> list[list[int]]:
        """Encode many texts; in `processes` worker processes (default: one per CPU) when
        there is enough text to pay for starting them."""
        texts = list(texts)
        if allowed_special:
            sp.resolve_allowed(allowed_special, self.special_tokens)  # fail here, not in a worker
        processes = (os.cpu_count() or 1) if processes is None else processes
        if processes > 1 and len(texts) >= 2 * processes \
                and sum(len(t) for t in texts if isinstance(t, str)) >= PARALLEL_MIN_CHARS:
            return encode_in_processes(self, texts, allowed_special, processes)
        return [self.encode(text, allowed_special) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text. Any id sequence decodes: byte sequences that are not valid
        UTF-8 (a character cut between tokens) become U+FFFD."""
        table = self._decode_table
        try:
            ids = [int(i) for i in ids]
        except (TypeError, ValueError):
            raise TokenizerError("decode expects a sequence of int token ids") from None
        if ids and (min(ids) < 0 or max(ids) >= len(table)):
            bad = next(i for i in ids if not 0 <= i < len(table))
            raise TokenizerError(f"token id {bad} is out of range for vocab_size {len(table)}")
        return b"".join([table[i] for i in ids]).decode("utf-8", errors="replace")

    def id_to_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (a special token: its UTF-8 string)."""
        return self._decode_table[token_id]

    def prime_cache(self, chunk_ids: dict[str, list[int]]) -> None:
        """Seed the encode cache with known chunk -> ids (training's final chunks)."""
        self._chunks.cache.update(chunk_ids)

    # --- chat ----------------------------------------------------------------------------

    def render(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """A conversation -> (ids, loss_mask); see chat.py for the exact template."""
        return chat.render(self, messages)

    def visualize(self, ids: Sequence[int], loss_mask: Sequence[int], color: bool = False) -> str:
        """The decoded conversation with the trained-on (loss_mask == 1) parts marked."""
        return chat.visualize(self, ids, loss_mask, color)

    # --- files ---------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "pattern": self.pattern, "pattern_name": self.pattern_name,
                "merges": [list(m) for m in self.merges], "special_tokens": self.special_tokens,
                "vocab_size": self.vocab_size, "fingerprint": self.fingerprint()}

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer file atomically (fileio.py): a full disk or Ctrl-C leaves the
        old file, if any, whole, never a truncated one under `path`."""
        write_whole(path, json.dumps(self.to_dict(), ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        path = Path(path)
        expected = f"expected a MyLM tokenizer file (JSON, format '{FORMAT}', version {VERSION})"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TokenizerError(f"tokenizer file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); {expected}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{path}: cannot read ({type(e).__name__}); {expected}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TokenizerError(f"{path}: not a MyLM tokenizer file; {expected}")
        if data.get("version") != VERSION:
            raise TokenizerError(f"{path}: format version {data.get('version')!r} is not supported; {expected}")
        merges, specials, pattern = data.get("merges"), data.get("special_tokens"), data.get("pattern")
        if not (isinstance(merges, list) and all(isinstance(m, list) and len(m) == 2
                                                  and all(type(x) is int for x in m) for m in merges)):
            raise TokenizerError(f"{path}: 'merges' must be a list of [left_id, right_id] int pairs")
        if not isinstance(specials, dict) or not isinstance(pattern, str):
            raise TokenizerError(f"{path}: 'special_tokens' must be an object and 'pattern' a string")
        try:
            tokenizer = cls(merges, sorted(specials, key=lambda name: specials[name]), pattern)
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from None
        if tokenizer.special_tokens != specials or data.get("fingerprint") != tokenizer.fingerprint():
            raise TokenizerError(f"{path}: special-token ids or fingerprint do not match the merges "
                                 f"(the file was edited or is corrupt)")
        return tokenizer

    def export_hf(self, path: str | os.PathLike) -> None:
        """Write a Hugging Face `tokenizer.json` that encodes exactly as this tokenizer does."""
        write_whole(path, json.dumps(hf_export.to_hf_json(self), ensure_ascii=False, indent=1) + "\n")


def write_whole(path: str | os.PathLike, text: str) -> None:
    """atomic_write, with a failure (no space, no permission, a directory in the way) as a
    one-line TokenizerError that names the file."""
    try:
        atomic_write(path, text)
    except OSError as e:
        raise TokenizerError(f"{path}: cannot write ({e.strerror or e})") from None
