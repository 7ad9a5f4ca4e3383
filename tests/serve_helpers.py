"""What the serve tests share: one tiny trained run, a server on 127.0.0.1 over it, and the
reference generator (`mylm generate`'s Generator) to compare the server's text with.

The run is built once per test session, even across pytest-xdist workers (a file lock in
the directory the workers share), and each test process starts one server over it
(`server`, default options). A test that needs other options, a slowed decoder or a server
it may stop starts its own (`own_server`: a fresh Engine, so it compiles again).
"""

from __future__ import annotations

import atexit
import functools
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e \".[serve]\"")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e \".[serve]\"")

from tests.train_helpers import make_dataset, tiny_config  # noqa: E402

MODEL_NAME = "tiny"
SLOTS = 8
CONTEXT = 64


def shared_run(tmp_path_factory) -> Path:
    """A run of the tiny model (context 64) with large random weights (init_std 0.2, one step
    at lr 1e-6): its greedy text is varied and differs from prompt to prompt, so a server that
    mixed up its slots would show it, and its logits are far apart (no near-ties for argmax)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if root.name.startswith("popen-gw"):  # an xdist worker: its parent is shared by all workers
        root = root.parent
    out = root / "serve_run"
    with FileLock(str(root / "serve_run.lock")):
        if not (out / "run" / "checkpoints").is_dir():
            from mylm_jax.config import config_from_dict
            from mylm_jax.train.loop import pretrain
            data = make_dataset(out / "data")
            cfg = tiny_config(data, out / "run", model=dict(max_seq_len=CONTEXT, init_std=0.2),
                              data=dict(seq_len=CONTEXT), optim=dict(lr=1e-6, warmup_steps=0),
                              train=dict(steps=1, eval_every=0, checkpoint_every=0, async_checkpoint=False))
            pretrain(config_from_dict(cfg), quiet=True)
    return out / "run"


@functools.cache
def loaded(run: Path):
    from mylm_jax.train.run_dir import RunDir
    return RunDir.open(run).load_model()


@functools.cache
def server(run: Path):
    """(url, engine) of a server over `run` in this process, stopped at exit."""
    from mylm_jax.serve.app import Engine, create_app
    from mylm_jax.serve.server import BackgroundServer
    model, _, tok = loaded(run)
    engine = Engine(model, tok, MODEL_NAME, SLOTS, warmup=False)  # compiled as the tests need it
    background = BackgroundServer(create_app(engine))
    atexit.register(background.stop)
    return background.url, engine


def own_server(run: Path, slots: int = SLOTS, step_delay: float = 0.0, model=None, **options):
    """(BackgroundServer, engine) of a new server over `run` (or `model`) with these
    ServeOptions; every decode step sleeps `step_delay` seconds first (a request then runs
    long enough to be caught mid-way). Stopped at exit, or by the test."""
    from mylm_jax.serve.app import Engine, create_app
    from mylm_jax.serve.server import BackgroundServer
    from mylm_jax.serve.options import ServeOptions
    loaded_model, _, tok = loaded(run)
    engine = Engine(model or loaded_model, tok, MODEL_NAME, slots, warmup=False, options=ServeOptions(**options))
    if step_delay:
        step = engine.decoder.step

        def slow_step(*args, **kwargs):
            time.sleep(step_delay)
            return step(*args, **kwargs)
        engine.decoder.step = slow_step
    background = BackgroundServer(create_app(engine))
    atexit.register(background.stop)
    return background, engine


def wait_until(condition, timeout: float = 20.0, every: float = 0.02) -> bool:
    """Poll `condition()` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return bool(condition())


@functools.cache
def _generator(run: Path, max_new_tokens: int, stop_ids: tuple[int, ...]):
    from mylm_jax.generate import Generator, SamplingConfig
    model, _, tok = loaded(run)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop_tokens=stop_ids,
                              vocab_limit=tok.vocab_size)
    return Generator(model, sampling, on_note=lambda text: None)


def greedy_reference(run: Path, prompts: list[list[int]], max_new_tokens: int,
                     stop_ids: tuple[int, ...]) -> list[list[int]]:
    """What `mylm generate --temperature 0` produces for each prompt (the same Generator; the
    prompts in one left-padded batch, which gives each prompt's tokens alone:
    tests/test_generate.py)."""
    return _generator(run, max_new_tokens, stop_ids)(prompts)


def visible_text(tok, ids: list[int]) -> str:
    """The text of generated ids as the server sends it: special tokens are not text."""
    return tok.decode([i for i in ids if i not in tok.special_tokens.values()])
