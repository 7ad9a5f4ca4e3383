"""`mylm export hf RUN_DIR OUT_DIR`: a run's checkpoint as a transformers model directory.

    OUT_DIR/model.safetensors          the weights, tensor by tensor (mapping.py), float32 or bfloat16;
                                       sharded with an index above --max-shard-size (safetensors_files.py)
    OUT_DIR/tokenizer.json             the same ids for every text (mylm_jax/tokenizer/hf_export.py)
    OUT_DIR/tokenizer_config.json      the special tokens and the chat template, as Jinja (hf_tokenizer.py)
    OUT_DIR/generation_config.json     where `mylm generate` / `mylm chat` stop; padded ids never generated
    OUT_DIR/config.json                the architecture that computes the same function (architectures.py),
                                       written last: a directory without it was never finished

Then `AutoModelForCausalLM.from_pretrained(OUT_DIR)`, `AutoTokenizer.from_pretrained(OUT_DIR)`
and `pipeline("text-generation", model=OUT_DIR)` work offline. The architecture is chosen from
the checkpoint's config before a weight is read: a model with no exact counterpart is one
line naming the option, at once. Nothing here imports transformers (only safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mylm_jax.config import ModelConfig
from mylm_jax.fileio import atomic_write
from mylm_jax.interop.architectures import choose, hf_config
from mylm_jax.interop.errors import InteropError
from mylm_jax.interop.hf_tokenizer import generation_config, token_ids, tokenizer_files
from mylm_jax.interop.mapping import to_hf
from mylm_jax.interop.safetensors_files import DTYPES, write_weights
from mylm_jax.model.layout import to_unrolled
from mylm_jax.model.params import flat_params
from mylm_jax.tokenizer import Tokenizer
from mylm_jax.train.run_dir import RunDir

MAX_SHARD_BYTES = 5 * 10**9  # transformers' own default shard size
# What an export writes (an earlier export's are removed by --overwrite, so no stale shard stays).
EXPORT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors")


def write_json(path: Path, value: dict) -> None:
    atomic_write(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise InteropError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """OUT_DIR must be new or empty; --overwrite removes an earlier export's files (only those)."""
    if out.exists() and not out.is_dir():
        raise InteropError(f"{out}: is a file, not a directory")
    earlier = sorted({p for pattern in EXPORT_FILES for p in out.glob(pattern)}) if out.is_dir() else []
    others = sorted(p.name for p in out.iterdir() if p not in earlier) if out.is_dir() else []
    if earlier and not overwrite:
        raise InteropError(f"{out} already holds an export ({', '.join(p.name for p in earlier[:3])}...); "
                           "add --overwrite to replace it")
    if others and not earlier:
        raise InteropError(f"{out} is not empty ({', '.join(others[:3])}); export into a new or empty directory")
    for p in earlier:
        p.unlink()


def export_model(m: ModelConfig, flat: dict[str, np.ndarray], tok: Tokenizer, out: str | Path,
                 dtype: str = "float32", max_shard_bytes: int = MAX_SHARD_BYTES) -> str:
    """Write the transformers directory of a model (its config and flat float32 parameters) and
    tokenizer; returns the architecture's model_type."""
    arch = choose(m)
    check_dtype(dtype)
    if tok.vocab_size > m.vocab_size:
        raise InteropError(f"the tokenizer's {tok.vocab_size} ids do not fit model.vocab_size={m.vocab_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_weights(out, to_hf(arch, m, flat), dtype, max_shard_bytes)
    for name, value in tokenizer_files(tok, m.max_seq_len).items():
        write_json(out / name, value)
    write_json(out / "generation_config.json", generation_config(tok, m.vocab_size))
    write_json(out / "config.json", hf_config(m, arch, token_ids(tok), dtype))
    return arch


def export_run(run_dir: str | Path, out: str | Path, step: int | None = None, dtype: str = "float32",
               max_shard_bytes: int = MAX_SHARD_BYTES, overwrite: bool = False) -> tuple[str, int]:
    """`mylm export hf`: (model_type, step) of the checkpoint exported from a run directory."""
    run = RunDir.open(run_dir)
    step = run.step(step)
    choose(run.config(step).model)  # no counterpart: say so before reading the weights
    check_dtype(dtype)
    prepare_out_dir(Path(out), overwrite)
    model, cfg, tok = run.load_model(step)
    # A scanned model's stacked weights are written per layer, as the unrolled model's (model/layout.py).
    flat = to_unrolled(flat_params(model), cfg.model)
    return export_model(cfg.model, flat, tok, out, dtype, max_shard_bytes), step
