"""Sharded training on 8 host CPU devices gives the same losses as one device; a checkpoint
written on an 8-device FSDP mesh restores on one device; two processes train together.

Each run is a subprocess, because the device count (XLA_FLAGS) and jax.distributed must be
set before jax is imported."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.train_helpers import ROOT, losses

LOSS_ABS = 1e-5  # float32 sums in a different order on different meshes

MESHES = {
    "one_device": dict(data=1),
    "data": dict(data=8),
    "fsdp": dict(data=1, fsdp=8),
    "tensor": dict(data=4, tensor=2),
    "expert": dict(data=2, expert=4),
    "mixed_2x2x2": dict(data=2, fsdp=2, tensor=2),
}


def _run(args, devices: int, env=None, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)


@pytest.fixture(scope="module")
def mesh_runs(data_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("meshes")
    result = _run(["tests/mesh_runs.py", data_path, str(out), json.dumps(MESHES)], devices=8)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.mark.parametrize("mesh", [m for m in MESHES if m != "one_device"])
def test_meshes_give_the_losses_of_one_device(mesh_runs, mesh):
    reference, sharded = losses(mesh_runs / "one_device"), losses(mesh_runs / mesh)
    assert sorted(sharded) == list(range(1, 11)) == sorted(reference)
    np.testing.assert_allclose([sharded[s] for s in range(1, 11)], [reference[s] for s in range(1, 11)],
                               rtol=0, atol=LOSS_ABS, err_msg=mesh)


def test_fsdp_checkpoint_restores_on_one_device(mesh_runs, data_path, tmp_path):
    """Step 10 saved by the 8-device FSDP run, continued to 12 on one device == one device throughout."""
    shutil.copytree(mesh_runs / "fsdp", tmp_path / "fsdp")
    shutil.copytree(mesh_runs / "one_device", tmp_path / "one_device")
    runs = {"fsdp": dict(data=1, resume=True, steps=12), "one_device": dict(data=1, resume=True, steps=12)}
    result = _run(["tests/mesh_runs.py", data_path, str(tmp_path), json.dumps(runs)], devices=1)
    assert result.returncode == 0, result.stderr[-4000:]
    a, b = losses(tmp_path / "fsdp"), losses(tmp_path / "one_device")
    assert {11, 12} <= set(a)
    np.testing.assert_allclose([a[11], a[12]], [b[11], b[12]], rtol=0, atol=LOSS_ABS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_checkpoint(data_path, tmp_path):
    """Two processes (gloo collectives on 127.0.0.1), one CPU device each, one data-parallel mesh."""
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {"PYTHONPATH": str(ROOT), "MYLM_COORDINATOR": f"127.0.0.1:{port}", "MYLM_NUM_PROCESSES": "2",
               "MYLM_PROCESS_ID": str(pid), "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
               "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
        procs.append(subprocess.Popen(
            [sys.executable, "tests/mesh_runs.py", data_path, str(tmp_path), json.dumps({"two": {"data": 2}})],
            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    assert sorted(losses(tmp_path / "two")) == list(range(1, 11))
    assert (tmp_path / "two" / "checkpoints" / "10").is_dir()
