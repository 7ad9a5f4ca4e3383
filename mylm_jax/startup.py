"""What a `mylm` training command does to start fast: imports without the optional extras
they probe for, and no cyclic garbage collection until training runs.

Imports. Some libraries import an optional package only to ask a question the `mylm` process can
answer already, and a run's start pays for it (measured with `python -X importtime`):

    tensorboardX   imports torch (1-2 s) to accept torch tensors, and boto3 (~0.12 s) to
                   write to S3; MetricsLog writes plain floats to a local folder
    flax.nnx       imports IPython (~0.26 s, with prompt_toolkit) to ask whether it runs
                   in a notebook, to colour its reprs; a `mylm` command line never does

`without(...)` marks such packages absent while the import runs (None in sys.modules
makes `import name` raise ImportError, which these libraries handle) and removes the
marks at once, so a later `import torch` still works. A package already imported is
left alone: there is nothing to save.

Garbage collection. Starting a run allocates millions of objects that live as long as the
process (modules, jax's traced and lowered programs, the NNX graph), and Python's cyclic
collector, triggered by allocation counts, walks them again and again: ~0.5 s of a ~5 s
start (measured with the collector off). `pause_gc()` switches it off when a training
command starts (launch.py, the `mylm` script, before anything else is imported); the
trainer calls `resume_gc()` when it reads back its first call of steps (train/loop.py):
what is alive then is frozen (gc.freeze: never scanned again; the short-lived objects of
start-up were freed by their reference counts) and the collector is on again for the
rest of the run.

This module imports only the standard library and mylm_jax.allocator.
"""

from __future__ import annotations

import gc
import sys
from contextlib import contextmanager

from mylm_jax import allocator

# The commands whose start runs without the cyclic collector (each ends in Trainer.run, which
# switches it back on; a server or a generation would not).
TRAINING_COMMANDS = frozenset({"pretrain", "sft", "search"})
# What flax.nnx probes for, when a `mylm` command line imports it (cli/__init__.py).
FLAX_PROBES = ("IPython",)
# What tensorboardX probes for (train/metrics.py).
TENSORBOARDX_PROBES = ("torch", "boto3")


def begin(command: str | None) -> None:
    """What a `mylm` command line does before anything else: a step command restarts under
    the faster allocator (allocator.py), a training command pauses the collector. Called by
    the console script before the command groups are imported (launch.py), and again by
    `mylm_jax.cli.main` for `python -m mylm_jax.cli` (a second call changes nothing)."""
    if command in allocator.STEP_COMMANDS:
        allocator.reexec_with_fast_allocator()
    if command in TRAINING_COMMANDS:
        pause_gc()  # until the trainer's first steps have run


@contextmanager
def without(*names: str):
    """Within the block, `import name` raises ImportError for each name not yet imported."""
    marked = [name for name in names if name not in sys.modules]
    for name in marked:
        sys.modules[name] = None
    try:
        yield
    finally:
        for name in marked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


_paused = False


def pause_gc() -> None:
    """No cyclic garbage collection until resume_gc() (see the module docstring)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume_gc() -> None:
    """Freeze what start-up left alive and switch the collector back on (once: later calls,
    and calls in a process that never paused it, do nothing)."""
    global _paused
    if _paused:
        gc.freeze()
        gc.enable()
        _paused = False
