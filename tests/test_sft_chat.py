"""`mylm sft`, `mylm generate` and `mylm chat` on a tiny pretrained run."""

from __future__ import annotations

import io
import json

import jax
import numpy as np
import pytest
import yaml
from flax import nnx

from mylm_jax.cli import main
from mylm_jax.config import config_from_dict, load_config
from mylm_jax.model.params import path_name
from mylm_jax.parallel import make_mesh
from mylm_jax.train.loop import Trainer, pretrain
from mylm_jax.train.run_dir import RunDir
from mylm_jax.train.score import Scorer
from mylm_jax.train.sft import sft_setup, with_new_rows
from mylm_jax.train.state import create_state
from tests.train_helpers import make_dataset, tiny_config

CONVERSATIONS = [
    {"instruction": "Speak", "input": "", "output": "Speak, speak."},
    {"messages": [{"role": "user", "content": "Are you resolved?"}, {"role": "assistant", "content": "Resolved."}]},
    {"conversations": [{"from": "human", "value": "Who speaks?"}, {"from": "gpt", "value": "First Citizen."}]},
] * 12


def _pretrain(data_path, out_dir, steps=4, **model):
    cfg = config_from_dict(tiny_config(data_path, out_dir, model=model,
                                       train=dict(steps=steps, eval_every=0, checkpoint_every=0)))
    pretrain(cfg)
    return str(out_dir)


@pytest.fixture(scope="module")
def base_run(data_path, tmp_path_factory):
    return _pretrain(data_path, tmp_path_factory.mktemp("base"))


def _sft_config(tmp_path, base, **sft):
    (tmp_path / "sft.jsonl").write_text("\n".join(json.dumps(c) for c in CONVERSATIONS) + "\n")
    cfg = {"sft": dict(data=[str(tmp_path / "sft.jsonl")], init_from=base, val_fraction=0.2, **sft),
           "data": dict(seq_len=32), "optim": dict(lr=3e-3, warmup_steps=1),
           "train": dict(steps=4, batch_size=4, eval_every=2, eval_batches=2, eval_at_start=True,
                         checkpoint_every=2, out_dir=str(tmp_path / "sft"))}
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def sft_run(base_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    assert main(["sft", "--config", _sft_config(tmp, base_run)]) == 0
    return tmp / "sft"


def _leaves(state, prefix: str = "") -> dict:
    """{name: host array} of a state's leaves whose names start with prefix."""
    return {name: np.asarray(jax.device_get(x)) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
            if (name := path_name(p)).startswith(prefix)}


def _initialised(config_path: str):
    """The SFT config and the state `mylm sft` trains from: created, then its init applied."""
    cfg, _, init = sft_setup(load_config(config_path))
    ts = create_state(cfg, make_mesh(cfg.mesh))
    init(ts)
    return cfg, ts


def test_sft_starts_from_every_pretrained_weight_bit_for_bit(base_run, tmp_path, capsys):
    _, ts = _initialised(_sft_config(tmp_path, base_run))
    base_model, _, _ = RunDir.open(base_run).load_model()
    base = {f"0.{path_name(p)}": np.asarray(x) for p, x in
            jax.tree_util.tree_flatten_with_path(nnx.state(base_model, nnx.Param))[0]}
    started = _leaves(ts.state, "0.")
    assert sorted(started) == sorted(base)
    for name, value in base.items():
        np.testing.assert_array_equal(started[name], value, err_msg=name)
    # The optimizer starts fresh (sft.optimizer: fresh): step 0, zero moments.
    optimizer = _leaves(ts.state, "1.")
    assert int(optimizer["1.step"]) == 0
    assert all(not v.any() for name, v in optimizer.items() if ".mu." in name or ".nu." in name)
    assert f"initialised from {base_run} step 4: {len(base)} weights" in capsys.readouterr().out


def test_sft_optimizer_continue_takes_the_whole_pretrained_state(base_run, tmp_path):
    _, ts = _initialised(_sft_config(tmp_path, base_run, optimizer="continue"))
    cfg = RunDir.open(base_run).config()
    saved, _ = RunDir.open(base_run).restore(None, cfg, make_mesh(cfg.mesh), check=False)
    started, base = _leaves(ts.state), _leaves(saved.state)
    assert sorted(started) == sorted(base) and int(base["1.step"]) == 4
    for name, value in base.items():
        np.testing.assert_array_equal(started[name], value, err_msg=name)


def test_sft_step_0_val_loss_is_the_base_models_loss_on_the_same_rows(sft_run, base_run, tmp_path):
    records = [json.loads(line) for line in (sft_run / "metrics.jsonl").read_text().splitlines()]
    step_0 = next(r["val_loss"] for r in records if r["step"] == 0 and "val_loss" in r)
    # The rows the SFT run evaluates (its own config, a Trainer of its data), scored by the base model.
    cfg = load_config(str(sft_run / "config.yaml"), [f"train.out_dir={tmp_path / 'rows'}"])
    _, data, _ = sft_setup(cfg)
    rows = list(Trainer(cfg, data).val_batches())
    base_model, base_cfg, base_tok = RunDir.open(base_run).load_model()
    scorer = Scorer(base_model, base_cfg, base_tok)
    loss_sum = sum(float(scorer.batch_losses(b).sum()) for b in rows)
    count = sum(float(b["loss_mask"].sum()) for b in rows)
    # Two float32 sums of the same per-token losses, in other orders.
    assert step_0 == pytest.approx(loss_sum / count, rel=1e-6)


def test_sft_logs_val_before_and_after_and_learns(sft_run):
    records = [json.loads(line) for line in (sft_run / "metrics.jsonl").read_text().splitlines()]
    vals = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert sorted(vals) == [0, 2, 4] and vals[4] < vals[0]
    assert (sft_run / "tokenizer.json").is_file() and (sft_run / "checkpoints" / "4").is_dir()


def test_generate_and_chat(sft_run, capsys, monkeypatch):
    assert main(["generate", "--checkpoint", str(sft_run), "--prompt", "First", "--max-new-tokens", "6",
                 "--temperature", "0", "--num-samples", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("First") and "--- sample 2 ---" in out
    monkeypatch.setattr("sys.stdin", io.StringIO("Speak\n/reset\nWho speaks?\n/exit\n"))
    assert main(["chat", "--checkpoint", str(sft_run), "--max-new-tokens", "8", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 2 and "(conversation reset)" in out


def test_chat_history_is_truncated_to_the_context(sft_run):
    from mylm_jax.tokenizer.chat import fit_history
    from mylm_jax.train.run_dir import RunDir

    tok = RunDir.open(sft_run).tokenizer()
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(20):
        messages += [{"role": "user", "content": f"question {i} " * 3}, {"role": "assistant", "content": "ok"}]
    messages.append({"role": "user", "content": "last question"})
    ids, kept = fit_history(tok, messages, room=40)
    assert len(ids) <= 40 and kept[0]["role"] == "system" and kept[-1]["content"] == "last question"
    assert len(kept) < len(messages)


def test_missing_chat_tokens_error_or_extend_the_vocabulary(tmp_path):
    from mylm_jax.tokenizer import train_tokenizer
    from tests.train_helpers import TEXT

    plain = train_tokenizer([TEXT * 5], vocab_size=300, progress=False, special_tokens=["<|endoftext|>"])
    data = make_dataset(tmp_path / "plain", tokenizer=plain)
    base = _pretrain(data, tmp_path / "base", steps=2, vocab_size=plain.vocab_size)  # no spare rows
    assert main(["sft", "--config", _sft_config(tmp_path, base)]) == 2
    assert main(["sft", "--config", _sft_config(tmp_path, base, extend_vocab=True)]) == 0
    meta = json.loads((tmp_path / "sft" / "checkpoints" / "4" / "meta" / "metadata").read_text())
    assert meta["config"]["model"]["vocab_size"] == plain.vocab_size + 4  # the 4 chat tokens, new rows
    # The grown state: the old rows are the base's, bit for bit; the 4 new rows are their mean.
    _, ts = _initialised(_sft_config(tmp_path, base, extend_vocab=True))
    base_model, _, _ = RunDir.open(base).load_model()
    old_rows = np.asarray(base_model.embed[...])
    embed = _leaves(ts.state, "0.embed")["0.embed"]
    assert embed.shape == (plain.vocab_size + 4, old_rows.shape[1])
    np.testing.assert_array_equal(embed[:plain.vocab_size], old_rows)
    np.testing.assert_array_equal(embed[plain.vocab_size:], np.tile(old_rows.mean(0), (4, 1)))


def test_new_rows_are_the_mean_of_the_base_tokenizers_rows():
    old = np.arange(15, dtype=np.float32).reshape(5, 3)  # 4 ids of the base tokenizer, 1 padded row
    grown = with_new_rows(old, 7, trained=4, axis=0)
    np.testing.assert_array_equal(grown[:4], old[:4])
    np.testing.assert_array_equal(grown[4:], np.tile(old[:4].mean(0), (3, 1)))
    head = with_new_rows(old.T, 7, trained=4, axis=1)  # an untied head: columns
    np.testing.assert_array_equal(head, grown.T)


def test_chat_tokens_in_the_padded_rows_start_as_the_mean(tmp_path, capsys):
    """A padded vocabulary (304 rows for 300 ids) has room for the 4 chat tokens: the
    vocabulary does not grow, and their rows must still be the mean, not the padding's."""
    from mylm_jax.tokenizer import train_tokenizer
    from tests.train_helpers import TEXT

    plain = train_tokenizer([TEXT * 5], vocab_size=300, progress=False, special_tokens=["<|endoftext|>"])
    base = _pretrain(make_dataset(tmp_path / "plain", tokenizer=plain), tmp_path / "base", steps=2)
    cfg, ts = _initialised(_sft_config(tmp_path, base, extend_vocab=True))
    assert cfg.model.vocab_size == 304
    padded = np.asarray(RunDir.open(base).load_model()[0].embed[...])
    embed = _leaves(ts.state, "0.embed")["0.embed"]
    np.testing.assert_array_equal(embed[:300], padded[:300])
    np.testing.assert_array_equal(embed[300:], np.tile(padded[:300].mean(0), (4, 1)))
    assert "(4 new token rows, the mean of the others)" in capsys.readouterr().out


def test_bad_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "x"]) == 2
    assert "no checkpoints/ directory" in capsys.readouterr().err
