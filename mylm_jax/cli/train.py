"""`mylm pretrain`, `mylm sft` and `mylm checkpoint`.

    mylm pretrain --config configs/quickstart.yaml [section.key=value ...] [--resume | --overwrite]
        train; --resume continues from the newest readable checkpoint in train.out_dir,
        --overwrite deletes the earlier run there first (one run per directory: without
        either, a train.out_dir that holds checkpoints or logs is an error)
    mylm pretrain --continue runs/x [section.key=value ...]
        continue runs/x with its checkpoint's own config, changed by the overrides
        (e.g. train.steps=4000 optim.lr=3e-4); shapes, optimizer and tokenizer must stay
    mylm sft --config configs/sft_alpaca_zh.yaml [section.key=value ...] [--resume | --overwrite]
        fine-tune a pretrained run (sft.init_from) on conversations (mylm_jax/train/sft.py)
    mylm checkpoint show runs/x [--step N]
        the steps kept (latest, best), and a checkpoint's config, tokenizer and data
    mylm checkpoint set-config runs/x section.key=value ...
        rewrite the config stored in the latest checkpoint (what --continue starts from);
        shapes, optimizer and tokenizer must stay, as for --continue

A run that halts itself on a non-finite loss (train.on_nonfinite=halt) saves a
checkpoint, prints one line and exits with 3.
"""

from __future__ import annotations

from mylm_jax.cli.common import add_config_args, quiet_libraries
from mylm_jax.config import ConfigError, apply_overrides, config_from_dict, dump_config, load_config


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="pretrain a model (the main job)")
    add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.out_dir")
    p.add_argument("--continue", dest="continue_dir", metavar="RUN_DIR",
                   help="continue RUN_DIR with its checkpoint's config (+ overrides)")
    f = subparsers.add_parser("sft", help="fine-tune a pretrained run on conversations")
    add_config_args(f)
    f.add_argument("--resume", action="store_true", help="continue from the latest SFT checkpoint")
    for parser in (p, f):
        parser.add_argument("--overwrite", action="store_true",
                            help="delete the earlier run in train.out_dir (checkpoints, logs) and start again")
    c = subparsers.add_parser("checkpoint", help="show a run's checkpoints, or change their stored config")
    sub = c.add_subparsers(dest="checkpoint_command", required=True)
    show = sub.add_parser("show", help="steps kept and a checkpoint's config")
    show.add_argument("run_dir")
    show.add_argument("--step", type=int)
    reset = sub.add_parser("set-config", help="rewrite the latest checkpoint's stored config")
    reset.add_argument("run_dir")
    reset.add_argument("overrides", nargs="+", metavar="section.key=value")


def _train(args) -> None:
    if args.command == "sft":
        from mylm_jax.train.sft import sft
        sft(load_config(args.config, args.overrides), args.resume, args.overwrite)
        return
    from mylm_jax.train.loop import pretrain
    if args.continue_dir:
        from mylm_jax.train.run_dir import RunDir
        if args.config:
            raise ConfigError("--continue takes the config from the checkpoint; drop --config")
        if args.overwrite or args.resume:
            raise ConfigError("--continue resumes RUN_DIR; drop --overwrite / --resume")
        meta = RunDir.open(args.continue_dir).meta()
        values = apply_overrides(meta["config"], [f"train.out_dir={args.continue_dir}", *args.overrides])
        pretrain(config_from_dict(values), resume=True)
    else:
        pretrain(load_config(args.config, args.overrides), args.resume, args.overwrite)


def cmd_show(args) -> None:
    from mylm_jax.train.run_dir import RunDir

    run = RunDir.open(args.run_dir)
    step = run.step(args.step)  # the newest readable one (a warning names any skipped), or --step's
    meta = run.meta(step)
    print(f"checkpoints kept: {run.steps} (latest {run.latest_step})")
    print(f"step {step}: data {meta.get('data_path')}, tokenizer {meta['tokenizer']['fingerprint'][:16]}... "
          f"(vocab {meta['tokenizer']['vocab_size']})")
    print(dump_config(config_from_dict(meta["config"])), end="")


def cmd_set_config(args) -> None:
    from mylm_jax.train.run_dir import RunDir

    step = RunDir.open(args.run_dir).set_config(args.overrides)
    print(f"step {step}: stored config updated ({', '.join(args.overrides)})")


def run(args) -> None:
    quiet_libraries()
    if args.command in ("sft", "pretrain"):
        from mylm_jax.train.loop import NonFiniteLoss
        try:
            _train(args)
        except NonFiniteLoss as e:  # the run stopped itself, with a checkpoint: one line, exit 3
            print(f"mylm: {e}", flush=True)
            raise SystemExit(3) from None
    elif args.checkpoint_command == "show":
        cmd_show(args)
    else:
        cmd_set_config(args)
