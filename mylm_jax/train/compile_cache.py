"""The persistent compilation cache: a second run of the same config starts in seconds.

Compiling the training step is most of the time before the first step on CPU (nanoGPT's
recipe: ~2.5 s of ~6 s). XLA's compiled programs are kept on disk, keyed by the program,
the compiler options, the devices and the jax version, so a later run of the same
config loads them instead of compiling (a loaded program is the very same machine code:
no number changes). The `mylm` commands that run steps switch it on (cli/__init__.py):

    MYLM_COMPILATION_CACHE unset     $MYLM_CACHE/xla (default ~/.cache/mylm/xla)
    MYLM_COMPILATION_CACHE=DIR       that folder
    MYLM_COMPILATION_CACHE=off       no cache
    JAX_COMPILATION_CACHE_DIR set    jax's own setting wins; MyLM leaves it alone

The cache is bounded (least recently used entries go first) and guarded by a file lock,
so concurrent runs can share it; an unreadable entry is recompiled (jax warns).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from mylm_jax.fileio import cache_root

SETTING = "MYLM_COMPILATION_CACHE"
MAX_BYTES = 2 << 30  # 2 GiB; a small model's step is ~1-5 MB
MIN_COMPILE_SECONDS = 0.1  # jax's default (1 s) would skip the init and eval programs


def enable() -> Path | None:
    """Switch the cache on for this process (see the module docstring); returns its folder."""
    setting = os.environ.get(SETTING, "")
    if setting.lower() in ("0", "off", "no", "none") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    path = Path(setting) if setting else cache_root() / "xla"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)  # LRU eviction under a file lock
    return path
