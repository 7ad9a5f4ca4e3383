"""Which directories MyLM made, and what a command may delete or replace in them.

A command that writes a directory marks it with `.mylm`, a small JSON file written
atomically (mylm_jax/fileio.py):

    {"kind": "run" | "dataset" | "hf-export" | "quickstart", "command": the command line,
     "version": MyLM's, "time": when (UTC)}

The rule, for every command: replacing what is there (`--overwrite`, a rerun) removes
only what a MyLM command made. Each command knows its own files (a run its checkpoints,
logs, config and tokenizer copy: train/run_dir.py; a dataset its shards and metadata:
data/shards.py; an export its safetensors and JSON files: interop/export.py) and treats
them as its own only in a directory that is of its kind: marked so, or, made before
markers, proven so by its contents (each command decides how, and says so in its
docstring). Whatever else is there is the user's: left in place and named. A directory
of another kind, or one MyLM did not make, is a one-line refusal naming the file
(`refusal`), before anything is written.

A directory replaced whole (a dataset, an export) is built beside its target, in
`.NAME.tmp-PID` (`build_beside`), and swapped in only when complete (`swap_in`), so a
crash, Ctrl-C or a full disk midway leaves the old one whole; `clear_stale` removes what
a dead run left beside it. No jax here.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from mylm_jax.config import ConfigError
from mylm_jax.fileio import atomic_write, replace_dir

MARKER = ".mylm"
KINDS = {"run": "a MyLM run", "dataset": "a MyLM dataset", "hf-export": "a MyLM Hugging Face export",
         "quickstart": "a MyLM quickstart directory"}
BUILDING, ASIDE = "tmp", "old"  # the siblings' tags: `.NAME.tmp-PID` (being built), `.NAME.old-PID` (replaced)


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("mylm")
    except (ImportError, PackageNotFoundError):
        return "unknown"


def write_marker(directory: str | os.PathLike, kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    program = "mylm" if program == "__main__.py" else program  # `python -m mylm_jax.cli`
    record = {"kind": kind, "command": shlex.join([program, *sys.argv[1:]]), "version": _version(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write(Path(directory) / MARKER, json.dumps(record, indent=2) + "\n")


def read_marker(directory: str | os.PathLike) -> dict | None:
    """The marker's record, or None where there is none (or it is not one)."""
    try:
        record = json.loads((Path(directory) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("kind") in KINDS else None


def marked_as(directory: str | os.PathLike, kind: str) -> bool:
    """True if the directory's marker says `kind`; False if it has none; a refusal if it is
    marked as another kind (a dataset is never a run directory, and so on)."""
    record = read_marker(directory)
    if record is None:
        return False
    if record["kind"] != kind:
        raise ConfigError(f"{directory} is {KINDS[record['kind']]} (its {MARKER} says so: "
                          f"{record.get('command', '?')}), not {KINDS[kind]}; choose another directory")
    return True


def refusal(path: str | os.PathLike, verb: str, hint: str = "") -> ConfigError:
    """The one line for a file MyLM did not make and would have to delete or overwrite."""
    return ConfigError(f"{path} was not made by MyLM; refusing to {verb} it" + (f" ({hint})" if hint else ""))


def listing(paths: Iterable[str | os.PathLike], limit: int = 4) -> str:
    names = [str(p) for p in paths]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def remove(paths: Iterable[Path]) -> None:
    """Delete paths the caller has found to be its own (a directory with all it holds)."""
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def split_entries(directory: Path, own: Callable[[Path], bool]) -> tuple[list[Path], list[Path]]:
    """(own, foreign) entries of a directory; the marker is always its own."""
    if not directory.is_dir():
        return [], []
    entries = sorted(directory.iterdir())
    mine = [p for p in entries if p.name == MARKER or own(p)]
    return mine, [p for p in entries if p not in mine]


def _sibling(target: Path, tag: str, pid: int | None = None) -> Path:
    return target.with_name(f".{target.name}.{tag}-{os.getpid() if pid is None else pid}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clear_stale(target: Path, own: Callable[[Path], bool], warn: Callable[[str], None]) -> None:
    """Empty and remove the siblings `.NAME.tmp-PID` / `.NAME.old-PID` that a process no longer
    running left beside `target` (killed while building or swapping). Only marked ones, and only
    their own files: anything else in one stays, and is named."""
    if not target.parent.is_dir():
        return
    for p in target.parent.iterdir():
        tag, _, pid = p.name.removeprefix(f".{target.name}.").rpartition("-")
        if not (p.name.startswith(f".{target.name}.") and tag in (BUILDING, ASIDE) and pid.isdigit()
                and p.is_dir() and not _alive(int(pid))):
            continue
        if any(p.iterdir()) and read_marker(p) is None:
            continue  # not one of ours
        mine, foreign = split_entries(p, own)
        remove(mine)
        if foreign:
            warn(f"{p} is what an interrupted run left; kept {listing(x.name for x in foreign)} there "
                 "(not made by MyLM)")
        else:
            p.rmdir()


def build_beside(target: Path, kind: str) -> Path:
    """A new, marked, empty directory beside `target` to build its replacement in."""
    here = Path.cwd().resolve()
    if target.exists() and (here == target.resolve() or target.resolve() in here.parents):
        # the swap would leave this process (and the user's shell) in the replaced directory
        raise ConfigError(f"{target}: the current directory is in it, and it is replaced whole (built beside it, "
                          "then swapped in); give it a directory of its own")
    built = _sibling(target, BUILDING)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if built.exists():  # this pid's own earlier attempt
            shutil.rmtree(built)
        built.mkdir()
        write_marker(built, kind)
    except OSError as e:
        shutil.rmtree(built, ignore_errors=True)
        raise ConfigError(f"{target}: cannot write there ({e.strerror or e})") from None
    return built


def discard(built: Path) -> None:
    """Remove a directory build_beside made (an attempt that failed or was interrupted)."""
    shutil.rmtree(built, ignore_errors=True)


def swap_in(target: Path, built: Path, own: Callable[[Path], bool]) -> tuple[list[str], list[str]]:
    """Replace `target` by the complete `built`. The entries of the old target that are not its
    own (the user's) are moved into `built` first, so they stay where they were; then the two are
    swapped (fileio.replace_dir); then the old one's own files are deleted. Returns (the names
    removed, the names kept)."""
    mine, foreign = split_entries(target, own)
    kept = []
    for p in foreign:
        if not (built / p.name).exists():
            os.rename(p, built / p.name)
            kept.append(p.name)
    old = replace_dir(built, target)
    if old is not None:
        mine, left = split_entries(old, own)
        remove(mine)
        if not left:
            old.rmdir()
    return [p.name for p in mine if p.name != MARKER], kept
