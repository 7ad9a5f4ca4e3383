"""Every path that loads, converts or restores weights, held by value.

After each path, every leaf (weights, optimizer moments, step counters) equals its source bit
for bit, the data loader stands where it stood, and a conversion holds exactly the tensors of
docs/interop.md's tables (spelled out in tests/weight_helpers.py, not read from mapping.py).
The sources are the trainer's own state at its saves (recorded as it saved them, not read back
by a second restore), or transformers' files. For each path a deliberately broken variant
(monkeypatched) shows that the same check fails.

    --resume, pretrain --continue          the state, the data position, the smoothed loss
    load_run / RunDir.load_model           what generate, chat, serve, eval and export load
    mylm export hf                         an unrolled and a scanned run
    mylm import hf                         every architecture; a tokenizer that numbers its ids
                                           otherwise moves the embedding rows and head columns
    across meshes and layouts              one subprocess with 8 host devices
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mylm_jax
from mylm_jax.cli import main
from mylm_jax.config import Config, DataConfig, ModelConfig, TrainConfig, config_from_dict, dump_config
from mylm_jax.data.sources import ShardsSource
from mylm_jax.interop.architectures import ARCHITECTURES
from mylm_jax.model import layout
from mylm_jax.model.params import path_name
from mylm_jax.parallel import make_mesh
from mylm_jax.train.checkpoint import Checkpointer
from mylm_jax.train.loop import Trainer
from mylm_jax.train.run_dir import RunDir
from mylm_jax.train.state import create_state, restore_target
from tests.train_helpers import ROOT, TEXT, tiny_config
from tests.weight_helpers import assert_same_leaves, leaves, model_half, transformers_tensors

# The loader's state at the start of epoch 0, as `mylm import hf` writes it.
DATA_START = {"epoch": 0, "iterator": None}


def _params(model) -> dict[str, np.ndarray]:
    return leaves(nnx.state(model, nnx.Param))


# --------------------------------------------------------------------------- a trained run


@dataclasses.dataclass
class Trained:
    path: Path
    cfg: Config
    saved: dict  # step -> {"state": leaves, "data": the loader's state, "meta": the checkpoint's meta}
    next_batch: dict  # the batch the loader gave after the last save


@pytest.fixture(scope="module")
def trained(data_path, tmp_path_factory):
    """4 steps, saved at 2 and 4, with each save's state, data state and meta recorded as the
    trainer handed them to the checkpointer. GQA and an untied head: the export maps both."""
    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = config_from_dict(tiny_config(data_path, out, model=dict(n_kv_heads=2, tie_embeddings=False),
                                       train=dict(steps=4, eval_every=0, checkpoint_every=2)))
    saved, real = {}, Checkpointer.save

    def recording(self, step, state, data_state, meta, *args, **kwargs):
        saved[step] = {"state": leaves(state), "data": copy.deepcopy(data_state), "meta": copy.deepcopy(meta)}
        return real(self, step, state, data_state, meta, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Checkpointer, "save", recording)
        trainer = Trainer(cfg, ShardsSource(cfg), quiet=True)
        trainer.run()
    assert sorted(saved) == [2, 4] and trainer.loader.get_state() == saved[4]["data"]
    # A source a fresh state could not pass for: the step counted, every moment nonzero.
    state = saved[4]["state"]
    assert int(state["1.step"]) == 4
    assert all(v.any() for name, v in state.items() if ".mu." in name or ".nu." in name)
    return Trained(out, cfg, saved, next(trainer.loader))


def _copy(trained: Trained, tmp_path: Path) -> Path:
    """A copy of the run for a test that writes into it (a resume rewrites its logs)."""
    shutil.copytree(trained.path, tmp_path / "run")
    return tmp_path / "run"


def _closed(trainer: Trainer) -> Trainer:
    trainer.checkpointer.close()
    trainer.log.close()
    return trainer


def _assert_resumed(trainer: Trainer, trained: Trained, step: int = 4) -> None:
    """The trainer stands where the run stood at `step`: every leaf, the loader (its state and
    the batch it gives next), the smoothed loss and the skip count."""
    source = trained.saved[step]
    assert_same_leaves(leaves(trainer.ts.state), source["state"], "restored state")
    data = trainer.loader.get_state()
    assert data == source["data"], f"data state {data}, saved {source['data']}"
    batch = next(trainer.loader)
    assert sorted(batch) == sorted(trained.next_batch)
    for key, value in trained.next_batch.items():
        np.testing.assert_array_equal(batch[key], value, err_msg=key, strict=True)
    progress = source["meta"]["progress"]
    assert trainer.ema.state() == progress["loss_ema"] and trainer.skipped == progress["skipped_nonfinite"]


def _started(argv: list[str], monkeypatch) -> tuple[int, Trainer | None]:
    """`mylm ARGV`, its Trainer caught before its first step: the state it would train from."""
    caught = []

    def stop(self):
        caught.append(_closed(self))
        return self.ts.step

    monkeypatch.setattr(Trainer, "run", stop)
    code = main([*argv, "--quiet"])
    return code, (caught[0] if caught else None)


def _resumed(trained: Trained, tmp_path: Path, monkeypatch) -> Trainer:
    """`mylm pretrain --config C --resume` with the run's own config, in a copy of the run."""
    run = _copy(trained, tmp_path)
    cfg = dataclasses.replace(trained.cfg, train=dataclasses.replace(trained.cfg.train, out_dir=str(run)))
    (tmp_path / "c.yaml").write_text(dump_config(cfg))
    code, trainer = _started(["pretrain", "--config", str(tmp_path / "c.yaml"), "--resume"], monkeypatch)
    assert code == 0
    return trainer


def _continued(run: Path, overrides: list[str], monkeypatch) -> tuple[int, Trainer | None]:
    return _started(["pretrain", "--continue", str(run), *overrides], monkeypatch)


# --------------------------------------------------------------------------- --resume, --continue


def test_resume_restores_every_leaf_the_data_position_and_the_smoothed_loss(trained, tmp_path, monkeypatch):
    _assert_resumed(_resumed(trained, tmp_path, monkeypatch), trained)


def test_continue_restores_the_run_with_its_changed_settings(trained, tmp_path, monkeypatch):
    run = _copy(trained, tmp_path)
    code, trainer = _continued(run, ["train.steps=6", "optim.lr=1e-3"], monkeypatch)
    assert code == 0
    assert (trainer.cfg.train.steps, trainer.cfg.optim.lr, trainer.cfg.train.out_dir) == (6, 1e-3, str(run))
    _assert_resumed(trainer, trained)


@functools.cache
def _seed_weights(model: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """The weights a new run of this model and seed starts from."""
    cfg = Config(model=model, data=DataConfig(seq_len=model.max_seq_len), train=TrainConfig(seed=seed))
    return model_half(leaves(create_state(cfg, make_mesh(cfg.mesh)).state))


def _fresh_weights(ts, data, cfg, mesh):
    fresh = _seed_weights(cfg.model, cfg.train.seed)
    ts.state = jax.tree_util.tree_map_with_path(
        lambda p, x: jax.device_put(fresh[path_name(p)[2:]], x.sharding) if path_name(p).startswith("0.") else x,
        ts.state)
    return ts, data


def _one_moment_zeroed(ts, data, cfg, mesh):
    ts.state = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.zeros_like(x) if path_name(p).endswith("nu.blocks.1.attn.q.kernel") else x, ts.state)
    return ts, data


def _step_of_the_older_checkpoint(ts, data, cfg, mesh):
    # (a step no checkpoint has would stop the trainer itself: it reads that step's meta)
    ts.state = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.full_like(x, 2) if path_name(p) == "1.step" else x, ts.state)
    return ts, data


BROKEN_RESTORES = {  # name: (the broken restore, what the check must name)
    "the seed's weights": (_fresh_weights, r"restored state: 0\.blocks"),
    "one moment zeroed": (_one_moment_zeroed, r"restored state: 1\.opt_state\..*nu\.blocks\.1\.attn\.q\.kernel"),
    "the step counter of step 2": (_step_of_the_older_checkpoint, r"restored state: 1\.step"),
    "the data from its start": (lambda ts, data, cfg, mesh: (ts, dict(DATA_START)), "data state"),
}


@pytest.mark.parametrize("broken", list(BROKEN_RESTORES))
@pytest.mark.parametrize("command", ["--resume", "--continue"])
def test_a_resume_that_loses_state_is_caught(trained, tmp_path, monkeypatch, broken, command):
    real = RunDir.restore

    def restore(self, step, cfg, mesh, *args, **kwargs):
        ts, data = real(self, step, cfg, mesh, *args, **kwargs)
        return BROKEN_RESTORES[broken][0](ts, data, cfg, mesh)

    monkeypatch.setattr(RunDir, "restore", restore)
    if command == "--resume":
        trainer = _resumed(trained, tmp_path, monkeypatch)
    else:
        code, trainer = _continued(_copy(trained, tmp_path), [], monkeypatch)
        assert code == 0
    with pytest.raises(AssertionError, match=BROKEN_RESTORES[broken][1]):
        _assert_resumed(trainer, trained)


def test_continue_with_clipping_switched_off_continues_or_says_why(trained, tmp_path, monkeypatch, capsys):
    """Clipping switched off changes the optimizer's state tree (optax.chain's clipping stage):
    --continue takes every weight and moment, or refuses in one line naming the setting;
    never calls good checkpoints unreadable."""
    code, trainer = _continued(_copy(trained, tmp_path), ["optim.grad_clip=0"], monkeypatch)
    err = capsys.readouterr().err
    if code != 0:
        assert "unreadable" not in err and "grad_clip" in err, err
        return
    got, want = leaves(trainer.ts.state), trained.saved[4]["state"]
    assert_same_leaves(model_half(got), model_half(want), "weights")

    def moments(state):  # by the moment's own name: the clipping stage's place in the tree is gone
        return {name.split("inner_state.", 1)[1]: v for name, v in state.items() if "inner_state." in name}
    assert_same_leaves(moments(got), moments(want), "moments")
    assert int(got["1.step"]) == int(want["1.step"])


# --------------------------------------------------------------------------- load_run, load_model


def _check_loads(trained: Trained) -> None:
    run = mylm_jax.load_run(trained.path)
    assert run.step == 4
    assert_same_leaves(_params(run.model), model_half(trained.saved[4]["state"]), "load_run")
    model, cfg, _ = RunDir.open(trained.path).load_model(2)
    assert cfg.model == trained.cfg.model
    assert_same_leaves(_params(model), model_half(trained.saved[2]["state"]), "load_model(2)")


def test_load_run_and_load_model_hold_the_checkpoints_weights(trained):
    """What `mylm generate`, `chat`, `serve`, `eval`, `checkpoint show --weights` and `export hf`
    load (RunDir.load_model), the newest step and a chosen one."""
    _check_loads(trained)


BROKEN_LOADS = {  # name: (RunDir.restore -> the broken one, what the check must name)
    "the newest step for any step": (lambda real: lambda self, step, *a, **k: real(self, None, *a, **k),
                                     r"load_model\(2\): "),
    "the seed's weights": (lambda real: lambda self, step, cfg, mesh, *a, **k: _fresh_weights(
        *real(self, step, cfg, mesh, *a, **k), cfg, mesh), "load_run: "),
}


@pytest.mark.parametrize("broken", list(BROKEN_LOADS))
def test_a_load_that_takes_other_weights_is_caught(trained, monkeypatch, broken):
    make, named = BROKEN_LOADS[broken]
    monkeypatch.setattr(RunDir, "restore", make(RunDir.restore))
    with pytest.raises(AssertionError, match=named):
        _check_loads(trained)


# --------------------------------------------------------------------------- mylm export hf


def _exported(run: Path, out: Path) -> dict[str, np.ndarray]:
    pytest.importorskip("safetensors")
    from mylm_jax.interop.safetensors_files import read_weights

    assert main(["export", "hf", str(run), str(out)]) == 0
    return read_weights(out, str(out), widen=False)


@pytest.fixture(scope="module")
def scanned_run(trained, tmp_path_factory):
    """The trained run's step 4 as a scanned run would have saved it: every array stacked per
    segment (model/layout.py), the meta's config saying scan_layers."""
    out = tmp_path_factory.mktemp("scanned") / "run"
    source = trained.saved[4]
    meta = copy.deepcopy(source["meta"])
    meta["config"]["model"]["scan_layers"] = True
    cfg = config_from_dict(meta["config"])
    ts, shapes = restore_target(cfg, make_mesh(cfg.mesh))
    stacked = layout.to_scanned(source["state"], cfg.model)
    assert "0.stack.0.0.attn.q.kernel" in stacked and stacked["0.stack.0.0.attn.q.kernel"].shape[0] == 2
    ts.state = jax.tree_util.tree_map_with_path(lambda p, x: jax.device_put(stacked[path_name(p)], x.sharding),
                                                shapes)
    ckpt = Checkpointer(out, async_save=False)
    ckpt.save(4, ts.state, source["data"], meta)
    ckpt.close()
    shutil.copy(trained.path / "tokenizer.json", out / "tokenizer.json")
    return out


def _check_export(trained, tmp_path):
    want = transformers_tensors("llama", trained.cfg.model, model_half(trained.saved[4]["state"]))
    assert_same_leaves(_exported(trained.path, tmp_path / "hf"), want, "export")


def _check_scanned_export(trained, scanned_run, tmp_path):
    want = transformers_tensors("llama", trained.cfg.model, model_half(trained.saved[4]["state"]))
    assert_same_leaves(_exported(scanned_run, tmp_path / "hf"), want, "scanned export")


def test_export_writes_every_weight_in_transformers_layout(trained, tmp_path):
    _check_export(trained, tmp_path)


def test_export_of_a_scanned_run_writes_the_same_tensors(trained, scanned_run, tmp_path):
    _check_scanned_export(trained, scanned_run, tmp_path)


def _untransposed(self, part):  # every matrix as if it were GPT-2's Conv1D
    return part.reshape(int(np.prod(part.shape[:self.n_in])), -1) if self.n_in else part.reshape(-1)


def _layers_reversed(flat, cfg, *args, **kwargs):
    unrolled = layout.to_unrolled(flat, cfg, *args, **kwargs)

    def rename(name):
        if not name.startswith("blocks."):
            return name
        _, i, rest = name.split(".", 2)
        return f"blocks.{cfg.n_layers - 1 - int(i)}.{rest}"
    return {rename(name): value for name, value in unrolled.items()}


def test_a_wrong_export_is_caught(trained, scanned_run, tmp_path, monkeypatch):
    with monkeypatch.context() as mp:
        mp.setattr("mylm_jax.interop.mapping.Link.to_hf", _untransposed)
        with pytest.raises(AssertionError, match=r"export: model\.layers\.0\.self_attn\.q_proj\.weight"):
            _check_export(trained, tmp_path / "untransposed")
    monkeypatch.setattr("mylm_jax.interop.export.to_unrolled", _layers_reversed)
    with pytest.raises(AssertionError, match=r"scanned export: model\.layers\.0\."):
        _check_scanned_export(trained, scanned_run, tmp_path / "reversed")


# --------------------------------------------------------------------------- mylm import hf


def _transformers():
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.numpy")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local
    return st


def _files(hf_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of a single-file checkpoint, read by safetensors itself."""
    return dict(_transformers().load_file(str(hf_dir / "model.safetensors")))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A random transformers checkpoint of every architecture MyLM maps, with MyLM's tokenizer files."""
    _transformers()
    from mylm_jax.interop.reference import proof_tokenizer, random_checkpoint, write_tokenizer

    root, tok, out = tmp_path_factory.mktemp("hf"), proof_tokenizer(), {}
    for arch in ARCHITECTURES:
        random_checkpoint(arch, root / arch, vocab_size=320)
        write_tokenizer(tok, root / arch)
        out[arch] = root / arch
    return out


def _check_import_table(hf_dir: Path, arch: str) -> None:
    from mylm_jax.interop.importer import read_checkpoint

    _, m, _, flat = read_checkpoint(hf_dir)
    assert_same_leaves(transformers_tensors(arch, m, flat), _files(hf_dir), f"import {arch}")


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_import_holds_every_tensor_as_the_tables_say(checkpoints, arch):
    """Every tensor of the file, back from the imported parameters by docs/interop.md's rules:
    transposes, GPT-2's q | k | v columns, k and v in kv, gate and up in gate_up, experts,
    StableLM's per-head norms, the zeros MyLM drops."""
    _check_import_table(checkpoints[arch], arch)


def _logits_against_transformers(hf_dir: Path, model, vocab: int) -> float:
    import torch
    import transformers

    ids = np.random.default_rng(0).integers(0, vocab, (1, 48))
    with torch.no_grad():
        theirs = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()(
            torch.tensor(ids)).logits[0].numpy()
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[0])  # one compile, not one per operation
    ours = np.asarray(forward(state, jnp.asarray(ids, jnp.int32)))[0]
    return float(np.abs(theirs - ours).max())


@pytest.mark.parametrize("arch", ["llama", "stablelm"])
def test_mylm_import_hf_writes_every_weight_a_fresh_optimizer_and_the_data_start(checkpoints, arch, tmp_path):
    """The command end to end: the run's checkpoint holds the file's tensors, a fresh optimizer
    (moments, counts and step zero) and the loader at its start, and the model it loads computes
    transformers' logits. Llama with biases and StableLM with per-head QK-norms: the two mappings
    no export is compared with transformers for (tests/test_hf_interop.py exports the variants)."""
    hf_dir, run = checkpoints[arch], tmp_path / "run"
    assert main(["import", "hf", str(hf_dir), str(run)]) == 0
    cfg = RunDir.open(run).config()
    ts, data = RunDir.open(run).restore(None, cfg, make_mesh(cfg.mesh), check=False)
    state = leaves(ts.state)
    assert_same_leaves(transformers_tensors(arch, cfg.model, model_half(state)), _files(hf_dir), "imported run")
    optimizer = {name: v for name, v in state.items() if name.startswith("1.")}
    assert optimizer and not any(v.any() for v in optimizer.values())
    assert data == DATA_START
    from tests.test_hf_interop import LOGITS_ABS  # the interop proof's bound (needs transformers)

    model, _, tok = RunDir.open(run).load_model()
    assert _logits_against_transformers(hf_dir, model, tok.vocab_size) <= LOGITS_ABS


def _hf_rows(hf_tok, tok, model_rows: int) -> list[int]:
    """hf_rows[i]: the transformers row MyLM id i must hold, found from the token's bytes (a
    special token: its string) in the HF tokenizer's own vocabulary; then the rows no token
    stands for (the padded vocabulary), in their order."""
    from mylm_jax.tokenizer.patterns import BYTE_TO_UNICODE

    vocab, specials = hf_tok.get_vocab(), {i: name for name, i in tok.special_tokens.items()}
    rows = [vocab[specials[i]] if i in specials else vocab["".join(BYTE_TO_UNICODE[b] for b in tok.id_to_bytes(i))]
            for i in range(tok.vocab_size)]
    return rows + [h for h in range(model_rows) if h not in set(rows)]


def _check_moved_rows(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    from mylm_jax.interop.importer import read_checkpoint
    from mylm_jax.interop.reference import random_checkpoint
    from mylm_jax.tokenizer.hf_export import train_hf_reference
    from mylm_jax.tokenizer.patterns import PRESET_PATTERNS
    from mylm_jax.tokenizer.specials import DEFAULT_SPECIAL_TOKENS

    hf_tok = train_hf_reference([TEXT * 5], 300, PRESET_PATTERNS["gpt4"], DEFAULT_SPECIAL_TOKENS)
    random_checkpoint("gpt2", tmp_path, vocab_size=320)  # untied: the head's columns move too
    (tmp_path / "tokenizer.json").write_text(hf_tok.to_str())
    _, m, tok, flat = read_checkpoint(tmp_path)
    rows = _hf_rows(hf_tok, tok, m.vocab_size)
    assert sorted(rows) == list(range(m.vocab_size)) and rows != sorted(rows)  # really renumbered
    want = _files(tmp_path)
    want["transformer.wte.weight"] = want["transformer.wte.weight"][rows]  # MyLM row i = HF row rows[i]
    want["lm_head.weight"] = want["lm_head.weight"][rows]
    assert_same_leaves(transformers_tensors("gpt2", m, flat), want, "moved rows")


def test_a_tokenizer_with_other_ids_moves_every_row_and_column_exactly(tmp_path):
    """Each embedding row and head column goes to its token's MyLM id, the padded rows after
    the tokenizer's ids in their order, every other tensor as it was."""
    _transformers()
    _check_moved_rows(tmp_path)


def test_a_wrong_import_is_caught(checkpoints, tmp_path, monkeypatch):
    import mylm_jax.interop.importer as importer
    from mylm_jax.interop.mapping import Link

    real = Link.to_mylm
    with monkeypatch.context() as mp:  # every matrix taken as if it were GPT-2's Conv1D
        mp.setattr(Link, "to_mylm", lambda self, tensor, shape: tensor.reshape(shape) if self.n_in
                   else real(self, tensor, shape))
        with pytest.raises(AssertionError, match=r"import llama: model\.layers\.0\.mlp\.down_proj\.weight"):
            _check_import_table(checkpoints["llama"], "llama")
    # rows moved by the inverse permutation: HF row rows[h] to MyLM row h
    monkeypatch.setattr(importer, "_moved", lambda a, rows, axis: np.take(a, rows, axis=axis))
    with pytest.raises(AssertionError, match=r"moved rows: (lm_head|transformer\.wte)\.weight"):
        _check_moved_rows(tmp_path)


# --------------------------------------------------------------------------- across meshes and layouts


@pytest.mark.slow
def test_restores_across_meshes_and_layouts_are_exact(tmp_path):
    """tests/weight_helpers.py, on 8 host devices: a random state saved on 1 device restored on
    fsdp 8 and back, and unrolled fsdp 8 -> scanned data 2 x fsdp 2 x expert 2; every leaf equal,
    the arrays on the target's devices, the data state back; a restore with misplaced shards caught."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run([sys.executable, "-m", "tests.weight_helpers", str(tmp_path)], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    checked = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
    assert len(checked) == 4 and "misplaced shards are caught" in checked[-1], result.stdout
