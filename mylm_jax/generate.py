"""Text generation: a jitted prefill, then one token at a time against a fixed-size KV cache.

    ids = generate(model, [prompt_ids, ...], SamplingConfig(max_new_tokens=64, top_p=0.9))

Cache. Every attention layer keeps the keys and values of the tokens seen so far in
arrays [B, S, K, d] (S = prompt + new tokens, at most model.max_seq_len), so a new token
costs one forward of one position instead of the whole sequence: O(S) instead of O(S^2)
work per token. The shapes never change, so prefill and the decode step compile once.

Batches of prompts are left-padded to one length: every row writes its next token into
the same cache slot, and the pad slots are marked invalid so no query attends to them.
Row b's token in slot s has position s - pad_b (for RoPE or learned positions).

Context. Prompt and new tokens share the model's context of max_seq_len positions
(`fit_to_context`, the longest prompt of a batch decides):
    prompt + max_new_tokens fits    everything, as asked
    the prompt fits                 the whole prompt; max_new_tokens reduced to the room left,
                                    as long as that leaves at least min(max_new_tokens, 16)
    otherwise                       the prompt's last (max_seq_len - that minimum) tokens, and the
                                    minimum of new tokens
Whenever it reduces or cuts anything, the Generator says so in one line (`on_note`).

Sampling, on the float32 logits of the last position, in this order:
    vocabulary limit    ids >= vocab_limit (a vocabulary padded past the tokenizer's, e.g.
                        GPT-2's 50257 ids in 50304 rows) get -inf: they are never sampled
    repetition penalty  (CTRL, Keskar et al. 2019) for every token already in the row
                        (prompt or generated): z -> z / p if z > 0 else z * p
    temperature         z / t; t = 0 is greedy (argmax)
    top-k               keep the k largest logits
    top-p (nucleus)     keep the smallest set of most likely tokens whose probability
                        reaches p (the token that crosses p is kept)
    draw                a categorical sample with a key split from `seed` per step
A row stops at any of `stop_tokens` (kept in the output) or after max_new_tokens.
Every setting is range-checked once, in SamplingConfig, for the CLI and Python callers alike,
and so are the values its ranges allow but float32 cannot sample (`sampling_problem`: a top_p
that is 0 on the device, a temperature that overflows the logits). The server checks its
requests with the same function.

Non-finite logits. A checkpoint with NaN weights gives NaN logits, and sampling from them
picks id 0 every time (NUL bytes, and nothing says why). The jitted steps compute one flag
per row, "every logit below the vocabulary limit is finite", which the host reads with the
token it reads anyway; a false flag is a NonFiniteLogits error (one line), never a token.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mylm_jax.config import ConfigError, check_fields
from mylm_jax.model.attention import init_cache

# A prompt is cut rather than leave fewer new tokens than this (or than max_new_tokens, if fewer).
MIN_NEW_TOKENS = 16
# float32's smallest positive normal number. A smaller top_p reaches the device as 0 or as a
# denormal, which XLA flushes to 0: no token is then kept, and every draw is id 0.
MIN_TOP_P = float(np.finfo(np.float32).tiny)
# A temperature below this divides float32 logits past float32's range (inf, then inf - inf =
# NaN in top-p's softmax); it would be greedy in all but name anyway.
MIN_TEMPERATURE = 1e-5


class NonFiniteLogits(ConfigError):
    """The model gave NaN/inf logits: a broken checkpoint, not a sampling setting (one line)."""

    def __init__(self, where: str = ""):
        super().__init__(f"the model's logits are not finite (NaN/inf){where}, so no token can be sampled: the "
                         "checkpoint's weights hold NaN/inf or its computation overflows (a diverged run?); "
                         "try an earlier checkpoint (--step)")


def sampling_problem(temperature: float, top_p: float) -> tuple[str, str] | None:
    """(field, what it must be) for a temperature or top_p inside its range that float32
    cannot sample with, or None. SamplingConfig and the server's requests both ask."""
    if 0 < top_p < MIN_TOP_P:
        return "top_p", (f"must be at least {MIN_TOP_P:.8g} (a smaller top_p is 0 in float32 and would mask "
                         f"every token), got {top_p}")
    if 0 < temperature < MIN_TEMPERATURE:
        return "temperature", (f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g} (a smaller one overflows "
                               f"float32 logits), got {temperature}")
    return None


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.8  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off
    stop_tokens: tuple[int, ...] = ()
    seed: int = 0
    # Ids >= vocab_limit are never sampled: set it to the tokenizer's vocab_size, which may be
    # smaller than the model's (padded) vocabulary. None: every id of the model. The Generator
    # lowers it to the model's vocab_size.
    vocab_limit: int | None = None

    # The notation of mylm_jax/config/validation.py's RANGES. A repetition penalty of 0 would divide by 0.
    RANGES = {"max_new_tokens": "> 0", "temperature": ">= 0", "top_k": ">= 0", "top_p": "(0, 1]",
              "repetition_penalty": "> 0", "seed": "[0, 2**63)", "vocab_limit": "> 0"}

    def __post_init__(self):
        # Errors name the field and the `mylm generate` flag: "top_p (--top-p) must be in (0, 1], got 2.0"
        label = lambda key: f"{key} (--{key.replace('_', '-')})"  # noqa: E731
        check_fields(self, label)
        problem = sampling_problem(self.temperature, self.top_p)
        if problem:
            raise ConfigError(f"{label(problem[0])} {problem[1]}")
        if self.vocab_limit is not None and self.top_k > self.vocab_limit:
            raise ConfigError(f"top_k (--top-k) must be at most the vocabulary's {self.vocab_limit} ids, "
                              f"got {self.top_k}")

    def for_vocab(self, vocab_size: int) -> "SamplingConfig":
        """These settings for a model of `vocab_size` rows (re-checked: top_k against the vocabulary)."""
        limit = vocab_size if self.vocab_limit is None else min(self.vocab_limit, vocab_size)
        return dataclasses.replace(self, vocab_limit=limit)


def fit_to_context(prompt_len: int, max_new_tokens: int, context: int) -> tuple[int, int, str | None]:
    """(prompt tokens kept, new tokens, a note or None) for a prompt in a context of `context`
    positions; the rule is in the module docstring. Prompt kept + new tokens <= context."""
    if prompt_len + max_new_tokens <= context:
        return prompt_len, max_new_tokens, None
    minimum = max(1, min(max_new_tokens, MIN_NEW_TOKENS, context - 1))  # at least one prompt token stays
    room = context - prompt_len
    if room >= minimum:
        return prompt_len, room, (f"generating {room} new tokens, not {max_new_tokens}: the prompt's "
                                  f"{prompt_len} tokens leave room for {room} in the model's context of {context}")
    keep = max(1, context - minimum)
    return keep, minimum, (f"the prompt's {prompt_len} tokens and {max_new_tokens} new ones exceed the model's "
                           f"context of {context}: dropped its first {prompt_len - keep} tokens, kept the last "
                           f"{keep}, generating {minimum}")


def note_to_stderr(text: str) -> None:
    print(f"mylm: note: {text}", file=sys.stderr, flush=True)


def mask_ids_from(logits_BV: jax.Array, limit: int) -> jax.Array:
    """-inf for every id >= limit: rows of a padded vocabulary that no tokenizer id stands for."""
    if limit >= logits_BV.shape[-1]:
        return logits_BV
    return jnp.where(jnp.arange(logits_BV.shape[-1]) < limit, logits_BV, -jnp.inf)


def finite_rows(logits_BV: jax.Array, limit: int) -> jax.Array:
    """[B] bool: every logit of the row below `limit` is finite (the masked ids are -inf on purpose)."""
    return jnp.isfinite(logits_BV[:, :limit]).all(axis=-1)


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
    if s.vocab_limit is not None:
        logits_BV = mask_ids_from(logits_BV, s.vocab_limit)
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


def sample_rows(logits_BV: jax.Array, keys_B: jax.Array, temperature_B: jax.Array, top_p_B: jax.Array,
                vocab_limit: int) -> jax.Array:
    """`sample_next` with each row's own temperature, top-p and key (arrays, so rows of one
    batch may differ; the server's slots, mylm_jax/serve/slots.py). Same steps in the same
    order, no top-k or repetition penalty; row b draws exactly what `sample_next` with
    keys_B[b] draws for that row alone, so a row's text does not depend on its neighbours."""
    logits_BV = mask_ids_from(logits_BV.astype(jnp.float32), vocab_limit)
    greedy_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    scaled_BV = logits_BV / jnp.where(temperature_B > 0, temperature_B, 1.0)[:, None]
    scaled_BV = jnp.where((top_p_B < 1.0)[:, None], top_p_filter(scaled_BV, top_p_B[:, None]), scaled_BV)
    drawn_B = jax.vmap(lambda key, z_V: jax.random.categorical(key, z_V[None], axis=-1)[0])(keys_B, scaled_BV)
    return jnp.where(temperature_B > 0, drawn_B.astype(jnp.int32), greedy_B)


class Generator:
    """Jitted prefill and decode step for one model; reuse it across calls (compiled once per shape).

    on_note(text) hears when a prompt is cut or fewer new tokens fit (default: one line on stderr).
    """

    def __init__(self, model: nnx.Module, sampling: SamplingConfig,
                 on_note: Callable[[str], None] = note_to_stderr):
        sampling = sampling.for_vocab(model.cfg.vocab_size)
        self.cfg, self.sampling, self.on_note = model.cfg, sampling, on_note
        self.graphdef, self.state = nnx.split(model)
        V = self.cfg.vocab_size

        def prefill(state, tokens_BT, valid_BT, positions_BT, cache, key, seen_BV):
            logits_BTV, cache = nnx.merge(self.graphdef, state).decode(tokens_BT, positions_BT, valid_BT, cache)
            token_B = sample_next(logits_BTV[:, -1], key, seen_BV, sampling)
            return token_B, finite_rows(logits_BTV[:, -1], sampling.vocab_limit), cache

        def step(state, token_B, position_B, cache, key, seen_BV):
            seen_BV = seen_BV | jax.nn.one_hot(token_B, V, dtype=bool)
            logits_B1V, cache = nnx.merge(self.graphdef, state).decode(
                token_B[:, None], position_B[:, None], jnp.ones_like(token_B[:, None], bool), cache)
            token_B = sample_next(logits_B1V[:, 0], key, seen_BV, sampling)
            return token_B, finite_rows(logits_B1V[:, 0], sampling.vocab_limit), cache, seen_BV

        self.prefill, self.step = jax.jit(prefill), jax.jit(step, donate_argnums=(3,))

    def __call__(self, prompts: Sequence[Sequence[int]],
                 on_tokens: Callable[[np.ndarray, np.ndarray], None] | None = None) -> list[list[int]]:
        """Continue every prompt; `on_tokens(tokens_B, active_B)` sees each step's tokens (streaming)."""
        s, cfg = self.sampling, self.cfg
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ConfigError("every prompt needs at least one token")
        bad = [i for p in prompts for i in p if not 0 <= i < cfg.vocab_size]
        if bad:
            raise ConfigError(f"prompt token id {bad[0]} is outside the model's vocabulary [0, {cfg.vocab_size})")
        B = len(prompts)
        keep, new_tokens, note = fit_to_context(max(len(p) for p in prompts), s.max_new_tokens, cfg.max_seq_len)
        if note:
            self.on_note(note)
        prompts = [list(p)[-keep:] for p in prompts]
        T = max(len(p) for p in prompts)
        S = T + new_tokens  # cache slots: <= max_seq_len (the last new token is never fed back)
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
        token, finite, cache = self.prefill(self.state, jnp.asarray(tokens), jnp.asarray(valid),
                                            jnp.asarray(positions), cache, sub, jnp.asarray(seen))
        seen = jnp.asarray(seen)
        out = [[] for _ in range(B)]
        active = np.ones(B, bool)
        stops = set(s.stop_tokens)
        for i in range(new_tokens):
            host_token = np.asarray(token)
            bad = np.flatnonzero(active & ~np.asarray(finite))
            if bad.size:
                raise NonFiniteLogits(f" at new token {i + 1} of row {bad[0]}")
            for b in np.flatnonzero(active):
                out[b].append(int(host_token[b]))
            if on_tokens is not None:
                on_tokens(host_token, active.copy())
            active &= ~np.isin(host_token, list(stops)) if stops else True
            if not active.any() or i == new_tokens - 1:
                break
            key, sub = jax.random.split(key)
            position = jnp.asarray((T + i - pads).astype(np.int32))
            token, finite, cache, seen = self.step(self.state, token, position, cache, sub, seen)
        return out


def generate(model: nnx.Module, prompts: Sequence[Sequence[int]], sampling: SamplingConfig = SamplingConfig(),
             on_tokens=None, on_note: Callable[[str], None] = note_to_stderr) -> list[list[int]]:
    return Generator(model, sampling, on_note)(prompts, on_tokens)


def generate_uncached(model: nnx.Module, prompt: Sequence[int], sampling: SamplingConfig) -> list[int]:
    """The same sampling without a cache: the whole window re-read for every token (the
    baseline of scripts/bench_generate.py; also what a model without `decode` would need)."""
    graphdef, state = nnx.split(model)
    T = model.cfg.max_seq_len
    sampling = sampling.for_vocab(model.cfg.vocab_size)

    @jax.jit
    def next_token(state, window_1T, length, key, seen_1V):
        logits, _ = nnx.merge(graphdef, state)(window_1T)
        last_1V = logits[:, length - 1]
        return sample_next(last_1V, key, seen_1V, sampling), finite_rows(last_1V, sampling.vocab_limit)

    tokens, key = list(prompt), jax.random.PRNGKey(sampling.seed)
    seen = np.zeros((1, model.cfg.vocab_size), bool)
    seen[0, tokens] = True
    for _ in range(sampling.max_new_tokens):
        window = tokens[-T:]
        padded = np.zeros((1, T), np.int32)
        padded[0, :len(window)] = window  # causal: the padding after the window is never attended
        key, sub = jax.random.split(key)
        token_1, finite_1 = next_token(state, jnp.asarray(padded), len(window), sub, jnp.asarray(seen))
        if not bool(finite_1[0]):
            raise NonFiniteLogits(f" at new token {len(tokens) - len(prompt) + 1}")
        token = int(token_1[0])
        tokens.append(token)
        seen[0, token] = True
        if token in sampling.stop_tokens:
            break
    return tokens[len(prompt):]
