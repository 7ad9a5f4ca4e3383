"""The variant table (mylm_jax/variants.py): the configs/*_tiny.yaml files are the entries
they name, the study variants differ where their docstring says, and no jax is imported."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mylm_jax.config import ConfigError, ModelConfig, load_config
from mylm_jax.variants import (CONFIG_VARIANTS, STUDY_VARIANTS, VARIANTS, config_variant, variant,
                               variant_model)

CONFIGS = Path(__file__).parents[1] / "configs"
CLAIM = re.compile(r"^# variant: (\w+)", re.MULTILINE)


def claimed(path: Path) -> str | None:
    """The variant a YAML file says its model section is (its `# variant: NAME` line)."""
    found = CLAIM.findall(path.read_text())
    assert len(found) <= 1, f"{path.name}: more than one '# variant:' line"
    return found[0] if found else None


CLAIMING = sorted(p for p in CONFIGS.glob("*.yaml") if claimed(p) or p.stem.endswith("_tiny"))


@pytest.mark.parametrize("path", CLAIMING, ids=lambda p: p.stem)
def test_config_file_is_the_variant_it_names(path):
    name = claimed(path)
    assert name in CONFIG_VARIANTS, f"{path.name}: names no CONFIG_VARIANTS entry ('# variant: {name}')"
    loaded, expected = load_config(path).model, config_variant(name)
    diff = {k: (getattr(loaded, k), getattr(expected, k)) for k in ModelConfig.__dataclass_fields__
            if getattr(loaded, k) != getattr(expected, k)}
    assert not diff, f"{path.name} vs CONFIG_VARIANTS[{name!r}] (yaml, table): {diff}"


def test_every_config_variant_has_its_file():
    assert sorted(CONFIG_VARIANTS) == sorted(claimed(p) for p in CLAIMING)


@pytest.mark.parametrize("name", VARIANTS)
def test_test_variants_are_valid_and_distinct(name):
    others = [variant(n) for n in VARIANTS if n != name]
    assert variant(name) not in others


def test_study_variants():
    modern = variant_model("modern", d_model=96, n_layers=3, n_heads=6)
    assert modern["n_kv_heads"] == 3 and modern["mlp"] == "swiglu"
    assert variant_model("gpt2", 96, 3, 6)["position"] == "learned"
    for gate in ("headwise", "elementwise"):
        assert variant_model(f"gated_{gate}", 96, 3, 6) == dict(modern, attn_gate=gate)
    moe = variant_model("moe", 96, 3, 6)
    assert moe["moe_d_ff"] == ModelConfig(**modern).ffn_dim // 2  # half the dense SwiGLU width
    assert {k: v for k, v in moe.items() if k not in ("n_experts", "top_k", "moe_d_ff")} == modern
    for name in STUDY_VARIANTS:
        ModelConfig(**variant_model(name))  # a valid model section
    with pytest.raises(ConfigError, match="unknown variant 'rnn'"):
        variant_model("rnn")


def test_variants_import_no_jax():
    code = "import sys, mylm_jax.variants; assert 'jax' not in sys.modules, 'jax imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
