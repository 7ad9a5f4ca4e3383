"""Plumbing shared by the studies (scripts/compare_*.py, scripts/init_study.py, `mylm search`).

    corpus()               the default corpus: ../shared/data/tinyshakespeare.txt, or this
                           repository's README and docs where the shared folder is absent
    prepare_dataset(...)   a BPE tokenizer + token shards for a corpus, built once and cached
                           under runs/studies/cache/<key> (the key hashes the inputs and sizes)
    study_config(...)      a Config for a short study run (small model, no checkpoints)
    read_metrics(run_dir)  the records of a run's metrics.jsonl
    save_figure / write_results
                           PNGs (matplotlib's Agg backend: no display needed), results.json
                           and report.md in the study's --out directory
    StudyError             a user mistake; scripts print it as one line and exit 2

Every study writes the same three kinds of output, so a reader can diff results.json
between machines and read report.md without running anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

from mylm_jax.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"


class StudyError(ConfigError):
    """A user mistake in a study's input; its message is one line (`mylm` prints it as one)."""


def fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def corpus() -> list[str]:
    shakespeare = SHARED_DATA / "tinyshakespeare.txt"
    if shakespeare.is_file():
        return [str(shakespeare)]
    return [str(ROOT / "README.md"), str(ROOT / "docs")]


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


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that have `key` (None -> nan); the last record of a step wins."""
    by_step = {r["step"]: r[key] for r in records if key in r}
    steps = np.array(sorted(by_step), dtype=np.int64)
    values = np.array([np.nan if by_step[s] is None else by_step[s] for s in steps], dtype=np.float64)
    return steps, values


def figure(*args, **kwargs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str | Path) -> str:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_results(out_dir: str | Path, results: dict, report: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_plain(results), indent=2) + "\n")
    (out / "report.md").write_text(report)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
        return f"{v:,}" if isinstance(v, int) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def variant_model(name: str, d_model: int = 128, n_layers: int = 4, n_heads: int = 4) -> dict:
    """The model section of a study variant: the families the issue compares.

        gpt2               learned positions, LayerNorm, GELU, biases (the 2019 baseline)
        modern             RoPE, RMSNorm, SwiGLU, no biases, GQA (2 query heads per kv head)
        gated_headwise     modern + Qwen's sigmoid gate on each head's output (one scalar per head)
        gated_elementwise  modern + the gate per output element
        moe                modern with 4 experts, top-2, each expert half the dense MLP's width:
                           the active matmul weights per token match the dense modern model's
    """
    base = dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads)
    modern = dict(base, position="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                  n_kv_heads=max(1, n_heads // 2))
    if name == "gpt2":
        return dict(base, position="learned", norm="layernorm", mlp="gelu", bias=True)
    if name == "modern":
        return modern
    if name in ("gated_headwise", "gated_elementwise"):
        return dict(modern, attn_gate=name.removeprefix("gated_"))
    if name == "moe":
        dense_ff = -(-(8 * d_model // 3) // 64) * 64
        return dict(modern, n_experts=4, top_k=2, moe_d_ff=max(16, dense_ff // 2))
    raise StudyError(f"unknown variant {name!r} (expected one of {', '.join(VARIANTS)})")


VARIANTS = ("gpt2", "modern", "gated_headwise", "gated_elementwise", "moe")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (getrusage; kilobytes on Linux)."""
    import resource
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def draw_batches(cfg, steps: int) -> dict[str, np.ndarray]:
    """The first `steps` training batches of cfg's dataset from the project's loader, stacked:
    [steps, B, T] per field, so several trainings can consume exactly the same ones."""
    from mylm_jax.data.pretrain import LoaderConfig, pretrain_loader
    loader = pretrain_loader(cfg.data.path, "train",
                             LoaderConfig(cfg.data.seq_len, cfg.train.batch_size, cfg.data.loader, cfg.data.seed))
    batches = [next(loader) for _ in range(steps)]
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def add_study_args(p, name: str, d_model: int = 64, layers: int = 2, seq_len: int = 64) -> None:
    """The arguments every study script shares: model size, batch, data, cache and output."""
    p.add_argument("--d-model", type=int, default=d_model)
    p.add_argument("--layers", type=int, default=layers)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=seq_len)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--vocab", type=int, default=512, help="BPE vocabulary trained on the corpus")
    p.add_argument("--data", nargs="+", help="corpus files (default: ../shared/data/tinyshakespeare.txt)")
    p.add_argument("--max-chars", type=int, help="use only the corpus's first characters (tests)")
    p.add_argument("--cache", default="runs/studies/cache", help="where prepared datasets are kept")
    p.add_argument("--out", default=f"runs/studies/{name}")
