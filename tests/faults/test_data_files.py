"""Faults on the data / tokenizer side (issue 14): cut-off downloads, bad records, full
disks, corrupt files, Ctrl-C, and a dataset that must find its tokenizer from anywhere.

Each test names the promise it holds. HTTP servers bind 127.0.0.1 on a free port, run in
daemon threads with socket timeouts and are shut down by their fixture.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mylm_jax.cli import main
from mylm_jax.data.download import download
from mylm_jax.data.errors import DataError, SkipLog
from mylm_jax.data.prepare import PrepareSettings, prepare
from mylm_jax.data.readers import read_documents, read_records
from mylm_jax.data.shards import TMP_MARK, read_metadata
from mylm_jax.tokenizer import Tokenizer, TokenizerError, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
DOCS = [f"Document {i}: the quick brown fox jumps over the lazy dog, " * (1 + i % 3) for i in range(200)]
BODY = b"".join(json.dumps({"text": d}).encode() + b"\n" for d in DOCS)


def _tokenizer(path: Path, vocab_size: int = 300) -> Path:
    train_tokenizer(DOCS, vocab_size=vocab_size, progress=False).save(path)
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return _tokenizer(tmp_path_factory.mktemp("tok") / "tok.json")


def _error_line(capsys) -> str:
    """The one stderr line `mylm` printed (and assert it is one line, no traceback), the
    progress bar of `data prepare` aside."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("prepare ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if TMP_MARK in p.name or p.name.endswith(".probe")]


# --- item 1: downloads --------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /<kind>/<name> serves BODY:
    whole     200 (or 206 for a Range request) with the right length
    resume    the first request is cut half way (Content-Length says all); Range requests are served
    cut       always cut half way, Range ignored (a server that dies every time)
    chunked   a chunked transfer cut in the middle of its chunk
    nolength  an HTTP/1.0 reply without Content-Length, ended by closing the connection
    missing   404
    """

    protocol_version = "HTTP/1.1"
    timeout = 5  # seconds a connection may sit idle: no handler thread outlives a test
    requests: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        kind = self.path.strip("/").split("/")[0]
        rng = self.headers.get("Range")
        type(self).requests.append((kind, rng))
        self.close_connection = True
        if kind == "missing":
            self.send_error(404)
            return
        if kind == "nolength":
            self.protocol_version = "HTTP/1.0"
            self.send_response(200)
            self.end_headers()
            self.wfile.write(BODY)
            return
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng and kind in ("whole", "resume") else 0
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
        else:
            self.send_response(200)
        if kind == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(f"{len(BODY):x}\r\n".encode() + BODY[:len(BODY) // 2])
            return
        self.send_header("Content-Length", str(len(BODY) - start))
        self.end_headers()
        cut = kind == "cut" or (kind == "resume" and not start)
        self.wfile.write(BODY[start:len(BODY) // 2] if cut else BODY[start:])


class _Server:
    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        _Handler.requests = []

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.stop()


def test_cut_off_download_is_an_error_and_never_cached(server, tok, tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ["data", "prepare", f"{server.url}/cut/big.jsonl", "--tokenizer", str(tok), "--out", str(out),
            "--cache-dir", str(cache), "--workers", "1"]
    assert main(args) == 2
    err = _error_line(capsys)
    assert "big.jsonl: download cut off" in err and f"of {len(BODY):,} bytes" in err
    assert [p.suffix for p in cache.iterdir()] == [".part"]  # nothing under the final name
    assert not out.exists()  # the run never started: no empty directory either
    server.stop()  # a later run cannot fall back on a truncated cache
    assert main(args) == 2 and "download failed (Connection refused)" in _error_line(capsys)


def test_a_cut_off_download_resumes_with_a_range_request(server, tmp_path):
    path = download(f"{server.url}/resume/d.jsonl", tmp_path)
    assert path.read_bytes() == BODY
    assert _Handler.requests == [("resume", None), ("resume", f"bytes={len(BODY) // 2}-")]


def test_a_cut_off_chunked_transfer_is_one_line(server, tmp_path):
    with pytest.raises(DataError, match=r"chunked.jsonl: download cut off \(the connection broke"):
        download(f"{server.url}/chunked/chunked.jsonl", tmp_path, attempts=2)
    assert len(_Handler.requests) == 2  # retried once, then given up


def test_a_reply_without_length_needs_a_checksum(server, tmp_path, capsys):
    assert download(f"{server.url}/nolength/a.jsonl", tmp_path / "a").read_bytes() == BODY
    assert "sent no length" in capsys.readouterr().err  # accepted, but the user is told it is unchecked
    sha = hashlib.sha256(BODY).hexdigest()
    assert download(f"{server.url}/nolength/a.jsonl#sha256={sha}", tmp_path / "b").read_bytes() == BODY
    assert "sent no length" not in capsys.readouterr().err
    with pytest.raises(DataError, match="sha256 .* does not match the expected 000"):
        download(f"{server.url}/nolength/a.jsonl#sha256={'0' * 64}", tmp_path / "c")
    assert not list((tmp_path / "c").iterdir())  # no corrupt file kept, not even as a part


def test_download_errors_are_one_line(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        download(f"{server.url}/missing/x.jsonl", tmp_path)
    with pytest.raises(DataError, match="fragment must be #sha256= and 64 hex digits"):
        download(f"{server.url}/whole/x.jsonl#md5=abc", tmp_path)
    server.stop()
    with pytest.raises(DataError, match=r"download failed \(Connection refused\)"):
        download(f"{server.url}/whole/x.jsonl", tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_verified_download_is_reused_offline(server, tmp_path):
    sha = hashlib.sha256(BODY).hexdigest()
    url = f"{server.url}/whole/d.jsonl#sha256={sha}"
    first = download(url, tmp_path)
    server.stop()
    assert download(url, tmp_path) == first and first.read_bytes() == BODY


# --- item 5: lone surrogates ----------------------------------------------------------


def test_a_lone_surrogate_is_a_counted_skip_for_every_reader(tmp_path, tok, capsys):
    (tmp_path / "a.jsonl").write_text('{"text": "a \\ud800 b"}\n{"text": "emoji \\ud83d\\ude00 ok"}\n'
                                      + "".join(json.dumps({"text": d}) + "\n" for d in DOCS[:20]))
    (tmp_path / "b.json").write_text('[{"text": "x \\udfff"}, {"text": "fine"}]')
    log = SkipLog()
    texts = [d.text for d in read_documents([str(tmp_path)], log=log)]
    assert "emoji \U0001F600 ok" in texts and len(texts) == 22 and log.reasons == {"lone surrogate": 2}
    assert "a.jsonl:1: lone surrogate U+D800" in log.examples[0]
    # SFT reads records, not documents: the same check applies.
    sft = tmp_path / "sft.jsonl"
    sft.write_text('{"messages": [{"role": "user", "content": "\\udc00"}]}\n')
    log = SkipLog()
    assert list(read_records(str(sft), log)) == [] and log.total == 1
    # The two commands that crashed with a UnicodeEncodeError now finish and report it.
    assert main(["data", "prepare", str(tmp_path / "a.jsonl"), "--tokenizer", str(tok), "--out",
                 str(tmp_path / "out"), "--workers", "1"]) == 0
    assert read_metadata(tmp_path / "out")["reader"]["by_reason"] == {"lone surrogate": 1}
    assert main(["tokenizer", "train", str(tmp_path / "a.jsonl"), "--vocab-size", "280",
                 "--out", str(tmp_path / "t.json"), "--quiet"]) == 0
    assert "1 lone surrogate" in capsys.readouterr().out


# --- item 6: files written whole -----------------------------------------------------


def _fail_fsync_for(monkeypatch, name_part: str = ""):
    """Make fsync fail with ENOSPC (a full disk) for files whose name holds `name_part`."""
    real = os.fsync

    def fsync(fd):
        if name_part in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_never_truncates_a_good_tokenizer(tmp_path, tok, monkeypatch, capsys):
    out = tmp_path / "tok.json"
    shutil.copy(tok, out)
    good = out.read_bytes()
    (tmp_path / "a.txt").write_text(" ".join(DOCS))
    _fail_fsync_for(monkeypatch)
    assert main(["tokenizer", "train", str(tmp_path / "a.txt"), "--vocab-size", "290",
                 "--out", str(out), "--quiet"]) == 2
    assert "tok.json: cannot write (No space left on device)" in _error_line(capsys)
    assert out.read_bytes() == good and _leftovers(tmp_path) == []
    assert main(["tokenizer", "export-hf", "--tokenizer", str(out), "--out", str(tmp_path / "hf.json")]) == 2
    assert "hf.json: cannot write" in _error_line(capsys) and not (tmp_path / "hf.json").exists()


def test_out_is_checked_before_training(tmp_path, monkeypatch, capsys):
    (tmp_path / "a.txt").write_text(" ".join(DOCS))
    args = ["tokenizer", "train", str(tmp_path / "a.txt"), "--vocab-size", "280", "--quiet", "--out"]
    # A missing directory is created: the run is not lost at its end.
    assert main([*args, str(tmp_path / "new" / "dir" / "tok.json")]) == 0
    Tokenizer.load(tmp_path / "new" / "dir" / "tok.json")
    # A path that can never be written fails before any training.
    monkeypatch.setattr("mylm_jax.cli.tokenizer.train_tokenizer", lambda *a, **k: pytest.fail("trained"))
    (tmp_path / "file").write_text("x")
    assert main([*args, str(tmp_path / "file" / "tok.json")]) == 2
    assert "--out" in _error_line(capsys)
    assert main([*args, str(tmp_path)]) == 2 and "is a directory" in _error_line(capsys)


@pytest.mark.parametrize("failing", ["tokens.npy", "metadata.json"])
def test_a_full_disk_leaves_no_half_dataset(tmp_path, tok, monkeypatch, capsys, failing):
    (tmp_path / "a.jsonl").write_bytes(BODY)
    out = tmp_path / "out"
    _fail_fsync_for(monkeypatch, failing)
    assert main(["data", "prepare", str(tmp_path / "a.jsonl"), "--tokenizer", str(tok), "--out", str(out),
                 "--workers", "1", "--shard-tokens", "500"]) == 2
    line = _error_line(capsys)
    assert f"{failing}: cannot write (No space left on device)" in line
    assert line.endswith(f"; no dataset was written to {out}")  # and says what was kept
    assert not out.exists()  # every shard written before the failure was removed, and the new directory


def test_out_that_is_a_file_is_one_line(tmp_path, tok, capsys):
    (tmp_path / "a.jsonl").write_bytes(BODY)
    (tmp_path / "out").write_text("x")
    assert main(["data", "prepare", str(tmp_path / "a.jsonl"), "--tokenizer", str(tok),
                 "--out", str(tmp_path / "out")]) == 2
    err = _error_line(capsys)
    assert "--out" in err and "not a directory" in err


# --- item 8: tracebacks that become one line -----------------------------------------


def _corrupt_parquet(path: Path) -> None:
    """Three row groups of 100 rows; the middle one's pages overwritten (the footer stays valid)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"row {i} " * 5 for i in range(300)]}), path, row_group_size=100,
                   compression="snappy")
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 20:start + column.total_compressed_size - 5] = b"\xab" * (column.total_compressed_size - 25)
    path.write_bytes(bytes(data))


def test_a_corrupt_parquet_page_is_a_counted_skip_or_one_line(tmp_path, tok, capsys):
    path = tmp_path / "x.parquet"
    _corrupt_parquet(path)
    log = SkipLog()
    texts = [d.text for d in read_documents([str(path)], log=log)]
    assert len(texts) == 200 and texts[100] == "row 200 " * 5  # row groups 0 and 2 kept
    assert log.reasons == {"invalid Parquet": 1} and "x.parquet:row 100: row group 1" in log.examples[0]
    assert main(["data", "prepare", str(path), "--tokenizer", str(tok), "--out", str(tmp_path / "out"),
                 "--on-error", "fail", "--workers", "1"]) == 2
    assert "x.parquet:row 100: row group 1 cannot be decoded" in _error_line(capsys)


def test_tokenizer_inspect_sample_and_encode_bad_bytes(tmp_path, tok, capsys):
    assert main(["tokenizer", "inspect", "--tokenizer", str(tok), "--sample", "0"]) == 0
    assert "fingerprint" in capsys.readouterr().out
    assert main(["tokenizer", "inspect", "--tokenizer", str(tok), "--sample", "-3"]) == 2
    assert "--sample must be 0 or more" in _error_line(capsys)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 ok".encode("latin-1"))
    assert main(["tokenizer", "encode", "--tokenizer", str(tok), "--input", str(bad)]) == 2
    assert "latin1.txt: not valid UTF-8 at byte 3" in _error_line(capsys)


N_CTRL_C_WORDS = 400_000


def test_ctrl_c_during_prepare_is_one_line_and_leaves_nothing(tmp_path, tok):
    rng = random.Random(0)  # random words: the encoder cannot lean on its cache, so the run lasts
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=rng.randint(3, 9))) for _ in range(N_CTRL_C_WORDS)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": " ".join(words[i:i + 50])}) + "\n"
                                              for i in range(0, len(words), 50)))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mylm_jax.cli", "data", "prepare", str(tmp_path / "a.jsonl"),
                             "--tokenizer", str(tok), "--out", str(out), "--workers", "2", "--shard-tokens",
                             "2000", "--clean", "strip"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # A shell starting the suite in the background (`pytest &`) leaves SIGINT
                            # ignored, and children inherit that: give the command a terminal's Ctrl-C.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 60
        while not list(tmp_path.glob(".out.tmp-*/train_*.tokens.npy")):  # mid-run: shards written beside out
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("mylm: interrupted; no dataset")
    assert not out.exists() and not list(tmp_path.glob(".out.*"))  # the shards built beside it are gone too
    for _ in range(100):  # the worker processes were stopped, not orphaned
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("worker processes outlived the interrupted run")


# --- item 11: the dataset carries its tokenizer --------------------------------------


def _source(data_path):
    from mylm_jax.config import config_from_dict
    from mylm_jax.data.sources import ShardsSource

    return ShardsSource(config_from_dict({"data": {"path": str(data_path)}}))


def test_the_dataset_finds_its_tokenizer_from_anywhere(tmp_path, tok, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tok, work / "tok.json")
    (work / "a.jsonl").write_bytes(BODY)
    monkeypatch.chdir(work)  # prepared with relative paths, as people do
    prepare(PrepareSettings(inputs=("a.jsonl",), out_dir="data", tokenizer="tok.json", workers=1), progress=False)
    meta = read_metadata(work / "data")
    assert meta["tokenizer"]["file"] == "tokenizer.json" and (work / "data" / "tokenizer.json").is_file()
    (work / "tok.json").unlink()  # the original may go away
    shutil.move(work / "data", tmp_path / "moved")  # and the dataset may move
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    source = _source(tmp_path / "moved")
    assert source.tokenizer is not None and source.tokenizer.fingerprint() == meta["tokenizer"]["fingerprint"]
    assert source.identity["path"] == str(tmp_path / "moved" / "tokenizer.json")
    assert main(["data", "inspect", str(tmp_path / "moved")]) == 0
    assert "first train document" in capsys.readouterr().out


def test_a_replaced_tokenizer_copy_is_refused_and_old_datasets_still_load(tmp_path, tok, capsys):
    (tmp_path / "a.jsonl").write_bytes(BODY)
    data = tmp_path / "data"
    prepare(PrepareSettings(inputs=(str(tmp_path / "a.jsonl"),), out_dir=str(data), tokenizer=str(tok), workers=1),
            progress=False)
    other = _tokenizer(tmp_path / "other.json", vocab_size=290)
    shutil.copy(other, data / "tokenizer.json")
    with pytest.raises(DataError, match="tokenizer.json: tokenizer .* is not the one the dataset was made with"):
        _source(data)
    (data / "tokenizer.json").write_text('{"format": "mylm-bpe-tokenizer"')  # truncated
    with pytest.raises(DataError, match="the dataset's tokenizer copy is unusable"):
        _source(data)
    # A dataset from before the copy: metadata names only the path it was prepared with.
    meta = read_metadata(data)
    del meta["tokenizer"]["file"]
    meta["tokenizer"]["path"] = str(tok)
    (data / "metadata.json").write_text(json.dumps(meta))
    assert _source(data).tokenizer.fingerprint() == meta["tokenizer"]["fingerprint"]
    meta["tokenizer"]["path"] = str(other)  # retrained at that path since: not used, and said so
    (data / "metadata.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert _source(data).tokenizer is None and "is now another tokenizer" in capsys.readouterr().out


# --- item 13: BOMs and a vocabulary that cannot be filled ----------------------------


def test_a_byte_order_mark_is_not_text(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.jsonl").write_bytes(bom + b'{"text": "first"}\n{"text": "second"}\n')
    (tmp_path / "b.txt").write_bytes(bom + "héllo".encode())
    (tmp_path / "c.json").write_bytes(bom + b'[{"text": "third"}]')
    log = SkipLog()
    assert [d.text for d in read_documents([str(tmp_path)], log=log)] == ["first", "second", "héllo", "third"]
    assert log.total == 0


def test_a_vocabulary_too_large_for_the_text_is_noted(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("tiny text, tiny text")
    assert main(["tokenizer", "train", str(tmp_path / "a.txt"), "--vocab-size", "100000",
                 "--out", str(tmp_path / "t.json"), "--quiet"]) == 0
    vocab = Tokenizer.load(tmp_path / "t.json").vocab_size
    assert f"note: vocab_size {vocab}, not 100000: the text allows only" in capsys.readouterr().out


# --- behaviours that stay ------------------------------------------------------------


def test_bad_records_empty_and_missing_files_and_tampered_tokenizers(tmp_path, tok, capsys):
    (tmp_path / "a.jsonl").write_bytes(BODY + b"{not json\n" + b'{"body": 1}\n')
    (tmp_path / "empty.txt").write_bytes(b"")
    assert main(["data", "prepare", str(tmp_path / "a.jsonl"), str(tmp_path / "empty.txt"), "--tokenizer",
                 str(tok), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    reader = read_metadata(tmp_path / "out")["reader"]
    assert reader["by_reason"] == {"empty file": 1, "invalid JSON": 1, "missing field": 1}
    assert reader["records"] == len(DOCS) + 3
    capsys.readouterr()
    assert main(["data", "prepare", str(tmp_path / "nope.jsonl"), "--tokenizer", str(tok),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "input not found" in _error_line(capsys) and not (tmp_path / "o2").exists()
    tampered = json.loads(tok.read_text())
    tampered["merges"][0] = [tampered["merges"][0][1], tampered["merges"][0][0]]
    (tmp_path / "bad.json").write_text(json.dumps(tampered))
    with pytest.raises(TokenizerError, match="fingerprint do not match"):
        Tokenizer.load(tmp_path / "bad.json")
