"""Weights in the transformers layout: safetensors files, sharded above a size, with their index.

    write_weights(out_dir, tensors, dtype, max_shard_bytes) -> the file names written
    read_weights(hf_dir, where)                            -> {name: float32 array}

Up to max_shard_bytes in all: one `model.safetensors`. Above: `model-00001-of-0000N.safetensors`,
... and `model.safetensors.index.json`, {"metadata": {"total_size": bytes}, "weight_map":
{tensor: file}}, as transformers' `save_pretrained` writes them: tensors in order, a new shard
whenever the next tensor would overflow the current one (a tensor larger than the limit gets
a shard of its own). Every file says {"format": "pt"} in its metadata (transformers reads
only such files) and is written atomically (mylm_jax/fileio.py).

bfloat16 is numpy's `ml_dtypes.bfloat16` (jax's own); float32 -> bfloat16 rounds to nearest
even, as torch's `.to(torch.bfloat16)`. Reading widens any float dtype to float32 exactly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import ml_dtypes
import numpy as np

from mylm_jax.fileio import atomic_write
from mylm_jax.interop.errors import InteropError

SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """"5GB", "500MB", "2GiB" or a plain number of bytes -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B)?\s*", text.upper())
    if not m or float(m.group(1)) <= 0:
        raise InteropError(f"--max-shard-size {text!r}: expected a size such as 5GB, 500MB or 2GiB")
    return int(float(m.group(1)) * UNITS.get(m.group(2) or "", 1))


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:
        raise InteropError('Hugging Face files need the safetensors package: pip install -e ".[hf]"') from None
    return safetensors.numpy


def write_weights(out_dir: Path, tensors: dict[str, np.ndarray], dtype: str, max_shard_bytes: int) -> list[str]:
    st = _safetensors()
    cast = {name: np.ascontiguousarray(t.astype(DTYPES[dtype])) for name, t in tensors.items()}
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, t in cast.items():
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    if len(shards) == 1:
        atomic_write(out_dir / SINGLE, st.save(shards[0], metadata={"format": "pt"}))
        return [SINGLE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        atomic_write(out_dir / name, st.save(shard, metadata={"format": "pt"}))
    index = {"metadata": {"total_size": sum(t.nbytes for t in cast.values())},
             "weight_map": {tensor: name for name, shard in zip(names, shards) for tensor in shard}}
    atomic_write(out_dir / INDEX, json.dumps(index, indent=2) + "\n")
    return [*names, INDEX]


def read_weights(hf_dir: Path, where: str, widen: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of a transformers checkpoint directory (one file or an index), as float32
    (widen=False: as stored)."""
    st = _safetensors()
    if (hf_dir / SINGLE).is_file():
        files = [hf_dir / SINGLE]
    elif (hf_dir / INDEX).is_file():
        try:
            weight_map = json.loads((hf_dir / INDEX).read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InteropError(f"{where}/{INDEX}: not a safetensors index ({type(e).__name__}: {e})") from None
        files = [hf_dir / name for name in dict.fromkeys(weight_map.values())]
    else:
        found = sorted(p.name for p in hf_dir.glob("*.bin")) or ["no weights"]
        raise InteropError(f"{where}: no {SINGLE} or {INDEX} (found {', '.join(found)}); MyLM reads "
                           "safetensors checkpoints only (save_pretrained writes them)")
    tensors = {}
    for path in files:
        try:
            loaded = st.load_file(str(path))
        except Exception as e:  # a missing shard, a truncated file: safetensors' own errors
            raise InteropError(f"{path}: unreadable ({type(e).__name__}: {str(e)[:160]})") from None
        for name, t in loaded.items():
            if not np.issubdtype(t.dtype, np.floating) and t.dtype != ml_dtypes.bfloat16:
                raise InteropError(f"{path}: tensor {name} is {t.dtype}, not a float (a quantised checkpoint?)")
            tensors[name] = t.astype(np.float32) if widen else t
    return tensors
