"""Run the same 10 training steps on several meshes of 8 host CPU devices (a subprocess of
tests/test_train_sharding.py; XLA_FLAGS must force the device count before jax loads).

    python tests/mesh_runs.py DATA_PATH OUT_DIR MESHES_JSON   -> OUT_DIR/<mesh name>/metrics.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def moe_config(data_path: str, out_dir: str, mesh: dict, steps: int = 10, **train):
    from mylm_jax.config import config_from_dict
    from tests.train_helpers import tiny_config

    cfg = tiny_config(data_path, Path(out_dir),
                      model=dict(n_experts=4, top_k=2, moe_layers=[1], n_kv_heads=2, moe_impl="blocked"),
                      train=dict(steps=steps, batch_size=8, eval_every=0, checkpoint_every=0, **train))
    cfg["mesh"] = mesh
    return config_from_dict(cfg)


def main() -> None:
    from absl import logging

    from mylm_jax.train.loop import pretrain

    logging.set_verbosity(logging.ERROR)
    data_path, out_dir, meshes = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    for name, mesh in meshes.items():
        resume = mesh.pop("resume", False)
        steps = mesh.pop("steps", 10)
        pretrain(moe_config(data_path, str(out_dir / name), mesh, steps), resume=resume)
        print(f"done {name}", flush=True)


if __name__ == "__main__":
    main()
