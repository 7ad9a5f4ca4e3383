"""Encoding with learnt merges: the vocabulary they define, BPE on one chunk, the cache,
and batch encoding in worker processes.

Encoding a chunk replays training on it: start from its UTF-8 bytes and, while some
adjacent pair is a learnt merge, apply the merge of lowest rank (learnt earliest) at its
leftmost position. Because a merge's inputs are always learnt before it, this applies
merges in the order training did and gives the tokens training gave that chunk (and the
ones HF's BPE model gives).

Speed, in pure Python, in three layers:
1. A cache maps each string already encoded (a chunk, or a piece of one) to its ids: text
   repeats chunks, so most chunks are looked up, not merged.
2. A new chunk is first cut at the character boundaries that no token of the vocabulary
   can span (pieces.py, which also proves that this gives exactly the same ids). A Chinese
   clause that occurs once becomes its characters (or the few words the vocabulary
   knows), and those repeat: they come from the cache, and BPE runs on few, short pieces.
3. BPE itself: `ranks[i]` holds the rank of the pair at positions (i, i+1);
   `min(ranks)` and `ranks.index` find the next merge in C, and after a merge only the two
   pairs around it change, so only those two ranks are looked up again.
"""

from __future__ import annotations

import multiprocessing
import sys
from array import array

from mylm_jax.tokenizer.errors import TokenizerError
from mylm_jax.tokenizer.ids import ID_BITS
from mylm_jax.tokenizer.pieces import ChunkCutter

NO_MERGE = 1 << 62  # rank of a pair that is not a merge (larger than any real rank)
CACHE_LIMIT = 1_000_000  # chunks; the cache is cleared when full, bounding its memory


def build_vocab(merges: list[tuple[int, int]]) -> tuple[list[bytes], list[int]]:
    """Merges -> (bytes of every token id, the id each merge produces).

    Ids 0-255 are the bytes; each merge makes the token bytes(left) + bytes(right), a new id
    unless those bytes already are a token (then that id, as in training).
    """
    token_bytes = [bytes([b]) for b in range(256)]
    id_of_bytes = {tb: i for i, tb in enumerate(token_bytes)}
    merge_ids = []
    for rank, (a, b) in enumerate(merges):
        if not (0 <= a < len(token_bytes) and 0 <= b < len(token_bytes)):
            raise TokenizerError(f"merge {rank} ({a}, {b}) uses a token id that no earlier merge defines")
        merged = token_bytes[a] + token_bytes[b]
        if merged not in id_of_bytes:
            id_of_bytes[merged] = len(token_bytes)
            token_bytes.append(merged)
        merge_ids.append(id_of_bytes[merged])
    return token_bytes, merge_ids


class ChunkEncoder:
    """Chunk (a string without special tokens) -> token ids, by rank-ordered BPE, cached."""

    def __init__(self, merges: list[tuple[int, int]], merge_ids: list[int], token_bytes: list[bytes]):
        self.rank_of_pair: dict[int, int] = {}
        for rank, (a, b) in enumerate(merges):
            self.rank_of_pair.setdefault(a << ID_BITS | b, rank)
        self.merge_ids, self.token_bytes = merge_ids, token_bytes
        self.cache: dict[str, list[int]] = {}  # chunk or piece -> ids
        self._cutter: ChunkCutter | None = None

    @property
    def cutter(self) -> ChunkCutter:
        """Built at first need: its index of every split of every token takes ~1 s for a
        50k vocabulary, and text whose new chunks are all ASCII never needs it."""
        if self._cutter is None:
            self._cutter = ChunkCutter(self.token_bytes)
        return self._cutter

    def cut(self, chunk: str) -> list[str]:
        """A new chunk's pieces (pieces.py; exact either way). Plain ASCII words go whole:
        cutting them costs more than it saves, the BPE on a word being short."""
        return self.cutter.cut(chunk) if len(chunk) > 1 and not chunk.isascii() else [chunk]

    def encode_chunks(self, chunks: list[str], out: list[int]) -> None:
        """Append the ids of every chunk to `out`."""
        cache = self.cache
        for chunk in chunks:
            ids = cache.get(chunk)
            if ids is None:
                ids = self.encode_new(chunk)
            out.extend(ids)

    def encode_new(self, chunk: str) -> list[int]:
        """Encode a chunk that is not cached (and cache it): cut it where no merge can reach
        across (pieces.py), take each piece from the cache or run BPE on it, concatenate.
        Exactly `bpe(chunk's bytes)` (the module docstring of pieces.py says why)."""
        cache = self.cache
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        pieces = self.cut(chunk)
        if len(pieces) == 1:
            ids = self.bpe(list(chunk.encode("utf-8")))
        else:
            ids = []
            for piece in pieces:
                piece_ids = cache.get(piece)
                if piece_ids is None:
                    piece_ids = cache[piece] = self.bpe(list(piece.encode("utf-8")))
                ids += piece_ids
        cache[chunk] = ids
        return ids

    def bpe(self, ids: list[int]) -> list[int]:
        """Apply merges to a list of byte ids, lowest rank first, leftmost on ties."""
        get_rank, merge_ids = self.rank_of_pair.get, self.merge_ids
        # A sentinel id (-1) at both ends: pairs with it are never merges (their keys are
        # negative), so the neighbour updates below need no bounds checks.
        ids = [-1, *ids, -1]
        ranks = [get_rank(a << ID_BITS | b, NO_MERGE) for a, b in zip(ids, ids[1:])]
        while True:
            rank = min(ranks)
            if rank == NO_MERGE:
                return ids[1:-1]
            i = ranks.index(rank)
            new = ids[i] = merge_ids[rank]
            del ids[i + 1]
            del ranks[i]
            # Only the pairs (left neighbour, new) and (new, right neighbour) changed.
            ranks[i - 1] = get_rank(ids[i - 1] << ID_BITS | new, NO_MERGE)
            ranks[i] = get_rank(new << ID_BITS | ids[i + 1], NO_MERGE)


# --- batch encoding in worker processes ------------------------------------------------

_worker_tokenizer = None


def _init_worker(tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_slice(args) -> tuple[array, array]:
    """Encode a slice of texts; return all ids flat and each text's length: two arrays
    pickle as raw bytes, far cheaper to send back than a list of lists of ints."""
    texts, allowed_special = args
    flat, lengths = array("l"), array("l")
    for text in texts:
        ids = _worker_tokenizer.encode(text, allowed_special)
        flat.extend(ids)
        lengths.append(len(ids))
    return flat, lengths


def encode_in_processes(tokenizer, texts: list[str], allowed_special, processes: int) -> list[list[int]]:
    """Encode `texts` in `processes` worker processes, in order.

    Texts go in contiguous slices (16 per worker, handed out as workers free up, to
    balance the load) so that each worker's cache sees related text. Workers are forked where possible (no pickling of
    the tokenizer, the parent's warm cache is shared), except when jax is loaded: forking
    a multithreaded process can deadlock, so then they are spawned.
    """
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() and "jax" not in sys.modules \
        else "spawn"
    n_slices = min(len(texts), processes * 16)
    bounds = [len(texts) * i // n_slices for i in range(n_slices + 1)]
    slices = [(texts[lo:hi], allowed_special) for lo, hi in zip(bounds, bounds[1:])]
    with multiprocessing.get_context(method).Pool(processes, _init_worker, (tokenizer,)) as pool:
        results = pool.map(_encode_slice, slices, chunksize=1)
    encoded = []
    for flat, lengths in results:
        start = 0
        for n in lengths:
            encoded.append(flat[start:start + n].tolist())
            start += n
    return encoded
