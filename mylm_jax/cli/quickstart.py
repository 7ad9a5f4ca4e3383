"""`mylm quickstart`: the first run, tokenizer -> token shards -> pretraining, from any directory.

    mylm quickstart [--out runs/quickstart] [--corpus NAME_OR_PATH] [section.key=value ...]

The corpus is the embedded tinyshakespeare (mylm_jax/data/corpora/) unless --corpus names
another embedded corpus (tang_poems: 5,003 Tang poems, for a Chinese demo) or a file /
directory / glob; the config is the package's
quickstart.yaml (= configs/quickstart.yaml). A rerun replaces the previous quickstart's
tokenizer, data and run in --out, and says so; an --out that holds anything else is refused.
The work is mylm_jax/quickstart.py's `quickstart`, which the Python API calls too.
"""

from __future__ import annotations

from mylm_jax.cli.common import quiet_libraries


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("quickstart", help="train a tokenizer and a small GPT on Shakespeare (the first run)")
    p.add_argument("--out", default="runs/quickstart",
                   help="directory for the tokenizer, shards and run: new, empty or an earlier quickstart's, "
                        "which a rerun replaces (default: runs/quickstart)")
    p.add_argument("--corpus", help="an embedded corpus (tinyshakespeare, the default; tang_poems, Chinese: "
                                    "add model.vocab_size=4096 train.sample_prompt=春) or your own text file, "
                                    "directory or glob (each file one document, val its last 10%%)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="override the quickstart config, e.g. train.steps=100 model.n_layers=2")


def run(args) -> None:
    quiet_libraries()
    from mylm_jax.quickstart import next_steps, quickstart
    from mylm_jax.train.loop import NonFiniteLoss

    try:
        result = quickstart(args.out, args.corpus, args.overrides, say=lambda text: print(text, flush=True))
    except NonFiniteLoss as e:  # as `mylm pretrain`: the run stopped itself, with a checkpoint
        print(f"mylm: {e}", flush=True)
        raise SystemExit(3) from None
    evals = ", ".join(f"{r['val_loss']:.3f}" for r in result.evals) or "none"
    print(f"done in {result.seconds:.0f} s: {result.steps} steps, val loss at each eval: {evals}")
    print(next_steps(result))
