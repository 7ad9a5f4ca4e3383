"""Draw every learning-rate schedule, and Muon's momentum warmup, to one PNG.

    python scripts/plot_schedules.py                       # docs/schedules.png, 1000 steps
    python scripts/plot_schedules.py --steps 500 --out /tmp/s.png optim.warmup_steps=50

Each curve is `mylm_jax.optim.schedules.lr_schedule` evaluated at every step, with the
optim section of the defaults (or of --config), varying only the schedule and its shape.
The second panel is `mylm_jax.optim.build.muon_momentum` (its warmup length from the
config, or modded-nanogpt's 300 steps when the config has none).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mylm_jax.config import ConfigError, load_config  # noqa: E402

CURVES = [("constant", "linear"), ("cosine", "linear"),
          ("wsd", "linear"), ("wsd", "cosine"), ("wsd", "1-sqrt")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "docs/schedules.png"))
    args = parser.parse_args()
    try:
        cfg = load_config(args.config, [f"train.steps={args.steps}", *args.overrides])
    except ConfigError as e:
        sys.exit(f"plot_schedules: error: {e}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from mylm_jax.optim.build import muon_momentum
    from mylm_jax.optim.schedules import lr_schedule

    steps = np.arange(args.steps)
    fig, (ax, ax_mu) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=(2, 1))
    for schedule, shape in CURVES:
        optim = dataclasses.replace(cfg.optim, schedule=schedule, decay_shape=shape)
        label = schedule if schedule != "wsd" else f"wsd ({shape} decay)"
        ax.plot(steps, np.asarray(lr_schedule(optim, args.steps)(steps)), label=label)
    o = cfg.optim
    ax.set(xlabel="step", ylabel="learning rate",
           title=f"lr={o.lr:g}, warmup={o.warmup_steps}, min_lr_ratio={o.min_lr_ratio:g}, "
                 f"wsd decay_fraction={o.decay_fraction:g}")
    ax.grid(alpha=0.3)
    ax.legend()
    o = dataclasses.replace(o, muon_momentum_warmup_steps=o.muon_momentum_warmup_steps or 300)
    ax_mu.plot(steps, np.asarray(muon_momentum(o)(steps)), color="tab:purple")
    ax_mu.set(xlabel="step", ylabel="Muon momentum", ylim=(0.8, 1.0),
              title=f"Muon momentum: {o.muon_momentum_start:g} -> {o.muon_momentum:g} "
                    f"in {o.muon_momentum_warmup_steps} steps")
    ax_mu.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
