"""`mylm data prepare`: shards, metadata, splits, reruns, parallel tokenization, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from mylm_jax.cli import main
from mylm_jax.data.prepare import PrepareSettings, prepare
from mylm_jax.data.shards import TokenShards
from mylm_jax.tokenizer import train_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")

DOCS = [f"Document number {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 5) for i in range(60)]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(DOCS + ["日詩 千山萬山如火發"], vocab_size=320, progress=False).save(path)
    return str(path)


@pytest.fixture
def corpus(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    lines = [json.dumps({"text": d}) for d in DOCS] + ["{not json", json.dumps({"text": DOCS[0]}),
                                                       json.dumps({"body": "x"})]
    (src / "a.jsonl").write_text("\n".join(lines) + "\n")
    return src


def _settings(corpus, tmp_path, tokenizer_path, **kw):
    return PrepareSettings(inputs=(str(corpus),), out_dir=str(tmp_path / "out"), tokenizer=tokenizer_path,
                           clean="normalize_newlines,nfc,strip,dedup", val_fraction=0.2, workers=1, **kw)


def test_prepare_writes_shards_and_a_report(corpus, tmp_path, tokenizer_path):
    from mylm_jax.tokenizer import Tokenizer

    meta = prepare(_settings(corpus, tmp_path, tokenizer_path), progress=False)
    tok = Tokenizer.load(tokenizer_path)
    r, c = meta["reader"], meta["cleaning"]
    assert r["records"] == 63 == r["documents"] + r["skipped"] and r["by_reason"] == {"invalid JSON": 1,
                                                                                      "missing field": 1}
    assert c["dropped"] == {"dedup": 1} and c["kept"] == 60
    assert meta["splits"]["train"]["num_documents"] + meta["splits"]["val"]["num_documents"] == 60
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["fingerprint"] == tok.fingerprint()
    train = TokenShards.open(tmp_path / "out", "train")
    texts = [tok.decode(train.document(i)[:-1].tolist()) for i in range(train.num_documents)]
    assert all(train.document(i)[-1] == tok.eos_id for i in range(train.num_documents))
    assert set(texts) <= {d.strip() for d in DOCS} and len(set(texts)) == len(texts)  # cleaned: stripped
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_rerun_is_a_no_op_and_a_change_rebuilds(corpus, tmp_path, tokenizer_path):
    settings = _settings(corpus, tmp_path, tokenizer_path)
    first = prepare(settings, progress=False)
    assert prepare(settings, progress=False).get("up_to_date")
    out = tmp_path / "out"
    # An interrupted rebuild: metadata gone, a half-written temp file and an old shard around.
    (out / "metadata.json").unlink()
    (out / "train_00007.tokens.npy.tmp").write_bytes(b"half")
    (out / "train_00009.tokens.npy").write_bytes(b"stale")
    again = prepare(settings, progress=False)
    assert not again.get("up_to_date") and again["splits"] == first["splits"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["metadata.json", "tokenizer.json"] + [f"{s['name']}.{kind}.npy" for split in first["splits"].values()
                             for s in split["shards"] for kind in ("tokens", "docs")])
    tail = prepare(dataclasses.replace(settings, split="tail", val_fraction=0.1), progress=False)
    assert set(tail["splits"]) == {"train"} and TokenShards.open(out, "val").num_tokens > 0


def test_parallel_tokenization_gives_the_same_shards(corpus, tmp_path, tokenizer_path):
    one = prepare(_settings(corpus, tmp_path / "one", tokenizer_path), progress=False)
    two = prepare(dataclasses.replace(_settings(corpus, tmp_path / "two", tokenizer_path), workers=2),
                  progress=False)
    assert one["splits"] == two["splits"]
    for name in (s["name"] for s in one["splits"]["train"]["shards"]):
        np.testing.assert_array_equal(np.load(tmp_path / "one" / "out" / f"{name}.tokens.npy"),
                                      np.load(tmp_path / "two" / "out" / f"{name}.tokens.npy"))


def test_cli_prepare_and_inspect(corpus, tmp_path, tokenizer_path, capsys):
    out = str(tmp_path / "cli")
    assert main(["data", "prepare", str(corpus), "--tokenizer", tokenizer_path, "--out", out, "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "records read 63: documents 61, skipped 2" in printed and "train" in printed
    assert main(["data", "inspect", out]) == 0
    assert "first train document" in capsys.readouterr().out
    assert main(["data", "prepare", str(corpus), "--tokenizer", tokenizer_path, "--out", out,
                 "--on-error", "fail"]) == 2
    assert capsys.readouterr().err.strip().endswith("a.jsonl:61: invalid JSON (Expecting property name "
                                                    "enclosed in double quotes, column 2)")
    assert main(["data", "prepare", str(tmp_path / "missing"), "--tokenizer", tokenizer_path, "--out", out]) == 2
    assert main(["data", "inspect", str(tmp_path)]) == 2


@needs_shared
@pytest.mark.parametrize("inputs, options, documents", [
    (["zh_poetry/poet.tang.0.json"], dict(template="{title}\n{paragraphs}"), 1000),
    (["parquet/waimai_10k.parquet"], {}, 11987),
    (["tinyshakespeare.txt"], dict(txt_split="blank"), 7222),
])
def test_shared_corpora(tmp_path, tokenizer_path, inputs, options, documents):
    settings = PrepareSettings(inputs=tuple(str(SHARED / i) for i in inputs), out_dir=str(tmp_path),
                               tokenizer=tokenizer_path, workers=1, **options)
    meta = prepare(settings, progress=False)
    kept = sum(s["num_documents"] for s in meta["splits"].values())
    assert meta["reader"]["documents"] == documents and meta["reader"]["skipped"] == 0
    assert kept == meta["cleaning"]["kept"] > 0.99 * documents
