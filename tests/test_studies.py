"""The studies at tiny sizes on CPU: each writes its JSON fields and non-empty figures.

What the figures look like is not checked; the numbers' meaning is (e.g. the framework
comparison's loss difference is small, the search resumes from its SQLite file).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mylm_jax.config import config_from_dict
from tests.train_helpers import make_dataset, run_mylm, tiny_config


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> str:
    return make_dataset(tmp_path_factory.mktemp("studies_data"))


@pytest.fixture(scope="module")
def moe_run(data_path, tmp_path_factory) -> Path:
    from mylm_jax.train.loop import pretrain
    out = tmp_path_factory.mktemp("moe_run") / "run"
    cfg = tiny_config(data_path, out, model=dict(n_experts=4, top_k=2), train=dict(checkpoint_every=0))
    pretrain(config_from_dict(cfg))
    return out


def assert_figures(paths):
    for path in paths:
        assert Path(path).is_file() and Path(path).stat().st_size > 1000, path


def test_plot_writes_every_figure(moe_run, tmp_path):
    result = run_mylm(["plot", str(moe_run), str(moe_run), "--out", str(tmp_path), "--x", "tokens"])
    assert result.returncode == 0, result.stderr
    names = {Path(p).name for p in result.stdout.split()}
    assert {"loss.png", "val_loss.png", "lr.png", "grad_norm.png", "tokens_per_s.png",
            "expert_load_run.png"} <= names
    assert_figures(tmp_path / n for n in names)


def test_plot_reads_tensorboard_only_runs(moe_run, tmp_path):
    from mylm_jax.studies.plot import load_run, plot_runs
    import shutil
    tb_only = tmp_path / "tb_only"
    shutil.copytree(moe_run / "tb", tb_only / "tb")
    records, _ = load_run(str(tb_only))
    jsonl = [json.loads(line) for line in (moe_run / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in jsonl if "loss" in r}
    assert {r["step"]: r["loss"] for r in records if "loss" in r} == pytest.approx(losses, rel=1e-6)
    assert any("expert_load" in r for r in records)
    assert_figures(plot_runs([str(tb_only)], tmp_path / "plots"))


def test_plot_bad_input_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for run_dir, message in ((tmp_path / "missing", "no such run directory"),
                             (tmp_path / "empty", "no metrics.jsonl")):
        result = run_mylm(["plot", str(run_dir)])
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
