"""The byte-level BPE tokenizer: training, exact round trips, special tokens, files, errors."""

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mylm_jax.tokenizer import DEFAULT_SPECIAL_TOKENS, Tokenizer, TokenizerError, train_tokenizer
from mylm_jax.tokenizer.patterns import PRESET_PATTERNS, make_splitter
from tests.tokenizer_data import english_text, poetry_lines

N_SPECIAL = len(DEFAULT_SPECIAL_TOKENS)


@pytest.fixture(scope="module")
def english():
    return train_tokenizer([english_text()], 512, progress=False)


@pytest.fixture(scope="module")
def chinese():
    return train_tokenizer(poetry_lines(), 1024, pattern="zh", progress=False)


def test_textbook_example():
    # Wikipedia's BPE example: aa -> Z, ab -> Y (ties with Za; the smaller pair wins), ZY -> X: "XdXac".
    tok = train_tokenizer(["aaabdaaabac"], 256 + 3 + N_SPECIAL, progress=False)
    assert [tok.id_to_bytes(i) for i in range(256, 259)] == [b"aa", b"ab", b"aaab"]
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]
    assert tok.vocab_size == 259 + N_SPECIAL and tok.special_tokens["<|endoftext|>"] == 259


@settings(max_examples=150, deadline=None)
@given(text=st.text())
def test_any_unicode_round_trips(english, text):
    assert english.decode(english.encode(text)) == text
    assert english.decode(english.encode(text, allowed_special="all")) == text


@settings(max_examples=50, deadline=None)
@given(ids=st.lists(st.integers(0, 511), max_size=40))
def test_any_id_sequence_decodes(english, ids):
    assert isinstance(english.decode(ids), str)  # cut characters become U+FFFD, never an error


def test_decode_rejects_out_of_range_ids(english):
    with pytest.raises(TokenizerError, match="token id 512 is out of range"):
        english.decode([1, 512])
    with pytest.raises(TokenizerError, match="token id -1"):
        english.decode([-1])


def test_training_is_deterministic(english):
    again = train_tokenizer([english_text()], 512, progress=False)
    assert again.merges == english.merges and again.fingerprint() == english.fingerprint()


def test_compresses_and_learns_words(english):
    text = english_text()
    assert len(text.encode()) / len(english.encode(text)) > 2.0  # 2.1 at vocab 512
    assert b" Swift" in english.token_bytes


def test_special_tokens_only_when_allowed(english):
    text = "end<|endoftext|>next"
    plain = english.encode(text)
    assert english.eos_id not in plain and english.decode(plain) == text
    allowed = english.encode(text, allowed_special="all")
    assert allowed == english.encode("end") + [english.eos_id] + english.encode("next")
    assert english.encode(text, allowed_special={"<|endoftext|>"}) == allowed
    assert english.encode("<|bos|>x<|endoftext|>", allowed_special={"<|endoftext|>"})[-1] == english.eos_id
    assert english.bos_id not in english.encode("<|bos|>x", allowed_special={"<|endoftext|>"})
    with pytest.raises(TokenizerError, match="not special tokens: <|nope|>"):
        english.encode(text, allowed_special={"<|nope|>"})


def test_default_special_ids(english):
    ids = {english.eos_id, english.bos_id, english.pad_id, english.end_of_turn_id}
    assert len(ids) == 4 and min(english.special_tokens.values()) == 512 - N_SPECIAL
    assert english.has_chat_tokens
    custom = train_tokenizer(["abc"], 260, special_tokens=["<|endoftext|>"], progress=False)
    assert not custom.has_chat_tokens and custom.eos_id == custom.vocab_size - 1 == 258  # ab, abc
    with pytest.raises(TokenizerError, match="no <|pad|>"):
        custom.pad_id


def test_chinese_round_trip_and_compression(chinese):
    lines = poetry_lines()
    text = "\n".join(lines[:2000])
    ids = chinese.encode(text)
    assert chinese.decode(ids) == text
    assert len(text.encode()) / len(ids) > 2.0  # a Han character is 3 UTF-8 bytes


@pytest.mark.parametrize("name, expected", [
    ("gpt2", ["床前明月光", "，", "疑是地上霜", " GPT写诗"]),
    ("gpt4", ["床前明月光", "，疑是地上霜", " GPT写诗"]),
    ("zh", ["床前明月光", "，", "疑是地上霜", " GPT", "写诗"]),
])
def test_patterns_on_han_text(name, expected):
    assert make_splitter(PRESET_PATTERNS[name])("床前明月光，疑是地上霜 GPT写诗") == expected


def test_custom_pattern_keeps_unmatched_text():
    tok = train_tokenizer(["ab12 cd"], 270, pattern=r"\d+", progress=False)
    assert tok.decode(tok.encode("xx99 yy")) == "xx99 yy"


def test_warm_cache_from_training_equals_cold_encoding(chinese, tmp_path):
    chinese.save(tmp_path / "zh.json")
    cold = Tokenizer.load(tmp_path / "zh.json")
    lines = poetry_lines()[:3000]
    assert [cold.encode(t) for t in lines] == [chinese.encode(t) for t in lines]


def test_encode_batch_in_processes_equals_serial(english):
    texts = english_text().splitlines(keepends=True) * 2  # > PARALLEL_MIN_CHARS: uses workers
    assert english.encode_batch(texts, processes=2) == [english.encode(t) for t in texts]
    assert english.encode_batch(["a<|end|>"], allowed_special="all", processes=1) == \
        [[ord("a"), english.end_of_turn_id]]


def test_min_frequency_stops_early():
    tok = train_tokenizer(["ab ab ab cd"], 300, min_frequency=3, progress=False)
    assert [tok.id_to_bytes(i) for i in range(256, len(tok.token_bytes))] == [b"ab"]  # " ab" occurs twice
    assert tok.vocab_size == 257 + N_SPECIAL


@pytest.mark.parametrize("kwargs, message", [
    (dict(texts=[], vocab_size=1000), "no training text: the input is empty"),
    (dict(texts=["abc"], vocab_size=262), "vocab_size=262 is too small: 256 byte tokens + 7 special tokens"),
    (dict(texts=["abc"], vocab_size=300, pattern="gpt5"), "unknown pattern preset 'gpt5'"),
    (dict(texts=["abc"], vocab_size=300, pattern="(unclosed"), "pattern is not a valid regex"),
    (dict(texts=["abc"], vocab_size=300, special_tokens=["<|a|>", "<|a|>"]), "duplicate special tokens"),
    (dict(texts=["abc", 3], vocab_size=300), "training text 1 is a int, expected str"),
])
def test_training_errors_are_one_line(kwargs, message):
    with pytest.raises(TokenizerError) as info:
        train_tokenizer(progress=False, **kwargs)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_save_load_round_trip(english, tmp_path):
    english.save(tmp_path / "tok.json")
    loaded = Tokenizer.load(tmp_path / "tok.json")
    assert loaded.fingerprint() == english.fingerprint() and loaded.special_tokens == english.special_tokens
    text = english_text()[:5000]
    assert loaded.encode(text) == english.encode(text)


@pytest.mark.parametrize("content, message", [
    (None, "tokenizer file not found"),
    ("{not json", "not valid JSON"),
    ('{"format": "something-else"}', "not a MyLM tokenizer file; expected a MyLM tokenizer file"),
    ('{"format": "mylm-bpe-tokenizer", "version": 99}', "format version 99 is not supported"),
])
def test_load_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TokenizerError, match=message) as info:
        Tokenizer.load(path)
    assert str(path) in str(info.value)


def test_load_detects_edited_files(english, tmp_path):
    data = english.to_dict()
    data["merges"][5] = [data["merges"][5][1], data["merges"][5][0]]
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="edited or is corrupt"):
        Tokenizer.load(tmp_path / "edited.json")
    data["merges"][0] = [0, 9999]
    (tmp_path / "bad_ids.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="merge 0 .* uses a token id that no earlier merge defines"):
        Tokenizer.load(tmp_path / "bad_ids.json")


def test_tokenizer_package_imports_no_jax():
    code = "import sys, mylm_jax.tokenizer, mylm_jax.cli.tokenizer; assert 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
