"""The first run of a new user: the embedded corpus, `mylm quickstart`, its config."""

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from mylm_jax.cli import main
from mylm_jax.data.corpora import CORPORA, HERE, available, corpus_path
from mylm_jax.data.errors import DataError

ROOT = Path(__file__).parents[1]

# A model small enough that the whole quickstart (tokenizer, shards, 5 steps) runs in seconds.
TINY = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.vocab_size=300",
        "data.seq_len=32", "model.max_seq_len=32", "train.batch_size=4", "train.eval_every=5",
        "train.eval_batches=2", "train.sample_every=0", "train.log_every=1",
        "train.async_checkpoint=false"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MYLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("name, size, start", [
    ("tinyshakespeare", 1_115_394, "First Citizen:\nBefore we proceed any further, hear me speak."),
    ("tang_poems", 1_131_650, "帝京篇十首 一\n太宗皇帝\n秦川雄帝宅，函谷壯皇居。"),
])
def test_the_embedded_corpora_are_there_and_match_their_sha256(name, size, start):
    assert available() == ["tang_poems", "tinyshakespeare"]
    corpus = CORPORA[name]
    text = gzip.decompress((HERE / corpus.file).read_bytes())
    assert len(text) == corpus.size == size
    assert hashlib.sha256(text).hexdigest() == corpus.sha256
    assert text.decode("utf-8").startswith(start)
    assert corpus.sha256 in (HERE / "README.md").read_text()  # the provenance names the same text
    assert (HERE / corpus.file).stat().st_size < 1_000_000


def test_corpus_path_decompresses_once_verifies_and_repairs(cache):
    path = corpus_path()
    assert path.parent == cache / "corpora" and path.name == "tinyshakespeare.txt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CORPORA["tinyshakespeare"].sha256
    mtime = path.stat().st_mtime_ns
    assert corpus_path("tinyshakespeare") == path and path.stat().st_mtime_ns == mtime  # not rewritten
    path.write_bytes(b"half a file")  # a damaged cache is written again, never trusted
    assert hashlib.sha256(corpus_path().read_bytes()).hexdigest() == CORPORA["tinyshakespeare"].sha256
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    with pytest.raises(DataError, match="unknown corpus 'nope'; the embedded corpora are: tang_poems, tinyshakespeare"):
        corpus_path("nope")


def test_without_the_shared_folder_the_studies_use_the_embedded_corpus(cache, tmp_path, monkeypatch):
    from mylm_jax.studies import datasets
    monkeypatch.setattr(datasets, "SHARED_DATA", tmp_path / "no-shared" / "data")
    (path,) = datasets.corpus()  # never the repository's own README and docs
    assert Path(path) == cache / "corpora" / "tinyshakespeare.txt"
    assert Path(path).read_bytes()[:14] == b"First Citizen:"


def test_the_package_config_is_configs_quickstart_yaml():
    from mylm_jax.quickstart import CONFIG, quickstart_config
    assert CONFIG.read_bytes() == (ROOT / "configs/quickstart.yaml").read_bytes()
    cfg = quickstart_config("somewhere/qs", ["train.steps=7"])
    assert cfg.data.path == "somewhere/qs/data" and cfg.train.out_dir == "somewhere/qs/run"
    assert cfg.train.steps == 7 and cfg.model.vocab_size == 2048


def test_quickstart_trains_prints_next_commands_and_a_rerun_replaces_the_run(cache, tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), *TINY, "train.steps=5", "train.checkpoint_every=5"]) == 0
    text = capsys.readouterr().out
    run = out / "run"
    assert "corpus: tinyshakespeare, embedded in the package" in text
    assert str(cache / "corpora" / "tinyshakespeare.txt") in text
    assert "tokenizer: 300 ids" in text and "train +" in text and "parameters" in text
    assert "val loss at each eval: " in text
    for command in (f"mylm generate --checkpoint {run}", f"mylm plot {run}", f"tensorboard --logdir {run / 'tb'}",
                    f"mylm_jax.load_run('{run}')", "mylm chat"):
        assert command in text
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["5"]
    assert (out / "tokenizer.json").is_file() and (out / "data" / "metadata.json").is_file()

    # A rerun (here on a corpus of one's own) replaces the run: only its steps, in the logs and checkpoints.
    # What else is there (an export of the run, notes) is the user's and stays.
    (out / "notes.txt").write_text("lr 3e-3 was too high")
    own = tmp_path / "own.txt"
    own.write_bytes(corpus_path().read_bytes()[:60_000])
    assert main(["quickstart", "--out", str(out), "--corpus", str(own), *TINY, "train.steps=3",
                 "train.checkpoint_every=3", "train.eval_every=3"]) == 0
    text = capsys.readouterr().out
    assert f"corpus: {own}" in text and "--overwrite" not in text  # no one passed it
    assert f"a rerun in {out}: replacing the earlier quickstart's tokenizer.json" in text
    assert "deleted the earlier run's checkpoints (step 5), metrics.jsonl, tb (1 event file)" in text
    assert "(replacing the earlier quickstart's, made from another corpus)" in text
    assert (out / "notes.txt").read_text() == "lr 3e-3 was too high"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3


def test_quickstart_with_a_bad_override_stops_before_any_work(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path / "qs"), "model.d_modle=1"]) == 2
    assert "unknown key 'model.d_modle'" in capsys.readouterr().err
    assert not (tmp_path / "qs").exists()


def test_scripts_quickstart_sh_is_the_command():
    assert 'exec mylm quickstart "$@"' in (ROOT / "scripts/quickstart.sh").read_text()
