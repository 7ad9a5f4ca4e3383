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

The package: schema.py (the sections), validation.py (ConfigError, field ranges),
loading.py (YAML, overrides, renamed keys). It imports no jax: the twin, the tokenizer
and the scripts use it too.
"""

from mylm_jax.config.loading import (RENAMED_KEYS, apply_overrides, config_from_dict, config_to_dict,
                                     dump_config, load_config)
from mylm_jax.config.schema import (AttnGate, AttnImpl, Config, DataConfig, DType, Init, LossConfig, MeshConfig,
                                    Mlp, ModelConfig, MoeImpl, Norm, OptimConfig, ParamKind, Position, SFTConfig,
                                    TrainConfig)
from mylm_jax.config.validation import ConfigError, check_fields, in_range, numeric_fields

__all__ = [
    "AttnGate", "AttnImpl", "Config", "ConfigError", "DType", "DataConfig", "Init", "LossConfig", "MeshConfig",
    "Mlp", "ModelConfig", "MoeImpl", "Norm", "OptimConfig", "ParamKind", "Position", "RENAMED_KEYS",
    "SFTConfig", "TrainConfig", "apply_overrides", "check_fields", "config_from_dict", "config_to_dict",
    "dump_config", "in_range", "load_config", "numeric_fields",
]
