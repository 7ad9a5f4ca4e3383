"""The training state (model + optimizer), created already sharded over the mesh.

`create_state` never builds the model on one device: it traces the constructor
abstractly (nnx.eval_shape: shapes and logical axes, no memory), derives every array's
NamedSharding from mylm_jax/parallel.py's rules, and runs the initialisers inside a jit
whose out_shardings are those shardings, so each device computes and holds only its
shards. Optimizer moments get their parameter's sharding (matched by the parameter's
name at the end of the moment's path, and its shape); scalars are replicated.

The state is kept in NNX's functional form, `graphdef` + a pytree of arrays, which
jitted steps take and return (and donate); `nnx.merge(graphdef, state)` gives back
live `(model, optimizer)` objects when needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mylm_jax.config import Config
from mylm_jax.model.gpt import GPT
from mylm_jax.model.params import logical_axes, param_shapes, path_name
from mylm_jax.optim.build import build_optimizer, param_assignments
from mylm_jax.parallel import ShardingPlan, plan_params


@dataclass
class TrainState:
    graphdef: Any
    state: Any  # nnx State of (model, optimizer): arrays
    shardings: Any  # same structure: NamedSharding per array
    plan: ShardingPlan
    tx: Any
    schedules: dict  # {"lr": step -> lr, "muon_lr": ...}: the functions tx applies (for the logs)
    param_shapes: dict  # {parameter name: shape}

    def models(self):
        return nnx.merge(self.graphdef, self.state)

    @property
    def step(self) -> int:
        return int(jax.device_get(self.state[1]["step"][...]))


def _state_shardings(abstract_state, plan: ShardingPlan, mesh):
    """A NamedSharding for every leaf: its parameter's spec (name and shape match) or replicated."""
    shapes = {}

    def spec_for(path, leaf):
        name = path_name(path)
        parts = name.split(".")
        for i in range(len(parts)):  # the longest suffix that is a parameter name of the same shape
            suffix = ".".join(parts[i:])
            if suffix in plan.specs and shapes.get(suffix) == tuple(leaf.shape):
                return NamedSharding(mesh, plan.specs[suffix])
        return NamedSharding(mesh, P())

    def collect(path, leaf):
        name = path_name(path)
        if name.startswith("0."):  # the model half of (model, optimizer)
            shapes[name[2:]] = tuple(leaf.shape)
    jax.tree_util.tree_map_with_path(collect, abstract_state)
    return jax.tree_util.tree_map_with_path(spec_for, abstract_state)


def abstract_train_state(cfg: Config, mesh) -> tuple[TrainState, Any]:
    """(TrainState without arrays, a function that builds the live (model, optimizer))."""
    abstract_model = nnx.eval_shape(lambda: GPT(cfg.model, nnx.Rngs(cfg.train.seed)))
    shapes = param_shapes(abstract_model)
    plan = plan_params(shapes, logical_axes(abstract_model), mesh)
    tx, schedules = build_optimizer(cfg.optim, cfg.train.steps, param_assignments(abstract_model, cfg.optim))

    def build():
        model = GPT(cfg.model, nnx.Rngs(cfg.train.seed))
        if cfg.model.param_dtype != "float32":  # initialised in float32, stored rounded (docs/precision.md)
            params = nnx.state(model, nnx.Param)
            nnx.update(model, jax.tree.map(lambda p: p.astype(cfg.model.param_dtype), params))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
    shardings = _state_shardings(abstract_state, plan, mesh)
    return TrainState(graphdef, abstract_state, shardings, plan, tx, schedules, shapes), build


def create_state(cfg: Config, mesh) -> TrainState:
    """The state with freshly initialised weights, each device computing only its shards."""
    ts, build = abstract_train_state(cfg, mesh)
    init = jax.jit(lambda: nnx.split(build())[1], out_shardings=ts.shardings).lower()
    # The initialisers run once, so on CPU the compiler's time matters more than the code's
    # speed: XLA's backend optimisation (LLVM) takes ~80% of this compile (8.9 s -> 1.8 s for
    # a 3-layer MoE). The values differ from the optimised build's by at most one float32
    # rounding (fused multiply-adds), and are the same run after run. Accelerators compile
    # with their defaults (their compilers take other options).
    on_cpu = mesh.devices.flat[0].platform == "cpu"
    ts.state = init.compile(compiler_options={"xla_backend_optimization_level": 0} if on_cpu else None)()
    return ts


def restore_target(cfg: Config, mesh) -> tuple[TrainState, Any]:
    """(TrainState without arrays, abstract arrays carrying this mesh's shardings) for a restore."""
    ts, _ = abstract_train_state(cfg, mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), ts.state, ts.shardings)
    ts.state = None
    return ts, target
