"""What a study reads and writes: runs' metrics in, figures and results out.

    read_metrics(run_dir)  the records of a run's metrics.jsonl
    series(records, key)   (steps, values) of one quantity
    figure / save_figure   PNGs (matplotlib's Agg backend: no display needed)
    write_results          results.json and report.md in the study's --out directory
    markdown_table         the tables of report.md

Every study writes the same three kinds of output, so a reader can diff results.json
between machines and read report.md without running anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that have `key` (None -> nan); the last record of a step wins."""
    by_step = {r["step"]: r[key] for r in records if key in r}
    steps = np.array(sorted(by_step), dtype=np.int64)
    values = np.array([np.nan if by_step[s] is None else by_step[s] for s in steps], dtype=np.float64)
    return steps, values


def figure(*args, **kwargs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str | Path) -> str:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def _plain(x):
    """x with numpy values as Python ones and non-finite floats as None (valid JSON)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_results(out_dir: str | Path, results: dict, report: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_plain(results), indent=2) + "\n")
    (out / "report.md").write_text(report)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
        return f"{v:,}" if isinstance(v, int) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
