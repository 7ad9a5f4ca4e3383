"""`mylm serve` under load: tokens/s and time to first token at 1, 4, 16 concurrent clients,
against sequential decoding (one request at a time).

    python scripts/bench_serve.py                              # runs/quickstart/run; table + bench_serve.json
    python scripts/bench_serve.py runs/sft --clients 1 4 16 32 --max-batch 16 --max-tokens 64

The server (mylm_jax/serve/) runs in this process on 127.0.0.1 with --max-batch slots,
compiled before timing. Each client streams its requests one after another (prompts cut
from the run's own tokenizer-friendly text, sampled at temperature 0.8 with fixed seeds),
so `clients` requests are in flight at any time. Rows:
    sequential (Generator)   mylm_jax/generate.py's Generator, one prompt at a time, no server
                             (each prompt shape compiled before timing): plain decoding
    server, c clients        total completion tokens / wall time; time to first token (the
                             first streamed text) per request, mean and 90th percentile
Requests stop at the end-of-text token, so completions vary in length: every rate counts the
tokens actually generated (the server's `usage`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mylm_jax.config import ConfigError  # noqa: E402

TEXT = ("ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. "
        "JULIET: O Romeo, Romeo, wherefore art thou Romeo? Deny thy father and refuse thy name. "
        "MERCUTIO: A plague on both your houses! They have made worms' meat of me. "
        "FRIAR LAURENCE: These violent delights have violent ends, and in their triumph die.")


def prompts(n: int) -> list[str]:
    """n prompts of 3 to 14 words, starting at different places of TEXT."""
    words = TEXT.split()
    return [" ".join(words[(7 * i) % len(words):][:3 + (5 * i) % 12]) for i in range(n)]


async def client(http, url: str, model: str, jobs: list[tuple[str, int]], max_tokens: int, out: list) -> None:
    """Stream each (prompt, seed) in turn; record (time to first text, completion tokens)."""
    for prompt, seed in jobs:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed,
                "stream": True, "stream_options": {"include_usage": True}}
        start, first, tokens = time.perf_counter(), None, 0
        async with http.stream("POST", url + "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                elif first is None and chunk["choices"][0]["text"]:
                    first = time.perf_counter() - start
        out.append((first if first is not None else time.perf_counter() - start, tokens))


def load(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    import httpx

    jobs = list(zip(prompts(requests), range(requests)))
    per_client = [jobs[i::clients] for i in range(clients)]
    records: list = []

    async def everyone():
        limits = httpx.Limits(max_connections=clients + 4)
        async with httpx.AsyncClient(timeout=600, limits=limits) as http:
            await asyncio.gather(*(client(http, url, model, j, max_tokens, records) for j in per_client))

    start = time.perf_counter()
    asyncio.run(everyone())
    wall = time.perf_counter() - start
    ttft = np.array([r[0] for r in records])
    tokens = sum(r[1] for r in records)
    return {"clients": clients, "requests": requests, "tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall,
            "ttft_mean_ms": 1000 * ttft.mean(), "ttft_p90_ms": 1000 * np.percentile(ttft, 90)}


def sequential(model, tok, requests: int, max_tokens: int) -> dict:
    """The Generator, one prompt at a time (one seed for all: the Generator compiles per sampling
    setting and prompt length); a first untimed pass compiles every prompt length."""
    from mylm_jax.generate import Generator, SamplingConfig

    generator = Generator(model, SamplingConfig(max_new_tokens=max_tokens, temperature=0.8, stop_tokens=(tok.eos_id,),
                                                vocab_limit=tok.vocab_size), on_note=lambda text: None)

    def run_all():
        tokens, firsts = 0, []
        start = time.perf_counter()
        for prompt in prompts(requests):
            t0, first = time.perf_counter(), []
            ids = generator([tok.encode(prompt)], lambda *_: first or first.append(time.perf_counter() - t0))
            tokens += len(ids[0])
            firsts.append(first[0])
        return tokens, time.perf_counter() - start, np.array(firsts)

    run_all()
    tokens, wall, ttft = run_all()
    return {"clients": "sequential (Generator)", "requests": requests, "tokens": tokens, "seconds": wall,
            "tokens_per_s": tokens / wall, "ttft_mean_ms": 1000 * ttft.mean(), "ttft_p90_ms": 1000 * np.percentile(ttft, 90)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", default=str(ROOT / "runs/quickstart/run"), metavar="RUN_DIR")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients per row")
    parser.add_argument("--requests", type=int, default=32, help="requests per row (shared among the clients)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request")
    parser.add_argument("--max-batch", type=int, default=16, help="the server's decoding slots")
    parser.add_argument("--out", default=str(ROOT / "bench_serve.json"))
    args = parser.parse_args()

    import jax

    from mylm_jax.serve.app import Engine, create_app
    from mylm_jax.serve.server import BackgroundServer
    from mylm_jax.train.run_dir import RunDir

    try:
        model, cfg, tok = RunDir.open(args.run_dir).load_model()
    except ConfigError as e:
        sys.exit(f"bench_serve: error: {e} (make one with `mylm quickstart`)")
    name = Path(args.run_dir).resolve().name
    rows = [sequential(model, tok, args.requests, args.max_tokens)]
    engine = Engine(model, tok, name, args.max_batch)
    server = BackgroundServer(create_app(engine))
    try:
        load(server.url, name, min(args.clients), min(args.requests, 4), args.max_tokens)  # warm the HTTP path
        rows += [load(server.url, name, c, args.requests, args.max_tokens) for c in args.clients]
    finally:
        server.stop()
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base
    print(f"{'clients':<24} {'requests':>8} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'speed-up':>8} "
          f"{'TTFT mean ms':>12} {'TTFT p90 ms':>11}")
    for r in rows:
        print(f"{str(r['clients']):<24} {r['requests']:>8} {r['tokens']:>7} {r['seconds']:>8.2f} "
              f"{r['tokens_per_s']:>9.1f} {r['speedup']:>7.2f}x {r['ttft_mean_ms']:>12.1f} {r['ttft_p90_ms']:>11.1f}")
    results = {"device": jax.devices()[0].device_kind, "run_dir": args.run_dir, "max_batch": args.max_batch,
               "max_tokens": args.max_tokens, "context": cfg.model.max_seq_len, "rows": rows}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
