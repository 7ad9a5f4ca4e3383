"""Writing files so that a crash, a full disk or Ctrl-C never leaves a half-written one.

`atomic_write(path, data)` writes to a temporary file in the same directory, flushes it
to disk (fsync), then renames it over `path`. A rename within one file system is atomic
(POSIX), so a reader sees either the old file whole or the new one whole, never a
truncated mix; if writing fails (ENOSPC, a signal), the temporary file is removed and
the old file is left as it was. Missing parent directories are created first, so a
long job never finds out at its end that it has nowhere to put its result.

Every file the project writes whole (tokenizers, exports, dataset metadata, configs,
rewritten checkpoint metadata) goes through here. Append-only logs (metrics.jsonl) and
orbax's checkpoints (which commit by renaming a directory) have their own schemes.
This module imports no jax.
"""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: str | bytes, encoding: str = "utf-8") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode(encoding) if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cache_root() -> Path:
    """MyLM's cache (unpacked corpora, compiled programs): $MYLM_CACHE, else
    $XDG_CACHE_HOME/mylm, else ~/.cache/mylm."""
    root = os.environ.get("MYLM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mylm"
    return Path(root)
