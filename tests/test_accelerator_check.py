"""scripts/accelerator_check.sh and scripts/accelerator_bench.py on CPU: the dry run's Python core
(one MyLM variant and nanoGPT, tiny) writes the JSON the accelerator run will write, and the shell
script parses and refuses a bad argument. The full dry run (`scripts/accelerator_check.sh --dry-run`,
a few minutes on 2 cores) is in docs/performance.md."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.train_helpers import ROOT


def test_bench_dry_run_core_writes_its_json(tmp_path):
    import importlib.util
    only = "unrolled,nanogpt" if importlib.util.find_spec("torch") else "unrolled"  # nanoGPT needs torch
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "scripts/accelerator_bench.py", "--dry-run", "--only", only, "--out", str(out),
                        "--work", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True
    mylm = report["results"][0]
    assert mylm["framework"] == "mylm" and mylm["variant"] == "unrolled" and "error" not in mylm
    assert mylm["model"]["dtype"] == "bfloat16" and mylm["seq_len"] == report["sizes"]["T"]
    assert mylm["tokens_per_s"] > 0 and mylm["compile_s"] > 0 and mylm["compiled_temp_bytes"] > 0
    assert mylm["loss_last"] < mylm["loss_first"]  # the steps really trained
    if "nanogpt" in only and (ROOT.parent / "shared" / "peers" / "nanogpt" / "train.py").is_file():
        peer = report["results"][1]
        assert peer["framework"] == "nanogpt" and "error" not in peer, peer
        assert peer["tokens_per_s"] > 0 and f"--block_size={report['sizes']['T']}" in peer["args"]
    assert "tokens/s" in r.stdout  # the table


def test_check_script_parses_and_refuses_bad_arguments():
    assert subprocess.run(["bash", "-n", "scripts/accelerator_check.sh"], cwd=ROOT).returncode == 0
    r = subprocess.run(["bash", "scripts/accelerator_check.sh", "--bogus"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--dry-run" in r.stderr


@pytest.mark.parametrize("bad", [["--only", "nope"]])
def test_bench_refuses_unknown_runs(bad):
    r = subprocess.run([sys.executable, "scripts/accelerator_bench.py", "--dry-run", *bad], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "unknown 'nope'" in r.stderr and "Traceback" not in r.stderr
