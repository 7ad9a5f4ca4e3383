"""mylm_jax/startup.py and the start of a run: imports without optional probes, the cyclic
collector paused until the first steps, the train step traced once."""

from __future__ import annotations

import gc
import sys

import pytest

from mylm_jax import startup
from tests.train_helpers import tiny_config


def test_without_hides_a_package_only_within_the_block():
    name = "json.tool"  # importable, and not imported by anything here
    sys.modules.pop(name, None)
    with startup.without(name, "sys"):
        with pytest.raises(ImportError):
            __import__(name)
        assert sys.modules["sys"] is sys  # already imported: left alone
    assert name not in sys.modules
    assert __import__(name) is not None  # importable again after the block


def test_tensorboard_log_imports_neither_torch_nor_boto3():
    import subprocess
    code = ("import sys; from mylm_jax.train.metrics import _summary_writer_class; _summary_writer_class(); "
            "print(sorted(m for m in ('torch', 'boto3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("eval_every", [4, 2])  # 2: every call ends at an evaluation
def test_a_run_pauses_the_collector_until_its_first_steps_and_traces_its_step_once(data_path, tmp_path,
                                                                                  eval_every):
    """What `mylm pretrain` does: the collector off from the start (launch.py) and on again
    once the first call of steps has run, whichever way the loop reads it back; every call
    of a run reuses one traced program (the `halted` flag goes in as it comes out, so no
    call traces again)."""
    from mylm_jax.config import config_from_dict
    from mylm_jax.data.sources import ShardsSource
    from mylm_jax.train.loop import Trainer

    cfg = config_from_dict(tiny_config(data_path, tmp_path / "run", train=dict(
        steps=8, steps_per_call=2, eval_every=eval_every, checkpoint_every=0)))
    assert gc.isenabled()
    startup.pause_gc()
    try:
        trainer = Trainer(cfg, ShardsSource(cfg), quiet=True)
        assert not gc.isenabled()
        assert trainer.run() == 8
        assert gc.isenabled()
        assert trainer.train_steps._cache_size() == 1
    finally:
        startup.resume_gc()
        gc.unfreeze()  # the rest of the test session collects as usual
    startup.resume_gc()  # not paused: nothing to do
    assert gc.isenabled()
