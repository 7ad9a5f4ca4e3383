"""Encoding documents with Hugging Face `tokenizers` doing the merges: `mylm data prepare
--encoder hf` (`--encoder python`, `Tokenizer.encode`, is the reference and the default).

The ids are the pure path's, `tokenizer.encode(text)` with no special token recognised,
by construction; per batch of documents:

    text -> chunks        our own split pattern (patterns.make_splitter, the very function
                          Tokenizer.encode uses), so "<|endoftext|>" typed in a document is
                          plain text, as in the pure path (HF would turn it into the special
                          token: the exported tokenizer.json lists the specials as added
                          tokens, which HF always recognises)
    chunk -> ids          a cache of the chunks already seen; a new non-ASCII chunk is cut
                          where no merge can reach across (tokenizer/pieces.py, as encode
                          does: exact), and the new chunks and pieces, deduplicated, go to
                          the BPE model of the exported tokenizer.json (hf_export.py; added
                          tokens and split removed) in one `encode_batch` call, which HF
                          spreads over its threads. tests/test_tokenizer_hf.py proves that
                          model gives our ids; tests/test_prepare_hf.py that the shards match

Why not hand HF whole documents: on the 2-core development machine, HF's `encode_batch`
on whole documents ran at 0.7-1.4 MB/s, slower than the pure path: its regex split is
slow on long strings and every token of an `Encoding` carries bookkeeping (offsets,
token strings), while most chunks of a text repeat and come from a cache for free.

Why it is not the default (`auto` = python): with the cache and the cutting, little BPE is
left for HF to do, and the pure path's single pass over the chunks is cheaper than this
path's two (new chunks first, then the ids). Measured on 2 cores (2026-12-01, docs/data.md),
the pure path was faster in one process on English, Chinese and 30 MB of Python source
(vocabularies of 4,096 and 50,000), and the two were even in two processes. This
path stays as a proven-equal alternative, for corpora where rare long chunks make BPE
the bottleneck.
"""

from __future__ import annotations

import importlib.util
import json
from itertools import chain

import numpy as np

from mylm_jax.data.errors import DataError
from mylm_jax.tokenizer.hf_export import to_hf_json
from mylm_jax.tokenizer.patterns import make_splitter

ENCODERS = ("auto", "hf", "python")
CACHE_LIMIT = 1_000_000  # chunks; cleared when full, bounding the memory (as encode.py's cache)
GROUP_CHUNKS = 2048  # new chunks per HF input


def hf_available() -> bool:
    return importlib.util.find_spec("tokenizers") is not None


def resolve_encoder(name: str) -> str:
    """'auto' -> 'python' (the faster: see the module docstring); checks the name."""
    if name not in ENCODERS:
        raise DataError(f"encoder must be one of {', '.join(ENCODERS)}, got {name!r}")
    if name == "auto":
        return "python"
    if name == "hf" and not hf_available():
        raise DataError("--encoder hf needs the `tokenizers` package (pip install tokenizers, "
                        "or the dev extra); --encoder python needs nothing")
    return name


class HFEncoder:
    """Documents -> token ids, equal to `tokenizer.encode(text)` for each (+ a tail such as EOS)."""

    def __init__(self, tokenizer):
        from tokenizers import Tokenizer as HFTokenizer

        spec = to_hf_json(tokenizer)
        spec["added_tokens"] = []  # special tokens are never recognised in document text
        # Chunks arrive already split (by our pattern); HF only maps bytes and merges.
        spec["pre_tokenizer"] = next(p for p in spec["pre_tokenizer"]["pretokenizers"] if p["type"] == "ByteLevel")
        self.hf = HFTokenizer.from_str(json.dumps(spec))
        self.split = make_splitter(tokenizer.pattern)
        self.cache: dict[str, list[int]] = {}
        self.cut = tokenizer._chunks.cut  # the pure path's cutting (built at first need)

    def encode_batch(self, texts: list[str], tail: list[int] = (), dtype=np.int64) -> list[np.ndarray]:
        """Each text's ids, + `tail` (e.g. [EOS]), as an array of `dtype`."""
        split, cache = self.split, self.cache
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        chunked = [split(t) for t in texts]
        # (chain/map keep the per-chunk loops in C: most chunks come from the cache, so these
        # loops, not the merges, are the encoder's work)
        new = [c for c in set(chain.from_iterable(chunked)) if c not in cache]  # any order
        if new:
            # Like Tokenizer.encode: cut a new chunk where no merge can reach across
            # (tokenizer/pieces.py: exact either way), so a rare chunk (a Chinese clause) is
            # mostly pieces seen before.
            cut = {c: self.cut(c) for c in new}
            self._merge({p for pieces in cut.values() for p in pieces if p not in cache})
            for c, pieces in cut.items():
                if len(pieces) > 1:
                    ids: list[int] = []
                    for piece in pieces:
                        ids += cache[piece]
                    cache[c] = ids
        out, ids_of = [], cache.__getitem__
        for chunks in chunked:
            ids = list(chain.from_iterable(map(ids_of, chunks)))
            ids += tail
            out.append(np.asarray(ids, dtype))
        return out

    def _merge(self, new: set[str]) -> None:
        """Cache the ids of `new` strings (chunks or pieces of one), merged by HF."""
        cache, new = self.cache, list(new)
        if new:
            # The new chunks as pre-split "words", in groups (one HF Encoding each: far cheaper
            # than one per chunk) that HF merges on its threads; word_ids says whose each id is.
            groups = [new[i:i + GROUP_CHUNKS] for i in range(0, len(new), GROUP_CHUNKS)]
            for group, encoding in zip(groups, self.hf.encode_batch(groups, is_pretokenized=True,
                                                                     add_special_tokens=False)):
                ids_of = [[] for _ in group]
                for token_id, word in zip(encoding.ids, encoding.word_ids):
                    ids_of[word].append(token_id)
                cache.update(zip(group, ids_of))
