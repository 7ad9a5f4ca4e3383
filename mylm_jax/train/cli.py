"""`mylm pretrain` and `mylm checkpoint`.

    mylm pretrain --config configs/shakespeare.yaml [section.key=value ...] [--resume]
        train; --resume continues from the latest checkpoint in train.out_dir
    mylm pretrain --continue runs/x [section.key=value ...]
        continue runs/x with its checkpoint's own config, changed by the overrides
        (e.g. train.steps=4000 optim.lr=3e-4); shapes, optimizer and tokenizer must stay
    mylm sft --config configs/sft_alpaca_zh.yaml [section.key=value ...] [--resume]
        fine-tune a pretrained run (sft.init_from) on conversations (mylm_jax/train/sft.py)
    mylm checkpoint show runs/x [--step N]
        the steps kept (latest, best), and a checkpoint's config, tokenizer and data
    mylm checkpoint set-config runs/x section.key=value ...
        rewrite the config stored in the latest checkpoint (what --continue starts from)
"""

from __future__ import annotations

import json
from pathlib import Path

from mylm_jax.config import ConfigError, apply_overrides, config_from_dict, config_to_dict, dump_config, load_config


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="pretrain a model (the main job)")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.out_dir")
    p.add_argument("--continue", dest="continue_dir", metavar="RUN_DIR",
                   help="continue RUN_DIR with its checkpoint's config (+ overrides)")
    f = subparsers.add_parser("sft", help="fine-tune a pretrained run on conversations")
    f.add_argument("--config", help="YAML config file with an sft section")
    f.add_argument("overrides", nargs="*", metavar="section.key=value")
    f.add_argument("--resume", action="store_true", help="continue from the latest SFT checkpoint")
    c = subparsers.add_parser("checkpoint", help="show a run's checkpoints, or change their stored config")
    sub = c.add_subparsers(dest="checkpoint_command", required=True)
    show = sub.add_parser("show", help="steps kept and a checkpoint's config")
    show.add_argument("run_dir")
    show.add_argument("--step", type=int)
    reset = sub.add_parser("set-config", help="rewrite the latest checkpoint's stored config")
    reset.add_argument("run_dir")
    reset.add_argument("overrides", nargs="+", metavar="section.key=value")


def _checkpointer(run_dir: str):
    from mylm_jax.train.checkpoint import Checkpointer

    if not (Path(run_dir) / "checkpoints").is_dir():
        raise ConfigError(f"{run_dir}: no checkpoints/ directory (not a run directory?)")
    ckpt = Checkpointer(run_dir, read_only=True)
    if ckpt.latest_step() is None:
        raise ConfigError(f"{run_dir}: no committed checkpoint")
    return ckpt


def _quiet_libraries() -> None:
    """Orbax and grain log routine INFO / WARNING lines through absl; keep the terminal for
    the run's own output (MYLM_VERBOSE=1 shows them)."""
    import os

    from absl import logging
    if not os.environ.get("MYLM_VERBOSE"):
        logging.set_verbosity(logging.ERROR)


def _train(args) -> None:
    if args.command == "sft":
        from mylm_jax.train.sft import sft
        sft(load_config(args.config, args.overrides), args.resume)
        return
    from mylm_jax.train.loop import pretrain
    if args.continue_dir:
        if args.config:
            raise ConfigError("--continue takes the config from the checkpoint; drop --config")
        meta = _checkpointer(args.continue_dir).read_meta()
        values = apply_overrides(meta["config"], [f"train.out_dir={args.continue_dir}", *args.overrides])
        pretrain(config_from_dict(values), resume=True)
    else:
        pretrain(load_config(args.config, args.overrides), args.resume)


def run(args) -> None:
    _quiet_libraries()
    if args.command in ("sft", "pretrain"):
        from mylm_jax.train.loop import NonFiniteLoss
        try:
            _train(args)
        except NonFiniteLoss as e:  # the run stopped itself, with a checkpoint: one line, exit 3
            print(f"mylm: {e}", flush=True)
            raise SystemExit(3) from None
        return
    ckpt = _checkpointer(args.run_dir)
    if args.checkpoint_command == "show":
        steps = ckpt.all_steps()
        step = args.step if args.step is not None else ckpt.latest_step()
        if step not in steps:
            raise ConfigError(f"{args.run_dir}: no checkpoint at step {step} (kept: {steps})")
        meta = ckpt.read_meta(step)
        print(f"checkpoints kept: {steps} (latest {ckpt.latest_step()})")
        print(f"step {step}: data {meta.get('data_path')}, tokenizer {meta['tokenizer']['fingerprint'][:16]}... "
              f"(vocab {meta['tokenizer']['vocab_size']})")
        print(dump_config(config_from_dict(meta["config"])), end="")
        return
    # set-config: the meta item is a plain JSON file inside the (committed) step directory.
    step = ckpt.latest_step()
    path = ckpt.directory / str(step) / "meta" / "metadata"
    meta = json.loads(path.read_text())
    new = config_from_dict(apply_overrides(meta["config"], args.overrides))  # validates
    meta["config"] = config_to_dict(new)
    path.write_text(json.dumps(meta))
    print(f"step {step}: stored config updated ({', '.join(args.overrides)})")
