"""What may change when a run continues from a checkpoint, and what may not.

Structural: anything that changes a parameter's shape (vocab, widths, layers, heads,
experts, untied head, ...), the optimizer (AdamW and Muon keep different state), or the
tokenizer (the same ids must mean the same text). Those are one-line errors.

Everything else may change: lr, schedule, warmup, steps, batch size, eval and
checkpoint intervals, the data path (same tokenizer), the mesh. The differences are
printed, so a continued run says how it differs from the one it continues.
"""

from __future__ import annotations

from flax import nnx

from mylm_jax.config import Config, ConfigError, config_from_dict, config_to_dict
from mylm_jax.model.gpt import GPT
from mylm_jax.model.params import param_shapes


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: Config, new: Config) -> list[str]:
    a, b = _flat(config_to_dict(old)), _flat(config_to_dict(new))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_compatible(meta: dict, cfg: Config, tokenizer: dict | None) -> list[str]:
    """Raise ConfigError on a structural mismatch; return (and print) the other changes."""
    old = config_from_dict(meta["config"])
    step = meta.get("step")
    old_shapes = param_shapes(nnx.eval_shape(lambda: GPT(old.model, nnx.Rngs(0))))
    new_shapes = param_shapes(nnx.eval_shape(lambda: GPT(cfg.model, nnx.Rngs(0))))
    for name in sorted(set(old_shapes) | set(new_shapes)):
        if old_shapes.get(name) != new_shapes.get(name):
            raise ConfigError(f"the checkpoint (step {step}) does not fit this model: parameter '{name}' is "
                              f"{old_shapes.get(name)} there and {new_shapes.get(name)} here "
                              "(model shapes cannot change when continuing a run)")
    if old.optim.name != cfg.optim.name:
        raise ConfigError(f"the checkpoint (step {step}) was trained with optim.name={old.optim.name}; "
                          f"this config says {cfg.optim.name} (their optimizer states differ)")
    if tokenizer is not None and meta.get("tokenizer"):
        then, now = meta["tokenizer"]["fingerprint"], tokenizer["fingerprint"]
        if then != now:
            raise ConfigError(f"the checkpoint (step {step}) was trained with tokenizer {then[:12]}...; "
                              f"this run's data uses {now[:12]}... (token ids would change meaning)")
    changes = config_changes(old, cfg)
    if changes:
        print("continuing with changed settings: " + "; ".join(changes), flush=True)
    return changes
