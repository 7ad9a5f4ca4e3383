"""Training byte-level BPE: learn the merges that shrink the corpus most, one at a time.

The algorithm (Sennrich et al. 2016, on bytes as in GPT-2):

1. Pre-split every text with the pattern (patterns.py) and count each distinct chunk
   once: the corpus becomes {chunk: frequency}. A chunk is a list of token ids, at first
   its UTF-8 bytes. Real text repeats chunks ("the", " and"), so this is far smaller than
   the text.
2. Count every adjacent pair (a, b) over all chunks, weighted by the chunk's frequency:
   count(a, b) = sum over chunks c of freq(c) * #occurrences of (a, b) in c.
3. Repeat until the vocabulary is full: take the most frequent pair, give it a new id
   (a new token whose bytes are bytes(a) + bytes(b)), and replace its occurrences, left
   to right, in every chunk that holds it.

A merge only changes counts around each place it rewrites: ... p a b n ... becomes
... p ab n ..., so count(p,a) and count(b,n) drop by freq and count(p,ab) and count(ab,n)
rise by freq. Nothing else changes. So instead of recounting the corpus after every
merge (O(corpus) per merge), we keep
  - `pair_counts`: the current count of every pair,
  - `where`:  for every pair, the chunks that hold (or once held) it,
  - a heap of (-count, pair) with lazy invalidation: when a pair's count changes we do
    not search the heap for it; we push pairs that gained, and when we pop an entry whose
    count is out of date we push it back with its true count (counts only fall, except for
    pairs that a merge creates, and those are pushed).
A merge then costs time in proportion to the chunks that hold the pair.

Tie-breaking (deterministic, documented): among pairs of equal count the heap pops the
smallest (left id, right id), where during training the 256 byte ids are numbered in the
code-point order of their printable characters in GPT-2's byte table (`HF_BYTE_ORDER`),
and merged tokens in their order of creation. That is how Hugging Face's BpeTrainer numbers
its alphabet and breaks ties, so with the same split pattern and texts our merge list equals
HF's merge for merge (a test checks it). After training the byte ids are renumbered to the
natural ones (token id b = byte b). As in HF, a merge whose bytes already form a token
(say "abc" from (ab, c) after (a, bc)) reuses that token's id.

`min_frequency`: training stops when the best pair occurs fewer times (it then may stop
short of `vocab_size`, as does a text too small to fill it: `shortfall_note` says so).
Raising it to 2 trains much faster on text with many unique chunks (e.g. Chinese
clauses) but compresses worse.

Where this module sits: `train_tokenizer` wraps the learnt merges in a `Tokenizer`
(tokenizer.py), so training imports the Tokenizer and never the other way round; the
constants both share (how ids pack into ints) live below both, in ids.py.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mylm_jax.tokenizer.errors import TokenizerError
from mylm_jax.tokenizer.ids import ID_BITS, ID_MASK, MAX_VOCAB
from mylm_jax.tokenizer.patterns import HF_BYTE_ORDER, make_splitter, resolve_pattern
from mylm_jax.tokenizer.specials import DEFAULT_SPECIAL_TOKENS, check_special_tokens
from mylm_jax.tokenizer.tokenizer import Tokenizer

# A pair (a, b) of ids is the int a << ID_BITS | b (ids.py).
# A heap entry is the int (-count << PAIR_BITS) | pair: smallest = largest count, then smallest pair.
PAIR_BITS = 2 * ID_BITS
PAIR_MASK = (1 << PAIR_BITS) - 1


@dataclass
class BPEResult:
    """What training learnt, in final ids (byte b = id b; merged tokens from 256 on)."""

    merges: list[tuple[int, int]]     # in the order learnt (= rank): (left id, right id)
    chunk_ids: dict[str, list[int]]   # each training chunk's tokens: a ready encode cache


def count_chunks(texts: Iterable[str], split) -> Counter:
    """Pre-split every text and count each distinct chunk."""
    counts: Counter = Counter()
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TokenizerError(f"training text {i} is a {type(text).__name__}, expected str")
        counts.update(split(text))  # Counter.update on a list counts in C
    return counts


def learn_merges(chunk_counts: dict[str, int], n_new_tokens: int, min_frequency: int = 1,
                 progress: bool = True) -> BPEResult:
    """Learn up to `n_new_tokens` merges from {chunk: frequency} (see the module docstring)."""
    # Training ids: byte b gets HF_BYTE_ORDER.index(b) so that ties break as in HF.
    training_id_of_byte = bytes.maketrans(bytes(HF_BYTE_ORDER), bytes(range(256)))
    chunks = list(chunk_counts)
    words = [list(chunk.encode("utf-8").translate(training_id_of_byte)) for chunk in chunks]
    freqs = [chunk_counts[chunk] for chunk in chunks]

    pair_counts: dict[int, int] = defaultdict(int)
    where: dict[int, set[int]] = defaultdict(set)
    for wi, word in enumerate(words):
        freq = freqs[wi]
        for key in [a << ID_BITS | b for a, b in zip(word, word[1:])]:
            pair_counts[key] += freq
            where[key].add(wi)
    heap = [(-count << PAIR_BITS) | key for key, count in pair_counts.items()]
    heapq.heapify(heap)

    token_bytes = [bytes([b]) for b in HF_BYTE_ORDER]  # training id -> bytes
    token_of_bytes = {tb: i for i, tb in enumerate(token_bytes)}
    target = 256 + n_new_tokens
    merges: list[tuple[int, int]] = []
    bar = _progress_bar(n_new_tokens, progress)
    while len(token_bytes) < target and heap:
        entry = heapq.heappop(heap)
        key, count = entry & PAIR_MASK, -(entry >> PAIR_BITS)
        true_count = pair_counts.get(key, 0)
        if count != true_count:  # stale entry: requeue with the true count
            if true_count > 0:
                heapq.heappush(heap, (-true_count << PAIR_BITS) | key)
            continue
        if count < min_frequency:
            break
        a, b = key >> ID_BITS, key & ID_MASK
        merged = token_bytes[a] + token_bytes[b]
        new = token_of_bytes.get(merged)
        if new is None:
            new = token_of_bytes[merged] = len(token_bytes)
            token_bytes.append(merged)
            if bar is not None:
                bar.update(1)
        merges.append((a, b))
        delta = _merge_everywhere(words, freqs, where, a, b, new)
        del pair_counts[key]  # every occurrence was merged
        delta.pop(key, None)
        for k, d in delta.items():
            if d:
                c = pair_counts[k] = pair_counts.get(k, 0) + d
                if d > 0:
                    heapq.heappush(heap, (-c << PAIR_BITS) | k)
    if bar is not None:
        bar.close()

    # Back to natural ids: byte b -> b, merged tokens keep their ids.
    final_id = HF_BYTE_ORDER + list(range(256, len(token_bytes)))
    return BPEResult(merges=[(final_id[a], final_id[b]) for a, b in merges],
                     chunk_ids={c: [final_id[t] for t in w] for c, w in zip(chunks, words)})


def _merge_everywhere(words, freqs, where, a: int, b: int, new: int) -> dict[int, int]:
    """Replace (a, b) by `new` in every chunk holding it; return the pair-count changes.

    Works in place on the chunks' id lists with C-level list operations (`list.index`,
    item assignment, `del`), the fastest way in pure Python.
    """
    delta: dict[int, int] = defaultdict(int)
    consumed = 2 if a == b else 1  # occurrences of `a` one merge uses up
    for wi in where.pop(a << ID_BITS | b):
        word, freq = words[wi], freqs[wi]
        find = word.index
        i, left = -1, word.count(a)  # counting first avoids a costly ValueError at the end
        while left > 0:
            i = find(a, i + 1)
            if i + 1 < len(word) and word[i + 1] == b:
                if i:
                    prev = word[i - 1]
                    delta[prev << ID_BITS | a] -= freq
                    k = prev << ID_BITS | new
                    delta[k] += freq
                    where[k].add(wi)
                if i + 2 < len(word):
                    nxt = word[i + 2]
                    delta[b << ID_BITS | nxt] -= freq
                    k = new << ID_BITS | nxt
                    delta[k] += freq
                    where[k].add(wi)
                word[i] = new
                del word[i + 1]
                left -= consumed
            else:
                left -= 1
    return delta


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="BPE merges", unit="merge", mininterval=0.5)


def shortfall_note(tokenizer: Tokenizer, vocab_size: int, min_frequency: int = 1) -> str | None:
    """A one-line note when training stopped short of `vocab_size` (None if it did not):
    every merge that the text allows was learnt, and there were fewer than asked."""
    if tokenizer.vocab_size >= vocab_size:
        return None
    asked = vocab_size - 256 - len(tokenizer.special_tokens)
    made = len(tokenizer.token_bytes) - 256
    why = ("every chunk of the text is a single token by then" if min_frequency == 1
           else f"no pair of tokens left occurs min_frequency={min_frequency} times")
    return (f"note: vocab_size {tokenizer.vocab_size}, not {vocab_size}: the text allows only {made} merged "
            f"tokens of the {asked} asked ({why}); train on more text for a larger vocabulary")


def train_tokenizer(texts: Iterable[str], vocab_size: int, pattern: str = "gpt4",
                    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS, min_frequency: int = 1,
                    progress: bool = True) -> Tokenizer:
    """Train a byte-level BPE tokenizer on `texts`.

    vocab_size counts everything: 256 bytes + merged tokens + special tokens; a text too
    small to fill it gives fewer (see `shortfall_note`). pattern is a preset name ("gpt4",
    "gpt2", "zh") or a raw regex (patterns.py). The Tokenizer comes back with training's
    own chunks already in its encode cache.
    """
    specials = check_special_tokens(special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TokenizerError(f"vocab_size must be an int, got {vocab_size!r}")
    if vocab_size < 256 + len(specials):
        raise TokenizerError(f"vocab_size={vocab_size} is too small: 256 byte tokens + {len(specials)} "
                             f"special tokens need at least {256 + len(specials)}")
    if vocab_size > MAX_VOCAB:
        raise TokenizerError(f"vocab_size={vocab_size} is too large (at most {MAX_VOCAB})")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise TokenizerError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
    regex_pattern = resolve_pattern(pattern)
    chunk_counts = count_chunks(texts, make_splitter(regex_pattern))
    if not chunk_counts:
        raise TokenizerError("no training text: the input is empty")
    result = learn_merges(chunk_counts, vocab_size - 256 - len(specials), min_frequency, progress)
    tokenizer = Tokenizer(result.merges, specials, regex_pattern)
    tokenizer.prime_cache(result.chunk_ids)
    return tokenizer
