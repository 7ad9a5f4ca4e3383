"""The fast encoder (chunks cut into pieces where no merge can reach across, pieces from the
cache; see mylm_jax/tokenizer/pieces.py) against the straightforward rank-ordered merge:
the same ids on the data texts, on arbitrary Unicode (mixed scripts, emoji, combining
marks), for tokenizers trained on such text, and for a merge list that repeats a token."""

import functools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mylm_jax.tokenizer import Tokenizer, train_tokenizer
from mylm_jax.tokenizer.encode import build_vocab
from mylm_jax.tokenizer.patterns import make_splitter
from tests.tokenizer_data import english_text, poetry_lines

# Characters that stress the cuts: Han, kana, hangul, Cyrillic, Arabic, Devanagari,
# combining marks, emoji with modifiers and joiners, variation selectors, 4-byte letters.
MIXED = list("床前明月光疑是地上霜，。！？「」ひらがなカタカナ한국어Привет مرحبا नमस्ते"
             "e\u0301a\u0300o\u0308\u0323\u0338👍🏽👨\u200d👩\u200d👧❤\ufe0f🇨🇳𝔘𝔫𝔦 éüñß\t\n")
MIXED_TEXT = st.text(st.one_of(st.sampled_from(MIXED), st.characters(blacklist_categories=("Cs",))), max_size=60)
SAMPLES = ["Café, naïve — e\u0301te\u0301 👍🏽👍🏽 👨\u200d👩\u200d👧 ❤\ufe0f",
           "床前明月光，疑是地上霜。举头望明月，低头思故乡。", "Привет, мир! مرحبا नमस्ते 한국어 ひらがな"]


def reference_encode(tok: Tokenizer, text: str) -> list[int]:
    """Rank-ordered BPE, written as plainly as possible: on each chunk's bytes, merge the
    lowest-ranked pair (leftmost on ties) until no pair is a merge."""
    return [i for chunk in make_splitter(tok.pattern)(text) for i in _reference_bpe(tuple(tok.merges), chunk)]


@functools.lru_cache(maxsize=None)
def _reference_bpe(merges: tuple, chunk: str) -> tuple[int, ...]:
    _, merge_ids = _vocab(merges)
    rank = _ranks(merges)
    ids = list(chunk.encode("utf-8"))
    while True:
        best = min(((rank[pair], i) for i, pair in enumerate(zip(ids, ids[1:])) if pair in rank), default=None)
        if best is None:
            return tuple(ids)
        r, i = best
        ids[i:i + 2] = [merge_ids[r]]


@functools.lru_cache(maxsize=4)
def _vocab(merges: tuple):
    return build_vocab(list(merges))


@functools.lru_cache(maxsize=4)
def _ranks(merges: tuple) -> dict:
    rank = {}
    for r, pair in enumerate(merges):
        rank.setdefault(pair, r)  # a pair listed twice keeps its first rank
    return rank


def fresh(tok: Tokenizer) -> Tokenizer:
    """The same tokenizer with an empty cache (training primes the cache with its chunks)."""
    return Tokenizer(tok.merges, list(tok.special_tokens), tok.pattern)


@pytest.fixture(scope="module", params=["gpt4", "zh"])
def mixed(request):
    texts = english_text().splitlines(keepends=True)[:1500] + poetry_lines() + SAMPLES * 50
    return train_tokenizer(texts, 1500, pattern=request.param, progress=False)


def test_data_texts_encode_as_reference(mixed):
    tok = fresh(mixed)
    texts = english_text().splitlines(keepends=True) + poetry_lines(2) + SAMPLES
    assert [tok.encode(t) for t in texts] == [reference_encode(tok, t) for t in texts]
    chunks = {chunk for t in texts for chunk in tok._split(t)}
    assert len(set(tok._chunks.cache) - chunks) > 1000  # pieces were cached: the fast path ran


def test_han_clauses_are_cut_into_pieces(mixed):
    cutter = fresh(mixed)._chunks.cutter
    clauses = [chunk for line in poetry_lines(2)[-300:] for chunk in mixed._split(line) if len(chunk) >= 5]
    pieces = [cutter.cut(chunk) for chunk in clauses]
    assert all("".join(p) == chunk for p, chunk in zip(pieces, clauses))
    assert sum(map(len, pieces)) > 2 * len(clauses)  # mostly single characters


def test_the_cutter_is_built_at_the_first_non_ascii_chunk():
    # Its index of every split takes ~1 s for a large vocabulary: a load must not pay it,
    # nor ASCII text (whose chunks go whole), and the ids are the reference's either way.
    # (The package's own corpus, so that this runs without ../shared.)
    from mylm_jax.data.corpora import corpus_path

    lines = Path(corpus_path()).read_text(encoding="utf-8").splitlines(keepends=True)[:3000]
    trained = train_tokenizer(lines + SAMPLES * 50, 800, progress=False)
    tok = fresh(trained)
    text = "".join(line for line in lines if line.isascii())
    assert tok.encode(text) == reference_encode(tok, text) and tok._chunks._cutter is None
    for sample in SAMPLES:
        assert tok.encode(sample) == reference_encode(tok, sample)
    assert tok._chunks._cutter is not None


@settings(max_examples=300, deadline=None)
@given(text=MIXED_TEXT)
def test_any_unicode_encodes_as_reference(mixed, text):
    tok = fresh(mixed)
    assert tok.encode(text) == reference_encode(tok, text)


@settings(max_examples=60, deadline=None)
@given(corpus=st.lists(MIXED_TEXT.filter(bool), min_size=1, max_size=8), text=MIXED_TEXT)
def test_tokenizers_trained_on_any_unicode_encode_as_reference(corpus, text):
    # Small vocabularies learnt from arbitrary text hold tokens that cut characters anywhere.
    tok = fresh(train_tokenizer(corpus * 3, 256 + 60 + 7, progress=False))
    for t in [text, *corpus]:
        assert tok.encode(t) == reference_encode(tok, t)


def test_merge_list_with_a_repeated_token():
    # (a, bc) and (ab, c) both make "abc": the second merge reuses the first one's id.
    a, b, c = b"abc"
    merges = [(b, c), (a, b), (a, 256), (257, c), (258, 258), (c, a)]
    tok = Tokenizer(merges, ["<|endoftext|>"])
    for text in ["abcabc", "ababcc", "cabcab", "abcabcabc é中abc"]:
        assert tok.encode(text) == reference_encode(tok, text)
