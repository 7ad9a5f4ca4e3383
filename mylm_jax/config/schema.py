"""The seven config sections, each a frozen dataclass validated when it is made.

Each section checks its own fields (ranges: mylm_jax/config/validation.py) and the
relations between them; `Config` checks the relations across sections.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

from mylm_jax.config.validation import ConfigError, check_fields

Norm = Literal["layernorm", "rmsnorm"]
Mlp = Literal["gelu", "swiglu"]
Position = Literal["learned", "rope", "none"]
AttnGate = Literal["none", "headwise", "elementwise"]
AttnImpl = Literal["auto", "reference", "dot_product", "blockwise", "cudnn"]
MoeImpl = Literal["dense", "ragged", "blocked"]
Init = Literal["normal", "gpt2_scaled", "xavier", "kaiming", "zero_out"]
DType = Literal["float32", "bfloat16"]
# Rematerialisation of each block in the backward pass (mylm_jax/model/stack.py, docs/scaling.md).
Remat = Literal["none", "dots", "dots_saveable", "full"]
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
    attention_impl: AttnImpl = "auto"  # auto: by platform (mylm_jax/model/attention.py: choose_attention)
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
    dtype: DType = "float32"  # compute dtype of matmul inputs; accumulation stays float32
    # Storage dtype of the parameters. bfloat16 halves their memory but drops the float32
    # master copy: updates smaller than half a bfloat16 ulp are lost (docs/precision.md).
    param_dtype: DType = "float32"
    fp8: bool = False  # attention and MLP Dense matmuls in FP8 (mylm_jax/model/fp8.py, docs/precision.md)
    # The layer stack (mylm_jax/model/stack.py): scan_layers runs the blocks under nnx.scan
    # (weights stacked on a leading "layers" axis; compiled once instead of n_layers times);
    # remat recomputes activations in the backward pass instead of keeping them.
    scan_layers: bool = False
    remat: Remat = "none"

    RANGES = {  # see check_fields; the Optional sizes are checked when set
        "vocab_size": "> 0", "max_seq_len": "> 0", "d_model": "> 0", "n_layers": "> 0", "n_heads": "> 0",
        "n_kv_heads": "> 0", "d_ff": "> 0", "rope_theta": "> 0", "norm_eps": "> 0", "attention_block": "> 0",
        "n_experts": ">= 0", "n_shared_experts": ">= 0", "top_k": "> 0", "moe_d_ff": "> 0",
        "moe_block_rows": "> 0", "init_std": "> 0",
    }

    def __post_init__(self):
        check_fields(self, "model")  # first: the checks below divide by these sizes
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

    # Seeds: numpy's generators refuse negative ones, jax's keys those of 2**63 and more.
    RANGES = {"seq_len": "> 0", "seed": "[0, 2**32)", "workers": ">= 0"}

    def __post_init__(self):
        check_fields(self, "data")


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
    # Storage dtype of AdamW's two moments and Muon's momentum (the update is computed in
    # float32 either way); bfloat16 halves the optimizer state (docs/precision.md).
    moment_dtype: DType = "float32"

    # eps > 0: with eps = 0 a parameter whose gradient is 0 gets the update 0 / 0 = NaN.
    # muon_ns_steps > 0: without Newton-Schulz steps the update is not orthogonalised (not Muon).
    RANGES = {
        "lr": "> 0", "weight_decay": ">= 0", "beta1": "[0, 1)", "beta2": "[0, 1)", "eps": "> 0",
        "grad_clip": ">= 0", "warmup_steps": ">= 0", "min_lr_ratio": "[0, 1]", "decay_fraction": "[0, 1]",
        "muon_lr": "> 0", "muon_weight_decay": ">= 0", "muon_momentum": "[0, 1)", "muon_ns_steps": "> 0",
        "muon_momentum_warmup_steps": ">= 0", "muon_momentum_start": "[0, 1)",
    }

    def __post_init__(self):
        check_fields(self, "optim")


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

    RANGES = {"load_balance": ">= 0", "router_z": ">= 0"}  # a negative weight would reward the imbalance

    def __post_init__(self):
        check_fields(self, "loss")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16  # sequences per optimizer step, over all devices and microbatches
    microbatches: int = 1  # gradient accumulation: batch_size is split into this many
    # Optimizer steps per compiled call (a lax.scan over K batches; identical results, every
    # step still logged): the per-call costs (dispatch, batch placement, metric readback,
    # XLA:CPU's fresh scratch memory) are paid once per K steps. Calls end at evaluations,
    # samples and checkpoints, and a stop signal is honoured between calls.
    steps_per_call: int = 10  # divides the round eval / checkpoint intervals: no padding steps
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

    # steps > 0: a run of 0 steps would train nothing and still exit 0. The *_every
    # fields that say "0 disables" accept 0; log_every does not (it divides the step).
    RANGES = {
        "steps": "> 0", "batch_size": "> 0", "microbatches": "> 0", "steps_per_call": "[1, 1000]",
        "seed": "[0, 2**32)", "log_every": "> 0",
        "eval_every": ">= 0", "eval_batches": "> 0", "sample_every": ">= 0", "sample_tokens": "> 0",
        "sample_temperature": ">= 0", "checkpoint_every": ">= 0", "keep_checkpoints": "> 0",
        "loss_ema": "[0, 1)", "peak_tflops": ">= 0",
    }

    def __post_init__(self):
        check_fields(self, "train")
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

    # -1 is "all remaining devices" for a mesh axis, "from the environment" for process_id.
    RANGES = {"data": ">= -1", "fsdp": ">= -1", "tensor": ">= -1", "expert": ">= -1",
              "num_processes": ">= 0", "process_id": ">= -1"}

    def __post_init__(self):
        check_fields(self, "mesh")
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

    RANGES = {"val_fraction": "[0, 1)", "init_step": ">= -1"}  # init_step -1: the latest

    def __post_init__(self):
        check_fields(self, "sft")


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
            # A short run (train.steps=20 with the default 100 warmup steps) just works: the
            # warmup is clamped to a tenth of the run, min(warmup_steps, steps // 10).
            warmup = min(optim.warmup_steps, steps // 10)
            if warmup + decay > steps:  # wsd only: the decay alone leaves no room
                raise ConfigError(f"optim.warmup_steps={optim.warmup_steps} (even clamped to {warmup}) plus the "
                                  f"wsd decay ({decay} steps, optim.decay_fraction={optim.decay_fraction}) "
                                  f"exceed train.steps={steps}")
            what = f" plus the wsd decay ({decay} steps) exceed" if decay else " exceeds"
            print(f"note: optim.warmup_steps={optim.warmup_steps}{what} train.steps={steps}; "
                  f"warmup clamped to {warmup} (steps // 10)", file=sys.stderr)
            object.__setattr__(self, "optim", dataclasses.replace(optim, warmup_steps=warmup))
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
