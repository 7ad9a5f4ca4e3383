"""Training: the objective (loss.py), the sharded state (state.py), the jitted step (step.py),
the loop (loop.py), checkpoints and run directories (checkpoint.py, run_dir.py), metrics
(metrics.py), SFT (sft.py). See docs/architecture.md for how they fit together."""
