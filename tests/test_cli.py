"""The `mylm` command: output of each subcommand and one-line errors for user mistakes."""

import subprocess
import sys
from pathlib import Path

import pytest

from mylm_jax.cli import main

ROOT = Path(__file__).parents[1]


def test_config_prints_resolved_yaml(capsys):
    assert main(["config", "--config", str(ROOT / "configs/gpt2_tiny.yaml"), "model.n_layers=2"]) == 0
    out = capsys.readouterr().out
    assert "n_layers: 2" in out and "vocab_size: 4096" in out


def test_params_lists_every_parameter_with_axes_and_totals(capsys):
    assert main(["params", "--config", str(ROOT / "configs/moe_tiny.yaml")]) == 0
    out = capsys.readouterr().out
    assert "blocks.1.mlp.w_in" in out and "(expert, embed, None, mlp)" in out
    assert "total parameters" in out and "training FLOPs / token" in out


@pytest.mark.parametrize("args, message", [
    (["config", "model.d_modle=1"], "mylm: error: unknown key 'model.d_modle'; valid keys:"),
    (["params", "--config", "missing.yaml"], "mylm: error: config file not found: missing.yaml"),
])
def test_user_mistakes_print_one_line_and_exit_2(args, message):
    result = subprocess.run([sys.executable, "-m", "mylm_jax.cli", *args], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_importing_mylm_jax_and_config_does_not_import_jax():
    code = ("import sys, mylm_jax, mylm_jax.config, mylm_jax.model, mylm_jax.model.accounting; "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
