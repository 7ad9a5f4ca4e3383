"""Which optimizer updates which parameter, with what weight decay and lr multiplier.

`assign(name, shape, axes, optim)` is the whole decision, from a parameter's dotted
path, its shape and its logical axis names (mylm_jax/model/layers.py names them):

    kind        parameters                                    optimizer (name: muon)
    embedding   embed, pos_embed                              AdamW
    head        lm_head (untied)                              AdamW
    norm        every norm's scale (and LayerNorm's bias)     AdamW
    bias        the biases of linear layers                   AdamW
    score       router [D, E], headwise attention gate [D, H]: AdamW
                one logit per expert / per head, a handful of outputs
    matrix      the other kernels (q, kv, out, gate, fc, proj, gate_up)   Muon
    experts     stacked MoE expert weights w_in, w_out        Muon, per expert

With `optim.name: adamw` every kind goes to AdamW. Weight decay is on unless the kind
is listed in `optim.no_decay` (default: embedding, norm, bias).

Muon orthogonalises matrices, so every Muon parameter gets a `MatrixView`: how to see
its kernel as a batch of [fan_in, fan_out] matrices. Every hidden matrix of a
transformer reads from the residual stream (its first axis is `embed`: fan_in = embed,
fan_out = the rest) or writes to it (`embed` last: fan_out = embed, fan_in = the rest).
Axes named `expert` or None (the stacked k|v of kv, gate|up of gate_up) are a batch:
k and v, gate and up, and every expert are orthogonalised as separate matrices, as
they would be if they were separate nn.Linear layers:

    q.kernel      [D, H, d]         -> [D, H*d]
    kv.kernel     [D, 2, K, d]      -> 2 x [D, K*d]
    out.kernel    [H, d, D]         -> [H*d, D]
    gate_up       [D, 2, F]         -> 2 x [D, F]
    w_in          [E, D, 2, F]      -> E x 2 x [D, F]
    w_out         [E, F, D]         -> E x [F, D]

This module imports no jax. The twin decides its groups on its own, from its torch
layouts (mylm_torch/grouping.py); parity_tests/test_grouping.py checks that both sides
agree on every parameter of every variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from mylm_jax.config import OptimConfig, ParamKind

# Logical axes that stack independent matrices; "layers" is the scanned stack's layer axis
# (mylm_jax/model/layout.py): each layer's matrix is its own, as in the unrolled model.
BATCH_AXES = ("expert", "layers", None)
RESIDUAL = "embed"


def lr_ratio(matrix_shape: Sequence[int], adjust_lr: str) -> float:
    """Muon's per-matrix lr multiplier for a matrix [..., fan_in, fan_out]:
        original         sqrt(max(1, fan_out / fan_in))     (Keller Jordan's Muon)
        match_rms_adamw  0.2 * sqrt(max(fan_in, fan_out))   (Moonlight: update RMS ~ AdamW's)
    """
    fan_in, fan_out = matrix_shape[-2], matrix_shape[-1]
    if adjust_lr == "original":
        return math.sqrt(max(1.0, fan_out / fan_in))
    if adjust_lr == "match_rms_adamw":
        return 0.2 * math.sqrt(max(fan_in, fan_out))
    raise ValueError(f"adjust_lr must be 'original' or 'match_rms_adamw', got {adjust_lr!r}")


@dataclass(frozen=True)
class MatrixView:
    """A kernel seen as a batch of matrices [*batch, fan_in, fan_out] (axis indices of the kernel)."""

    shape: tuple[int, ...]
    batch: tuple[int, ...]
    fan_in: tuple[int, ...]
    fan_out: tuple[int, ...]

    @property
    def perm(self) -> tuple[int, ...]:
        return self.batch + self.fan_in + self.fan_out

    @property
    def matrix_shape(self) -> tuple[int, ...]:
        """[*batch, fan_in, fan_out] in JAX's layout (torch's nn.Linear: the last two swapped)."""
        size = lambda axes: math.prod(self.shape[i] for i in axes)  # noqa: E731
        return tuple(self.shape[i] for i in self.batch) + (size(self.fan_in), size(self.fan_out))

    def to_matrix(self, x):
        """Kernel -> [*batch, fan_in, fan_out] (numpy or jax arrays)."""
        return x.transpose(self.perm).reshape(self.matrix_shape)

    def from_matrix(self, m):
        inverse = tuple(sorted(range(len(self.perm)), key=self.perm.__getitem__))
        return m.reshape(tuple(self.shape[i] for i in self.perm)).transpose(inverse)


@dataclass(frozen=True)
class Assignment:
    kind: ParamKind
    optimizer: str  # "adamw" | "muon"
    weight_decay: bool
    shape: tuple[int, ...]
    view: MatrixView | None = None  # Muon parameters only
    lr_multiplier: float = 1.0  # Muon's per-matrix ratio (see lr_ratio above)


def param_kind(name: str, shape: tuple[int, ...], axes: tuple[str | None, ...]) -> ParamKind:
    parts = name.split(".")
    leaf, owner = parts[-1], (parts[-2] if len(parts) > 1 else "")
    if name in ("embed", "pos_embed"):
        return "embedding"
    if name == "lm_head":
        return "head"
    if owner.endswith("norm") and leaf in ("scale", "bias"):
        return "norm"  # attn_norm, mlp_norm, q_norm, k_norm, final_norm
    if leaf == "bias":
        return "bias"
    if leaf == "router" or (name.endswith("attn.gate.kernel") and len(shape) - axes.count("layers") == 2):
        return "score"
    if "expert" in axes:
        return "experts"
    if leaf == "kernel":
        return "matrix"
    raise ValueError(f"parameter '{name}' {shape} {axes}: no optimizer rule for it "
                     "(add one to mylm_jax/optim/grouping.py)")


def matrix_view(name: str, shape: tuple[int, ...], axes: tuple[str | None, ...]) -> MatrixView:
    """The residual-stream rule of the module docstring."""
    batch = tuple(i for i, a in enumerate(axes) if a in BATCH_AXES)
    rest = tuple(i for i, a in enumerate(axes) if a not in BATCH_AXES)
    if axes[rest[0]] == RESIDUAL:  # reads the residual stream
        fan_in, fan_out = rest[:1], rest[1:]
    elif axes[rest[-1]] == RESIDUAL:  # writes it
        fan_in, fan_out = rest[:-1], rest[-1:]
    else:
        raise ValueError(f"parameter '{name}' {axes}: neither reads nor writes the residual "
                         f"stream ('{RESIDUAL}' first or last), so its fan-in is unknown")
    if not fan_in or not fan_out:
        raise ValueError(f"parameter '{name}' {axes} is not a matrix")
    return MatrixView(tuple(shape), batch, fan_in, fan_out)


def assign(name: str, shape: Sequence[int], axes: Sequence[str | None], optim: OptimConfig) -> Assignment:
    shape, axes = tuple(shape), tuple(axes)
    kind = param_kind(name, shape, axes)
    decay = kind not in optim.no_decay
    if optim.name == "muon" and kind in ("matrix", "experts"):
        view = matrix_view(name, shape, axes)
        return Assignment(kind, "muon", decay, shape, view, lr_ratio(view.matrix_shape, optim.muon_adjust_lr))
    return Assignment(kind, "adamw", decay, shape)


def assign_all(specs: dict[str, tuple[Sequence[int], Sequence[str | None]]],
               optim: OptimConfig) -> dict[str, Assignment]:
    """{name: (shape, logical axes)} -> {name: Assignment}."""
    return {name: assign(name, shape, axes, optim) for name, (shape, axes) in specs.items()}


def format_assignments(assignments: dict[str, Assignment], optim: OptimConfig) -> str:
    """The table `mylm optim` prints: path -> kind, optimizer, shape, Muon matrices, lr, decay."""
    width = max(len(n) for n in assignments)
    head = (f"{'parameter':<{width}}  {'kind':<9} {'optimizer':<9} {'shape':<17} "
            f"{'Muon matrices':<17} {'lr mult':>7} {'peak lr':>9}  decay")
    lines = [head]
    for name, a in assignments.items():
        matrices = ""
        if a.view:
            *batch, fan_in, fan_out = a.view.matrix_shape
            matrices = f"{math.prod(batch)} x " * bool(batch) + f"[{fan_in}, {fan_out}]"
        base = optim.muon_lr if a.optimizer == "muon" else optim.lr
        wd = (optim.muon_weight_decay if a.optimizer == "muon" else optim.weight_decay) * a.weight_decay
        lines.append(f"{name:<{width}}  {a.kind:<9} {a.optimizer:<9} {str(a.shape):<17} "
                     f"{matrices:<17} {a.lr_multiplier:>7.3f} {base * a.lr_multiplier:>9.2e}  {wd:g}")
    return "\n".join(lines)
