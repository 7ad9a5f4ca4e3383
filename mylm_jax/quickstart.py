"""The first run of a new user: tokenizer -> token shards -> pretraining, in one call.

    quickstart(out="runs/quickstart", corpus=None, overrides=()) -> QuickstartResult

`mylm quickstart` (mylm_jax/cli/quickstart.py) and the Python API call this. It trains a
byte-level BPE tokenizer on the corpus (the embedded tinyshakespeare by default,
mylm_jax/data/corpora/; or any file, directory or glob `mylm data prepare` reads, each
file one document), writes token shards (val: the last 10% of the token stream,
nanoGPT's split), and pretrains the small GPT of `quickstart.yaml` (beside this module;
the same file as configs/quickstart.yaml, for users to copy). Everything goes under `out`:

    out/tokenizer.json   the tokenizer (its vocabulary size is model.vocab_size)
    out/data/            the token shards (rebuilt only when the corpus or tokenizer changed)
    out/run/             the run: checkpoints, metrics.jsonl, tb/, config.yaml

    out/.mylm            the marker: a quickstart made this directory (mylm_jax/ownership.py)

`out` must be new, empty, or an earlier quickstart's (marked so, or, made before markers,
with a MyLM dataset in data/ or a MyLM run in run/); anything else is refused before any
work, naming what is in the way. Whatever else a quickstart's directory holds (an export
made from its run, say) is never touched. A rerun replaces its
own tokenizer, its data (when the corpus or tokenizer changed) and its run, by the rules
of `data prepare --overwrite` and `pretrain --overwrite`: only what MyLM made there goes,
and what went is printed. `overrides` are the usual `section.key=value` strings, applied
after the package config (a data.path or train.out_dir moved out of `out` is not replaced).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

CONFIG = Path(__file__).resolve().with_name("quickstart.yaml")


@dataclass
class QuickstartResult:
    out: Path                 # the quickstart's directory
    run_dir: Path             # out/run: the run's checkpoints and logs
    corpus: list[str]         # the files read
    vocab_size: int           # the tokenizer's
    train_tokens: int
    val_tokens: int
    params: int
    steps: int                # the last step trained
    evals: list[dict] = field(default_factory=list)  # {"step", "val_loss", ...} from metrics.jsonl
    seconds: float = 0.0


def corpus_inputs(corpus: str | None) -> list[str]:
    """The corpus's files: an embedded corpus's name (default tinyshakespeare) or a path."""
    from mylm_jax.data.corpora import CORPORA, DEFAULT, corpus_path
    if corpus is None or corpus in CORPORA:
        return [str(corpus_path(corpus or DEFAULT))]
    return [corpus]


def quickstart_config(out: str | Path = "runs/quickstart", overrides: list[str] | tuple = ()):
    """The quickstart's Config: the package's quickstart.yaml, pointed at `out`, then `overrides`."""
    from mylm_jax.config import load_config
    out = Path(out)
    return load_config(CONFIG, [f"data.path={out / 'data'}", f"train.out_dir={out / 'run'}", *overrides])


PARTS = ("tokenizer.json", "data", "run")  # what a quickstart writes in `out`


def check_out(out: Path) -> bool:
    """Refuse an `out` that is not new, empty or an earlier quickstart's, before any work;
    True if it holds an earlier quickstart (a rerun replaces its parts)."""
    from mylm_jax.config import ConfigError
    from mylm_jax.data.errors import DataError
    from mylm_jax.data.shards import read_metadata
    from mylm_jax.ownership import MARKER, marked_as, refusal
    from mylm_jax.train.run_files import survey

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    entries = sorted(p for p in out.iterdir() if p.name != MARKER) if out.is_dir() else []
    if marked_as(out, "quickstart") or not entries:
        return bool(entries)
    try:  # made before markers: its dataset or its run says so
        read_metadata(out / "data")
        return True
    except DataError:
        if (out / "run").is_dir() and survey(out / "run").ours:
            return True
    parts = [p for p in entries if p.name in PARTS]
    raise refusal((parts or entries)[0], "replace", "--out must be a new or empty directory, or an earlier "
                  "quickstart's")


def read_evals(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return [r for r in records if "val_loss" in r]


def quickstart(out: str | Path = "runs/quickstart", corpus: str | None = None,
               overrides: list[str] | tuple = (), say=print) -> QuickstartResult:
    """Tokenizer -> shards -> pretraining into `out` (a rerun replaces its own parts); see the module doc."""
    from mylm_jax.data.corpora import CORPORA, DEFAULT
    from mylm_jax.data.prepare import PrepareSettings, prepare
    from mylm_jax.data.readers import read_documents
    from mylm_jax.model.accounting import param_count
    from mylm_jax.ownership import read_marker, write_marker
    from mylm_jax.tokenizer import train_tokenizer
    from mylm_jax.train.loop import pretrain

    start = time.perf_counter()
    out = Path(out)
    cfg = quickstart_config(out, overrides)  # a bad override fails before any work
    rerun = check_out(out)

    def inside(path: str) -> bool:  # a part of `out`, not a directory an override moved elsewhere
        return Path(path).resolve() in ((out / "data").resolve(), (out / "run").resolve())

    inputs = corpus_inputs(corpus)
    if rerun:
        say(f"a rerun in {out}: replacing the earlier quickstart's tokenizer.json, its data/ if the corpus or "
            "tokenizer changed, and its run/")
    if read_marker(out) is None:  # new, or made before markers
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, "quickstart")
    embedded = CORPORA.get(corpus or DEFAULT)
    say(f"corpus: {corpus or DEFAULT}, embedded in the package ({embedded.about}): {inputs[0]}" if embedded
        else f"corpus: {', '.join(inputs)}")

    # Each file is one document and val is the stream's last 10% (nanoGPT's split): the model
    # learns the text as it runs (the plays speaker after speaker), no end-of-text between speeches.
    texts = [doc.text for doc in read_documents(inputs, txt_split="file")]
    tokenizer = train_tokenizer(texts, cfg.model.vocab_size, progress=False)
    tok_path = out / "tokenizer.json"
    tokenizer.save(tok_path)
    say(f"tokenizer: {tokenizer.vocab_size} ids (byte-level BPE, {sum(map(len, texts)):,} characters "
        f"in {len(texts):,} file(s)) -> {tok_path}")

    meta = prepare(PrepareSettings(inputs=tuple(inputs), out_dir=cfg.data.path, tokenizer=str(tok_path),
                                   txt_split="file", split="tail", val_fraction=0.1, workers=1,
                                   overwrite=inside(cfg.data.path)),
                   progress=False)
    total = meta["splits"]["train"]["num_tokens"]  # "tail": one stream, cut when read (data/shards.py)
    val_tokens = int(round(total * meta["split"]["val_fraction"]))
    train_tokens = total - val_tokens
    replaced = " (replacing the earlier quickstart's, made from another corpus)" if meta.get("replaced") else ""
    say(f"shards: {train_tokens:,} train + {val_tokens:,} val tokens -> {cfg.data.path}{replaced}")

    params = param_count(cfg.model)
    t = cfg.train
    say(f"model: {params:,} parameters ({cfg.model.n_layers} layers, d_model {cfg.model.d_model}); "
        f"{t.steps} steps of {t.batch_size} x {cfg.data.seq_len} tokens "
        f"({t.steps * t.batch_size * cfg.data.seq_len / max(train_tokens, 1):.1f} passes over the train split)")
    last = pretrain(cfg, resume=False, overwrite=inside(t.out_dir))
    run_dir = Path(t.out_dir)
    return QuickstartResult(out, run_dir, inputs, tokenizer.vocab_size, train_tokens, val_tokens, params, last,
                            read_evals(run_dir), time.perf_counter() - start)


def next_steps(result: QuickstartResult) -> str:
    """What to try next, as the commands to type (bash's $'...' keeps the prompt's newline:
    the tokenizer merges ":\\n" into one token, so "ROMEO:" alone is a rare ending)."""
    run = result.run_dir
    return "\n".join([
        f"the run is in {run} (checkpoints/, metrics.jsonl, tb/, config.yaml); next:",
        f"  mylm generate --checkpoint {run} --prompt $'ROMEO:\\n' --max-new-tokens 100",
        f"  mylm plot {run}                         # loss curves as figures",
        f"  tensorboard --logdir {run / 'tb'}" + ("" if shutil.which("tensorboard") else
                                                  "   # the viewer is not installed: pip install tensorboard"),
        f"  mylm pretrain --continue {run} train.steps={2 * result.steps}   # train longer, same run",
        f"  python -c \"import mylm_jax; print(mylm_jax.load_run('{run}').generate('ROMEO:\\\\n', 100))\"",
        "  mylm chat --checkpoint RUN       # needs a chat model: SFT first (docs/sft_and_generation.md)",
    ])
