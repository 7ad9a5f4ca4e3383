"""One command-line grammar (issue 15, item 5): positional inputs, true defaults in every
--help, --quiet on long commands, config mistakes before jax, short runs, chat's default
answer length, checkpoint weight statistics, `mylm data clean`, the extras, study overrides."""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mylm_jax.cli import GROUPS, main
from mylm_jax.config import ConfigError, load_config

ROOT = Path(__file__).parents[1]
TEXT = "\n\n".join(f"To be or not to be, line {i}: that is the question of the day." for i in range(60))


def _parsers():
    """Every (sub)parser of `mylm`, by its command path."""
    top = argparse.ArgumentParser(prog="mylm")
    sub = top.add_subparsers(dest="command")
    for group in GROUPS:
        group.add_parser(sub)
    out, todo = {}, [("mylm", top)]
    while todo:
        name, p = todo.pop()
        out[name] = p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {k}", v) for k, v in action.choices.items()]
    return out


def _run(args, cwd=ROOT, **kw):
    return subprocess.run([sys.executable, "-m", "mylm_jax.cli", *args], capture_output=True, text=True, cwd=cwd, **kw)


# a. inputs are positional for tokenizer train and data prepare; --input still works, with a note
def test_tokenizer_train_and_prepare_take_positional_inputs(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    tok = tmp_path / "tok.json"
    assert main(["tokenizer", "train", str(corpus), "--txt-split", "blank", "--vocab-size", "280",
                 "--out", str(tok), "--quiet"]) == 0
    assert main(["data", "prepare", str(corpus), "--txt-split", "blank", "--tokenizer", str(tok),
                 "--out", str(tmp_path / "d"), "--workers", "1", "--quiet"]) == 0
    assert (tmp_path / "d/metadata.json").is_file()
    capsys.readouterr()
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "280", "--out", str(tok),
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "--input is deprecated" in err and len(err.strip().splitlines()) == 1


# b. every option has help text, and its default is the true one (none shown for flags)
def test_every_option_has_help_and_a_true_default():
    parsers = _parsers()
    for name, p in parsers.items():
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.dest}: no help text"
    text = " ".join(parsers["mylm data prepare"].format_help().split())
    assert "EOS is appended unless given" in text and "default: True" not in text
    assert "(default: 0.01)" in text and "(default: document)" in text
    assert "(default: gpt4)" in parsers["mylm tokenizer train"].format_help()


# c. --quiet on every long command, plumbed to the Trainer
def test_quiet_on_every_long_command():
    parsers = _parsers()
    for name in ("mylm tokenizer train", "mylm data prepare", "mylm pretrain", "mylm sft"):
        assert any(a.dest == "quiet" for a in parsers[name]._actions), name
    from mylm_jax.train.loop import Trainer, pretrain
    from mylm_jax.train.sft import sft
    for f in (pretrain, sft, Trainer.__init__):
        assert inspect.signature(f).parameters["quiet"].default is False


# d. a config mistake is reported before the heavy imports
@pytest.mark.parametrize("args, message", [
    (["pretrain", "model.d_modle=1"], "unknown key 'model.d_modle'"),
    (["pretrain", "data.path=nowhere"], "nowhere: no metadata.json"),
    (["sft", "sft.init_from=nowhere"], "sft.init_from=nowhere: no checkpoints/"),
])
def test_config_mistakes_come_before_jax(args, message):
    code = ("import sys; from mylm_jax.cli import main; rc = main(sys.argv[1:]); "
            "assert rc == 2, rc; assert 'jax' not in sys.modules and 'mylm_jax.train.loop' not in sys.modules")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert time.perf_counter() - start < 30  # generous: the point is the imports above


# e. short runs just work: the warmup is clamped, with a note; the wsd message only under wsd
def test_short_runs_clamp_the_warmup(capsys):
    cfg = load_config(None, ["train.steps=20"])
    assert cfg.optim.warmup_steps == 2  # min(100, 20 // 10)
    err = capsys.readouterr().err
    assert "warmup clamped to 2" in err and "wsd" not in err
    assert load_config(None, ["train.steps=1000", "optim.warmup_steps=50"]).optim.warmup_steps == 50
    with pytest.raises(ConfigError, match="plus the wsd decay"):
        load_config(None, ["train.steps=20", "optim.schedule=wsd", "optim.decay_fraction=0.95"])


# f. chat's default answer length fits the model
def test_max_new_tokens_default_fits_the_context():
    from mylm_jax.cli.generate import max_new_tokens
    parsers = _parsers()
    args = parsers["mylm chat"].parse_args(["--checkpoint", "x"])
    assert args.max_new_tokens is None
    assert max_new_tokens(args, 128) == 64 and max_new_tokens(args, 4096) == 128
    assert max_new_tokens(parsers["mylm chat"].parse_args(["--checkpoint", "x", "--max-new-tokens", "7"]), 128) == 7
    assert "min(128" in parsers["mylm chat"].format_help()


# g. per-parameter statistics of a model's weights
def test_param_stats():
    from mylm_jax.config import ModelConfig
    from mylm_jax.model.gpt import GPT
    from mylm_jax.model.params import build_with_random_params, flat_params, param_stats
    from flax import nnx
    cfg = ModelConfig(vocab_size=64, max_seq_len=16, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=32)
    model = build_with_random_params(lambda: GPT(cfg, nnx.Rngs(0)), seed=0)
    stats, flat = param_stats(model), flat_params(model)
    assert set(stats) == set(flat)
    x = flat["embed"]
    s = stats["embed"]
    assert s["shape"] == x.shape and s["max_abs"] == pytest.approx(float(np.abs(x).max()))
    assert s["norm"] == pytest.approx(float(np.linalg.norm(x)), rel=1e-5)
    assert s["mean"] == pytest.approx(float(x.mean()), abs=1e-6) and s["std"] == pytest.approx(float(x.std()), rel=1e-5)
    assert any(a.dest == "weights" for a in _parsers()["mylm checkpoint show"]._actions)


# h. mylm data clean: the same readers and report as prepare, JSONL out
def test_data_clean_writes_jsonl_with_the_prepare_report(tmp_path, capsys):
    records = tmp_path / "r.jsonl"
    lines = [json.dumps({"title": f"t{i}", "body": f"poem {i % 50}"}) for i in range(100)] + ["{bad"]
    records.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o/clean.jsonl"
    assert main(["data", "clean", str(records), "--template", "{title}: {body}", "--clean", "strip,dedup",
                 "--postfix", "\\n", "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "records read 101: documents 100, skipped 1" in shown and "kept 100" in shown
    kept = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    assert kept[0] == "t0: poem 0\n" and len(kept) == 100
    assert main(["data", "clean", str(records), "--field", "body", "--clean", "dedup", "--sample", "0.5",
                 "--seed", "1", "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    n = len(out.read_text().splitlines())
    assert "dedup,downsample=0.5" in shown and 5 < n < 50  # 50 unique bodies, about half of them kept


# i. the extras: tensorboard installable; mylm search without optuna is one line with the pip command
def test_extras():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'tb = ["tensorboard' in text
    assert 'pip install -e ".[tb]"' in (ROOT / "docs/pretraining.md").read_text()
    try:
        import optuna  # noqa: F401
        pytest.skip("optuna is installed")
    except ImportError:
        pass
    result = _run(["search", "--space", "nowhere.yaml", "--out", "/tmp/nowhere-search"])
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        'mylm: error: mylm search needs Optuna: pip install -e ".[search]"']


# j. the study scripts take `section.key=value` overrides
def test_study_scripts_take_overrides():
    from mylm_jax.studies.script import StudyError, with_overrides
    for script in ("compare_frameworks.py", "compare_variants.py", "init_study.py"):
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], capture_output=True,
                                text=True, cwd=ROOT)
        assert "section.key=value" in result.stdout, script
    cfg = load_config(None, [])
    assert with_overrides(cfg, ["optim.weight_decay=0.0"]).optim.weight_decay == 0.0
    with pytest.raises(StudyError, match="--steps"):
        with_overrides(cfg, ["train.steps=5"])
    with pytest.raises(ConfigError, match="unknown key"):
        with_overrides(cfg, ["optim.nope=1"])


# c, e, g end to end: a short run with the default 100 warmup steps, --quiet, then the weights' statistics
@pytest.mark.slow
def test_short_quiet_run_then_checkpoint_weights(data_path, tmp_path):
    from tests.train_helpers import run_mylm, tiny_config
    out = tmp_path / "run"
    cfg = tiny_config(data_path, out, optim=dict(warmup_steps=100), train=dict(steps=4, checkpoint_every=0))
    result = run_mylm(["pretrain", "--quiet"], cfg, tmp_path / "c.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warmup clamped to 0" in result.stderr and "it/s" not in result.stderr + result.stdout
    shown = run_mylm(["checkpoint", "show", str(out), "--weights"])
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "max |x|" in shown.stdout and "blocks.0.attn" in shown.stdout
