"""Meshes, the logical-axis rules, sharded placement of parameters and batches, multi-host start.

The model never names a mesh axis. Each parameter carries logical axis names
(mylm_jax/model/layers.py), and this one table maps them onto the mesh:

    logical axis   mesh axis    what it gives
    batch          data, fsdp, expert   data parallelism: every device its own rows
    embed          fsdp         FSDP / ZeRO-3: each weight's d_model axis split over fsdp
    vocab, heads,  tensor       Megatron tensor parallelism: heads and hidden units split
    kv_heads, mlp
    expert         expert       expert parallelism: each device holds some experts
    head_dim, None —            replicated
    layers         —            the scanned stack's layer axis (model.scan_layers): not split, each
                                device holds its shard of every layer; the scan takes one per iteration

Changing the parallelism means changing the mesh sizes (`mesh` config section) or this
table, never the model. XLA's SPMD partitioner inserts the collectives (all-gathers of
FSDP weights, reduce-scatters of their gradients, the all-reduce after a tensor-parallel
matmul). An axis is split only when the mesh axis divides it; otherwise it is kept
whole, and `ShardingPlan.replicated` lists those cases: the trainer prints the plan
(`ShardingPlan.describe`) at start-up, so replication is never silent.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from mylm_jax.config import ConfigError, MeshConfig

MESH_AXES = ("data", "fsdp", "tensor", "expert")
BATCH_AXES = ("data", "fsdp", "expert")
LOGICAL_RULES: dict[str | None, str | None] = {
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "expert": "expert",
    "head_dim": None,
    "layers": None,
    None: None,
}


def mesh_shape(mesh: MeshConfig, n_devices: int) -> dict[str, int]:
    """The mesh sizes with the one -1 resolved; they must multiply to the device count."""
    sizes = {a: getattr(mesh, a) for a in MESH_AXES}
    known = math.prod(s for s in sizes.values() if s != -1)
    for a, s in sizes.items():
        if s == -1:
            if n_devices % known:
                raise ConfigError(f"mesh: {n_devices} devices are not divisible by the other axes' {known}")
            sizes[a] = n_devices // known
    if math.prod(sizes.values()) != n_devices:
        raise ConfigError(f"mesh sizes {sizes} multiply to {math.prod(sizes.values())}, "
                          f"but there are {n_devices} devices")
    return sizes


def make_mesh(mesh: MeshConfig, devices=None) -> jax.sharding.Mesh:
    """The device mesh. Sizes without a -1 that ask for fewer devices than a single process
    has use the first ones (e.g. a one-device baseline on a multi-device host)."""
    devices = jax.devices() if devices is None else devices
    fixed = [getattr(mesh, a) for a in MESH_AXES]
    if -1 not in fixed and math.prod(fixed) < len(devices) and jax.process_count() == 1:
        devices = devices[:math.prod(fixed)]
    sizes = mesh_shape(mesh, len(devices))
    return jax.make_mesh(tuple(sizes.values()), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def logical_to_spec(shape: tuple[int, ...], axes: tuple[str | None, ...], mesh: jax.sharding.Mesh,
                    name: str = "", replicated: list | None = None) -> P:
    """PartitionSpec of one array from its logical axes (an undividable axis stays whole)."""
    spec, used = [], set()
    for size, logical in zip(shape, axes):
        if logical not in LOGICAL_RULES:
            raise ValueError(f"{name}: logical axis {logical!r} has no rule in mylm_jax/parallel.py")
        axis = LOGICAL_RULES[logical]
        n = mesh.shape[axis] if axis else 1
        if axis is None or n == 1 or axis in used:
            spec.append(None)
        elif size % n:
            spec.append(None)
            if replicated is not None:
                replicated.append(f"{name}: {logical}={size} not divisible by {axis}={n}")
        else:
            spec.append(axis)
            used.add(axis)
    return P(*spec)


@dataclass
class ShardingPlan:
    """Every parameter's PartitionSpec, and the axes kept whole that a rule would have split."""

    specs: dict[str, P]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    replicated: list[str] = field(default_factory=list)

    def describe(self, mesh) -> str:
        """What is sharded how, what is replicated and why (the trainer prints it at start).

        Layers repeat, so names are grouped with the layer index as `*`."""
        sizes = " ".join(f"{a}={n}" for a, n in mesh.shape.items())
        lines = [f"sharding plan on mesh {sizes}:"]
        groups = dict.fromkeys((re.sub(r"\.\d+\.", ".*.", name), spec) for name, spec in self.specs.items())
        sharded = [(n, s) for n, s in groups if any(a is not None for a in s)]
        whole = [n for n, s in groups if all(a is None for a in s)]
        width = max((len(n) for n, _ in sharded), default=0)
        lines += [f"  {n:<{width}}  {tuple(self.shapes.get(n.replace('*', '0'), ()))!s:<18} {s}"
                  for n, s in sharded]
        if whole:
            why = ("the mesh axes the rules use all have size 1: plain data parallelism, every device "
                   "holds a full copy" if not sharded else "their logical axes map to no mesh axis of size > 1")
            lines.append(f"  replicated on every device ({why}): {', '.join(whole)}")
        if self.replicated:
            lines.append("  kept whole although a rule would split them (the mesh axis does not divide them): "
                         + "; ".join(self.replicated))
        return "\n".join(lines)


def plan_params(shapes: dict[str, tuple[int, ...]], axes: dict[str, tuple], mesh) -> ShardingPlan:
    replicated: list[str] = []
    specs = {name: logical_to_spec(shapes[name], axes[name], mesh, name, replicated) for name in shapes}
    return ShardingPlan(specs, dict(shapes), replicated)


def batch_spec(ndim: int, leading: int = 0) -> P:
    """[..., B, T]: the batch axis (after `leading` axes such as microbatches) over BATCH_AXES."""
    return P(*([None] * leading), BATCH_AXES, *([None] * (ndim - leading - 1)))


def shard_batch(batch: dict[str, np.ndarray], mesh, microbatches: int = 1) -> dict[str, jax.Array]:
    """This process's rows [B_local, T] -> global arrays [M, B / M, T], rows over BATCH_AXES.

    With P processes, the global batch is the processes' rows one after the other.
    """
    out = {}
    for key, local in batch.items():
        local = local.reshape(microbatches, -1, *local.shape[1:])
        global_shape = (microbatches, local.shape[1] * jax.process_count(), *local.shape[2:])
        sharding = NamedSharding(mesh, batch_spec(local.ndim, leading=1))
        out[key] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out


def batch_divisor(mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def initialize_distributed(mesh: MeshConfig) -> None:
    """Join a multi-process run, if this is one (see MeshConfig for where settings come from).

    Must run before anything touches a device. Explicit settings (config or MYLM_*
    variables) win; otherwise, on SLURM or TPU pods (or with MYLM_DISTRIBUTED=auto),
    jax.distributed detects the cluster.
    """
    coordinator = mesh.coordinator or os.environ.get("MYLM_COORDINATOR", "")
    num = mesh.num_processes or int(os.environ.get("MYLM_NUM_PROCESSES", "0"))
    pid = mesh.process_id if mesh.process_id >= 0 else int(os.environ.get("MYLM_PROCESS_ID", "-1"))
    if coordinator:
        if num < 1 or not 0 <= pid < num:
            raise ConfigError(f"multi-process run at {coordinator}: need num_processes >= 1 and "
                              f"0 <= process_id < num_processes, got {num}, {pid}")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
    elif (os.environ.get("MYLM_DISTRIBUTED") == "auto" or int(os.environ.get("SLURM_NTASKS", "1")) > 1
          or "TPU_WORKER_HOSTNAMES" in os.environ):
        jax.distributed.initialize()  # the cluster (SLURM, TPU pod) tells jax who is who
