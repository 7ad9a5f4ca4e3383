"""scripts/bench_train.py end to end on a slice of tinyshakespeare, 10 steps per run.

The MyLM part always runs (--skip-peer); the nanoGPT part runs only where
../shared/peers/nanogpt (and torch) exist. Only the GPT-2 config runs here, to keep the
test short; the modern config is loaded by tests/test_config.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_train.py"
PEER = ROOT.parent / "shared" / "peers" / "nanogpt"
FIELDS = ("wall_s", "first_step_s", "steady_ms_per_step", "tokens_per_s", "final_val_loss", "wall_ratio_nanogpt_over")

pytestmark = pytest.mark.slow


@pytest.fixture
def corpus(tmp_path):
    from mylm_jax.data.corpora import corpus_path
    text = Path(corpus_path()).read_text(encoding="utf-8")[:40_000]
    path = tmp_path / "slice.txt"
    path.write_text(text, encoding="utf-8")
    return path


def bench(tmp_path, corpus, *extra) -> dict:
    out = tmp_path / "out" / "bench_train.json"
    cmd = [sys.executable, str(SCRIPT), "--iters", "10", "--corpus", str(corpus), "--out", str(out), *extra]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("| run | wall s | first step s | 2nd run: first step s | steady ms/step | tokens/s | val loss (end) |"
            in r.stdout)
    assert out.with_suffix(".png").is_file()
    return json.loads(out.read_text()), r.stdout


def check_run(run: dict, steps: int) -> None:
    for key in FIELDS:
        assert key in run, key
    assert run["steps"] == steps
    assert run["wall_s"] > run["first_step_s"] > 0
    assert run["steady_ms_per_step"] > 0 and run["tokens_per_s"] > 0
    assert 0 < run["final_val_loss"] < 10
    assert [p["step"] for p in run["val_curve"]] == [0, 10]  # eval at the start and at the end


def test_mylm_only(tmp_path, corpus):
    result, stdout = bench(tmp_path, corpus, "--skip-peer", "--configs", "configs/shakespeare_char_cpu.yaml")
    assert "--skip-peer: running MyLM only" in stdout
    assert result["peer_ran"] is False and result["iters"] == 10
    (run,) = result["runs"]
    check_run(run, 10)
    assert run["wall_ratio_nanogpt_over"] is None
    # the same command again from a warm compilation cache, stopped after its first step
    assert 0 < run["second_run_first_step_s"] < run["wall_s"]
    assert "conditions_before" in result and result["conditions_before"]["cpus"] >= 1
    # without the peer, only the start of a second run is judged
    assert result["goals"] and all("second run's first step" in line for line in result["goals"])


@pytest.mark.skipif(not (PEER / "train.py").is_file() or importlib.util.find_spec("torch") is None,
                    reason="nanoGPT (../shared/peers/nanogpt) or torch not available")
def test_nanogpt_only(tmp_path, corpus):
    result, _ = bench(tmp_path, corpus, "--configs")  # no MyLM config: the peer's side alone
    assert result["peer_ran"] is True
    (run,) = result["runs"]
    check_run(run, 11)  # nanoGPT trains iterations 0..max_iters
    assert run["wall_ratio_nanogpt_over"] == pytest.approx(1.0)
    # nanoGPT's data went to the work directory (the peer's tree is left as it is)
    assert (tmp_path / "out" / "work" / "nanogpt" / "data" / "shakespeare_char" / "meta.pkl").is_file()


def load_bench_train():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_goal_lines():
    bench_train = load_bench_train()
    peer = {"name": "nanoGPT", "wall_s": 100.0, "final_val_loss": 1.8857}

    def mylm(name, wall, val, second, curve):
        return {"name": name, "wall_s": wall, "wall_ratio_nanogpt_over": 100.0 / wall, "final_val_loss": val,
                "second_run_first_step_s": second,
                "val_curve": [{"wall_s": t, "step": i, "val_loss": v} for i, (t, v) in enumerate(curve)]}

    fast = mylm("mylm shakespeare_char_cpu", 69.0, 1.8950, 4.2, [])
    slow = mylm("mylm shakespeare_char_cpu", 101.0, 1.8809, 4.2, [])
    too_high = mylm("mylm shakespeare_char_cpu", 60.0, 1.9000, 4.2, [])  # fast, but val > 1.8857 + 0.01
    modern = mylm("mylm shakespeare_char_cpu_modern", 150.0, 1.56, 6.0, [(10, 5.6), (80, 1.81), (99, 1.79)])
    late = mylm("mylm shakespeare_char_cpu_modern", 150.0, 1.56, 4.0, [(10, 5.6), (101, 1.79)])
    lines = bench_train.goals([peer, fast, slow, too_high, modern, late], peer)
    assert [line.rsplit(": ", 1)[1] for line in lines] == [
        "met", "met",          # fast: second start 4.2 s; ratio 1.45, val within 0.01 of nanoGPT's
        "met", "NOT met",      # slow: ratio 0.99
        "met", "NOT met",      # too_high: the val
        "NOT met", "met",      # modern: second start 6 s; val <= 1.80 at 99 s < 100 s
        "met", "NOT met"]      # late: val <= 1.80 only at 101 s
    assert "first at 99" in lines[7]
    # without the peer only the start of a second run is judged
    assert bench_train.goals([fast], None) == [lines[0]]
