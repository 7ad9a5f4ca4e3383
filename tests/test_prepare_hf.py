"""`mylm data prepare --encoder hf` writes exactly the shards of `--encoder python`: the same
token files, document files and split, byte for byte, special-token strings in the text
kept as plain text and Unicode edge cases included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mylm_jax.data.errors import DataError
from mylm_jax.data.hf_encode import HFEncoder, resolve_encoder
from mylm_jax.data import prepare as prepare_module
from mylm_jax.data.prepare import PrepareSettings, prepare
from mylm_jax.tokenizer import train_tokenizer
from tests.tokenizer_data import DATA

tokenizers = pytest.importorskip("tokenizers")

EDGE_CASES = [
    "A document that types <|endoftext|> in its text, and <|bos|><|user|>hi<|end|><|assistant|> too.",
    "<|endoftext|>",  # nothing but a special token's string
    "<|endoftext|><|endoftext|> <|pad|>\n<|endoftext",  # repeated, spaced, cut short
    "e\u0301 é (NFD and NFC) ﬁ ligature, Å Å, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, ß ẞ",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦 🇨🇭 keycap 1️⃣",
    "中文，標點。日本語のテキスト、한국어 텍스트! עברית العربية",
    "tabs\tand\r\nCRLF\rCR\x0bVT\x0cFF\u2028LS\u2029PS\u00a0NBSP\u3000ideographic space",
    "trailing spaces   \n\n\n   leading   ",
    "\x00 NUL \x01 control \x7f DEL \ufeff BOM \ufffd replacement \U0010ffff last code point",
    "numbers 1234567890 3.14159 1,000,000 -42 ١٢٣ 一二三",
    "don't I'LL you're WE'VE it's",
    " " * 300 + "x" + "\n" * 50,
    "",  # an empty document: just its EOS
    "a",
]


def built_in_texts() -> list[str]:
    base = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
            "床前明月光，疑是地上霜。举头望明月，低头思故乡。 ")
    return [base * (1 + i % 4) + f" doc {i}" for i in range(40)] + EDGE_CASES


def shared_texts() -> list[str]:
    """A slice of tinyshakespeare (paragraphs) and of zh_poetry (poems), when ../shared/data exists."""
    if not DATA.is_dir():
        return []
    paragraphs = (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000].split("\n\n")
    poems = json.loads((DATA / "zh_poetry" / "poet.tang.0.json").read_text(encoding="utf-8"))[:400]
    return paragraphs + ["\n".join([p["title"], *p["paragraphs"]]) for p in poems]


@pytest.fixture(scope="module", params=["gpt4", "gpt2", "zh"])
def tokenizer_path(request, tmp_path_factory):
    texts = built_in_texts() + shared_texts()[::5]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(texts, vocab_size=700, pattern=request.param, progress=False).save(path)
    return path


def _prepare(tmp_path: Path, tokenizer_path: Path, texts: list[str], encoder: str, **kw) -> tuple[Path, dict]:
    src = tmp_path / "docs.jsonl"
    if not src.exists():
        src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    out = tmp_path / f"out_{encoder}"
    settings = PrepareSettings(inputs=(str(src),), out_dir=str(out), tokenizer=str(tokenizer_path), clean="",
                               val_fraction=0.2, shard_tokens=20_000, encoder=encoder, **kw)
    return out, prepare(settings, progress=False)


def _same_dataset(a: Path, b: Path) -> int:
    names = sorted(p.name for p in a.glob("*.npy"))
    assert names == sorted(p.name for p in b.glob("*.npy")) and names
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return len(names)


@pytest.mark.parametrize("corpus", ["built-in", "shared"])
def test_hf_and_python_write_the_same_shards(tmp_path, tokenizer_path, corpus, monkeypatch):
    texts = built_in_texts() if corpus == "built-in" else shared_texts()
    if not texts:
        pytest.skip(f"shared data not found: {DATA}")
    hf_dir, hf_meta = _prepare(tmp_path, tokenizer_path, texts, "hf")
    py_dir, py_meta = _prepare(tmp_path, tokenizer_path, texts, "python", workers=2)
    assert _same_dataset(hf_dir, py_dir) >= 4  # tokens + docs, train + val (several shards: shard_tokens)
    if corpus == "shared":  # hf in two worker processes, small tasks so that both get several
        monkeypatch.setattr(prepare_module, "HF_POOL_DOCS", 64)
        (tmp_path / "pool").mkdir()
        pool_dir, _ = _prepare(tmp_path / "pool", tokenizer_path, texts, "hf", workers=2)
        assert _same_dataset(pool_dir, hf_dir) >= 4
    assert hf_meta["splits"] == py_meta["splits"] and hf_meta["split"] == py_meta["split"]
    assert (hf_meta["encoder"], py_meta["encoder"]) == ("hf", "python")
    assert hf_meta["splits"]["train"]["num_documents"] + hf_meta["splits"]["val"]["num_documents"] == len(texts)


def test_special_token_strings_stay_plain_text(tokenizer_path):
    from mylm_jax.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer_path)
    texts = EDGE_CASES[:3]
    # HF's own load of the export would make "<|endoftext|>" in a text the EOS token ...
    hf_json = tokenizer_path.parent / "hf.json"
    tok.export_hf(hf_json)
    assert tok.eos_id in tokenizers.Tokenizer.from_file(str(hf_json)).encode(texts[1]).ids
    # ... the prepare path does not: the ids are those of encode(text), no special token recognised.
    encoded = HFEncoder(tok).encode_batch(texts)
    assert [e.tolist() for e in encoded] == [tok.encode(t) for t in texts]
    assert all(tok.eos_id not in e for e in encoded)


def test_the_encoder_choice(tmp_path, tokenizer_path):
    assert resolve_encoder("auto") == "python" and resolve_encoder("hf") == "hf"
    with pytest.raises(DataError, match="encoder must be one of"):
        PrepareSettings(inputs=("x",), out_dir="o", tokenizer="t", encoder="rust")
    # The encoder changes no id: switching it finds the dataset up to date.
    _, first = _prepare(tmp_path, tokenizer_path, built_in_texts(), "hf")
    src = tmp_path / "docs.jsonl"
    again = prepare(PrepareSettings(inputs=(str(src),), out_dir=str(tmp_path / "out_hf"), tokenizer=str(tokenizer_path),
                                    clean="", val_fraction=0.2, shard_tokens=20_000, encoder="python"), progress=False)
    assert again.get("up_to_date") and again["encoder"] == "hf"


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(alphabet=st.characters(codec="utf-8")), max_size=6))
def test_any_texts_encode_as_the_reference(hf_and_tokenizer, texts):
    encoder, tok = hf_and_tokenizer
    assert [e.tolist() for e in encoder.encode_batch(texts)] == [tok.encode(t) for t in texts]


@pytest.fixture(scope="module")
def hf_and_tokenizer():
    tok = train_tokenizer(built_in_texts(), vocab_size=600, progress=False)
    return HFEncoder(tok), tok
