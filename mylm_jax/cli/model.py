"""`mylm config | params | optim`: what a config builds, before anything is trained.

    mylm config --config configs/gpt2_tiny.yaml [section.key=value ...]
        print the resolved, validated config as YAML
    mylm params --config configs/moe_tiny.yaml [section.key=value ...]
        build the model abstractly (no memory for weights) and print every parameter's
        path, shape, logical axes and size, the totals and the training FLOPs per token
    mylm optim --config configs/moe_tiny.yaml optim.name=muon
        print the optimizer grouping: each parameter's kind, optimizer (AdamW or Muon),
        Muon's matrix view, lr multiplier, peak lr and weight decay
"""

from __future__ import annotations

import math

from mylm_jax.cli.common import HelpFormatter, add_config_args
from mylm_jax.config import Config, dump_config, load_config


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


def add_parser(subparsers) -> None:
    for name, (_, help_text) in COMMANDS.items():
        add_config_args(subparsers.add_parser(name, help=help_text, description=help_text,
                                              formatter_class=HelpFormatter))


def run(args) -> None:
    COMMANDS[args.command][0](load_config(args.config, args.overrides), args)
