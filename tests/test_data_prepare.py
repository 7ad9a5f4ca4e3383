"""`mylm data prepare`: shards, metadata, splits, reruns, parallel tokenization, the CLI; and
what it may replace: a dataset only whole and only with --overwrite, the user's files never,
its workers never outliving it (the rules of tests/faults/test_ownership.py)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mylm_jax.cli import main
from mylm_jax.data.errors import DataError
from mylm_jax.data.prepare import PrepareSettings, prepare
from mylm_jax.data.shards import TokenShards
from mylm_jax.ownership import MARKER, read_marker
from mylm_jax.tokenizer import train_tokenizer
from tests.faults.test_ownership import error_line, snapshot
from tests.train_helpers import ROOT, TEXT

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
    again = prepare(settings, progress=False)  # no whole dataset there: rebuilt without --overwrite
    assert not again.get("up_to_date") and again["splits"] == first["splits"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".mylm", "metadata.json", "tokenizer.json"] + [f"{s['name']}.{kind}.npy" for split in first["splits"].values()
                                                         for s in split["shards"] for kind in ("tokens", "docs")])
    tail_settings = dataclasses.replace(settings, split="tail", val_fraction=0.1)
    with pytest.raises(DataError, match=r"already holds a dataset that differs \(settings split, val_fraction\); "
                                        "add --overwrite"):
        prepare(tail_settings, progress=False)
    kept = TokenShards.open(out, "val").num_documents  # the refused change left the dataset as it was
    assert kept == sum(s["num_documents"] for s in again["splits"]["val"]["shards"])
    tail = prepare(dataclasses.replace(tail_settings, overwrite=True), progress=False)
    assert set(tail["splits"]) == {"train"} and TokenShards.open(out, "val").num_tokens > 0
    assert "metadata.json" in tail["replaced"] and tail["kept"] == []


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
                 "--on-error", "fail", "--overwrite"]) == 2
    assert capsys.readouterr().err.strip().endswith("a.jsonl:61: invalid JSON (Expecting property name "
                                                    f"enclosed in double quotes, column 2); the earlier dataset in "
                                                    f"{out} is unchanged")
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


# --- datasets ------------------------------------------------------------------------------


def _corpus(path: Path, n: int, word: str) -> Path:
    path.write_text("".join(json.dumps({"text": f"{word} {i} " + TEXT[: 40 + i % 50]}) + "\n" for i in range(n)))
    return path


def _prepare(inputs: Path, tok: Path, out: Path, *flags: str) -> list[str]:
    return ["data", "prepare", str(inputs), "--tokenizer", str(tok), "--out", str(out), "--workers", "1",
            "--quiet", *flags]


@pytest.fixture
def dataset(data_path, tmp_path):
    """A prepared dataset of a.jsonl in tmp_path/data, and b.jsonl: other inputs."""
    tok = Path(data_path) / "tokenizer.json"
    a, b = _corpus(tmp_path / "a.jsonl", 300, "first"), _corpus(tmp_path / "b.jsonl", 200, "second")
    assert main(_prepare(a, tok, tmp_path / "data")) == 0
    return tmp_path / "data", tok, a, b


def test_prepare_over_another_dataset_needs_overwrite_and_keeps_the_users_files(dataset, capsys):
    data, tok, a, b = dataset
    before = snapshot(data)
    capsys.readouterr()
    assert main(_prepare(b, tok, data)) == 2
    assert error_line(capsys.readouterr().err) == (
        f"mylm: error: {data} already holds a dataset that differs (other inputs); add --overwrite to replace it "
        "(it stays whole until the new one is complete)")
    assert snapshot(data) == before
    (data / "notes.txt").write_text("where the text came from")
    assert main(_prepare(b, tok, data, "--overwrite")) == 0
    out = capsys.readouterr().out
    assert f"replaced the earlier dataset in {data} (removed 6 files: metadata.json, tokenizer.json" in out
    assert f"kept notes.txt in {data} (not made by MyLM)" in out
    assert (data / "notes.txt").read_text() == "where the text came from"
    assert json.loads((data / "metadata.json").read_text())["sources"][0]["path"] == str(b)
    assert not list(data.parent.glob(".data.*"))  # nothing left beside it


def test_prepare_refuses_a_directory_that_is_not_a_dataset(dataset, capsys):
    _, tok, a, _ = dataset
    mine = a.parent / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("chapter 1")
    assert main(_prepare(a, tok, mine, "--overwrite")) == 2
    assert error_line(capsys.readouterr().err) == (
        f"mylm: error: {mine}/thesis.tex was not made by MyLM; refusing to replace the directory that holds it "
        "(--out must be a new or empty directory, or a MyLM dataset)")
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"] and not list(a.parent.glob(".mine.*"))


def test_the_current_directory_is_never_swapped_away(dataset, monkeypatch, capsys):
    data, tok, _, b = dataset
    before = snapshot(data)
    monkeypatch.chdir(data)
    assert main(_prepare(b, tok, Path("."), "--overwrite")) == 2
    assert "the current directory is in it, and it is replaced whole" in error_line(capsys.readouterr().err)
    assert snapshot(data) == before and Path.cwd() == data


def test_a_dataset_made_before_markers_is_still_recognised(dataset, capsys):
    data, tok, a, b = dataset
    (data / MARKER).unlink()
    assert main(_prepare(a, tok, data)) == 0 and "up to date" in capsys.readouterr().out
    assert main(_prepare(b, tok, data)) == 2 and "add --overwrite" in capsys.readouterr().err
    assert main(_prepare(b, tok, data, "--overwrite")) == 0 and read_marker(data)["kind"] == "dataset"


def test_a_full_disk_during_prepare_keeps_the_earlier_dataset(dataset, monkeypatch, capsys):
    data, tok, _, b = dataset
    before = snapshot(data)
    real = os.fsync

    def fsync(fd):  # the disk fills up at the first shard
        if "tokens.npy" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    capsys.readouterr()
    assert main(_prepare(b, tok, data, "--overwrite")) == 2
    line = error_line(capsys.readouterr().err)
    assert "train_00000.tokens.npy: cannot write (No space left on device)" in line
    assert line.endswith(f"; the earlier dataset in {data} is unchanged")
    assert snapshot(data) == before and not list(data.parent.glob(".data.*"))


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_during_prepare_keeps_the_old_dataset_and_ends_its_workers(dataset, tmp_path):
    from mylm_jax.data.prepare import SLOW_CHUNKS

    data, tok, a, _ = dataset
    before = snapshot(data)
    rng = random.Random(0)
    texts = [" ".join(rng.choice(TEXT.split()) for _ in range(30)) for _ in range(2048)]  # 8 chunks of documents
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    # Each worker's first chunk is encoded at once (shards get written), each later one after a
    # pause that a worker outliving its parent would sit out.
    proc = subprocess.Popen([sys.executable, "-m", "mylm_jax.cli", "data", "prepare", str(big), "--tokenizer",
                             str(tok), "--out", str(data), "--overwrite", "--workers", "2", "--shard-tokens", "500",
                             "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, SLOW_CHUNKS: "60"})
    children: list[int] = []
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(".data.tmp-*/train_*.tokens.npy")):  # mid-write, beside the old one
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.5)
        children = _children(proc.pid)  # the two workers and multiprocessing's resource tracker
        assert len(children) >= 2
        proc.kill()
        proc.wait(timeout=30)
        killed = time.time()
        while any(_running(c) for c in children) and time.time() < killed + 2:
            time.sleep(0.05)
        assert [c for c in children if _running(c)] == [], "workers outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        for c in filter(_running, children):  # a failed test leaves no worker behind either
            os.kill(c, signal.SIGKILL)
    assert snapshot(data) == before  # the old dataset, whole
    assert list(tmp_path.glob(".data.tmp-*"))  # what the killed run left beside it...
    assert main(_prepare(a, tok, data)) == 0  # ...is cleared by the next run
    assert not list(tmp_path.glob(".data.*")) and snapshot(data) == before
