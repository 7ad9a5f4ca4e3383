"""B sequences decoding side by side in one KV cache, each at its own length (the device half
of the server's batcher, mylm_jax/serve/batcher.py).

    slots = SlotDecoder(model, n_slots=8, vocab_limit=tok.vocab_size)
    token, ok = slots.prefill(slot, prompt_ids, seed, temperature, top_p)   # a new sequence in `slot`
    tokens_B, ok_B = slots.step(tokens_B, positions_B, used)                 # one token for every slot < used

`ok` is False where the slot's logits were not finite (a NaN checkpoint): its token is
meaningless and the batcher ends the sequence with an error (generate.py's `finite_rows`).

Why per-row caches. `Generator` (mylm_jax/generate.py) starts every row of a batch together,
so one write index serves them all. Here a slot is refilled whenever its sequence ends,
while the others are mid-way: each slot needs its own index. The cache is therefore B
independent one-row caches stacked on a leading axis (every leaf of `init_cache(cfg, 1, S)`
gets a [B] axis; index becomes [B]) and the decode step is `jax.vmap` of the model's own
one-row `GPT.decode` over that axis: row b writes its key / value at its own index and its
causal mask stops at its own length. The weights are not mapped, so the B one-token
matmuls fold into one [B, D] x [D, F] matmul, as in a plain batch.

Prefill. A prompt of L tokens is padded on the right to a bucket length T (powers of two
up to S = max_seq_len) and decoded into a fresh one-row cache; the pad slots are marked
invalid and the row's index is set back to L, so the first new token overwrites the first
pad slot. Positions are 0..L-1, as for the prompt alone. Causal masking means the real
tokens never see the pads, so the logits at L-1 are the prompt's own. Fixed shapes: one
compiled step per step size (below) and one compiled prefill per bucket; `warmup()`
compiles them all before the first request.

Sampling. `sample_rows` (generate.py) with each slot's temperature, top-p and key: a slot's
key starts as PRNGKey(seed) and is split once per token exactly as `Generator` splits its
key, so a seeded request continues as `mylm generate --seed` does for that prompt alone.
Bit-identical logits across different batch compositions are not guaranteed (a matmul over
B rows may sum in another order than over 1 row: differences of ~1e-7), so a sampled or
greedy token could differ only where two candidates tie to that precision.

Step sizes. A step computes the first k slots only, k = the smallest power of two (<= B)
covering every busy slot (the batcher fills the lowest free slot first, so busy slots stay
packed low): one compile per k, and one client alone does not pay for B rows. Free slots
inside the first k decode garbage (fixed shapes); their writes stay inside their own row and
are never read, since a prefill starts the row from a fresh cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mylm_jax.generate import finite_rows, sample_rows
from mylm_jax.model.attention import init_cache

SMALLEST_BUCKET = 16


def bucket_lengths(context: int) -> list[int]:
    """Prefill lengths: 16, 32, 64, ... and the context itself (each compiles once)."""
    lengths, n = [], SMALLEST_BUCKET
    while n < context:
        lengths.append(n)
        n *= 2
    return lengths + [context]


class SlotDecoder:
    """A fixed number of decoding slots over one model; not thread-safe (one worker drives it)."""

    def __init__(self, model: nnx.Module, n_slots: int, vocab_limit: int | None = None):
        cfg = model.cfg
        self.cfg, self.n_slots, self.context = cfg, n_slots, cfg.max_seq_len
        self.vocab_limit = min(vocab_limit or cfg.vocab_size, cfg.vocab_size)
        self.buckets = bucket_lengths(self.context)
        graphdef, self.state = nnx.split(model)
        S, limit = self.context, self.vocab_limit

        def decode_row(state, tokens_1T, positions_1T, valid_1T, cache):
            return nnx.merge(graphdef, state).decode(tokens_1T, positions_1T, valid_1T, cache)

        def prefill(state, cache, keys_B, slot, tokens_T, length, key, temperature, top_p):
            T = tokens_T.shape[0]
            valid_1T = (jnp.arange(T) < length)[None]
            positions_1T = jnp.minimum(jnp.arange(T), S - 1)[None].astype(jnp.int32)
            logits_1TV, row = decode_row(state, tokens_T[None], positions_1T, valid_1T, init_cache(cfg, 1, S))
            row = row._replace(index=length.astype(row.index.dtype))  # the first new token overwrites the pads
            cache = jax.tree.map(lambda c, r: c.at[slot].set(r), cache, row)
            key, sub = jax.random.split(key)
            last_1V = jax.lax.dynamic_index_in_dim(logits_1TV[0], length - 1, keepdims=True)
            token = sample_rows(last_1V, sub[None], temperature[None], top_p[None], limit)[0]
            return token, finite_rows(last_1V, limit)[0], keys_B.at[slot].set(key), cache

        def step(state, cache, keys_B, tokens_k, positions_k, temperature_k, top_p_k):
            k = tokens_k.shape[0]  # the first k slots (k <= B): the rest are free and skipped
            part = jax.tree.map(lambda c: c[:k], cache)
            logits_k11V, part = jax.vmap(decode_row, in_axes=(None, 0, 0, 0, 0))(
                state, tokens_k[:, None, None], positions_k[:, None, None], jnp.ones((k, 1, 1), bool), part)
            cache = jax.tree.map(lambda c, p: c.at[:k].set(p), cache, part)
            keys_k2, subs_k = jnp.moveaxis(jax.vmap(jax.random.split)(keys_B[:k]), 1, 0)
            tokens_k = sample_rows(logits_k11V[:, 0, 0], subs_k, temperature_k, top_p_k, limit)
            return tokens_k, finite_rows(logits_k11V[:, 0, 0], limit), keys_B.at[:k].set(keys_k2), cache

        self._prefill = jax.jit(prefill, donate_argnums=(1, 2))
        self._step = jax.jit(step, donate_argnums=(1, 2))
        row = init_cache(cfg, 1, S)
        # Placed as the compiled calls return them (replicated on the weights' mesh): otherwise
        # the first call after each warm-up call would see a new input type and compile again.
        like = jax.tree.leaves(self.state)[0].sharding
        placed = NamedSharding(like.mesh, PartitionSpec()) if isinstance(like, NamedSharding) else like
        self.cache = jax.device_put(jax.tree.map(lambda x: jnp.zeros((n_slots,) + x.shape, x.dtype), row), placed)
        self.keys = jax.device_put(jnp.zeros((n_slots, 2), jnp.uint32), placed)
        self.temperature = np.zeros(n_slots, np.float32)
        self.top_p = np.ones(n_slots, np.float32)

    def bucket(self, length: int) -> int:
        return next(b for b in self.buckets if b >= length)

    def prefill(self, slot: int, prompt: list[int], seed: int, temperature: float, top_p: float) -> tuple[int, bool]:
        """Start `prompt` (1 <= len < context) in `slot`; returns its first new token and whether
        the logits it was drawn from were finite."""
        L = len(prompt)
        if not 0 < L < self.context:
            raise ValueError(f"a prompt of {L} tokens does not fit a context of {self.context}")
        tokens = np.zeros(self.bucket(L), np.int32)
        tokens[:L] = prompt
        self.temperature[slot], self.top_p[slot] = temperature, top_p
        token, ok, self.keys, self.cache = self._prefill(
            self.state, self.cache, self.keys, np.int32(slot), tokens, np.int32(L),
            jax.random.PRNGKey(seed), np.float32(temperature), np.float32(top_p))
        return int(token), bool(ok)

    def step(self, tokens_B: np.ndarray, positions_B: np.ndarray,
             used: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Feed every slot its last token (at its position); returns the next token of each and
        whether its logits were finite. used: slots [used, B) are free: only the first
        `row_bucket(used)` slots are computed (the others come back as token 0, finite)."""
        k = self.row_bucket(self.n_slots if used is None else used)
        tokens_k, ok_k, self.keys, self.cache = self._step(
            self.state, self.cache, self.keys, np.asarray(tokens_B[:k], np.int32),
            np.asarray(positions_B[:k], np.int32), self.temperature[:k], self.top_p[:k])
        tokens, ok = np.zeros(self.n_slots, np.int32), np.ones(self.n_slots, bool)
        tokens[:k], ok[:k] = np.asarray(tokens_k), np.asarray(ok_k)
        return tokens, ok

    def row_bucket(self, used: int) -> int:
        """The step's row count for `used` slots: 1, 2, 4, ... up to B (one compile each), so a
        lightly loaded server does not compute all B rows every token."""
        k = 1
        while k < used:
            k *= 2
        return min(k, self.n_slots)

    def warmup(self) -> None:
        """Compile every step size and every prefill bucket now (slot 0 is overwritten; call
        before serving)."""
        for length in self.buckets:
            self.prefill(0, [0] * min(length, self.context - 1), 0, 1.0, 0.9)
        for used in sorted({self.row_bucket(n) for n in range(1, self.n_slots + 1)}):
            self.step(np.zeros(self.n_slots, np.int32), np.zeros(self.n_slots, np.int32), used)
