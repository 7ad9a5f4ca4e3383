"""Generation: cached decoding equals the full forward for every variant, batches of
left-padded prompts, greedy = the twin's greedy, sampling filters by their definitions,
and masked SFT positions contribute nothing to the loss or its gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mylm_jax.generate import (SamplingConfig, apply_repetition_penalty, generate, generate_uncached,
                               top_p_filter)
from mylm_jax.model.attention import init_cache
from mylm_jax.model.gpt import GPT
from mylm_jax.train.loss import cross_entropy
from mylm_jax.model.params import build_with_random_params
from mylm_jax.variants import VARIANTS, variant

LOGITS_ABS = 1e-5


def _model(name, **overrides):
    cfg = variant(name, **overrides)
    return cfg, build_with_random_params(lambda: GPT(cfg, nnx.Rngs(0)), seed=2)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cached_decoding_gives_the_full_forward_logits(name):
    cfg, model = _model(name)
    B, T, prefix = 2, 12, 5
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    full, _ = model(jnp.asarray(tokens))
    cache = init_cache(cfg, B, T)
    positions = np.tile(np.arange(T, dtype=np.int32), (B, 1))
    valid = np.ones((B, T), bool)
    logits, cache = model.decode(tokens[:, :prefix], positions[:, :prefix], valid[:, :prefix], cache)
    pieces = [logits]
    for t in range(prefix, T):
        logits, cache = model.decode(tokens[:, t:t + 1], positions[:, t:t + 1], valid[:, t:t + 1], cache)
        pieces.append(logits)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=LOGITS_ABS, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "modern", "moe_swiglu_shared"])
def test_left_padded_batch_equals_each_prompt_alone(name):
    cfg, model = _model(name)
    prompts = [[5, 9, 2, 7, 7, 1, 3], [11, 4]]
    T = max(map(len, prompts))
    tokens = np.zeros((2, T), np.int32)
    valid = np.zeros((2, T), bool)
    positions = np.zeros((2, T), np.int32)
    for b, p in enumerate(prompts):
        tokens[b, T - len(p):], valid[b, T - len(p):] = p, True
        positions[b, T - len(p):] = np.arange(len(p))
    logits, _ = model.decode(tokens, positions, valid, init_cache(cfg, 2, T + 4))
    for b, p in enumerate(prompts):
        alone, _ = model(jnp.asarray([p]))
        np.testing.assert_allclose(logits[b, -1], alone[0, -1], atol=LOGITS_ABS, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "modern_qknorm_mha", "gated_elementwise", "moe_gelu"])
def test_greedy_is_deterministic_and_equals_the_twin(name):
    torch = pytest.importorskip("torch")
    from mylm_jax.model.params import flat_params
    from mylm_torch.convert import jax_to_torch
    from mylm_torch.model import GPT as TorchGPT

    cfg, model = _model(name)
    prompt, greedy = [3, 17, 8, 8, 21], SamplingConfig(max_new_tokens=12, temperature=0.0)
    ours = generate(model, [prompt], greedy)[0]
    assert ours == generate(model, [prompt], greedy)[0] == generate_uncached(model, prompt, greedy)
    twin = TorchGPT(cfg)
    twin.load_state_dict(jax_to_torch(flat_params(model), cfg))
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(12):  # the twin decodes without a cache: the whole sequence each time
            logits, _ = twin(torch.tensor([tokens]))
            tokens.append(int(logits[0, -1].argmax()))
    assert ours == tokens[len(prompt):]


def test_stop_tokens_batches_and_streaming():
    cfg, model = _model("modern")
    greedy = SamplingConfig(max_new_tokens=10, temperature=0.0)
    free = generate(model, [[1, 2, 3]], greedy)[0]
    stop = SamplingConfig(max_new_tokens=10, temperature=0.0, stop_tokens=(free[3],))
    streamed = []
    out = generate(model, [[1, 2, 3], [9, 9]], stop, on_tokens=lambda t, a: streamed.append(t[0]))
    assert out[0] == free[:free.index(free[3]) + 1]  # stops at the first stop token, which is kept
    assert streamed[:len(out[0])] == out[0]
    sampled = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=5, top_p=0.9, seed=3)
    assert generate(model, [[1, 2]], sampled) == generate(model, [[1, 2]], sampled)


def test_repetition_penalty_definition():
    logits = jnp.array([[2.0, -2.0, 1.0, -1.0]])
    seen = jnp.array([[True, True, False, False]])
    np.testing.assert_allclose(apply_repetition_penalty(logits, seen, 2.0), [[1.0, -4.0, 1.0, -1.0]])


def test_top_p_definition():
    probs = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    logits = jnp.log(jnp.asarray([probs]))
    kept = lambda p: np.isfinite(np.asarray(top_p_filter(logits, p)))[0].tolist()  # noqa: E731
    assert kept(0.5) == [True, False, False, False, False]  # 0.5 reaches 0.5
    assert kept(0.6) == [True, True, False, False, False]  # needs the 0.2 that crosses 0.6
    assert kept(0.86) == [True, True, True, True, False]
    assert kept(1.0) == [True] * 5


def test_masked_positions_contribute_nothing_to_loss_or_gradient():
    cfg, model = _model("modern")
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 10)), jnp.int32)
    targets = rng.integers(0, cfg.vocab_size, (2, 10)).astype(np.int32)
    mask = (rng.random((2, 10)) < 0.5).astype(np.float32)
    other = np.where(mask > 0, targets, (targets + 7) % cfg.vocab_size)  # change every masked target

    def loss(m, t):
        return cross_entropy(m(tokens)[0], jnp.asarray(t), jnp.asarray(mask))

    (a, ga), (b, gb) = nnx.value_and_grad(loss)(model, targets), nnx.value_and_grad(loss)(model, other)
    assert float(a) == float(b)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------- degenerate settings


def _one_line(fn) -> str:
    from mylm_jax.config import ConfigError
    with pytest.raises(ConfigError) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("settings, words", [
    (dict(top_p=1e-40), "top_p (--top-p) must be at least 1.1754944e-38 (a smaller top_p is 0 in float32"),
    (dict(top_p=1e-300), "top_p (--top-p) must be at least"),
    (dict(temperature=1e-40), "temperature (--temperature) must be 0 (greedy) or at least 1e-05"),
])
def test_sampling_refuses_settings_that_would_mask_every_token(settings, words):
    assert words in _one_line(lambda: SamplingConfig(**settings))


def test_the_top_p_bound_is_where_float32_stops_keeping_the_likeliest_token():
    from mylm_jax.generate import MIN_TOP_P
    logits = jnp.asarray([[0.0, 5.0, 1.0]])
    kept = lambda p: np.isfinite(np.asarray(top_p_filter(logits, jnp.float32(p))))[0].tolist()  # noqa: E731
    assert kept(MIN_TOP_P) == [False, True, False]  # the smallest value allowed keeps the likeliest token
    assert kept(MIN_TOP_P / 2) == [False, False, False]  # below it (a denormal, flushed to 0) nothing is kept
    SamplingConfig(top_p=MIN_TOP_P, temperature=1e-5)  # both bounds are allowed


def test_mylm_generate_refuses_a_top_p_of_1e_40_before_the_checkpoint(tmp_path, capsys):
    from mylm_jax.cli import main
    assert main(["generate", "--checkpoint", str(tmp_path / "no_run"), "--top-p", "1e-40"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mylm: error: top_p (--top-p) must be at least") and len(err.splitlines()) == 1, err


def _nan_model(**overrides):
    """A model whose weights are all NaN (a diverged run's checkpoint)."""
    cfg, model = _model("modern", **overrides)
    graphdef, state = nnx.split(model)
    nan = lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.floating) else x  # noqa: E731
    return cfg, nnx.merge(graphdef, jax.tree.map(nan, state))


def test_non_finite_logits_are_an_error_never_tokens():
    from mylm_jax.generate import Generator, NonFiniteLogits
    _, model = _nan_model()
    for sampling in (SamplingConfig(max_new_tokens=4, temperature=0.0), SamplingConfig(max_new_tokens=4, top_p=0.9)):
        with pytest.raises(NonFiniteLogits, match=r"^the model's logits are not finite \(NaN/inf\) at new token 1"):
            Generator(model, sampling, on_note=lambda text: None)([[1, 2, 3]])
        with pytest.raises(NonFiniteLogits):
            generate_uncached(model, [1, 2, 3], sampling)


def test_mylm_generate_with_nan_logits_is_one_line_and_exit_2(monkeypatch, capsys):
    from types import SimpleNamespace

    from mylm_jax.cli import main
    from mylm_jax.config import Config, DataConfig
    from mylm_jax.tokenizer import train_tokenizer
    from mylm_jax.train.run_dir import RunDir
    from tests.train_helpers import TEXT

    tok = train_tokenizer([TEXT * 5], vocab_size=300, progress=False)
    cfg, model = _nan_model(vocab_size=512)  # room for the tokenizer's ids
    run = SimpleNamespace(load_model=lambda step: (model, Config(model=cfg, data=DataConfig(seq_len=32)), tok))
    monkeypatch.setattr(RunDir, "open", staticmethod(lambda path: run))
    assert main(["generate", "--checkpoint", "run", "--prompt", "First", "--max-new-tokens", "8"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("mylm: error: the model's logits are not finite (NaN/inf)") and len(err.splitlines()) == 1
    assert "\x00" not in captured.out
