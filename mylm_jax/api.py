"""The Python API: MyLM from a notebook or a script, over the same parts as the `mylm` command.

    import mylm_jax

    tok = mylm_jax.train_tokenizer(["corpus.txt"], vocab_size=512, out="runs/tok.json")   # mylm tokenizer train
    mylm_jax.prepare(["corpus.txt"], "runs/tok.json", "runs/data", val_fraction=0.1)      # mylm data prepare
    run = mylm_jax.pretrain("configs/quickstart.yaml", {"data.path": "runs/data"})         # mylm pretrain
    run = mylm_jax.load_run("runs/quickstart/run", step=None)                            # latest step
    run.generate("ROMEO:", max_new_tokens=50, temperature=0)                              # mylm generate
    run.score(["some text", "another"])   # [{"loss", "perplexity", "bits_per_byte", "tokens", "bytes"}, ...]
    run.evaluate(split="val")             # mylm eval --data
    run.metrics().column("loss")          # the logged history

Each function calls the library function its command calls (mylm_jax/train/loop.py
`pretrain`, mylm_jax/data/prepare.py `prepare`, mylm_jax/tokenizer/train.py
`train_tokenizer`, mylm_jax/generate.py `Generator`, mylm_jax/train/score.py), so the API
and the command give the same results. User mistakes raise ConfigError, DataError or
TokenizerError with the command's one-line message.

`mylm_jax.pretrain` is also `mylm_jax.api.train`. It is not exported as `mylm_jax.train`:
that name is the training subpackage (mylm_jax/train/), which Python binds on the package
as soon as it is imported.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from mylm_jax.config import Config, ConfigError, apply_overrides, config_from_dict, config_to_dict, load_config
from mylm_jax.data.errors import SkipLog
from mylm_jax.data.prepare import PrepareSettings
from mylm_jax.data.prepare import prepare as prepare_dataset
from mylm_jax.data.readers import TextSelector, read_documents
from mylm_jax.generate import Generator, SamplingConfig
from mylm_jax.tokenizer import Tokenizer
from mylm_jax.tokenizer import train_tokenizer as learn_merges
from mylm_jax.tokenizer.specials import BOS
from mylm_jax.studies.results import read_metrics
from mylm_jax.train.library_logs import quiet_libraries
from mylm_jax.train.loop import pretrain as run_pretraining
from mylm_jax.train.run_dir import RunDir
from mylm_jax.train.score import Scorer, evaluate_dataset


class Table(list):
    """The logged history: a list of rows (dicts), one per logged step, in step order.

    table.column("loss") -> [value per row] (None where a row has no such key),
    table.columns -> every key, table.to_pandas() -> a DataFrame (needs pandas, not a dependency).
    """

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(k for row in self for k in row))

    def column(self, name: str) -> list:
        if name not in self.columns:
            raise KeyError(f"no column {name!r} (columns: {', '.join(self.columns)})")
        return [row.get(name) for row in self]

    def to_pandas(self):
        import pandas as pd
        return pd.DataFrame(list(self))


def merged_metrics(run_dir: str | Path) -> Table:
    """metrics.jsonl (read by studies/results.py) as one row per step: the train and eval
    records of a step merged, the later winning."""
    rows: dict[int, dict] = {}
    if (Path(run_dir) / "metrics.jsonl").is_file():
        for record in read_metrics(run_dir):
            rows.setdefault(record.get("step"), {}).update(record)
    return Table(rows[s] for s in sorted(rows, key=lambda s: (s is None, s or 0)))


class Run:
    """One checkpoint of a run directory, loaded on one device (`load_run`).

    path, step, config, model (flax nnx), tokenizer; generate, score, evaluate, metrics.
    """

    def __init__(self, path: str | Path, step: int | None = None):
        self.path = Path(path)
        run_dir = RunDir.open(self.path)
        self.model, self.config, self.tokenizer = run_dir.load_model(step)
        # None: load_model took the newest step, past any it found unreadable (and warned about)
        self.step = step if step is not None else max(s for s in run_dir.steps if s not in run_dir.unreadable)
        self.generators: dict[SamplingConfig, Generator] = {}
        self.scorer: Scorer | None = None

    def __repr__(self) -> str:
        m = self.config.model
        return (f"Run({str(self.path)!r}, step={self.step}, d_model={m.d_model}, n_layers={m.n_layers}, "
                f"vocab={self.tokenizer.vocab_size})")

    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 128, temperature: float = 0.8,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int = 0) -> str | list[str]:
        """The continuation of each prompt (without the prompt), as `mylm generate` samples it:
        until EOS or max_new_tokens; temperature 0 is greedy; "" starts a document from BOS.
        A list of prompts is one batch; a str gives a str."""
        single = isinstance(prompts, str)
        texts = [prompts] if single else list(prompts)
        tok = self.tokenizer
        sampling = SamplingConfig(max_new_tokens, temperature, top_k, top_p, repetition_penalty, (tok.eos_id,),
                                  seed, vocab_limit=tok.vocab_size)
        if sampling not in self.generators:  # compiled once per settings, reused across calls
            self.generators[sampling] = Generator(self.model, sampling)
        bos = tok.bos_id if BOS in tok.special_tokens else tok.eos_id
        ids = self.generators[sampling]([tok.encode(t) if t else [bos] for t in texts])
        specials = set(tok.special_tokens.values())
        out = [tok.decode([i for i in row if i not in specials]) for row in ids]
        return out[0] if single else out

    def score(self, texts: str | Sequence[str], stride: int | None = None) -> list[dict]:
        """[{"loss" (nats/token), "perplexity", "bits_per_byte", "tokens", "bytes"}] per text;
        a text longer than the context is scored in windows moving `stride` tokens (default
        half the context): the rule is in mylm_jax/train/score.py."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if self.scorer is None or self.scorer.stride != stride:
            self.scorer = Scorer(self.model, self.config, self.tokenizer, stride)
        return [self.scorer.score_text(t) for t in texts]

    def evaluate(self, data: str | Path | None = None, split: str = "val", batches: int | None = None) -> dict:
        """Loss, perplexity and bits per byte over a prepared dataset's split (default: the
        run's own data.path), as `mylm eval --data`."""
        return evaluate_dataset(self.model, self.config, self.tokenizer, str(data) if data else None, split, batches)

    def metrics(self) -> Table:
        """The run's logged history (metrics.jsonl), one row per step: a `Table`."""
        return merged_metrics(self.path)


def load_run(path: str | Path, step: int | None = None) -> Run:
    """A run directory's checkpoint (step None: the newest that reads whole)."""
    quiet_libraries()
    return Run(path, step)


def as_config(config: Config | Mapping | str | Path, overrides: Sequence[str] | Mapping | None = None) -> Config:
    """A Config from a Config, a dict of sections or a YAML path, with overrides: "section.key=value"
    strings (as on the command line) or a {"section.key": value} mapping."""
    if isinstance(overrides, Mapping):
        overrides = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]  # JSON is YAML: typed values
    overrides = list(overrides or ())
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    if isinstance(config, Config):
        config = config_to_dict(config)
    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a Config, a dict or a YAML path, got {type(config).__name__}")
    return config_from_dict(apply_overrides(dict(config), overrides))


def train(config: Config | Mapping | str | Path, overrides: Sequence[str] | Mapping | None = None,
          resume: bool = False, overwrite: bool = False) -> Run:
    """`mylm pretrain`: train to train.steps, then the run's last checkpoint as a Run.
    resume / overwrite: as --resume / --overwrite (one run per train.out_dir)."""
    cfg = as_config(config, overrides)
    run_pretraining(cfg, resume, overwrite)
    return load_run(cfg.train.out_dir)


pretrain = train  # the command's name; exported as mylm_jax.pretrain


def prepare(inputs: str | Path | Sequence[str | Path], tokenizer: str | Path, out: str | Path,
            progress: bool = False, **settings) -> dict:
    """`mylm data prepare`: token shards in `out` from `inputs` (files, directories, globs,
    URLs) with a saved tokenizer; settings are PrepareSettings' fields (field, template,
    txt_split, clean, split, val_fraction, eos, seed, shard_tokens, workers, on_error,
    cache_dir). Returns the dataset's metadata."""
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    try:
        s = PrepareSettings(inputs=tuple(str(i) for i in inputs), out_dir=str(out), tokenizer=str(tokenizer),
                            **settings)
    except TypeError as e:  # an unknown setting
        raise ConfigError(f"prepare: {e}") from None
    return prepare_dataset(s, progress=progress)


def train_tokenizer(inputs: str | Path | Sequence[str | Path] | None = None, vocab_size: int | None = None,
                    out: str | Path | None = None, *, texts: Iterable[str] | None = None, field: str = "text",
                    template: str | None = None, txt_split: str = "file", on_error: str = "skip",
                    pattern: str = "gpt4", min_frequency: int = 1, progress: bool = False) -> Tokenizer:
    """`mylm tokenizer train`: a byte-level BPE tokenizer from input files (read as `mylm data
    prepare` reads them: field / template / txt_split) or from `texts`; saved to `out` if given."""
    if (inputs is None) == (texts is None):
        raise ConfigError("train_tokenizer: give inputs (files) or texts, not both")
    if vocab_size is None:
        raise ConfigError("train_tokenizer: vocab_size is required")
    if inputs is not None:
        inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        selector = TextSelector(field, template)
        texts = (d.text for d in read_documents([str(i) for i in inputs], selector, SkipLog(on_error),
                                                txt_split=txt_split))
    tokenizer = learn_merges(texts, vocab_size, pattern, min_frequency=min_frequency, progress=progress)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out)
    return tokenizer
