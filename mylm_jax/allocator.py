"""The memory allocator a `mylm` process runs with, chosen before anything is imported.

Why it matters. XLA:CPU gives every call of a compiled step one block of scratch memory
for its temporaries (60 MB for nanoGPT's CPU recipe: `compiled.memory_analysis()`), and
frees it when the call ends. glibc's malloc serves blocks above 32 MB straight from
mmap and hands them back to the kernel on free, so every step faults its scratch in
again, 4 KiB page by page: ~16,000 page faults and ~40% of the step's CPU time in the
kernel (measured with `/usr/bin/time -v`, scripts/bench_model.py shows the effect).
Two remedies, in order of preference:

    jemalloc    (the system library libjemalloc.so.2, e.g. Debian's `libjemalloc2`)
                preloaded with its page-return decay off: freed pages stay with the
                process and the next step reuses them. ~30x fewer page faults.
    THP         glibc >= 2.35 asked for transparent huge pages on its mmap'd blocks
                (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, with the kernel's THP mode
                `madvise` or `always`): the scratch faults in 2 MiB at a time. ~15x fewer.

Both are read by the dynamic loader when a process starts, so they cannot be switched
on from inside a running Python: the `mylm` command re-executes itself once with the
chosen environment (same PID, same arguments; `MYLM_ALLOCATOR_SET` marks the second
start). jemalloc is used when present, otherwise THP; when neither is available (glibc
older than 2.35, THP off, not glibc), training prints one line saying that installing
jemalloc would help. `MYLM_ALLOCATOR=system` keeps the process as it
started (benchmarks of the default use it); `MYLM_ALLOCATOR=jemalloc|thp` asks for one.

The choice changes no number a step computes, only where its scratch memory comes from.
This module imports nothing but the standard library (no jax).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CHOICE = "MYLM_ALLOCATOR"          # auto (default) | jemalloc | thp | system
APPLIED = "MYLM_ALLOCATOR_SET"     # set in the re-executed process: never re-execute twice
NOTE = "MYLM_ALLOCATOR_NOTE"       # the hint, for the trainer to print once training starts
JEMALLOC_DECAY_OFF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
THP_TUNABLE = "glibc.malloc.hugetlb=1"
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2",
                  "/opt/homebrew/lib/libjemalloc.2.dylib")
HINT = ("mylm: note: CPU steps run faster with jemalloc (Debian/Ubuntu: apt install libjemalloc2), "
        "used automatically when present; MYLM_ALLOCATOR=system silences this")


def find_jemalloc(paths=JEMALLOC_PATHS) -> str | None:
    return next((p for p in paths if Path(p).is_file()), None)


def glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        return tuple(int(x) for x in version.split(".")[:2]) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):  # not glibc (musl, macOS)
        return None


def thp_mode(path: str = "/sys/kernel/mm/transparent_hugepage/enabled") -> str | None:
    """The kernel's transparent-huge-page mode (the bracketed word: always / madvise / never)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def accelerator_installed() -> bool:
    """A GPU/TPU jax plugin is installed: steps then run there and the host allocator hardly matters."""
    from importlib.util import find_spec
    return any(find_spec(name) is not None for name in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu",
                                                        "jax_rocm60_plugin", "jax_rocm7_plugin"))


def plan(environ: dict, jemalloc: str | None, glibc: tuple[int, int] | None, thp: str | None
         ) -> tuple[str, dict, str | None]:
    """(allocator name, environment variables to set, a hint line or None) for this machine and
    MYLM_ALLOCATOR (auto, jemalloc or thp; `system` never gets here)."""
    choice = environ.get(CHOICE) or "auto"  # unset or empty: auto
    if choice not in ("auto", "jemalloc", "thp"):
        name, changes, _ = plan({**environ, CHOICE: "auto"}, jemalloc, glibc, thp)
        return name, changes, f"mylm: note: {CHOICE}={choice} is not one of auto, jemalloc, thp, system; using {name}"
    if choice in ("auto", "jemalloc") and jemalloc:
        preload = " ".join(filter(None, [jemalloc, environ.get("LD_PRELOAD", "")]))
        conf = environ.get("MALLOC_CONF") or JEMALLOC_DECAY_OFF  # a user's own settings win
        return "jemalloc", {"LD_PRELOAD": preload, "MALLOC_CONF": conf, APPLIED: "jemalloc"}, None
    if choice in ("auto", "thp") and glibc is not None and glibc >= (2, 35) and thp in ("always", "madvise"):
        tunables = ":".join(filter(None, [environ.get("GLIBC_TUNABLES", ""), THP_TUNABLE]))
        # No hint here: at 10 steps per call jemalloc and THP measured alike (docs/performance.md).
        return "thp", {"GLIBC_TUNABLES": tunables, APPLIED: "thp"}, None
    hint = HINT if choice == "auto" else f"mylm: note: MYLM_ALLOCATOR={choice} is not available here; {HINT[12:]}"
    return "system", {APPLIED: "system"}, hint


# The `mylm` commands that run compiled steps: they restart under the faster allocator
# (and switch on the persistent compilation cache: mylm_jax/cli/__init__.py).
STEP_COMMANDS = frozenset({"quickstart", "pretrain", "sft", "search", "generate", "chat", "eval", "serve"})


def reexec_with_fast_allocator() -> None:
    """Re-execute this process under the allocator `plan` picks (once).

    Called by the `mylm` command before it imports jax, for the commands that run steps. A
    hint is not printed here (a command refused for a bad config must stay one line): it is
    left in the environment (NOTE) and the trainer prints it when training starts (`note()`)."""
    if os.environ.get(APPLIED) or os.environ.get(CHOICE) == "system" or sys.platform != "linux":
        return
    name, changes, line = plan(dict(os.environ), find_jemalloc(), glibc_version(), thp_mode())
    if line and not accelerator_installed():
        changes[NOTE] = line
    if name == "system":
        os.environ.update(changes)
        return
    env = {**os.environ, **changes}
    argv = [sys.executable, *sys.orig_argv[1:]]  # `python -m mylm_jax.cli ...` or `.../bin/mylm ...`
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:  # could not re-execute: go on as we are
        pass


def note() -> str | None:
    """The allocator's one-line hint for this process, once (None when there is none)."""
    return os.environ.pop(NOTE, None)
