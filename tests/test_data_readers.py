"""Readers, bad input, downloads and cleaning (mylm_jax/data/readers.py, download.py, clean.py)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from mylm_jax.data.clean import Cleaner
from mylm_jax.data.errors import DataError, SkipLog
from mylm_jax.data.readers import TextSelector, expand_inputs, read_documents

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")


def _texts(inputs, selector=TextSelector(), log=None, **kw):
    return [d.text for d in read_documents([str(i) for i in inputs], selector, log, **kw)]


def test_txt_modes(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"one\ntwo\n\n\n\nthree\r\nfour\n\nfive")
    assert _texts([f]) == ["one\ntwo\n\n\n\nthree\r\nfour\n\nfive"]
    assert _texts([f], txt_split="line") == ["one", "two", "three", "four", "five"]
    assert _texts([f], txt_split="blank") == ["one\ntwo", "three\r\nfour", "five"]
    assert _texts([f], txt_split="three") == ["one\ntwo\n\n\n\n", "\r\nfour\n\nfive"]
    locations = [d.location for d in read_documents([str(f)], txt_split="blank")]
    assert locations == [f"{f}:1", f"{f}:6", f"{f}:9"]


def test_json_jsonl_and_templates(tmp_path):
    (tmp_path / "arr.json").write_text(json.dumps([{"text": "a"}, {"text": "b"}, "c"]))
    (tmp_path / "one.json").write_text(json.dumps({"text": "d"}))
    (tmp_path / "x.jsonl").write_text('{"text": "e"}\n\n{"text": "f"}\n')
    assert _texts([tmp_path]) == ["a", "b", "c", "d", "e", "f"]  # a directory, sorted
    assert _texts([tmp_path / "*.json"]) == ["a", "b", "c", "d"]
    poem = tmp_path / "poems.json"
    poem.write_text(json.dumps([{"title": "T", "paragraphs": ["l1", "l2"], "author": "A"}]), encoding="utf-8")
    assert _texts([poem], TextSelector(template="{title}\n{paragraphs}")) == ["T\nl1\nl2"]


def test_parquet_reads_only_the_needed_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    table = pa.table({"text": ["x", "y", None], "label": [1, 0, 1]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)
    log = SkipLog()
    assert _texts([tmp_path / "t.parquet"], log=log) == ["x", "y"]
    assert log.reasons == {"missing field": 1} and log.examples[0].endswith("t.parquet:row 2: missing field 'text'")
    log = SkipLog()
    assert _texts([tmp_path / "t.parquet"], TextSelector("body"), log) == []
    assert "no column 'body' (columns: text, label)" in log.examples[0]


def test_bad_input_is_counted_with_locations(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "ok"}\n{broken\n{"text": 3}\n{"other": "x"}\n'
                                       b'{"text": "bad \xff utf8"}\n[1, 2]\n')
    (tmp_path / "b.json").write_text('{"text": "unterminated')
    (tmp_path / "c.txt").write_bytes(b"")
    (tmp_path / "d.csv").write_text("a,b")
    (tmp_path / "e.txt").write_bytes(b"fine\n\ncaf\xe9 latin-1\n")
    log = SkipLog()
    texts = _texts([tmp_path], log=log, txt_split="blank")
    assert texts == ["ok", "fine"]
    assert log.reasons == {"invalid JSON": 2, "wrong type": 2, "missing field": 1, "invalid UTF-8": 2,
                           "empty file": 1, "unknown extension": 1}
    assert log.examples[0] == f"{tmp_path}/a.jsonl:2: invalid JSON (Expecting property name enclosed in " \
                              "double quotes, column 2)"
    assert log.total == 9  # records read = 2 kept + 9 skipped
    with pytest.raises(DataError, match=r"a.jsonl:2: invalid JSON"):
        _texts([tmp_path / "a.jsonl"], log=SkipLog("fail"))


def test_missing_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="input not found: .*nope.txt"):
        expand_inputs([str(tmp_path / "nope.txt")])
    with pytest.raises(DataError, match="no files match"):
        expand_inputs([str(tmp_path / "*.jsonl")])
    with pytest.raises(DataError, match="holds no files"):
        expand_inputs([str(tmp_path)])


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support (the standard handler has none); counts requests."""

    ranges: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            type(self).ranges.append(start)
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **kw: _RangeHandler(*a, directory=str(root), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_url_download_resumes_and_checks_sha256(server, tmp_path):
    from mylm_jax.data.download import download

    root, base = server
    body = b"".join(json.dumps({"text": f"doc {i}"}).encode() + b"\n" for i in range(2000))
    (root / "d.jsonl").write_bytes(body)
    sha = hashlib.sha256(body).hexdigest()
    cache = tmp_path / "cache"
    url = f"{base}/d.jsonl#sha256={sha}"
    # A previous, interrupted download left the first 1000 bytes.
    final = download(url, cache)  # to learn the cache path, then simulate the interruption
    final.with_name(final.name + ".part").write_bytes(body[:1000])
    final.unlink()
    _RangeHandler.ranges.clear()
    assert download(url, cache).read_bytes() == body
    assert _RangeHandler.ranges == [1000]  # resumed, not restarted
    assert len(_texts([url], cache_dir=cache)) == 2000  # a URL is an input like a file
    with pytest.raises(DataError, match="sha256 .* does not match"):
        download(f"{base}/d.jsonl#sha256={'0' * 64}", tmp_path / "other")
    assert not list((tmp_path / "other").iterdir())  # no corrupt file is kept
    with pytest.raises(DataError, match="HTTP 404"):
        download(f"{base}/missing.jsonl", cache)


def test_cleaning_steps_and_report():
    texts = ["  a\r\nb  ", "a\nb", "x", "caf\u0065\u0301", "café", "one   two\t\tthree\n\n\n\nfour", ""]
    cleaner = Cleaner("normalize_newlines,nfc,strip,collapse_whitespace,min_length=2,dedup,postfix=|")
    assert list(cleaner(texts)) == ["a\nb|", "café|", "one two three\n\nfour|"]
    assert cleaner.report()["dropped"] == {"min_length=2": 2, "dedup": 2}
    assert cleaner.documents_in == 7 == cleaner.kept + sum(cleaner.dropped.values())


def test_downsample_is_seeded_and_order_free():
    texts = [f"document {i}" for i in range(2000)]
    kept = list(Cleaner("downsample=0.25", seed=1)(texts))
    assert 400 < len(kept) < 600
    assert set(Cleaner("downsample=0.25", seed=1)(reversed(texts))) == set(kept)
    assert set(Cleaner("downsample=0.25", seed=2)(texts)) != set(kept)


@pytest.mark.parametrize("spec, message", [("lowercase", "unknown cleaning step 'lowercase'"),
                                           ("min_length", "needs a value"),
                                           ("min_length=x", "expected int"),
                                           ("downsample=2", "fraction in")])
def test_bad_cleaning_spec(spec, message):
    with pytest.raises(DataError, match=message):
        Cleaner(spec)


@needs_shared
def test_shared_corpora_read():
    log = SkipLog()
    poems = _texts([SHARED / "zh_poetry"], TextSelector(template="{title}\n{paragraphs}"), log)
    assert len(poems) == 15008 and log.total == 0
    reviews = _texts([SHARED / "parquet" / "waimai_10k.parquet"], log=log)
    assert len(reviews) == 11987 and log.total == 0
    assert len(_texts([SHARED / "tinyshakespeare.txt"], txt_split="blank")) == 7222
