"""The initialisation schemes of the model family (mylm_jax/model/init.py), side by side.

    python scripts/init_study.py [--schemes normal gpt2_scaled xavier kaiming zero_out]
        [--variant modern] [--steps 100] [--layers 4] [--out runs/studies/init_study]

Each scheme starts the same model (same seed, same batches, AdamW) and trains it; we log
  * the loss curve: a bad init shows as a high start or a slow first descent;
  * per layer, the RMS of the residual stream after each block: if it grows with depth
    the deeper blocks' outputs dominate (the reason gpt2_scaled shrinks the output
    projections by 1/sqrt(2L)); zero_out starts every block as the identity, so it is flat;
  * per layer, the RMS of the gradient of that block's parameters: how evenly the
    learning signal reaches each depth (vanishing or exploding towards the input).
Both RMS profiles are taken at step 1 (the init itself) and after --probe-steps steps.

Writes results.json, report.md and weight_initialization_comparison.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mylm_jax.config import ConfigError  # noqa: E402
from mylm_jax.studies.datasets import draw_batches, prepare_dataset, study_config  # noqa: E402
from mylm_jax.studies.results import figure, markdown_table, save_figure, write_results  # noqa: E402
from mylm_jax.studies.script import StudyError, add_study_args, fail, with_overrides  # noqa: E402
from mylm_jax.variants import variant_model  # noqa: E402

PROG = "init_study.py"
SCHEMES = ("normal", "gpt2_scaled", "xavier", "kaiming", "zero_out")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    p.add_argument("--variant", default="modern", help="a dense variant: gpt2, modern, gated_headwise, ...")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--probe-steps", type=int, default=20, help="the second RMS profile is taken after these")
    add_study_args(p, "init_study", layers=4)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def check(args) -> None:
    for s in args.schemes:
        if s not in SCHEMES:
            raise StudyError(f"unknown init scheme {s!r} (expected one of {', '.join(SCHEMES)})")
    if variant_model(args.variant).get("n_experts"):
        raise StudyError("the init study uses a dense variant (gpt2, modern, gated_headwise, gated_elementwise)")
    if not 1 <= args.probe_steps <= args.steps:
        raise StudyError(f"--probe-steps must be in [1, --steps={args.steps}], got {args.probe_steps}")


def train_scheme(cfg, batches) -> dict:
    """Train cfg's model on `batches`; per step: loss, and per layer activation and gradient RMS."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mylm_jax.model.gpt import GPT
    from mylm_jax.model.layout import to_unrolled
    from mylm_jax.model.params import path_name
    from mylm_jax.model.stack import run_layers
    from mylm_jax.optim.build import build_optimizer, param_assignments
    from mylm_jax.train.loss import cross_entropy_sum

    model = GPT(cfg.model, nnx.Rngs(cfg.train.seed))
    tx, _ = build_optimizer(cfg.optim, cfg.train.steps, param_assignments(model, cfg.optim))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    L = cfg.model.n_layers
    rms = lambda x: jnp.sqrt(jnp.mean(jnp.square(x)))  # noqa: E731

    def loss_fn(model, batch):
        """GPT.__call__, reading the residual stream's RMS after every block (either layout)."""
        B, T = batch["inputs"].shape
        x = model._embed(batch["inputs"], batch["positions"])

        def layer(block, x):
            x, _ = block(x, B, T, batch["positions"], batch["segment_ids"])
            return x, rms(x)

        x, acts = run_layers(model.cfg, model, x, layer)
        loss_sum, count = cross_entropy_sum(model._logits(x, B, T), batch["targets"], batch["loss_mask"])
        return loss_sum / jnp.maximum(count, 1.0), jnp.stack(acts)

    def layer_grad_rms(grads):
        """Per layer, the RMS of all its parameters' gradients (names in the unrolled layout)."""
        flat = to_unrolled({path_name(p): g for p, g in
                            jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(grads))[0]}, cfg.model)
        per_layer = [[g.ravel() for name, g in sorted(flat.items()) if name.startswith(f"blocks.{i}.")]
                     for i in range(L)]
        return jnp.stack([rms(jnp.concatenate(gs)) for gs in per_layer])

    @nnx.jit
    def step(model, optimizer, batch):
        (loss, acts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
        optimizer.update(model, grads)
        return loss, acts, layer_grad_rms(grads)

    losses, acts, grads = [], [], []
    for i in range(len(batches["inputs"])):
        loss, a, g = step(model, optimizer, {k: jnp.asarray(v[i]) for k, v in batches.items()})
        losses.append(float(loss))
        acts.append(np.asarray(a))
        grads.append(np.asarray(g))
    return {"losses": losses, "act_rms": np.stack(acts), "grad_rms": np.stack(grads)}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check(args)
        data_path = prepare_dataset(args.data, args.vocab, args.cache, args.max_chars)
        base = study_config(data_path, Path(args.out) / "run", variant_model(args.variant, args.d_model, args.layers,
                                                                             args.heads),
                            {"lr": args.lr, "warmup_steps": max(1, args.steps // 20)},
                            {"steps": args.steps, "batch_size": args.batch, "seed": args.seed}, seq_len=args.seq_len)
        base = with_overrides(base, args.overrides)
    except ConfigError as e:
        fail(PROG, str(e))
    batches = draw_batches(base, args.steps)
    results, k = {}, args.probe_steps - 1
    for scheme in args.schemes:
        print(f"== init {scheme}", flush=True)
        cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, init=scheme))
        r = train_scheme(cfg, batches)
        r.update(initial_loss=r["losses"][0], final_loss=r["losses"][-1],
                 act_rms_step1=r["act_rms"][0], act_rms_probe=r["act_rms"][k],
                 grad_rms_step1=r["grad_rms"][0], grad_rms_probe=r["grad_rms"][k])
        results[scheme] = r

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = figure(2, 2, figsize=(10, 7))
    layers = np.arange(1, args.layers + 1)
    for i, (scheme, r) in enumerate(results.items()):
        c = f"C{i}"
        axes[0, 0].plot(np.arange(1, args.steps + 1), r["losses"], color=c, label=scheme)
        axes[0, 1].plot(layers, r["act_rms_step1"], color=c, marker="o", label=f"{scheme}")
        axes[0, 1].plot(layers, r["act_rms_probe"], color=c, marker="x", ls="--")
        axes[1, 0].semilogy(layers, np.maximum(r["grad_rms_step1"], 1e-12), color=c, marker="o", label=scheme)
        axes[1, 0].semilogy(layers, np.maximum(r["grad_rms_probe"], 1e-12), color=c, marker="x", ls="--")
        axes[1, 1].semilogy(np.arange(1, k + 2), np.maximum(r["grad_rms"][:k + 1].mean(axis=1), 1e-12), color=c,
                            label=scheme)
    axes[0, 0].set(xlabel="step", ylabel="training loss", title="loss")
    axes[0, 1].set(xlabel="layer", ylabel="residual RMS after the block",
                   title=f"activations (o: step 1, x: step {args.probe_steps})")
    axes[1, 0].set(xlabel="layer", ylabel="gradient RMS of the block",
                   title=f"gradients (o: step 1, x: step {args.probe_steps})")
    axes[1, 1].set(xlabel="step", ylabel="mean gradient RMS over layers", title="the first steps")
    for ax in axes.ravel():
        ax.legend(fontsize=7)
    save_figure(fig, out / "weight_initialization_comparison.png")

    rows = [[s, r["initial_loss"], r["final_loss"], r["act_rms_step1"][0], r["act_rms_step1"][-1],
             r["grad_rms_step1"][0], r["grad_rms_step1"][-1]] for s, r in results.items()]
    best = min(results, key=lambda s: results[s]["final_loss"])
    report = (f"# Initialisation schemes: {args.variant}, {args.layers} layers, {args.steps} steps\n\n"
              f"`python scripts/init_study.py {' '.join(sys.argv[1:])}`\n\n"
              + markdown_table(["init", "loss at step 1", f"loss at step {args.steps}", "act RMS layer 1",
                                f"act RMS layer {args.layers}", "grad RMS layer 1", f"grad RMS layer {args.layers}"],
                               rows)
              + f"\nActivation and gradient RMS at step 1 (the init). Lowest final loss: **{best}**.\n\n"
              "![init comparison](weight_initialization_comparison.png)\n")
    write_results(out, {"variant": args.variant, "steps": args.steps, "probe_steps": args.probe_steps,
                        "schemes": results, "best": best}, report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
