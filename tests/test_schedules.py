"""Shape of each learning-rate schedule: warmup, plateau, decay, end value."""

import re

import numpy as np
import pytest

from mylm_jax.config import ConfigError, OptimConfig, load_config
from mylm_jax.optim.schedules import lr_factor, lr_schedule

S = 100


def _factors(**kw):
    return np.asarray(lr_factor(OptimConfig(**kw), S)(np.arange(S + 5)), np.float64)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "wsd"])
def test_linear_warmup_reaches_the_peak(schedule):
    f = _factors(schedule=schedule, warmup_steps=10)
    np.testing.assert_allclose(f[:10], np.arange(1, 11) / 10, rtol=1e-6)
    assert f[0] > 0  # the first step already moves the weights


def test_cosine_goes_from_peak_to_min_and_stays():
    f = _factors(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert f[10] == pytest.approx(1.0)
    assert np.all(np.diff(f[10:]) <= 1e-7)  # non-increasing after warmup
    assert f[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)  # half way: (1 + cos(pi/2)) / 2
    np.testing.assert_allclose(f[S:], 0.1, rtol=1e-6)


@pytest.mark.parametrize("shape, midpoint", [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - 0.5 ** 0.5)])
def test_wsd_is_flat_then_decays_over_the_last_fraction(shape, midpoint):
    f = _factors(schedule="wsd", warmup_steps=10, decay_fraction=0.2, decay_shape=shape, min_lr_ratio=0.0)
    np.testing.assert_allclose(f[10:80], 1.0)  # stable phase: steps 10..79
    assert f[90] == pytest.approx(midpoint, abs=1e-6)  # p = (90 - 80) / 20
    assert np.all(np.diff(f[80:]) <= 1e-7)
    np.testing.assert_allclose(f[S:], 0.0, atol=1e-7)


def test_schedule_scales_by_lr():
    optim = OptimConfig(lr=3e-4, schedule="cosine", warmup_steps=5)
    np.testing.assert_allclose(lr_schedule(optim, S)(np.arange(S)), 3e-4 * np.asarray(lr_factor(optim, S)(np.arange(S))),
                               rtol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    # the warmup is clamped to steps // 10 first (Config.__post_init__); only a wsd decay can still not fit
    (["optim.schedule=wsd", "optim.decay_fraction=0.95", "optim.warmup_steps=600"],
     "optim.warmup_steps=600 (even clamped to 100) plus the wsd decay (950 steps"),
    (["optim.decay_fraction=1.5"], "optim.decay_fraction must be in [0, 1]"),
    (["optim.decay_shape=exp"], "expected one of 'linear', 'cosine', '1-sqrt'"),
])
def test_bad_schedule_configs(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_plot_script_writes_a_png(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    out = tmp_path / "s.png"
    script = Path(__file__).parents[1] / "scripts/plot_schedules.py"
    subprocess.run([sys.executable, str(script), "--steps", "200", "--out", str(out), "optim.warmup_steps=20"],
                   check=True, capture_output=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
