"""Shared helpers for the tokenizer tests: small slices of ../shared/data (skip when absent)."""

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def require_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found: {DATA}")
    return DATA


def english_text() -> str:
    return (require_data() / "taylorswift.txt").read_text(encoding="utf-8")


def poetry_lines(n_files: int = 1) -> list[str]:
    """Titles and verse lines of the first `n_files` Tang poetry files."""
    lines = []
    for name in [f"poet.tang.{1000 * i}.json" for i in range(n_files)]:
        for poem in json.loads((require_data() / "zh_poetry" / name).read_text(encoding="utf-8")):
            lines += [poem["title"], *poem["paragraphs"]]
    return lines
