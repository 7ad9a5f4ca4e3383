"""notebooks/validate.ipynb runs headless, top to bottom, against a tiny MoE run (so that it
cannot rot): every cell, the MoE branch of the expert-load cell included, without an error."""

from __future__ import annotations

from pathlib import Path

import pytest

import mylm_jax
from tests.train_helpers import ROOT, tiny_config

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = ROOT / "notebooks" / "validate.ipynb"


@pytest.fixture(scope="module")
def moe_run(data_path, tmp_path_factory) -> Path:
    """8 steps of a tiny MoE model, checkpoints at 4 and 8 (the notebook compares the two)."""
    out = tmp_path_factory.mktemp("notebook_run") / "run"
    cfg = tiny_config(data_path, out, model=dict(n_experts=4, top_k=2, moe_impl="dense"),
                      train=dict(sample_prompt="First"))
    run = mylm_jax.pretrain(cfg)
    assert run.step == 8
    return out


@pytest.mark.slow
def test_validate_notebook_runs_without_errors(moe_run, monkeypatch):
    monkeypatch.setenv("MYLM_RUN", str(moe_run))  # the kernel inherits the environment
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the figures
    nb = nbformat.read(NOTEBOOK, as_version=4)  # a copy in memory: the stored file is left alone
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError (with the cell and its traceback) on an error
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "kept checkpoints: [4, 8]" in text and "--- step 4:" in text and "--- step 8:" in text
    assert "rows sum to 1: True | causal: True" in text
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 3  # loss curves, attention map, expert load
    assert "This model is dense" not in str(outputs)
