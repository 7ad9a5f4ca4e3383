"""The commands `mylm quickstart` tells a user to run next: each one is installed by the
README's install, or its line says what to install."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

from mylm_jax import quickstart

RESULT = SimpleNamespace(run_dir=Path("runs/quickstart/run"), steps=600)


def _commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()[1:]]


def test_every_next_command_is_installed_or_says_what_to_install(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(quickstart.shutil, "which", lambda name: None if name == "tensorboard" else real(name))
    for line in _commands(quickstart.next_steps(RESULT)):
        program = line.split()[0]
        assert real(program) or "pip install" in line, line  # mylm and python come with the install
    tensorboard = next(line for line in _commands(quickstart.next_steps(RESULT)) if line.startswith("tensorboard"))
    assert tensorboard.endswith("# the viewer is not installed: pip install tensorboard")


def test_an_installed_viewer_needs_no_note(monkeypatch):
    monkeypatch.setattr(quickstart.shutil, "which", lambda name: f"/usr/bin/{name}")
    tensorboard = next(line for line in _commands(quickstart.next_steps(RESULT)) if line.startswith("tensorboard"))
    assert tensorboard == "tensorboard --logdir runs/quickstart/run/tb"
