"""The data of a study: which corpus, its tokenizer and shards (built once), the config of
a short run on them, and the batches themselves.

    corpus()               the default corpus: ../shared/data/tinyshakespeare.txt, or the same
                           text embedded in the package where the shared folder is absent
                           (mylm_jax/data/corpora/; never the repository's own files)
    prepare_dataset(...)   a BPE tokenizer + token shards for a corpus, built once and cached
                           under runs/studies/cache/<key> (the key hashes the inputs and sizes)
    study_config(...)      a Config for a short study run (small model, no checkpoints)
    draw_batches(cfg, n)   the first n training batches, stacked, so that several trainings
                           can consume exactly the same ones
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from mylm_jax.studies.script import StudyError

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"


def corpus() -> list[str]:
    shakespeare = SHARED_DATA / "tinyshakespeare.txt"
    if shakespeare.is_file():
        return [str(shakespeare)]
    from mylm_jax.data.corpora import corpus_path
    return [str(corpus_path("tinyshakespeare"))]


def prepare_dataset(inputs: list[str] | None = None, vocab_size: int = 512,
                    cache_root: str | Path = "runs/studies/cache", max_chars: int | None = None) -> str:
    """Tokenizer + token shards (val 5%) for `inputs`, prepared once; returns the data dir.

    max_chars (tests): keep only the first documents up to this many characters.
    """
    from mylm_jax.data.prepare import PrepareSettings, prepare
    from mylm_jax.data.readers import read_documents
    from mylm_jax.tokenizer import train_tokenizer

    inputs = inputs or corpus()
    for path in inputs:
        if not Path(path).exists():
            raise StudyError(f"{path}: no such file or directory")
    stamp = [(str(Path(p).resolve()), Path(p).stat().st_size) for p in inputs]
    key = hashlib.sha256(json.dumps([stamp, vocab_size, max_chars]).encode()).hexdigest()[:12]
    directory = Path(cache_root) / key
    data_dir = directory / "data"
    if (data_dir / "metadata.json").is_file():
        return str(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    texts, total = [], 0
    for doc in read_documents(list(inputs), txt_split="blank"):
        texts.append(doc.text)
        total += len(doc.text)
        if max_chars and total >= max_chars:
            break
    source = directory / "corpus.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    tok_path = directory / "tokenizer.json"
    train_tokenizer(texts, vocab_size=vocab_size, progress=False).save(tok_path)
    prepare(PrepareSettings(inputs=(str(source),), out_dir=str(data_dir), tokenizer=str(tok_path),
                            val_fraction=0.05, workers=1), progress=False)
    return str(data_dir)


def study_config(data_path: str, out_dir: str | Path, model: dict, optim: dict | None = None,
                 train: dict | None = None, seq_len: int = 64, data: dict | None = None):
    """A Config for a short study run: evals as asked, no checkpoints kept beyond the last."""
    from mylm_jax.config import config_from_dict
    from mylm_jax.data.shards import read_metadata

    vocab = read_metadata(data_path)["tokenizer"]["vocab_size"]
    values = {
        "model": {"vocab_size": -(-vocab // 64) * 64, "max_seq_len": seq_len, **model},
        "data": {"path": data_path, "seq_len": seq_len, "loader": "packed", **(data or {})},
        "optim": {"lr": 3e-3, "warmup_steps": 10, "schedule": "cosine", **(optim or {})},
        "train": {"steps": 100, "batch_size": 8, "log_every": 1, "eval_every": 25, "eval_batches": 4,
                  "checkpoint_every": 0, "keep_checkpoints": 1, "async_checkpoint": False,
                  "out_dir": str(out_dir), **(train or {})},
    }
    return config_from_dict(values)


def draw_batches(cfg, steps: int) -> dict[str, np.ndarray]:
    """The first `steps` training batches of cfg's dataset from the project's loader, stacked:
    [steps, B, T] per field, so several trainings can consume exactly the same ones."""
    from mylm_jax.data.pretrain import LoaderConfig, pretrain_loader
    loader = pretrain_loader(cfg.data.path, "train",
                             LoaderConfig(cfg.data.seq_len, cfg.train.batch_size, cfg.data.loader, cfg.data.seed))
    batches = [next(loader) for _ in range(steps)]
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}
