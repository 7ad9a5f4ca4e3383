"""Decoding speed with and without the KV cache (mylm_jax/generate.py), tokens/s.

    python scripts/bench_generate.py                     # table + bench_generate.json
    python scripts/bench_generate.py --config configs/quickstart.yaml --new-tokens 200

A model with random weights (the config's architecture) continues a prompt greedily.
With the cache each new token is one forward of one position against the cached keys
and values; without it, every token re-reads the whole window (a full forward of
max_seq_len positions). Both are compiled before timing (a warm-up run of each).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mylm_jax.config import ConfigError, load_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/quickstart.yaml"))
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4, help="prompts decoded together with the cache")
    parser.add_argument("--out", default=str(ROOT / "bench_generate.json"))
    args = parser.parse_args()
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        sys.exit(f"bench_generate: error: {e}")

    import jax
    import numpy as np
    from flax import nnx

    from mylm_jax.generate import Generator, SamplingConfig, generate_uncached
    from mylm_jax.model.gpt import GPT

    model = GPT(cfg.model, nnx.Rngs(0))
    greedy = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.0)
    prompt = np.random.default_rng(0).integers(0, cfg.model.vocab_size, args.prompt_tokens).tolist()
    results = {"device": jax.devices()[0].device_kind, "config": args.config, "prompt_tokens": args.prompt_tokens,
               "new_tokens": args.new_tokens, "max_seq_len": cfg.model.max_seq_len}

    def timed(fn):
        fn()  # compile
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    generator = Generator(model, greedy)
    cached, t_cached = timed(lambda: generator([prompt]))
    batched, t_batched = timed(lambda: generator([prompt] * args.batch))
    uncached, t_uncached = timed(lambda: generate_uncached(model, prompt, greedy))
    assert cached[0] == uncached, "cached and uncached greedy decoding disagree"
    n = len(cached[0])
    rows = {"KV cache, 1 prompt": n / t_cached, f"KV cache, {args.batch} prompts": args.batch * n / t_batched,
            "no cache, 1 prompt": n / t_uncached}
    results["tokens_per_s"] = rows
    results["cache_speedup"] = rows["KV cache, 1 prompt"] / rows["no cache, 1 prompt"]
    print(f"{'decoding (' + str(n) + ' new tokens)':<28} {'tokens/s':>10}")
    for label, rate in rows.items():
        print(f"{label:<28} {rate:>10,.1f}")
    print(f"cache speed-up (1 prompt): {results['cache_speedup']:.1f}x; greedy tokens identical")
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
