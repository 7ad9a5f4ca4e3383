"""`mylm export hf RUN_DIR OUT_DIR`: a run's checkpoint as a transformers model directory.

    OUT_DIR/model.safetensors          the weights, tensor by tensor (mapping.py), float32 or bfloat16;
                                       sharded with an index above --max-shard-size (safetensors_files.py)
    OUT_DIR/tokenizer.json             the same ids for every text (mylm_jax/tokenizer/hf_export.py)
    OUT_DIR/tokenizer_config.json      the special tokens and the chat template, as Jinja (hf_tokenizer.py)
    OUT_DIR/generation_config.json     where `mylm generate` / `mylm chat` stop; padded ids never generated
    OUT_DIR/config.json                the architecture that computes the same function (architectures.py),
                                       written last: a directory without it was never finished

    OUT_DIR/.mylm                      the marker: a MyLM export (mylm_jax/ownership.py)

Then `AutoModelForCausalLM.from_pretrained(OUT_DIR)`, `AutoTokenizer.from_pretrained(OUT_DIR)`
and `pipeline("text-generation", model=OUT_DIR)` work offline. The architecture is chosen from
the checkpoint's config before a weight is read: a model with no exact counterpart is one
line naming the option, at once. Nothing here imports transformers (only safetensors).

`export_run` touches OUT_DIR last: the dependency, the run, the checkpoint's weights and
OUT_DIR's own state are checked first; the export is written beside it
(`.OUT_DIR.tmp-PID`) and swapped in complete, so a failure midway leaves an earlier export
whole. OUT_DIR must be new or empty, or, with --overwrite, an earlier export marked as
MyLM's: an unmarked directory of model files (an export made before markers, or one that
`save_pretrained` or the Hub wrote) cannot be told from the user's own and is refused.
Files of the user's in an earlier export (a README.md model card, say) are carried into
the new one.
"""

from __future__ import annotations

import json
import sys
from fnmatch import fnmatch
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
from mylm_jax.ownership import build_beside, clear_stale, discard, listing, marked_as, refusal, swap_in
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


def check_dependencies() -> None:
    """What writing an export imports, before anything is read or written."""
    try:
        import safetensors.numpy  # noqa: F401
    except ImportError:
        raise InteropError('mylm export hf writes safetensors files and needs the safetensors package: '
                           'pip install -e ".[hf]"') from None


def is_export_file(path: Path) -> bool:
    """A file an export writes (or a temporary one it left, fileio's `.NAME.tmp-PID`)."""
    temporary = path.name.startswith(".") and ".tmp-" in path.name
    return any(fnmatch(path.name, pattern) for pattern in EXPORT_FILES) or temporary


def check_out_dir(out: Path, overwrite: bool) -> None:
    """OUT_DIR must be new or empty, or an earlier MyLM export to replace (--overwrite). Reads only."""
    if out.exists() and not out.is_dir():
        raise InteropError(f"{out}: is a file, not a directory")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if marked_as(out, "hf-export"):
        if not overwrite:
            files = listing(p.name for p in entries if is_export_file(p))
            raise InteropError(f"{out} already holds an export ({files}); add --overwrite to replace it")
    elif entries and overwrite:
        raise refusal(entries[0], "delete", "--overwrite replaces only an earlier MyLM export, marked .mylm")
    elif entries:
        raise InteropError(f"{out} is not empty ({listing(p.name for p in entries)}); export into a new or empty "
                           "directory")


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
    check_dependencies()
    run = RunDir.open(run_dir)
    step = run.step(step)
    choose(run.config(step).model)  # no counterpart: say so before reading the weights
    check_dtype(dtype)
    out = Path(out)
    check_out_dir(out, overwrite)
    model, cfg, tok = run.load_model(step)
    # A scanned model's stacked weights are written per layer, as the unrolled model's (model/layout.py).
    flat = to_unrolled(flat_params(model), cfg.model)
    earlier = out.is_dir() and any(out.iterdir())
    target = out.resolve()
    clear_stale(target, is_export_file, warn=lambda text: print(f"warning: {text}", file=sys.stderr))
    built = build_beside(target, "hf-export")
    try:
        arch = export_model(cfg.model, flat, tok, built, dtype, max_shard_bytes)
        check_out_dir(out, overwrite)  # as it was: nothing else wrote there meanwhile
    except OSError as e:
        discard(built)
        raise InteropError(f"{out}: cannot write the export ({e.strerror or e}); "
                           f"{'the earlier export there is unchanged' if earlier else 'nothing was written'}") from None
    except BaseException:
        discard(built)
        raise
    replaced, kept = swap_in(target, built, is_export_file)
    if replaced:
        print(f"replaced the earlier export in {out} (removed {listing(replaced)})"
              + (f"; kept {listing(kept)} (not made by MyLM)" if kept else ""), flush=True)
    return arch, step
