"""The Python API (mylm_jax/api.py), the scoring (mylm_jax/train/score.py) and `mylm eval`,
on one tiny run trained through the API."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

import mylm_jax
from mylm_jax.cli import main
from mylm_jax.config import ConfigError, config_from_dict, load_config
from tests.train_helpers import TEXT, tiny_config


@pytest.fixture(scope="module")
def run_path(data_path, tmp_path_factory):
    """8 steps, checkpoints at 4 and 8, val at 4 and 8; trained by mylm_jax.pretrain with overrides."""
    out = tmp_path_factory.mktemp("api_run")
    cfg = tiny_config(data_path, out, train=dict(steps=6))
    run = mylm_jax.pretrain(cfg, {"train.steps": 8})
    assert run.step == 8 and run.config.train.steps == 8
    return str(out)


@pytest.fixture(scope="module")
def run(run_path):
    return mylm_jax.load_run(run_path)


def test_import_mylm_jax_stays_jax_free():
    code = ("import sys, mylm_jax; assert callable(mylm_jax.__getattr__); "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'orbax')]")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError):
        mylm_jax.no_such_name


def test_load_run_latest_and_a_chosen_step(run, run_path):
    assert run.step == 8 and str(run.path) == run_path
    assert run.tokenizer.vocab_size == 300 and run.config.model.max_seq_len == 32
    early = mylm_jax.load_run(run_path, step=4)
    assert early.step == 4
    assert not np.allclose(np.asarray(run.model.embed[...]), np.asarray(early.model.embed[...]))
    with pytest.raises(ConfigError, match="no checkpoint at step 5"):
        mylm_jax.load_run(run_path, step=5)


def test_generate_greedy_equals_the_cli(run, run_path, capsys):
    assert main(["generate", "--checkpoint", run_path, "--prompt", "First", "--max-new-tokens", "8",
                 "--temperature", "0"]) == 0
    cli = capsys.readouterr().out
    text = run.generate("First", max_new_tokens=8, temperature=0)
    assert isinstance(text, str) and cli == "First" + text + "\n"
    both = run.generate(["First", "All:"], max_new_tokens=8, temperature=0)
    assert isinstance(both, list) and len(both) == 2 and both[0] == text
    sampled = run.generate("First", max_new_tokens=8, temperature=1.0, top_k=5, top_p=0.9, seed=3)
    assert sampled == run.generate("First", max_new_tokens=8, temperature=1.0, top_k=5, top_p=0.9, seed=3)
    with pytest.raises(ConfigError, match="top_p"):
        run.generate("First", top_p=2.0)


def reference_losses(run, ids, start, end):
    """Per-token losses of seq[start+1:end+1] from the model's logits on seq[start:end], unpadded."""
    import jax
    seq = np.asarray(ids)
    logits, _ = run.model(seq[None, start:end])
    logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)[0], axis=-1))
    return -logp[np.arange(end - start), seq[start + 1:end + 1]]


def test_score_by_hand(run):
    text = "First Citizen: Speak, speak."
    [r] = run.score(text)
    ids = run.tokenizer.encode(text)
    seq = [run.tokenizer.eos_id, *ids]  # data.bos is off: a document follows the previous one's EOS
    losses = reference_losses(run, seq, 0, len(ids))
    assert r["tokens"] == len(ids) and r["bytes"] == len(text.encode("utf-8"))
    assert r["loss"] == pytest.approx(losses.mean(), rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(r["loss"]), rel=1e-9)
    assert r["bits_per_byte"] == pytest.approx(losses.sum() / math.log(2) / len(text.encode("utf-8")), rel=1e-5)
    assert run.score([text, text]) == [r, r]


def test_windows_rule():
    from mylm_jax.train.score import windows
    for n, T, stride in [(5, 8, None), (8, 8, None), (9, 8, None), (40, 8, 3), (40, 8, 8), (33, 32, 1)]:
        spans = windows(n, T, stride)
        s = T // 2 if stride is None else stride
        scored = [j for start, end, first in spans for j in range(first + 1, end + 1)]
        assert scored == list(range(1, n + 1))  # every token once, in order
        for k, (start, end, first) in enumerate(spans):
            assert end - start == min(T, n) and start <= first
            if k:
                assert first - start >= T - s  # context of every scored token past the first window
    with pytest.raises(ConfigError):
        windows(10, 8, 9)


def test_score_a_text_longer_than_the_context(run):
    from mylm_jax.train.score import Scorer, windows
    text = TEXT * 2
    ids = run.tokenizer.encode(text)
    T = run.config.model.max_seq_len
    assert len(ids) > 3 * T
    seq = [run.tokenizer.eos_id, *ids]
    for stride in (None, T):
        scorer = Scorer(run.model, run.config, run.tokenizer, stride)
        got = scorer.token_losses(ids)
        expected = np.zeros(len(ids))
        for start, end, first in windows(len(ids), T, stride):
            expected[first:end] = reference_losses(run, seq, start, end)[first - start:]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        [r] = run.score(text, stride=stride)
        assert r["tokens"] == len(ids) and r["loss"] == pytest.approx(expected.mean(), rel=1e-5)


def test_metrics_has_the_logged_steps(run, run_path):
    table = run.metrics()
    assert [row["step"] for row in table] == list(range(1, 9))
    assert all(isinstance(x, float) for x in table.column("loss"))
    val = [v for v in table.column("val_loss") if v is not None]
    assert len(val) == 2  # steps 4 and 8
    assert "loss" in table.columns
    with pytest.raises(KeyError, match="no column"):
        table.column("nope")


def test_evaluate_matches_the_trainers_val_loss(run, data_path):
    from mylm_jax.train.score import evaluate_dataset
    # The trainer's val at step 8: batches of train.batch_size rows, train.eval_batches of them.
    r = evaluate_dataset(run.model, run.config, run.tokenizer, batches=2, batch_size=4)
    logged = [row for row in run.metrics() if row["step"] == 8][0]
    assert r["loss"] == pytest.approx(logged["val_loss"], rel=1e-4)
    assert r["bits_per_byte"] == pytest.approx(logged["val_bpb"], rel=1e-4)
    whole = run.evaluate(data_path)
    assert whole["perplexity"] == pytest.approx(math.exp(whole["loss"])) and whole["batches"] >= 1
    with pytest.raises(ConfigError, match="no split 'test'"):
        run.evaluate(data_path, split="test")


def numbers(line: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"[\d,]*\.?\d+", line.split(":", 1)[1])]


def test_mylm_eval_on_data_and_text(run, run_path, data_path, tmp_path, capsys):
    assert main(["eval", run_path, "--data", data_path]) == 0
    out = capsys.readouterr().out.strip()
    expected = run.evaluate(data_path)
    loss, ppl, bpb = numbers(out)[:3]
    assert loss == pytest.approx(expected["loss"], abs=1e-4) and bpb == pytest.approx(expected["bits_per_byte"],
                                                                                       abs=1e-4)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("First Citizen: Speak, speak.", encoding="utf-8")
    b.write_text(TEXT * 2, encoding="utf-8")
    assert main(["eval", run_path, "--text", str(a), str(b), "--step", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    early = mylm_jax.load_run(run_path, step=4)
    ra, rb = early.score([a.read_text(), b.read_text()])
    assert len(lines) == 3 and lines[2].startswith("all:")
    assert numbers(lines[0])[0] == pytest.approx(ra["loss"], abs=1e-4)
    assert numbers(lines[1])[0] == pytest.approx(rb["loss"], abs=1e-4)
    total = (ra["loss"] * ra["tokens"] + rb["loss"] * rb["tokens"]) / (ra["tokens"] + rb["tokens"])
    assert numbers(lines[2])[0] == pytest.approx(total, abs=1e-4)
    assert main(["eval", run_path, "--text", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err


def test_train_accepts_a_config_a_dict_or_a_yaml_path(tmp_path, data_path):
    from mylm_jax.api import as_config
    values = tiny_config(data_path, tmp_path / "x")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values))
    overrides = {"optim.lr": 1e-3, "train.out_dir": str(tmp_path / "y")}
    from_path = as_config(path, overrides)
    assert from_path == as_config(values, ["optim.lr=1e-3", f"train.out_dir={tmp_path / 'y'}"])
    assert from_path == as_config(config_from_dict(values), overrides)
    assert from_path == load_config(path, ["optim.lr=1e-3", f"train.out_dir={tmp_path / 'y'}"])  # the CLI's
    with pytest.raises(ConfigError):
        as_config(values, ["optim.nope=1"])


def test_prepare_and_train_tokenizer_match_the_cli(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXT.split(". ")) * 3, encoding="utf-8")
    tok = mylm_jax.train_tokenizer(str(corpus), vocab_size=290, out=tmp_path / "api_tok.json")
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "290",
                 "--out", str(tmp_path / "cli_tok.json"), "--quiet"]) == 0
    from mylm_jax.tokenizer import Tokenizer
    cli_tok = Tokenizer.load(tmp_path / "cli_tok.json")
    assert tok.fingerprint() == cli_tok.fingerprint() == Tokenizer.load(tmp_path / "api_tok.json").fingerprint()
    from_texts = mylm_jax.train_tokenizer(texts=[corpus.read_text(encoding="utf-8")], vocab_size=290)
    assert from_texts.fingerprint() == tok.fingerprint()
    with pytest.raises(ConfigError):
        mylm_jax.train_tokenizer(vocab_size=290)

    meta = mylm_jax.prepare([corpus], tmp_path / "cli_tok.json", tmp_path / "api_data", txt_split="line",
                            val_fraction=0.2, workers=1)
    assert main(["data", "prepare", str(corpus), "--tokenizer", str(tmp_path / "cli_tok.json"),
                 "--out", str(tmp_path / "cli_data"), "--txt-split", "line", "--val-fraction", "0.2",
                 "--workers", "1"]) == 0
    cli_meta = json.loads((tmp_path / "cli_data" / "metadata.json").read_text())
    assert meta["splits"]["train"]["num_tokens"] == cli_meta["splits"]["train"]["num_tokens"] > 0
    for split in ("train", "val"):
        for shard in cli_meta["splits"][split]["shards"]:
            for suffix in (".tokens.npy", ".docs.npy"):
                name = shard["name"] + suffix
                assert (tmp_path / "api_data" / name).read_bytes() == (tmp_path / "cli_data" / name).read_bytes()
    with pytest.raises(ConfigError, match="prepare"):
        mylm_jax.prepare([corpus], tmp_path / "cli_tok.json", tmp_path / "z", no_such_setting=1)
