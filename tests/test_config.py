"""Config schemas: YAML loading, overrides, validation messages, derived checks."""

from pathlib import Path

import pytest

from mylm_jax.config import (Config, ConfigError, ModelConfig, apply_overrides, config_from_dict,
                             config_to_dict, dump_config, load_config)

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_round_trips(path):
    cfg = load_config(path)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert isinstance(dump_config(cfg), str)


def test_overrides_parse_yaml_values():
    cfg = load_config(CONFIGS[0], ["model.n_layers=2", "optim.lr=3e-4", "model.bias=false",
                                   "model.n_experts=4", "model.moe_layers=[0, 1]"])
    assert cfg.model.n_layers == 2 and cfg.optim.lr == 3e-4 and cfg.model.bias is False
    assert cfg.model.moe_layers == (0, 1)  # lists become tuples: configs stay hashable


def test_int_is_accepted_for_float_and_converted():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0
    assert isinstance(load_config(None, ["optim.lr=1"]).optim.lr, float)


def test_overrides_do_not_mutate_their_input():
    values = {"model": {"d_model": 64}}
    apply_overrides(values, ["model.d_model=128"])
    assert values == {"model": {"d_model": 64}}


def _error(overrides=(), values=None, path=None) -> str:
    with pytest.raises(ConfigError) as info:
        if values is not None:
            config_from_dict(values)
        else:
            load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message, "errors must be one line"
    return message


@pytest.mark.parametrize("overrides, expected", [
    (["model.d_modle=3"], "unknown key 'model.d_modle'; valid keys: vocab_size"),
    (["modle.d_model=3"], "unknown section 'modle'; valid sections: model, data, optim, loss, train, mesh, sft"),
    (["model.norm=batchnorm"], "model.norm='batchnorm' is not valid; expected one of 'layernorm', 'rmsnorm'"),
    (["model.n_layers=2.5"], "model.n_layers=2.5 is not valid; expected int"),
    (["model.bias=1"], "model.bias=1 is not valid; expected bool"),
    (["model.moe_layers=3"], "model.moe_layers=3 is not valid; expected a list"),
    (["model.d_model"], "override 'model.d_model' must look like section.key=value"),
    (["d_model=3"], "override 'd_model=3' must look like section.key=value"),
    (["model.d_model=100", "model.n_heads=3"], "model.d_model=100 must be divisible by model.n_heads=3"),
    (["model.n_heads=4", "model.n_kv_heads=3"], "model.n_kv_heads=3 must divide model.n_heads=4"),
    (["model.n_experts=4", "model.top_k=5"], "model.top_k=5 must be in [1, model.n_experts=4]"),
    (["model.n_experts=4", "model.moe_layers=[7]"], "model.moe_layers has [7]: layer indices must be in [0, 4)"),
    (["model.n_shared_experts=1"], "need model.n_experts > 0"),
    (["model.position=rope", "model.d_model=12", "model.n_heads=4"], "even head_dim"),
    (["model.vocab_size=0"], "model.vocab_size must be positive"),
    (["data.seq_len=512"], "data.seq_len=512 exceeds model.max_seq_len=256"),
    (["train.batch_size=10", "train.microbatches=4"], "must be >= 1 and divide train.batch_size=10"),
    (["mesh.data=-1", "mesh.fsdp=-1"], "at most one -1"),
    (["optim.lr=0"], "optim.lr must be positive"),
])
def test_bad_values_give_one_line_errors(overrides, expected):
    assert expected in _error(overrides)


def test_section_that_is_not_a_mapping():
    assert "model must be a mapping" in _error(values={"model": [1, 2]})


def test_file_errors_name_the_file(tmp_path):
    assert "config file not found" in _error(path=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: [1,\n")
    assert f"{bad}:" in _error(path=bad) and "not valid YAML" in _error(path=bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    assert "expected a mapping of sections" in _error(path=top)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("model:\n  n_heads: 5\n")
    assert _error(path=wrong).startswith(f"{wrong}: model.d_model=256 must be divisible")


def test_derived_sizes():
    assert ModelConfig(d_model=256, n_heads=4).head_dim == 64
    assert ModelConfig(n_heads=4).kv_heads == 4
    assert ModelConfig(mlp="gelu", d_model=256).ffn_dim == 1024
    assert ModelConfig(mlp="swiglu", d_model=256).ffn_dim == 704  # 8/3*256 = 682.7 -> 704
    assert ModelConfig(n_experts=4, top_k=1).expert_dim == 1024
    cfg = ModelConfig(n_experts=4, top_k=1, moe_layers=(1,))
    assert [cfg.is_moe_layer(i) for i in range(4)] == [False, True, False, False]
    assert Config().model == ModelConfig()


def test_renamed_keys_still_load_with_one_note(capsys, monkeypatch):
    """The MoE aux-loss weights moved from `model` to the `loss` section: old configs and the
    configs stored in old checkpoints still load, with a one-line note naming the new key."""
    monkeypatch.setattr("mylm_jax.config.loading._noted", set())  # the note is once per process
    old = config_from_dict({"model": {"moe_aux_loss_weight": 0.5, "moe_z_loss_weight": 0.002}})
    assert old.loss.load_balance == 0.5 and old.loss.router_z == 0.002
    err = capsys.readouterr().err
    assert "'model.moe_aux_loss_weight' is now 'loss.load_balance'" in err and len(err.splitlines()) <= 2
    same = {"model": {"moe_aux_loss_weight": 0.5}, "loss": {"load_balance": 0.5}}
    assert config_from_dict(same).loss.load_balance == 0.5
    assert "keep only 'loss.load_balance'" in _error(values={"model": {"moe_aux_loss_weight": 0.5},
                                                              "loss": {"load_balance": 0.01}})
