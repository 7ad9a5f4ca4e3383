"""Experiment configuration: dataclass schemas, YAML loading, dotted overrides, validation.

A config is seven sections, each a frozen dataclass:

    model   what network to build (shared by the JAX model and the PyTorch twin)
    data    where tokens come from and how batches are shaped
    optim   optimizer and learning-rate schedule
    loss    the weights of the extra loss terms a model reports (MoE's aux losses)
    train   the loop: steps, seed, logging, output
    mesh    how devices are arranged for sharding
    sft     supervised fine-tuning of a pretrained run

`load_config("configs/x.yaml", ["model.d_model=128"])` reads YAML, applies overrides
(values parsed as YAML, so `true`, `1e-3`, `[0, 2]` work) and validates every key
against the schema. Any mistake raises `ConfigError` with a one-line message naming
the key and what was expected; the CLI prints it without a traceback.

This module imports no jax: the twin, the tokenizer and the scripts use it too.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A user mistake in a config file or override; its message is one line."""


# --------------------------------------------------------------------------- schemas

Norm = Literal["layernorm", "rmsnorm"]
Mlp = Literal["gelu", "swiglu"]
Position = Literal["learned", "rope", "none"]
AttnGate = Literal["none", "headwise", "elementwise"]
AttnImpl = Literal["auto", "reference", "dot_product", "blockwise"]
MoeImpl = Literal["dense", "ragged", "blocked"]
Init = Literal["normal", "gpt2_scaled", "xavier", "kaiming", "zero_out"]
DType = Literal["float32", "bfloat16"]
# What a parameter is, for the optimizer (mylm_jax/optim/grouping.py decides it).
ParamKind = Literal["embedding", "head", "norm", "bias", "score", "matrix", "experts"]


@dataclass(frozen=True)
class ModelConfig:
    """One schema for every variant; the YAML files in configs/ pick the combination.

    GPT-2 baseline: position=learned, norm=layernorm, mlp=gelu, bias=true.
    Modern (Llama-style): position=rope, norm=rmsnorm, mlp=swiglu, n_kv_heads < n_heads.
    """

    vocab_size: int = 4096
    max_seq_len: int = 256  # longest context; sizes the learned position table
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # None: = n_heads (plain multi-head attention)
    d_ff: Optional[int] = None  # None: 4*d_model for gelu, 8/3*d_model (rounded up to 64) for swiglu
    position: Position = "learned"
    rope_theta: float = 10000.0
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    mlp: Mlp = "gelu"
    bias: bool = True  # biases on every linear layer and LayerNorm
    tie_embeddings: bool = True
    qk_norm: bool = False  # normalise q and k per head before RoPE (same norm type as `norm`)
    attn_gate: AttnGate = "none"  # Qwen gated attention, position G1
    attention_impl: AttnImpl = "auto"  # auto: dot_product on GPU/TPU, blockwise on CPU
    attention_block: int = 64  # query rows per block for attention_impl=blockwise
    # Mixture of experts. n_experts == 0 means a dense model.
    n_experts: int = 0
    n_shared_experts: int = 0
    top_k: int = 2
    moe_d_ff: Optional[int] = None  # hidden size of each expert; None: = d_ff
    moe_layers: Optional[tuple[int, ...]] = None  # None: every layer (when n_experts > 0)
    router_renormalize: bool = True  # renormalise the top-k probabilities to sum to 1
    moe_impl: MoeImpl = "blocked"
    moe_block_rows: int = 128  # rows per block for moe_impl=blocked (128 was fastest on CPU)
    init: Init = "gpt2_scaled"
    init_std: float = 0.02
    dtype: DType = "float32"  # compute dtype of matmul inputs; params and accumulation stay float32

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"model.n_kv_heads={self.kv_heads} must divide model.n_heads={self.n_heads}")
        if self.position == "rope" and self.head_dim % 2:
            raise ConfigError(f"model.position=rope needs an even head_dim, got {self.head_dim}")
        if self.n_experts:
            if not 1 <= self.top_k <= self.n_experts:
                raise ConfigError(
                    f"model.top_k={self.top_k} must be in [1, model.n_experts={self.n_experts}]")
            bad = [i for i in self.moe_layers or () if not 0 <= i < self.n_layers]
            if bad:
                raise ConfigError(
                    f"model.moe_layers has {bad}: layer indices must be in [0, {self.n_layers})")
        elif self.moe_layers or self.n_shared_experts:
            raise ConfigError("model.moe_layers / model.n_shared_experts need model.n_experts > 0")
        for key in ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "attention_block",
                    "moe_block_rows"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key} must be positive, got {getattr(self, key)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "swiglu":  # keep the parameter count of a 4*d GELU MLP (Llama)
            return -(-(8 * self.d_model // 3) // 64) * 64
        return 4 * self.d_model

    @property
    def expert_dim(self) -> int:
        return self.moe_d_ff or self.ffn_dim

    def is_moe_layer(self, layer: int) -> bool:
        return self.n_experts > 0 and (self.moe_layers is None or layer in self.moe_layers)


@dataclass(frozen=True)
class DataConfig:
    path: str = ""  # a prepared dataset: `mylm data prepare ... --out PATH` (splits train, val)
    seq_len: int = 256  # tokens per training row (T); at most model.max_seq_len
    seed: int = 0  # the data order (shuffles, windows)
    loader: Literal["packed", "windows"] = "packed"  # see mylm_jax/data/pretrain.py
    bos: bool = False  # packed: prepend the tokenizer's BOS to every document
    align_to_documents: bool = False  # packed: every row starts at a document start
    workers: int = 0  # grain prefetch processes (0: in the training process)


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adamw", "muon"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    # Learning-rate schedule over train.steps (see mylm_jax/optim/schedules.py).
    schedule: Literal["constant", "cosine", "wsd"] = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the lr a decay ends at, as a fraction of optim.lr
    decay_fraction: float = 0.2  # wsd: the last fraction of the run decays
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "1-sqrt"  # wsd decay curve
    # AdamW's weight decay skips these kinds of parameter (see mylm_jax/optim/grouping.py).
    no_decay: tuple[ParamKind, ...] = ("embedding", "norm", "bias")
    # Muon (name: muon): hidden matrices and MoE experts use Muon with these settings,
    # everything else AdamW with the settings above. Both follow the same lr schedule.
    muon_lr: float = 0.02
    muon_weight_decay: float = 0.0
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    muon_ns_steps: int = 5
    muon_ns_dtype: DType = "float32"  # bfloat16: as torch.optim.Muon (faster on accelerators)
    muon_adjust_lr: Literal["original", "match_rms_adamw"] = "original"
    # Momentum warmup (modded-nanogpt): linear from muon_momentum_start to muon_momentum
    # over the first muon_momentum_warmup_steps steps; 0 disables.
    muon_momentum_warmup_steps: int = 0
    muon_momentum_start: float = 0.85

    def __post_init__(self):
        for name in ("lr", "muon_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"optim.{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.decay_fraction <= 1:
            raise ConfigError(f"optim.decay_fraction must be in [0, 1], got {self.decay_fraction}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.muon_momentum_warmup_steps < 0 or self.muon_ns_steps < 0:
            raise ConfigError("optim.muon_momentum_warmup_steps and optim.muon_ns_steps must be >= 0")
        for name in ("beta1", "beta2", "muon_momentum", "muon_momentum_start"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"optim.{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class LossConfig:
    """The training objective (mylm_jax/train/loss.py):

        J = (sum of token cross-entropies) / (valid tokens)  +  sum over terms t of  weight_t * term_t

    A model reports its extra terms by name (`aux["losses"]`, see mylm_jax/model/gpt.py);
    each field here is the weight of the term of the same name. A dense model reports
    none, and the weights are unused.
    """

    load_balance: float = 0.01  # MoE: Switch load-balancing loss (mylm_jax/model/moe.py)
    router_z: float = 0.001  # MoE: router z-loss (ST-MoE)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16  # sequences per optimizer step, over all devices and microbatches
    microbatches: int = 1  # gradient accumulation: batch_size is split into this many
    seed: int = 0  # parameter init and sampling
    log_every: int = 10  # JSONL / TensorBoard metrics every N steps
    eval_every: int = 200  # val loss, perplexity, bits per byte; 0 disables
    eval_batches: int = 20
    eval_at_start: bool = False  # also evaluate before the first step (e.g. SFT's val loss before)
    sample_every: int = 0  # print a sample every N steps; 0 disables
    sample_prompt: str = ""  # "" starts from BOS / EOS
    sample_tokens: int = 64
    sample_temperature: float = 0.8
    checkpoint_every: int = 500  # 0: only at the end (and on SIGTERM / SIGINT)
    keep_checkpoints: int = 3  # the latest N, plus the best by val loss
    async_checkpoint: bool = True
    on_nonfinite: Literal["halt", "skip"] = "halt"  # a NaN/inf loss: save and stop, or skip the update
    loss_ema: float = 0.9  # smoothing of the displayed and logged loss
    peak_tflops: float = 0.0  # per device, for MFU; 0: from the device table (or not reported)
    out_dir: str = "runs/default"

    def __post_init__(self):
        if self.microbatches < 1 or self.batch_size % self.microbatches:
            raise ConfigError(
                f"train.microbatches={self.microbatches} must be >= 1 and divide "
                f"train.batch_size={self.batch_size}")


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes; one of them may be -1 ("all remaining devices")."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    expert: int = 1
    # Multi-host: jax.distributed.initialize(coordinator, num_processes, process_id).
    # Empty / 0 / -1: from the environment (SLURM, TPU pods, or MYLM_COORDINATOR,
    # MYLM_NUM_PROCESSES, MYLM_PROCESS_ID), or a single process.
    coordinator: str = ""
    num_processes: int = 0
    process_id: int = -1

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor, self.expert)
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ConfigError(f"mesh sizes must be positive with at most one -1, got {sizes}")


@dataclass(frozen=True)
class SFTConfig:
    """`mylm sft`: fine-tune a pretrained run on conversations (mylm_jax/train/sft.py)."""

    data: tuple[str, ...] = ()  # JSON / JSONL files: alpaca, messages or conversations records
    val_fraction: float = 0.05  # held-out conversations for the SFT val loss (seeded by data.seed)
    packing: Literal["pack", "pad"] = "pack"
    init_from: str = ""  # a pretraining run directory: its latest (or init_step) checkpoint's weights
    init_step: int = -1
    optimizer: Literal["fresh", "continue"] = "fresh"  # continue: the pretrained run's optimizer state too
    extend_vocab: bool = False  # add missing chat tokens to the tokenizer and grow the embeddings

    def __post_init__(self):
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"sft.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)

    def __post_init__(self):
        optim, steps = self.optim, self.train.steps
        decay = round(optim.decay_fraction * steps) if optim.schedule == "wsd" else 0
        if optim.warmup_steps + decay > steps:
            raise ConfigError(f"optim.warmup_steps={optim.warmup_steps} plus the wsd decay ({decay} steps) "
                              f"exceed train.steps={steps}")
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")


# --------------------------------------------------------------------------- parsing

def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (e.g. list -> tuple)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not valid; expected {_type_name(tp)}")
        return value
    if origin is tuple:  # tuple[int, ...]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} is not valid; expected a list")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "3e-4" (no dot) as a string; accept what Python reads as a number.
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise ConfigError(f"{key}={value!r} is not valid; expected {_type_name(tp)}")
    return float(value) if tp is float else value


def _build(cls: type, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown key '{prefix}{key}'; valid keys: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    return cls(**kwargs)


# Keys that moved: old name -> new name. Old configs and checkpoints still load, with a
# one-line note (once per key and process).
RENAMED_KEYS = {
    "model.moe_aux_loss_weight": "loss.load_balance",
    "model.moe_z_loss_weight": "loss.router_z",
}
_noted: set[str] = set()


def _rename_old_keys(values: dict) -> dict:
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for old, new in RENAMED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = values.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        target = values.setdefault(new_section, {})
        if isinstance(target, dict):
            if new_key in target and target[new_key] != value:
                raise ConfigError(f"both '{old}' (its old name) and '{new}' are set, to {value!r} and "
                                  f"{target[new_key]!r}; keep only '{new}'")
            target[new_key] = value
        if old not in _noted:
            _noted.add(old)
            print(f"mylm: note: '{old}' is now '{new}' (read as such; rename it in your config)",
                  file=sys.stderr)
    return values


def config_from_dict(values: dict) -> Config:
    if isinstance(values, dict):
        values = _rename_old_keys(values)
    return _build(Config, values, "")


def config_to_dict(config: Config) -> dict:
    def plain(x):
        return list(x) if isinstance(x, tuple) else x
    return {
        section: {k: plain(v) for k, v in dataclasses.asdict(getattr(config, section)).items()}
        for section in (f.name for f in dataclasses.fields(config))
    }


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings to a nested dict (a copy); values are parsed as YAML."""
    values = {k: dict(v or {}) for k, v in values.items()}
    sections = [f.name for f in dataclasses.fields(Config)]
    for item in overrides:
        path, sep, raw = item.partition("=")
        section, dot, key = path.partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        if section not in sections:
            raise ConfigError(f"override '{item}': unknown section '{section}'; "
                              f"valid sections: {', '.join(sections)}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        values.setdefault(section, {})[key] = value
    return values


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or start from the defaults) and apply dotted overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return config_from_dict(apply_overrides(values, list(overrides)))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
