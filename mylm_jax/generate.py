"""Text generation: a jitted prefill, then one token at a time against a fixed-size KV cache.

    ids = generate(model, [prompt_ids, ...], SamplingConfig(max_new_tokens=64, top_p=0.9))

Cache. Every attention layer keeps the keys and values of the tokens seen so far in
arrays [B, S, K, d] (S = prompt + new tokens, at most model.max_seq_len), so a new token
costs one forward of one position instead of the whole sequence: O(S) instead of O(S^2)
work per token. The shapes never change, so prefill and the decode step compile once.

Batches of prompts are left-padded to one length: every row writes its next token into
the same cache slot, and the pad slots are marked invalid so no query attends to them.
Row b's token in slot s has position s - pad_b (for RoPE or learned positions).

Sampling, on the float32 logits of the last position, in this order:
    repetition penalty  (CTRL, Keskar et al. 2019) for every token already in the row
                        (prompt or generated): z -> z / p if z > 0 else z * p
    temperature         z / t; t = 0 is greedy (argmax)
    top-k               keep the k largest logits
    top-p (nucleus)     keep the smallest set of most likely tokens whose probability
                        reaches p (the token that crosses p is kept)
    draw                a categorical sample with a key split from `seed` per step
A row stops at any of `stop_tokens` (kept in the output) or after max_new_tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mylm_jax.model.attention import init_cache


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off
    stop_tokens: tuple[int, ...] = ()
    seed: int = 0


def apply_repetition_penalty(logits_BV: jax.Array, seen_BV: jax.Array, penalty: float) -> jax.Array:
    penalised = jnp.where(logits_BV > 0, logits_BV / penalty, logits_BV * penalty)
    return jnp.where(seen_BV, penalised, logits_BV)


def top_k_filter(logits_BV: jax.Array, k: int) -> jax.Array:
    kth_B1 = jax.lax.top_k(logits_BV, k)[0][:, -1:]
    return jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)


def top_p_filter(logits_BV: jax.Array, p: float) -> jax.Array:
    """Keep the most likely tokens until their probabilities sum to >= p (ties kept together)."""
    probs_BV = jax.nn.softmax(logits_BV, axis=-1)
    sorted_BV = jnp.sort(probs_BV, axis=-1)[:, ::-1]
    before_BV = jnp.cumsum(sorted_BV, axis=-1) - sorted_BV  # mass of the strictly more likely tokens
    kept_BV = before_BV < p
    threshold_B1 = jnp.min(jnp.where(kept_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(probs_BV >= threshold_B1, logits_BV, -jnp.inf)


def sample_next(logits_BV: jax.Array, key, seen_BV: jax.Array, s: SamplingConfig) -> jax.Array:
    logits_BV = logits_BV.astype(jnp.float32)
    if s.repetition_penalty != 1.0:
        logits_BV = apply_repetition_penalty(logits_BV, seen_BV, s.repetition_penalty)
    if s.temperature <= 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV / s.temperature
    if s.top_k:
        logits_BV = top_k_filter(logits_BV, s.top_k)
    if s.top_p < 1.0:
        logits_BV = top_p_filter(logits_BV, s.top_p)
    return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)


class Generator:
    """Jitted prefill and decode step for one model; reuse it across calls (compiled once per shape)."""

    def __init__(self, model: nnx.Module, sampling: SamplingConfig):
        self.cfg, self.sampling = model.cfg, sampling
        self.graphdef, self.state = nnx.split(model)
        V = self.cfg.vocab_size

        def prefill(state, tokens_BT, valid_BT, positions_BT, cache, key, seen_BV):
            logits_BTV, cache = nnx.merge(self.graphdef, state).decode(tokens_BT, positions_BT, valid_BT, cache)
            token_B = sample_next(logits_BTV[:, -1], key, seen_BV, sampling)
            return token_B, logits_BTV, cache

        def step(state, token_B, position_B, cache, key, seen_BV):
            seen_BV = seen_BV | jax.nn.one_hot(token_B, V, dtype=bool)
            logits_B1V, cache = nnx.merge(self.graphdef, state).decode(
                token_B[:, None], position_B[:, None], jnp.ones_like(token_B[:, None], bool), cache)
            return sample_next(logits_B1V[:, 0], key, seen_BV, sampling), logits_B1V[:, 0], cache, seen_BV

        self.prefill, self.step = jax.jit(prefill), jax.jit(step, donate_argnums=(3,))

    def __call__(self, prompts: Sequence[Sequence[int]],
                 on_tokens: Callable[[np.ndarray, np.ndarray], None] | None = None) -> list[list[int]]:
        """Continue every prompt; `on_tokens(tokens_B, active_B)` sees each step's tokens (streaming)."""
        s, cfg = self.sampling, self.cfg
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        B = len(prompts)
        S = min(cfg.max_seq_len, max(len(p) for p in prompts) + s.max_new_tokens)
        keep = max(1, S - s.max_new_tokens)  # prompts longer than this keep their last tokens
        prompts = [list(p)[-keep:] for p in prompts]
        T = max(len(p) for p in prompts)
        pads = np.array([T - len(p) for p in prompts])
        tokens = np.zeros((B, T), np.int32)
        for b, p in enumerate(prompts):
            tokens[b, pads[b]:] = p
        valid = np.arange(T)[None, :] >= pads[:, None]
        positions = np.maximum(np.arange(T)[None, :] - pads[:, None], 0).astype(np.int32)
        seen = np.zeros((B, cfg.vocab_size), bool)
        for b, p in enumerate(prompts):
            seen[b, p] = True
        key = jax.random.PRNGKey(s.seed)
        key, sub = jax.random.split(key)
        cache = init_cache(cfg, B, S)
        token, _, cache = self.prefill(self.state, jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(positions),
                                       cache, sub, jnp.asarray(seen))
        seen = jnp.asarray(seen)
        out = [[] for _ in range(B)]
        active = np.ones(B, bool)
        stops = set(s.stop_tokens)
        for i in range(min(s.max_new_tokens, S - T + 1)):
            host_token = np.asarray(token)
            for b in np.flatnonzero(active):
                out[b].append(int(host_token[b]))
            if on_tokens is not None:
                on_tokens(host_token, active.copy())
            active &= ~np.isin(host_token, list(stops)) if stops else True
            if not active.any() or i == s.max_new_tokens - 1 or T + i >= S:
                break
            key, sub = jax.random.split(key)
            position = jnp.asarray((T + i - pads).astype(np.int32))
            token, _, cache, seen = self.step(self.state, token, position, cache, sub, seen)
        return out


def generate(model: nnx.Module, prompts: Sequence[Sequence[int]], sampling: SamplingConfig = SamplingConfig(),
             on_tokens=None) -> list[list[int]]:
    return Generator(model, sampling)(prompts, on_tokens)


def generate_uncached(model: nnx.Module, prompt: Sequence[int], sampling: SamplingConfig) -> list[int]:
    """The same sampling without a cache: the whole window re-read for every token (the
    baseline of scripts/bench_generate.py; also what a model without `decode` would need)."""
    graphdef, state = nnx.split(model)
    T = model.cfg.max_seq_len

    @jax.jit
    def next_token(state, window_1T, length, key, seen_1V):
        logits, _ = nnx.merge(graphdef, state)(window_1T)
        return sample_next(logits[:, length - 1], key, seen_1V, sampling)

    tokens, key = list(prompt), jax.random.PRNGKey(sampling.seed)
    seen = np.zeros((1, model.cfg.vocab_size), bool)
    seen[0, tokens] = True
    for _ in range(sampling.max_new_tokens):
        window = tokens[-T:]
        padded = np.zeros((1, T), np.int32)
        padded[0, :len(window)] = window  # causal: the padding after the window is never attended
        key, sub = jax.random.split(key)
        token = int(next_token(state, jnp.asarray(padded), len(window), sub, jnp.asarray(seen))[0])
        tokens.append(token)
        seen[0, token] = True
        if token in sampling.stop_tokens:
            break
    return tokens[len(prompt):]
