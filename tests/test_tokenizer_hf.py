"""Equality with Hugging Face `tokenizers`: the same merges from the same training settings,
and an exported tokenizer.json that encodes every text to the same ids."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mylm_jax.tokenizer import DEFAULT_SPECIAL_TOKENS, train_tokenizer
from mylm_jax.tokenizer.hf_export import hf_merge_list, to_hf_json, train_hf_reference
from tests.tokenizer_data import english_text, poetry_lines, require_data

tokenizers = pytest.importorskip("tokenizers")


def corpus() -> list[str]:
    return english_text().splitlines(keepends=True) + poetry_lines()


@pytest.fixture(scope="module", params=["gpt4", "gpt2", "zh"])
def pair(request, tmp_path_factory):
    """(ours, HF's load of our export) for each preset pattern."""
    ours = train_tokenizer(corpus(), 1200, pattern=request.param, progress=False)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    ours.export_hf(path)
    return ours, tokenizers.Tokenizer.from_file(str(path))


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2", "zh"])
def test_same_merges_as_hf_trainer(pattern):
    texts = corpus()
    ours = train_tokenizer(texts, 1200, pattern=pattern, progress=False)
    hf = train_hf_reference(texts, 1200, ours.pattern, DEFAULT_SPECIAL_TOKENS)
    assert to_hf_json(ours)["model"]["merges"] == hf_merge_list(hf)
    assert hf.get_vocab_size() == ours.vocab_size


def test_export_encodes_data_texts_identically(pair):
    ours, hf = pair
    data = require_data()
    sft = json.loads((data / "sft" / "alpaca_zh_demo.json").read_text(encoding="utf-8"))[:200]
    texts = corpus()[::7] + [r["instruction"] + "\n" + r["output"] for r in sft] + [english_text()[:20000]]
    assert [e.ids for e in hf.encode_batch(texts)] == ours.encode_batch(texts, processes=1)


def test_export_special_tokens(pair):
    ours, hf = pair
    text = "<|bos|><|user|>Hi<|end|><|assistant|>Hello, 世界!<|end|><|endoftext|>x<|pad|>"
    assert hf.encode(text).ids == ours.encode(text, allowed_special="all")
    assert hf.decode(ours.encode(text, allowed_special="all"), skip_special_tokens=False) == text


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8")))
def test_export_encodes_any_text_identically(pair, text):
    ours, hf = pair
    assert hf.encode(text).ids == ours.encode(text, allowed_special="all")
