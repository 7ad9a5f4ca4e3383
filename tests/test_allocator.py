"""The allocator a `mylm` step command restarts itself under (mylm_jax/allocator.py), and the
persistent compilation cache it starts with (mylm_jax/train/compile_cache.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mylm_jax import allocator
from mylm_jax.allocator import APPLIED, CHOICE, HINT, JEMALLOC_DECAY_OFF, THP_TUNABLE, plan
from tests.train_helpers import ROOT, losses, run_mylm, tiny_config

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
GLIBC, OLD_GLIBC = (2, 36), (2, 31)


def test_jemalloc_when_installed_with_decay_off_and_no_hint():
    name, env, hint = plan({}, JEMALLOC, GLIBC, "madvise")
    assert name == "jemalloc" and hint is None
    assert env == {"LD_PRELOAD": JEMALLOC, "MALLOC_CONF": JEMALLOC_DECAY_OFF, APPLIED: "jemalloc"}


def test_a_users_own_preload_and_jemalloc_settings_are_kept():
    _, env, _ = plan({"LD_PRELOAD": "/opt/libmine.so", "MALLOC_CONF": "narenas:2"}, JEMALLOC, GLIBC, "always")
    assert env["LD_PRELOAD"] == f"{JEMALLOC} /opt/libmine.so" and env["MALLOC_CONF"] == "narenas:2"


def test_without_jemalloc_glibc_huge_pages():
    name, env, hint = plan({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, None, GLIBC, "madvise")
    assert name == "thp" and hint is None
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{THP_TUNABLE}" and env[APPLIED] == "thp"


@pytest.mark.parametrize("glibc, thp", [(OLD_GLIBC, "madvise"), (GLIBC, "never"), (None, None)])
def test_nothing_better_available_keeps_the_system_allocator_and_says_so(glibc, thp):
    """glibc older than 2.35 (no hugetlb tunable), THP switched off, or not glibc at all."""
    name, env, hint = plan({}, None, glibc, thp)
    assert (name, env, hint) == ("system", {APPLIED: "system"}, HINT)


def test_asking_for_one_by_name():
    assert plan({CHOICE: "thp"}, JEMALLOC, GLIBC, "madvise")[:1] == ("thp",)
    assert plan({CHOICE: "thp"}, JEMALLOC, GLIBC, "madvise")[2] is None  # asked for: no hint
    name, _, hint = plan({CHOICE: "jemalloc"}, None, GLIBC, "madvise")
    assert name == "system" and hint.startswith("mylm: note: MYLM_ALLOCATOR=jemalloc is not available here")
    assert plan({CHOICE: ""}, None, GLIBC, "madvise") == plan({}, None, GLIBC, "madvise")  # empty = auto
    name, _, hint = plan({CHOICE: "tcmalloc"}, None, GLIBC, "madvise")
    assert name == "thp" and "MYLM_ALLOCATOR=tcmalloc is not one of auto, jemalloc, thp, system" in hint


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert allocator.thp_mode(str(path)) == "madvise"
    assert allocator.thp_mode(str(tmp_path / "missing")) is None


def _reexecuted_environment(extra: dict) -> dict:
    """What a process sees after reexec_with_fast_allocator (run as `python -c`)."""
    code = ("from mylm_jax import allocator; allocator.reexec_with_fast_allocator(); import os; "
            "print(os.environ.get('MYLM_ALLOCATOR_SET'), os.environ.get('GLIBC_TUNABLES'), os.getpid())")
    env = {k: v for k, v in os.environ.items() if k not in (CHOICE, APPLIED)}
    proc = subprocess.Popen([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(ROOT), **extra},
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    applied, tunables, pid = out.split()
    return {"applied": applied, "tunables": tunables, "same_pid": int(pid) == proc.pid}


needs_thp = pytest.mark.skipif(not sys.platform.startswith("linux") or (allocator.glibc_version() or (0, 0)) < (2, 35)
                               or allocator.thp_mode() not in ("always", "madvise"), reason="needs glibc >= 2.35 and THP")


@needs_thp
def test_the_process_restarts_once_under_the_chosen_allocator():
    """Same PID (exec, not a child), the marker set, the tunable there; `system` leaves it alone."""
    seen = _reexecuted_environment({CHOICE: "thp"})
    assert seen == {"applied": "thp", "tunables": THP_TUNABLE, "same_pid": True}
    assert _reexecuted_environment({CHOICE: "system"})["applied"] == "None"


@needs_thp
@pytest.mark.parametrize("command, restarts", [("pretrain", True), ("tokenizer", False)])
def test_the_console_script_restarts_before_importing_the_commands(command, restarts):
    """mylm_jax.launch (the `mylm` script): a step command restarts before mylm_jax.cli and
    its groups are imported (the first process stays short); other commands never restart."""
    code = ("import os, sys; sys.argv = ['mylm', %r, '--help']; "
            "os.execve = lambda *a: (print('restart', 'mylm_jax.cli' in sys.modules), sys.exit(0)); "
            "from mylm_jax import launch; launch.main()" % command)
    env = {k: v for k, v in os.environ.items() if k not in (CHOICE, APPLIED)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**env, "PYTHONPATH": str(ROOT), CHOICE: "thp"})
    assert result.returncode == 0, result.stderr
    assert ("restart False" in result.stdout) == restarts and "restart True" not in result.stdout


def test_a_second_run_loads_its_compiled_programs_and_trains_the_same(data_path, tmp_path):
    """The cache gets the run's programs (init, steps, eval); a second run of the same config
    compiles nothing new and gives the same losses bit for bit."""
    cache = tmp_path / "xla"
    runs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        result = run_mylm(["pretrain"], tiny_config(data_path, out), tmp_path / f"c{i}.yaml",
                          env={"MYLM_COMPILATION_CACHE": str(cache)})
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append((losses(out), sorted(p.name for p in cache.glob("*-cache"))))
    (first, programs), (second, programs_after) = runs
    assert len(programs) >= 3 and programs_after == programs
    assert second == first
    # Cache off; and the allocator's hint (as a machine without jemalloc would leave it): printed
    # once when training starts, never on stderr, where a refused command's one line goes.
    off = tmp_path / "off"
    result = run_mylm(["pretrain"], tiny_config(data_path, off), tmp_path / "c_off.yaml",
                      env={"MYLM_COMPILATION_CACHE": "off", "MYLM_CACHE": str(tmp_path / "home"),
                           APPLIED: "thp", allocator.NOTE: HINT})
    assert result.returncode == 0 and not (tmp_path / "home" / "xla").exists()
    assert result.stdout.count(HINT) == 1 and HINT not in result.stderr
