"""Value checks for the paths that load, convert or grow weights (tests/test_weight_paths.py).

    leaves(tree)                      {dotted name: host array} of every leaf of a state / pytree
    assert_same_leaves(got, want)     the same names, every leaf equal bit for bit (shape and dtype too)
    randomise(ts, seed)               every leaf of a TrainState replaced by distinct random values
    transformers_tensors(arch, m, flat)  the transformers checkpoint of MyLM parameters, spelled out
                                      from docs/interop.md's tables, not read from mapping.py

A comparison is only as strong as its source: freshly created optimizer moments are zeros and
a fresh model is the seed's init, so a restore that kept them would pass against a source that
is still fresh. The sources here are trained states (moments nonzero) or `randomise`d ones,
random in every element, so a skipped leaf, a transpose or a shard put on the wrong device
shows.

Run as `python -m tests.weight_helpers OUT_DIR` with 8 host devices (XLA_FLAGS), it checks
restores across meshes and layouts (`cross_mesh_checks`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np

from mylm_jax.model.params import path_name


def leaves(tree) -> dict[str, np.ndarray]:
    return {path_name(p): np.asarray(jax.device_get(x)) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def model_half(state_leaves: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's weights of a (model, optimizer) state's leaves, by parameter name."""
    return {name[2:]: v for name, v in state_leaves.items() if name.startswith("0.")}


def assert_same_leaves(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str = "") -> None:
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"{what}: missing {missing[:5]}, unexpected {extra[:5]}"
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=f"{what}: {name}", strict=True)


def randomise(ts, seed: int) -> None:
    """Every leaf of `ts.state` (weights, moments, counters; arrays or their shapes) replaced, on
    its own sharding, by random values: floats N(0, 1), integer counters a random count."""
    rng = np.random.default_rng(seed)

    def fill(x, sharding):
        if np.issubdtype(x.dtype, np.integer):
            value = rng.integers(1, 1000, x.shape).astype(x.dtype)
        else:
            value = rng.standard_normal(x.shape).astype(x.dtype)
        return jax.device_put(value, sharding)

    ts.state = jax.tree.map(fill, ts.state, ts.shardings)


# --------------------------------------------------------------------------- transformers' layout


def transformers_tensors(arch: str, m, flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{tensor name: array} of the transformers checkpoint holding MyLM parameters `flat`
    (unrolled names) of model `m`: MyLM kernels are [in..., out...], nn.Linear stores
    [out, in] (transposed), GPT-2's Conv1D [in, out] (not); tensors MyLM lacks are zeros."""
    if arch not in ("gpt2", "llama", "qwen3", "stablelm", "mixtral", "qwen3_moe"):
        raise ValueError(f"no table here for {arch!r}: spell its tensors out from docs/interop.md")
    D, L = m.d_model, m.n_layers
    out: dict[str, np.ndarray] = {}

    def matrix(kernel, n_in):
        return kernel.reshape(int(np.prod(kernel.shape[:n_in])), -1)

    def linear(kernel, n_in=1):
        return matrix(kernel, n_in).T

    def get(name, shape):
        return flat[name] if name in flat else np.zeros(shape, np.float32)

    if arch == "gpt2":
        H, d = m.n_heads, m.head_dim
        out["transformer.wte.weight"] = flat["embed"]
        out["transformer.wpe.weight"] = get("pos_embed", (m.max_seq_len, D))
        for i in range(L):
            h, b = f"transformer.h.{i}", f"blocks.{i}"
            for hf, mylm in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
                out[f"{h}.{hf}.weight"] = flat[f"{b}.{mylm}.scale"]
                out[f"{h}.{hf}.bias"] = get(f"{b}.{mylm}.bias", (D,))
            kv = flat[f"{b}.attn.kv.kernel"]
            out[f"{h}.attn.c_attn.weight"] = np.concatenate(
                [matrix(flat[f"{b}.attn.q.kernel"], 1), matrix(kv[:, 0], 1), matrix(kv[:, 1], 1)], axis=1)
            kv_bias = get(f"{b}.attn.kv.bias", (2, H, d))
            out[f"{h}.attn.c_attn.bias"] = np.concatenate(
                [get(f"{b}.attn.q.bias", (H, d)).ravel(), kv_bias[0].ravel(), kv_bias[1].ravel()])
            for hf, mylm, n_in in (("attn.c_proj", "attn.out", 2), ("mlp.c_fc", "mlp.fc", 1),
                                   ("mlp.c_proj", "mlp.proj", 1)):
                kernel = flat[f"{b}.{mylm}.kernel"]
                out[f"{h}.{hf}.weight"] = matrix(kernel, n_in)
                out[f"{h}.{hf}.bias"] = get(f"{b}.{mylm}.bias", (kernel.shape[-1],))
        out["transformer.ln_f.weight"] = flat["final_norm.scale"]
        out["transformer.ln_f.bias"] = get("final_norm.bias", (D,))
    else:  # Llama, Qwen3, StableLM, Mixtral, Qwen3-MoE
        stablelm = arch == "stablelm"

        def norm(hf, mylm):
            out[f"{hf}.weight"] = flat[f"{mylm}.scale"]
            if stablelm:  # nn.LayerNorm's bias, which MyLM's LayerNorm here has not
                out[f"{hf}.bias"] = np.zeros(D, np.float32)

        out["model.embed_tokens.weight"] = flat["embed"]
        for i in range(L):
            p, b = f"model.layers.{i}", f"blocks.{i}"
            a = f"{p}.self_attn"
            norm(f"{p}.input_layernorm", f"{b}.attn_norm")
            kv = flat[f"{b}.attn.kv.kernel"]
            out[f"{a}.q_proj.weight"] = linear(flat[f"{b}.attn.q.kernel"])
            out[f"{a}.k_proj.weight"] = linear(kv[:, 0])
            out[f"{a}.v_proj.weight"] = linear(kv[:, 1])
            out[f"{a}.o_proj.weight"] = linear(flat[f"{b}.attn.out.kernel"], 2)
            if m.bias:
                out[f"{a}.q_proj.bias"] = flat[f"{b}.attn.q.bias"].ravel()
                out[f"{a}.k_proj.bias"] = flat[f"{b}.attn.kv.bias"][0].ravel()
                out[f"{a}.v_proj.bias"] = flat[f"{b}.attn.kv.bias"][1].ravel()
                out[f"{a}.o_proj.bias"] = flat[f"{b}.attn.out.bias"]
            if m.qk_norm and stablelm:  # one norm per head, each MyLM's shared scale
                for h in range(m.n_heads):
                    out[f"{a}.q_layernorm.norms.{h}.weight"] = flat[f"{b}.attn.q_norm.scale"]
                for h in range(m.kv_heads):
                    out[f"{a}.k_layernorm.norms.{h}.weight"] = flat[f"{b}.attn.k_norm.scale"]
            elif m.qk_norm:
                out[f"{a}.q_norm.weight"] = flat[f"{b}.attn.q_norm.scale"]
                out[f"{a}.k_norm.weight"] = flat[f"{b}.attn.k_norm.scale"]
            norm(f"{p}.post_attention_layernorm", f"{b}.mlp_norm")
            if m.is_moe_layer(i):
                moe, (gate, up, down) = ((f"{p}.block_sparse_moe", ("w1", "w3", "w2")) if arch == "mixtral"
                                         else (f"{p}.mlp", ("gate_proj", "up_proj", "down_proj")))
                out[f"{moe}.gate.weight"] = flat[f"{b}.mlp.router"].T
                w_in, w_out = flat[f"{b}.mlp.w_in"], flat[f"{b}.mlp.w_out"]
                for e in range(m.n_experts):
                    out[f"{moe}.experts.{e}.{gate}.weight"] = w_in[e, :, 0].T
                    out[f"{moe}.experts.{e}.{up}.weight"] = w_in[e, :, 1].T
                    out[f"{moe}.experts.{e}.{down}.weight"] = w_out[e].T
            else:
                gate_up = flat[f"{b}.mlp.gate_up.kernel"]
                out[f"{p}.mlp.gate_proj.weight"] = gate_up[:, 0].T
                out[f"{p}.mlp.up_proj.weight"] = gate_up[:, 1].T
                out[f"{p}.mlp.down_proj.weight"] = flat[f"{b}.mlp.proj.kernel"].T
                if m.bias:
                    out[f"{p}.mlp.gate_proj.bias"] = flat[f"{b}.mlp.gate_up.bias"][0]
                    out[f"{p}.mlp.up_proj.bias"] = flat[f"{b}.mlp.gate_up.bias"][1]
                    out[f"{p}.mlp.down_proj.bias"] = flat[f"{b}.mlp.proj.bias"]
        norm("model.norm", "final_norm")
    if not m.tie_embeddings:
        out["lm_head.weight"] = flat["lm_head"].T
    return out


# --------------------------------------------------------------------------- across meshes (8 devices)

MESHES = {"one": dict(data=1), "fsdp8": dict(data=1, fsdp=8), "mixed": dict(data=2, fsdp=2, expert=2)}
DATA_STATE = {"epoch": 3, "iterator": {"next_index": 17}}


def _save(ts, cfg, directory: Path, step: int) -> None:
    from mylm_jax.config import config_to_dict
    from mylm_jax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(directory, async_save=False)
    ckpt.save(step, ts.state, DATA_STATE, {"config": config_to_dict(cfg), "step": step, "tokenizer": None})
    ckpt.close()


def _restore(directory: Path, cfg):
    from mylm_jax.parallel import make_mesh
    from mylm_jax.train.checkpoint import Checkpointer
    from mylm_jax.train.run_dir import RunDir

    return RunDir(directory, Checkpointer(directory, read_only=True)).restore(None, cfg, make_mesh(cfg.mesh))


def _config(mesh: str, scan: bool = False):
    from tests.mesh_runs import moe_config

    cfg = moe_config("", "unused", MESHES[mesh])
    # MoE on every other layer: experts, routers and GQA; scanned, two repeats of a period of two.
    model = dataclasses.replace(cfg.model, n_layers=4, moe_layers=(1, 3), scan_layers=scan)
    return dataclasses.replace(cfg, model=model)


def _check(directory: Path, source: dict, cfg, devices: int, what: str) -> int:
    """Restore `directory` for `cfg`: every leaf (by unrolled name) equals `source`, the data
    state comes back, and the arrays really lie on the `devices` of cfg's mesh."""
    from mylm_jax.model.layout import to_unrolled

    ts, data_state = _restore(directory, cfg)
    got = leaves(ts.state)
    assert {len(s.device_set) for s in jax.tree.leaves(ts.shardings)} == {devices}, what
    if devices > 1:  # some weight is split, not replicated: the restore read shards
        assert any(len({str(sh.index) for sh in x.addressable_shards}) > 1 for x in jax.tree.leaves(ts.state)), what
    assert_same_leaves(to_unrolled(got, cfg.model), source, what)
    assert data_state == DATA_STATE, (what, data_state)
    return len(got)


def cross_mesh_checks(out: Path) -> None:
    from mylm_jax.model.layout import to_unrolled
    from mylm_jax.parallel import make_mesh
    from mylm_jax.train.checkpoint import Checkpointer
    from mylm_jax.train.state import restore_target

    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    sources = {}
    for mesh, seed in (("one", 1), ("fsdp8", 2)):
        cfg = _config(mesh)
        ts, shapes = restore_target(cfg, make_mesh(cfg.mesh))
        ts.state = shapes  # filled by randomise: no initialisers to compile
        randomise(ts, seed)
        sources[mesh] = to_unrolled(leaves(ts.state), cfg.model)
        _save(ts, cfg, out / mesh, step=7)

    n = _check(out / "one", sources["one"], _config("fsdp8"), 8, "1 device -> fsdp 8")
    print(f"ok 1 device -> fsdp 8: {n} leaves", flush=True)
    n = _check(out / "fsdp8", sources["fsdp8"], _config("one"), 1, "fsdp 8 -> 1 device")
    print(f"ok fsdp 8 -> 1 device: {n} leaves", flush=True)
    n = _check(out / "fsdp8", sources["fsdp8"], _config("mixed", scan=True), 8, "fsdp 8 unrolled -> mixed scanned")
    print(f"ok fsdp 8 unrolled -> data 2 x fsdp 2 x expert 2 scanned: {n} leaves", flush=True)

    # The check can fail: a restore that puts each array's shards on the devices in reverse order.
    real = Checkpointer.restore

    def misplaced(self, step, abstract_state):
        state, data, meta = real(self, step, abstract_state)

        def reverse(x):
            shards = x.addressable_shards
            moved = [jax.device_put(other.data, s.device) for s, other in zip(shards, reversed(shards))]
            return jax.make_array_from_single_device_arrays(x.shape, x.sharding, moved)
        return jax.tree.map(reverse, state), data, meta

    Checkpointer.restore = misplaced
    try:
        _check(out / "one", sources["one"], _config("fsdp8"), 8, "misplaced shards")
    except AssertionError as e:
        print(f"ok misplaced shards are caught: {' / '.join(str(e).strip().splitlines()[:2])[:120]}", flush=True)
    else:
        raise AssertionError("a restore with misplaced shards passed the check")
    finally:
        Checkpointer.restore = real


if __name__ == "__main__":
    from absl import logging

    logging.set_verbosity(logging.ERROR)
    cross_mesh_checks(Path(sys.argv[1]))
