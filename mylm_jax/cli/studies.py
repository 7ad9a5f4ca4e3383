"""`mylm plot` and `mylm search`: the studies that have a command (the others are scripts/).

    mylm plot runs/a runs/b --out runs/plots [--x tokens] [--smooth 0.9]
        figures of runs' logs (mylm_jax/studies/plot.py)
    mylm search --config configs/quickstart.yaml --space configs/search/space.yaml \\
        --trials 20 --out runs/search [section.key=value ...]
        Optuna search, resumable and pruned (mylm_jax/studies/search.py)
"""

from __future__ import annotations

from pathlib import Path

from mylm_jax.cli.common import HelpFormatter, add_config_args, quiet_libraries
from mylm_jax.studies.script import StudyError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plot", help="plot runs' losses, lr, grad norm, tokens/s, expert load",
                              formatter_class=HelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one or more run directories")
    p.add_argument("--out", help="where the PNGs go (default: the first run's plots/)")
    p.add_argument("--x", choices=("step", "tokens"), default="step", help="align runs by step or tokens")
    p.add_argument("--smooth", type=float, default=0.9, help="EMA decay of the smoothed loss (0: none)")
    s = subparsers.add_parser("search", help="hyperparameter search with Optuna (resumable, pruned)",
                              formatter_class=HelpFormatter)
    add_config_args(s)
    s.add_argument("--space", required=True, help="search space YAML (see mylm_jax/studies/search.py)")
    s.add_argument("--trials", type=int, default=20, help="total finished trials wanted (resumes count)")
    s.add_argument("--out", default="runs/search", help="where search.db, the results and the trial runs go")
    s.add_argument("--name", default="search", help="study name inside OUT/search.db")
    s.add_argument("--seed", type=int, default=0, help="the sampler's seed")


def cmd_plot(args) -> None:
    from mylm_jax.studies.plot import plot_runs

    out = args.out or str(Path(args.run_dirs[0]) / "plots")
    if not 0 <= args.smooth < 1:
        raise StudyError(f"--smooth must be in [0, 1), got {args.smooth}")
    for path in plot_runs(args.run_dirs, out, args.x, args.smooth):
        print(path)


def cmd_search(args) -> None:
    from mylm_jax.studies.search import search

    quiet_libraries()
    best = search(args.config, args.overrides, args.space, args.trials, args.out, args.name, args.seed)
    if best:
        print(f"best val loss {best['value']:.4f} (trial {best['trial']}): {best['params']}")
    out = Path(args.out)
    print(f"written: {out / 'best_params.json'}, {out / 'search_results.json'}, figures in {out}")


def run(args) -> None:
    cmd_plot(args) if args.command == "plot" else cmd_search(args)
