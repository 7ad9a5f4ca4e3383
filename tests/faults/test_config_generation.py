"""Bad config values and bad sampling settings stop with one line; generation fits the
context by its stated rule and never samples a padded vocabulary row (issue 14: 4, 7, 8, 10)."""

from __future__ import annotations

import dataclasses
import io
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mylm_jax.cli import main
from mylm_jax.config import (Config, ConfigError, DataConfig, LossConfig, MeshConfig, ModelConfig, OptimConfig,
                             SFTConfig, TrainConfig, load_config, numeric_fields)
from mylm_jax.generate import (MIN_NEW_TOKENS, Generator, SamplingConfig, fit_to_context, generate,
                               generate_uncached, sample_next)
from mylm_jax.model.gpt import GPT
from mylm_jax.model.params import build_with_random_params
from mylm_jax.variants import variant

SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "loss": LossConfig,
            "train": TrainConfig, "mesh": MeshConfig, "sft": SFTConfig}


def _one_line_error(fn) -> str:
    with pytest.raises(ConfigError) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


# --------------------------------------------------------------------------- 7: config ranges

def test_every_numeric_field_of_every_section_declares_a_range():
    for name, cls in {**SECTIONS, "sampling": SamplingConfig}.items():
        assert set(numeric_fields(cls)) == set(cls.RANGES), name


def _outside(spec: str, tp: type):
    """A value just outside a range in the notation of config.py."""
    if spec.startswith(">"):
        low = float(spec.split()[-1])
        return low if spec.startswith("> ") else low - 1
    low = float(spec[1:].split(",")[0])
    return low if spec[0] == "(" else (low - 1 if tp is int else low - 0.5)


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_range_rejects_the_value_just_outside_it_and_every_float_rejects_nan(section):
    cls = SECTIONS[section]
    for key, tp in numeric_fields(cls).items():
        bad = _outside(cls.RANGES[key], tp)
        bad = int(bad) if tp is int else float(bad)
        message = _one_line_error(lambda: cls(**{key: bad}))
        assert message.startswith(f"{section}.{key} must be ") and message.endswith(f"got {bad}"), message
        if tp is float:
            assert "finite" in _one_line_error(lambda: cls(**{key: math.nan}))


@pytest.mark.parametrize("override, expected", [
    ("train.log_every=0", "train.log_every must be positive, got 0"),
    ("data.seq_len=0", "data.seq_len must be positive, got 0"),
    ("train.batch_size=0", "train.batch_size must be positive, got 0"),
    ("model.d_ff=0", "model.d_ff must be positive, got 0"),
    ("model.n_heads=0", "model.n_heads must be positive, got 0"),  # was a ZeroDivisionError
    ("train.steps=0", "train.steps must be positive, got 0"),  # was: train nothing, exit 0
    ("optim.lr=.nan", "optim.lr must be a finite number, got nan"),  # was: NaN weights saved
    ("optim.eps=-1e-8", "optim.eps must be positive, got -1e-08"),
    ("train.loss_ema=1", "train.loss_ema must be in [0, 1), got 1.0"),
    ("train.seed=-1", "train.seed must be in [0, 2**32), got -1"),
])
def test_nonsense_values_stop_at_load_with_key_value_and_range(override, expected):
    assert _one_line_error(lambda: load_config(None, [override])) == expected


def test_config_file_mistakes_are_one_line_naming_the_file(tmp_path, capsys):
    number = tmp_path / "number.yaml"
    number.write_text("model: 5\n")
    zero = tmp_path / "zero.yaml"
    zero.write_text("model: 0\n")  # was silently read as the defaults
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("train:\n  out_dir: runs/caf\u00e9\n".encode("latin-1"))
    for path, expected in [(number, "model must be a mapping of keys, got 5"),
                           (zero, "model must be a mapping of keys, got 0"),
                           (latin1, "not UTF-8 text (byte 0xe9")]:
        assert main(["config", "--config", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"mylm: error: {path}: {expected}") and len(err.splitlines()) == 1, err
    assert load_config(None, ["model.d_ff=64"]).model.d_ff == 64  # in range: unchanged


# --------------------------------------------------------------------------- models

def _model(vocab_size=128, **overrides):
    cfg = variant("gpt2", vocab_size=vocab_size, **overrides)  # max_seq_len 32
    return build_with_random_params(lambda: GPT(cfg, nnx.Rngs(0)), seed=3)


def _greedy_next(model, prompt) -> int:
    logits, _ = model(jnp.asarray([prompt]))
    return int(np.argmax(np.asarray(logits[0, -1])))


# --------------------------------------------------------------------------- 4: fitting the context

def test_fit_to_context_rule():
    assert fit_to_context(10, 5, 128) == (10, 5, None)
    kept, new, note = fit_to_context(100, 128, 128)  # the prompt fits: fewer new tokens, prompt whole
    assert (kept, new) == (100, 28) and "generating 28 new tokens, not 128" in note
    kept, new, note = fit_to_context(120, 128, 128)  # room 8 < 16: cut the prompt instead
    assert (kept, new) == (128 - MIN_NEW_TOKENS, MIN_NEW_TOKENS) and "dropped its first 8 tokens" in note
    kept, new, note = fit_to_context(300, 10, 128)  # asked for fewer than the minimum: that many
    assert (kept, new) == (118, 10) and "dropped its first 182 tokens" in note
    for prompt, asked, context in [(1, 1, 2), (5, 100, 8), (500, 500, 64), (63, 1, 64)]:
        kept, new, _ = fit_to_context(prompt, asked, context)
        assert kept + new <= context and kept >= 1 and new >= 1


def test_generate_keeps_a_prompt_that_fits_and_says_when_it_cuts():
    model = _model()  # context 32
    prompt = list(range(3, 17))  # 14 tokens, 32 new asked: once cut to its last token
    notes = []
    out = generate(model, [prompt], SamplingConfig(max_new_tokens=32, temperature=0.0), on_note=notes.append)[0]
    assert len(out) == 18 and out[0] == _greedy_next(model, prompt)
    assert len(notes) == 1 and "generating 18 new tokens, not 32" in notes[0]
    long = list(range(3, 43))  # 40 tokens: longer than the context
    notes.clear()
    out = generate(model, [long], SamplingConfig(max_new_tokens=8, temperature=0.0), on_note=notes.append)[0]
    assert len(out) == 8 and out[0] == _greedy_next(model, long[-24:])
    assert len(notes) == 1 and "dropped its first 16 tokens, kept the last 24" in notes[0]


# --------------------------------------------------------------------------- 8: sampling settings

@pytest.mark.parametrize("settings, expected", [
    (dict(max_new_tokens=-5), "max_new_tokens (--max-new-tokens) must be positive, got -5"),
    (dict(temperature=-0.1), "temperature (--temperature) must be >= 0, got -0.1"),
    (dict(top_p=0.0), "top_p (--top-p) must be in (0, 1], got 0.0"),
    (dict(top_p=1.5), "top_p (--top-p) must be in (0, 1], got 1.5"),
    (dict(repetition_penalty=0.0), "repetition_penalty (--repetition-penalty) must be positive, got 0.0"),
    (dict(top_k=-1), "top_k (--top-k) must be >= 0, got -1"),
    (dict(top_k=100000, vocab_limit=300), "top_k (--top-k) must be at most the vocabulary's 300 ids, got 100000"),
    (dict(temperature=math.inf), "temperature (--temperature) must be a finite number, got inf"),
])
def test_bad_sampling_settings_are_one_line_errors(settings, expected):
    assert _one_line_error(lambda: SamplingConfig(**settings)) == expected


def test_top_k_beyond_the_models_vocabulary_is_an_error():
    assert "at most the vocabulary's 128 ids" in _one_line_error(lambda: Generator(_model(), SamplingConfig(top_k=500)))


@pytest.mark.parametrize("flags, expected", [
    (["--max-new-tokens", "-5"], "--max-new-tokens) must be positive, got -5"),
    (["--repetition-penalty", "0"], "--repetition-penalty) must be positive"),
    (["--top-p", "2"], "--top-p) must be in (0, 1]"),
    (["--num-samples", "0"], "--num-samples must be positive, got 0"),
])
def test_generate_flags_are_checked_before_the_checkpoint_is_opened(tmp_path, capsys, flags, expected):
    assert main(["generate", "--checkpoint", str(tmp_path / "no_run"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err


# --------------------------------------------------------------------------- 10: padded vocabularies

def test_ids_past_the_vocab_limit_are_never_sampled_even_when_most_likely():
    logits = jnp.asarray([[0.0] * 6 + [50.0] * 4])  # the 4 padding rows dominate
    seen = jnp.zeros((1, 10), bool)
    for s in [SamplingConfig(temperature=0.0, vocab_limit=6), SamplingConfig(temperature=2.0, vocab_limit=6),
              SamplingConfig(temperature=1.0, top_k=3, top_p=0.5, repetition_penalty=1.3, vocab_limit=6)]:
        for seed in range(5):
            assert int(sample_next(logits, jax.random.PRNGKey(seed), seen, s)[0]) < 6


def test_generator_samples_only_the_tokenizers_ids():
    model = _model(vocab_size=128)
    limit = 40
    hot = SamplingConfig(max_new_tokens=24, temperature=1.5, vocab_limit=limit, seed=1)
    out = Generator(model, hot)([[1, 2, 3], [7], [5, 5, 5, 5], [9, 8]])
    assert all(0 <= i < limit for row in out for i in row) and sum(map(len, out)) == 4 * 24
    assert max(generate_uncached(model, [1, 2, 3], dataclasses.replace(hot, max_new_tokens=6))) < limit


@pytest.fixture(scope="module")
def small_tokenizer():
    from mylm_jax.tokenizer import train_tokenizer
    from tests.train_helpers import TEXT
    return train_tokenizer([TEXT * 5], vocab_size=300, progress=False)  # with the chat tokens


def test_trainer_sample_with_a_padded_vocabulary(small_tokenizer):
    """Trainer.sample on a model of 512 rows and a tokenizer of ~300 ids: before, the first
    sample step crashed decoding an id past the tokenizer's vocabulary."""
    from mylm_jax.train.loop import Trainer

    model = _model(vocab_size=512)
    cfg = Config(model=model.cfg, data=DataConfig(seq_len=32),
                 train=TrainConfig(sample_tokens=24, sample_temperature=1.5, sample_prompt="First"))
    trainer = SimpleNamespace(tokenizer=small_tokenizer, cfg=cfg,
                              ts=SimpleNamespace(models=lambda: (model, None), step=0))
    for step in range(3):
        trainer.ts.step = step
        text = Trainer.sample(trainer)
        assert text.startswith("First")


def test_cli_generate_and_chat_with_a_padded_vocabulary(small_tokenizer, monkeypatch, capsys):
    from mylm_jax.train.run_dir import RunDir

    model = _model(vocab_size=512)
    run = SimpleNamespace(load_model=lambda step: (model, Config(model=model.cfg, data=DataConfig(seq_len=32)),
                                                   small_tokenizer))
    monkeypatch.setattr(RunDir, "open", staticmethod(lambda path: run))
    assert main(["generate", "--checkpoint", "run", "--prompt", "First", "--max-new-tokens", "16",
                 "--temperature", "1.5", "--num-samples", "3"]) == 0
    assert "--- sample 3 ---" in capsys.readouterr().out
    assert main(["generate", "--checkpoint", "run", "--top-k", "100000"]) == 2
    assert f"at most the vocabulary's {small_tokenizer.vocab_size} ids" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("Speak\nWho speaks?\n/exit\n"))
    assert main(["chat", "--checkpoint", "run", "--max-new-tokens", "8", "--temperature", "1.5"]) == 0
    assert capsys.readouterr().out.count("assistant> ") == 2
