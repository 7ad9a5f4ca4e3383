"""`mylm pretrain`, `mylm sft` and `mylm checkpoint`.

    mylm pretrain --config configs/quickstart.yaml [section.key=value ...] [--resume | --overwrite] [--quiet]
        train; --resume continues from the newest readable checkpoint in train.out_dir,
        --overwrite deletes the earlier run there first (one run per directory: without
        either, a train.out_dir that holds checkpoints or logs is an error)
    mylm pretrain --continue runs/x [section.key=value ...]
        continue runs/x with its checkpoint's own config, changed by the overrides
        (e.g. train.steps=4000 optim.lr=3e-4); shapes, optimizer and tokenizer must stay
    mylm sft --config configs/sft_alpaca_zh.yaml [section.key=value ...] [--resume | --overwrite]
        fine-tune a pretrained run (sft.init_from) on conversations (mylm_jax/train/sft.py)
    mylm checkpoint show runs/x [--step N] [--weights]
        the steps kept (latest, best), and a checkpoint's config, tokenizer and data;
        --weights adds each parameter's shape, norm, mean, std and max |x|
    mylm checkpoint set-config runs/x section.key=value ...
        rewrite the config stored in the latest checkpoint (what --continue starts from);
        shapes, optimizer and tokenizer must stay, as for --continue

A run that halts itself on a non-finite loss (train.on_nonfinite=halt) saves a
checkpoint, prints one line and exits with 3.

A config mistake (a bad key or value, a data.path without metadata.json, a missing
sft.data file or sft.init_from run) is reported before jax and the trainer are imported,
in a fraction of a second (`checked_config`).
"""

from __future__ import annotations

from pathlib import Path

from mylm_jax.cli.common import HelpFormatter, add_config_args, add_quiet, quiet_libraries
from mylm_jax.config import Config, ConfigError, apply_overrides, config_from_dict, dump_config, load_config
from mylm_jax.data.readers import expand_inputs
from mylm_jax.data.shards import read_metadata


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="pretrain a model (the main job)", formatter_class=HelpFormatter)
    add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.out_dir")
    p.add_argument("--continue", dest="continue_dir", metavar="RUN_DIR",
                   help="continue RUN_DIR with its checkpoint's config (+ overrides)")
    f = subparsers.add_parser("sft", help="fine-tune a pretrained run on conversations", formatter_class=HelpFormatter)
    add_config_args(f)
    f.add_argument("--resume", action="store_true", help="continue from the latest SFT checkpoint")
    for parser in (p, f):
        parser.add_argument("--overwrite", action="store_true",
                            help="delete the earlier run in train.out_dir (checkpoints, logs) and start again")
        add_quiet(parser)
    c = subparsers.add_parser("checkpoint", help="show a run's checkpoints, or change their stored config",
                              formatter_class=HelpFormatter)
    sub = c.add_subparsers(dest="checkpoint_command", required=True)
    show = sub.add_parser("show", help="steps kept and a checkpoint's config", formatter_class=HelpFormatter)
    show.add_argument("run_dir", help="a pretrain or sft run directory")
    show.add_argument("--step", type=int, help="checkpoint step (default: the newest readable one)")
    show.add_argument("--weights", action="store_true",
                      help="add each parameter's shape, norm, mean, std and max |x| (loads the weights)")
    reset = sub.add_parser("set-config", help="rewrite the latest checkpoint's stored config",
                           formatter_class=HelpFormatter)
    reset.add_argument("run_dir", help="a pretrain or sft run directory")
    reset.add_argument("overrides", nargs="+", metavar="section.key=value", help="the config values to change")


def checked_config(args) -> Config | None:
    """The command's config, validated, with the files it names checked, before any heavy
    import (None for --continue: its config is in the checkpoint). Each mistake is one line."""
    if args.command == "pretrain" and args.continue_dir:
        if args.config:
            raise ConfigError("--continue takes the config from the checkpoint; drop --config")
        if args.overwrite or args.resume:
            raise ConfigError("--continue resumes RUN_DIR; drop --overwrite / --resume")
        if not (Path(args.continue_dir) / "checkpoints").is_dir():
            raise ConfigError(f"--continue {args.continue_dir}: no checkpoints/ directory (not a run directory?)")
        return None
    cfg = load_config(args.config, args.overrides)
    if args.command == "pretrain":
        if not cfg.data.path:
            raise ConfigError("data.path is empty: prepare a dataset with `mylm data prepare` and set data.path")
        read_metadata(cfg.data.path)  # DataError, one line, when it is not a prepared dataset
    else:
        if not cfg.sft.init_from:
            raise ConfigError("sft.init_from is empty: name the pretraining run directory to fine-tune")
        if not (Path(cfg.sft.init_from) / "checkpoints").is_dir():
            raise ConfigError(f"sft.init_from={cfg.sft.init_from}: no checkpoints/ directory (not a run directory?)")
        if not cfg.sft.data:
            raise ConfigError("sft.data is empty: list the JSON / JSONL files of conversations")
        expand_inputs([x for x in cfg.sft.data if "://" not in x])  # a missing file: DataError, one line
    return cfg


def _train(args, cfg: Config | None) -> None:
    if args.command == "sft":
        from mylm_jax.train.sft import sft
        sft(cfg, args.resume, args.overwrite, quiet=args.quiet)
        return
    from mylm_jax.train.loop import pretrain
    if cfg is None:  # --continue
        from mylm_jax.train.run_dir import RunDir
        meta = RunDir.open(args.continue_dir).meta()
        values = apply_overrides(meta["config"], [f"train.out_dir={args.continue_dir}", *args.overrides])
        pretrain(config_from_dict(values), resume=True, quiet=args.quiet)
    else:
        pretrain(cfg, args.resume, args.overwrite, quiet=args.quiet)


def cmd_show(args) -> None:
    from mylm_jax.train.run_dir import RunDir

    run = RunDir.open(args.run_dir)
    step = run.step(args.step)  # the newest readable one (a warning names any skipped), or --step's
    meta = run.meta(step)
    print(f"checkpoints kept: {run.steps} (latest {run.latest_step})")
    print(f"step {step}: data {meta.get('data_path')}, tokenizer {meta['tokenizer']['fingerprint'][:16]}... "
          f"(vocab {meta['tokenizer']['vocab_size']})")
    print(dump_config(config_from_dict(meta["config"])), end="")
    if args.weights:
        from mylm_jax.model.params import param_stats

        model, _, _ = run.load_model(step)
        stats = param_stats(model)
        width = max(len(name) for name in stats)
        print(f"\n{'parameter':<{width}}  {'shape':<18} {'norm':>10} {'mean':>11} {'std':>10} {'max |x|':>10}")
        for name, s in stats.items():
            print(f"{name:<{width}}  {str(s['shape']):<18} {s['norm']:>10.4g} {s['mean']:>11.3e} "
                  f"{s['std']:>10.4g} {s['max_abs']:>10.4g}")


def cmd_set_config(args) -> None:
    from mylm_jax.train.run_dir import RunDir

    step = RunDir.open(args.run_dir).set_config(args.overrides)
    print(f"step {step}: stored config updated ({', '.join(args.overrides)})")


def run(args) -> None:
    if args.command in ("sft", "pretrain"):
        cfg = checked_config(args)  # before jax: a config mistake answers at once
        quiet_libraries()
        from mylm_jax.train.loop import NonFiniteLoss
        try:
            _train(args, cfg)
        except NonFiniteLoss as e:  # the run stopped itself, with a checkpoint: one line, exit 3
            print(f"mylm: {e}", flush=True)
            raise SystemExit(3) from None
    elif args.checkpoint_command == "show":
        quiet_libraries()
        cmd_show(args)
    else:
        quiet_libraries()
        cmd_set_config(args)
