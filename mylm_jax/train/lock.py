"""One writer per run directory: an advisory lock held while a run writes there.

`RunLock(directory).acquire()` takes an exclusive `flock` on `directory/.mylm.lock` without
waiting, and writes its pid and command line into the file; a second run into the same
directory finds the lock taken and is refused with one line naming the holder's pid. The
kernel drops the lock when its holder ends, however it ends (kill -9 included), so there
is never a stale lock to clear by hand; the file itself stays (removing it would let a
third run lock a new file while the second still holds the old one).

On several hosts only process 0 takes it (mylm_jax/train/run_dir.py): the other processes
follow process 0, which checks the directory for all of them. `flock` is local to one
machine on many network file systems, so two jobs on different machines sharing one
directory are not kept apart by it.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import sys
from pathlib import Path

from mylm_jax.config import ConfigError

LOCK_FILE = ".mylm.lock"


class RunLock:
    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise ConfigError(f"{self.path.parent} is in use by another run ({holder}); wait for it to end, "
                              "or choose another train.out_dir") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {shlex.join(sys.argv)}\n".encode())
        self.fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        pid, _, command = text.partition(" ")
        if not pid.isdigit():  # the holder has the lock but has not written its pid yet
            return "pid unknown"
        return f"pid {pid}: {command}" if command else f"pid {pid}"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None

    def __del__(self):
        # A Trainer that failed to start is dropped without run(): its lock goes with it.
        self.release()
