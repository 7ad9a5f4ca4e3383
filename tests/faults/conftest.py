"""The fault tests' shared run: 8 steps of tests/train_helpers.py's tiny config,
checkpoints at 4 and 8, made once per test file; each test works on a copy of it."""

from __future__ import annotations

import shutil

import pytest

from tests.train_helpers import run_mylm, tiny_config


@pytest.fixture(scope="module")
def base(data_path, tmp_path_factory):
    """8 steps in one go, checkpoints at 4 and 8: the reference run."""
    out = tmp_path_factory.mktemp("base") / "run"
    result = run_mylm(["pretrain"], tiny_config(data_path, out), out.parent / "c.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture
def run(base, tmp_path):
    """A copy of the reference run."""
    out = tmp_path / "run"
    shutil.copytree(base, out)
    return out
