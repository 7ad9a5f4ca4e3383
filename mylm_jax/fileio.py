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

A directory that is replaced whole (a dataset, a Hugging Face export) is built beside
its target and put in place by `replace_dir`: where Linux can (renameat2 with
RENAME_EXCHANGE), the two names are swapped in one step, so the target path always holds
the old directory or the new one; elsewhere the old one is renamed aside first, leaving
an instant in which neither is at the target path.
This module imports no jax.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
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


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names of a and b in one step; False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without it
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a file system without the exchange
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_dir(built: str | os.PathLike, target: str | os.PathLike) -> Path | None:
    """Put the directory `built` at `target` (same file system: a sibling). Returns where
    the old target now is (for the caller to empty), or None if there was none."""
    built, target = Path(built), Path(target)
    if not target.exists():
        os.rename(built, target)
        return None
    if _exchange(built, target):
        return built
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, aside)
    os.rename(built, target)
    return aside


def cache_root() -> Path:
    """MyLM's cache (unpacked corpora, compiled programs): $MYLM_CACHE, else
    $XDG_CACHE_HOME/mylm, else ~/.cache/mylm."""
    root = os.environ.get("MYLM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mylm"
    return Path(root)
