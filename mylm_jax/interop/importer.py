"""`mylm import hf HF_DIR OUT_RUN`: a local transformers checkpoint as a MyLM run directory.

    HF_DIR/config.json         -> the model section (architectures.py: model_config)
    HF_DIR/tokenizer.json      -> OUT_RUN/tokenizer.json (hf_tokenizer.py: from_hf_json)
    HF_DIR/*.safetensors       -> the parameters (mapping.py: from_hf); the embedding rows and the
                                  head's columns move with the tokenizer's ids to MyLM's numbering
    OUT_RUN/config.yaml        that model section; every other section MyLM's default
                               (data.seq_len fitted to the context, train.out_dir = OUT_RUN)
    OUT_RUN/checkpoints/0/     a step-0 checkpoint as the trainer writes one (train/checkpoint.py):
                               the weights, a fresh optimizer state, the data loader at its start

Each of the three inputs is checked before anything is written, and anything MyLM cannot
compute exactly (a tanh GELU, scaled RoPE, biases on q/k/v alone, a normalizer) is one line
naming it. The run is an ordinary one: `mylm generate` / `chat` / `eval` load it
(RunDir.load_model), `mylm sft` starts from it (sft.init_from=OUT_RUN), and
`mylm pretrain --continue OUT_RUN data.path=DATA` trains it on data prepared with
OUT_RUN/tokenizer.json (AdamW moments from zero, the lr schedule from step 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import nnx

from mylm_jax.config import Config, DataConfig, ModelConfig, TrainConfig, config_to_dict, dump_config
from mylm_jax.data.sources import tokenizer_identity
from mylm_jax.fileio import atomic_write
from mylm_jax.interop.architectures import model_config
from mylm_jax.interop.errors import InteropError
from mylm_jax.interop.hf_tokenizer import from_hf_json
from mylm_jax.interop.mapping import from_hf
from mylm_jax.interop.safetensors_files import read_weights
from mylm_jax.model.gpt import GPT
from mylm_jax.model.params import load_flat_params, param_shapes
from mylm_jax.parallel import make_mesh
from mylm_jax.tokenizer import Tokenizer
from mylm_jax.train.run_dir import RunDir
from mylm_jax.train.state import create_state

# The loader's state at the first batch of epoch 0 (EpochLoader.set_state with no iterator
# state starts the epoch): what `pretrain --continue` resumes the data from.
DATA_START = {"epoch": 0, "iterator": None}


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InteropError(f"{path}: not found (a transformers checkpoint directory has config.json, "
                           "tokenizer.json and *.safetensors)") from None
    except (OSError, ValueError) as e:
        raise InteropError(f"{path}: not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict):
        raise InteropError(f"{path}: expected a JSON object")
    return value


def vocab_rows(order: dict[int, int], m: ModelConfig, tok: Tokenizer, where: str) -> np.ndarray:
    """row[h] = the MyLM id of HF row h: the tokenizer's ids as from_hf_json mapped them, the rows
    no token stands for (a padded vocabulary) after them, in their order."""
    if tok.vocab_size > m.vocab_size or max(order) >= m.vocab_size:
        raise InteropError(f"{where}: the tokenizer's ids reach {max(order)}, past the model's {m.vocab_size} rows")
    rows = np.full(m.vocab_size, -1)
    rows[list(order)] = list(order.values())
    free = rows < 0
    rows[free] = np.arange(tok.vocab_size, tok.vocab_size + free.sum())
    return rows


def read_checkpoint(hf_dir: str | Path) -> tuple[str, ModelConfig, Tokenizer, dict[str, np.ndarray]]:
    """(model_type, model config, tokenizer, flat float32 parameters in MyLM's layout and ids)."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise InteropError(f"{hf_dir}: no such directory")
    arch, m = model_config(read_json(hf_dir / "config.json"), f"{hf_dir}/config.json")
    tok, order = from_hf_json(read_json(hf_dir / "tokenizer.json"), f"{hf_dir}/tokenizer.json")
    rows = vocab_rows(order, m, tok, str(hf_dir))
    shapes = param_shapes(nnx.eval_shape(lambda: GPT(m, nnx.Rngs(0))))
    flat = from_hf(arch, m, read_weights(hf_dir, str(hf_dir)), shapes, str(hf_dir))
    if not np.array_equal(rows, np.arange(m.vocab_size)):  # HF row h becomes MyLM row rows[h]
        flat["embed"] = _moved(flat["embed"], rows, axis=0)
        if "lm_head" in flat:
            flat["lm_head"] = _moved(flat["lm_head"], rows, axis=1)
    return arch, m, tok, flat


def _moved(a: np.ndarray, rows: np.ndarray, axis: int) -> np.ndarray:
    out = np.empty_like(a)
    if axis == 0:
        out[rows] = a
    else:
        out[:, rows] = a
    return out


def import_run(hf_dir: str | Path, out: str | Path, overwrite: bool = False) -> tuple[str, Config]:
    """`mylm import hf`: write the run directory; returns (model_type, its config)."""
    arch, m, tok, flat = read_checkpoint(hf_dir)
    out = Path(out)
    cfg = Config(model=m, data=DataConfig(seq_len=min(DataConfig.seq_len, m.max_seq_len)),
                 train=TrainConfig(out_dir=str(out)))
    if RunDir.committed_steps(out) and not overwrite:
        raise InteropError(f"{out} already holds a run; add --overwrite to replace it")
    # One run per directory, by the training runs' rules (a run's own files only, locked while written).
    run = RunDir.for_training(out, cfg.train.keep_checkpoints, async_save=False, resume=False, overwrite=overwrite)
    try:
        ts = create_state(cfg, make_mesh(cfg.mesh))
        models = ts.models()  # (model, optimizer): the fresh optimizer state stays
        load_flat_params(models[0], flat)
        ts.state = nnx.split(models)[1]
        tok.save(out / "tokenizer.json")
        atomic_write(out / "config.yaml", dump_config(cfg))
        meta = {"config": config_to_dict(cfg), "step": 0, "seed": cfg.train.seed,
                "tokenizer": tokenizer_identity(tok, str(out / "tokenizer.json")), "data_path": "",
                "progress": {}, "imported_from": str(Path(hf_dir).absolute())}
        run.checkpointer.save(0, ts.state, DATA_START, meta, wait=True)
        run.checkpointer.close()
    finally:
        run.release()
    return arch, cfg
