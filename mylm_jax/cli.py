"""The `mylm` command.

    mylm config --config configs/gpt2_tiny.yaml [section.key=value ...]
        print the resolved, validated config as YAML
    mylm params --config configs/moe_tiny.yaml [section.key=value ...]
        build the model abstractly (no memory for weights) and print every parameter's
        path, shape, logical axes and size, the totals and the training FLOPs per token
    mylm optim --config configs/moe_tiny.yaml optim.name=muon
        print the optimizer grouping: each parameter's kind, optimizer (AdamW or Muon),
        Muon's matrix view, lr multiplier, peak lr and weight decay
    mylm tokenizer train | encode | decode | export-hf | inspect ...
        the byte-level BPE tokenizer (see mylm_jax/tokenizer/cli.py)
    mylm data prepare INPUT... --tokenizer TOK --out DIR | inspect DIR
        token shards from raw text (see mylm_jax/data/cli.py)
    mylm pretrain --config CONFIG [overrides] [--resume] | --continue RUN_DIR [overrides]
    mylm checkpoint show RUN_DIR | set-config RUN_DIR overrides     (see mylm_jax/train/cli.py)
    mylm sft --config configs/sft_X.yaml [overrides] [--resume]         (see mylm_jax/train/sft.py)
    mylm generate --checkpoint RUN_DIR --prompt TEXT | chat --checkpoint RUN_DIR  (mylm_jax/chat.py)
    mylm plot RUN_DIR [RUN_DIR ...] [--x tokens]      figures of runs' logs (mylm_jax/studies/plot.py)
    mylm search --config CONFIG --space space.yaml    Optuna search (mylm_jax/studies/search.py)

A user mistake (bad key, bad value, missing file, bad data) prints one line and exits with 2.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys

from mylm_jax.config import Config, ConfigError, dump_config, load_config
from mylm_jax.data.errors import DataError
from mylm_jax.tokenizer.errors import TokenizerError

USER_ERRORS = (ConfigError, DataError, TokenizerError)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (default: the built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override config values, e.g. model.n_layers=2 optim.lr=3e-4")


def cmd_config(cfg: Config, args) -> None:
    print(dump_config(cfg), end="")


def cmd_params(cfg: Config, args) -> None:
    from flax import nnx

    from mylm_jax.model.accounting import active_matmul_params, flops_per_token, param_count
    from mylm_jax.model.gpt import GPT
    from mylm_jax.model.params import logical_axes, param_shapes

    # eval_shape traces the constructor: shapes and metadata, no weights allocated.
    model = nnx.eval_shape(lambda: GPT(cfg.model, nnx.Rngs(0)))
    axes = logical_axes(model)
    shapes = param_shapes(model)
    width = max(len(name) for name in shapes)
    print(f"{'parameter':<{width}}  {'shape':<18} {'logical axes':<40} {'size':>12}")
    total = 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        total += size
        axes_str = "(" + ", ".join(str(a) for a in axes[name]) + ")"
        print(f"{name:<{width}}  {str(tuple(shape)):<18} {axes_str:<40} {size:>12,}")
    assert total == param_count(cfg.model), "accounting.param_count disagrees with the model"
    T = cfg.data.seq_len
    print(f"\ntotal parameters        {total:,}")
    print(f"matmul weights / token  {active_matmul_params(cfg.model):,}")
    print(f"training FLOPs / token  {flops_per_token(cfg.model, T):,.0f}  (T={T})")


def cmd_optim(cfg: Config, args) -> None:
    from flax import nnx

    from mylm_jax.model.gpt import GPT
    from mylm_jax.optim.build import param_assignments
    from mylm_jax.optim.grouping import format_assignments

    model = nnx.eval_shape(lambda: GPT(cfg.model, nnx.Rngs(0)))
    assignments = param_assignments(model, cfg.optim)
    print(format_assignments(assignments, cfg.optim))
    counts = {}
    for a in assignments.values():
        counts[a.optimizer] = counts.get(a.optimizer, 0) + math.prod(a.shape)
    total = sum(counts.values())
    print("\n" + "   ".join(f"{opt}: {n:,} parameters ({100 * n / total:.1f}%)" for opt, n in counts.items()))


COMMANDS = {
    "config": (cmd_config, "print the resolved config as YAML"),
    "params": (cmd_params, "list the model's parameters, sizes, logical axes and FLOPs per token"),
    "optim": (cmd_optim, "show which optimizer, lr multiplier and weight decay each parameter gets"),
}


# Commands with their own arguments: each module's add_parser(subparsers) registers its
# commands, and run(args) executes any of them.
MODULES = ("mylm_jax.tokenizer.cli", "mylm_jax.data.cli", "mylm_jax.train.cli", "mylm_jax.chat",
           "mylm_jax.studies.plot", "mylm_jax.studies.search")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mylm", description="MyLM: train language models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        _add_config_args(sub.add_parser(name, help=help_text, description=help_text))
    owner = {}
    for module in MODULES:
        before = set(sub.choices)
        importlib.import_module(module).add_parser(sub)
        owner.update({name: module for name in set(sub.choices) - before})
    args = parser.parse_args(argv)
    try:
        if args.command in owner:
            importlib.import_module(owner[args.command]).run(args)
        else:
            COMMANDS[args.command][0](load_config(args.config, args.overrides), args)
    except USER_ERRORS as e:  # a user's mistake: one line, no traceback
        print(f"mylm: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
