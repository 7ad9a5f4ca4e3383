"""Forward+backward time of single layers, per implementation, against the torch twin.

    python scripts/bench_layers.py                     # attention and MoE at the reference sizes
    python scripts/bench_layers.py --tokens 2048

Attention: one layer of configs/gpt2_tiny.yaml (B 16, T 256, 4 heads of 64) with each
`attention_impl`, and the twin's `scaled_dot_product_attention`. MoE: one layer of
configs/moe_tiny.yaml with each `moe_impl`, and the twin's grouped loop. Medians of
repeated calls; the sum of the output times a fixed random tensor is differentiated
with respect to the layer's input and weights. Writes bench_layers.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mylm_jax.config import load_config  # noqa: E402


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def jax_layer_ms(make, call, x, reps):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mylm_jax.model.params import build_with_random_params
    layer = build_with_random_params(make, seed=0)
    graphdef, params = nnx.split(layer)
    probe = jax.random.normal(jax.random.key(1), call(layer, x).shape)

    @jax.jit
    def grads(params, x):
        return jax.grad(lambda p, x: jnp.sum(call(nnx.merge(graphdef, p), x) * probe), argnums=(0, 1))(params, x)

    return median_ms(lambda: jax.block_until_ready(grads(params, x)), reps)


def torch_layer_ms(layer, call, x, reps):
    import torch
    with torch.no_grad():  # the twin's layers start uninitialised (its GPT initialises them)
        for p in layer.parameters():
            p.normal_(0.0, 0.02)
    x = x.clone().requires_grad_()
    probe = torch.randn_like(call(layer, x))

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        (call(layer, x) * probe).sum().backward()

    return median_ms(step, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--json", default="bench_layers.json")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    import mylm_torch.model as tm
    from mylm_jax.model.attention import Attention
    from mylm_jax.model.moe import MoE

    results = {}
    gpt2 = load_config(ROOT / "configs/gpt2_tiny.yaml").model
    B, T, D = 16, 256, gpt2.d_model
    x = jax.random.normal(jax.random.key(0), (B * T, D))
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    for impl in ("reference", "dot_product", "blockwise"):
        cfg = dataclasses.replace(gpt2, attention_impl=impl)
        results[f"attention jax {impl}"] = jax_layer_ms(
            lambda: Attention(cfg, nnx.Rngs(0)), lambda m, x: m(x, B, T, positions, None), x, args.reps)
    results["attention torch sdpa"] = torch_layer_ms(
        tm.Attention(gpt2), lambda m, x: m(x, B, T, None, None), torch.randn(B * T, D), args.reps)

    moe_cfg = load_config(ROOT / "configs/moe_tiny.yaml").model
    for impl in ("dense", "ragged", "blocked"):
        cfg = dataclasses.replace(moe_cfg, moe_impl=impl)
        results[f"moe jax {impl}"] = jax_layer_ms(lambda: MoE(cfg, nnx.Rngs(0)), lambda m, x: m(x)[0], x, args.reps)
    results["moe torch twin"] = torch_layer_ms(tm.MoE(moe_cfg), lambda m, x: m(x)[0], torch.randn(B * T, D),
                                               args.reps)

    print(f"{'layer, implementation':<28}{'ms (forward+backward)':>24}")
    for name, ms in results.items():
        print(f"{name:<28}{ms:>24.1f}")
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
