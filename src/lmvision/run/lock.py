"""The lock a running run holds on its directory, telling "running" from "crashed".

A run holds an exclusive ``flock`` on ``<run dir>/.lmvision.lock`` for as long as its process
lives; the kernel drops it when the process ends, however it ends (``kill -9`` included), so a
crashed run can be resumed at once. File systems that do not share ``flock`` between machines
(some NFS set-ups) are covered by what the file says: the host and process that hold it, and a
heartbeat (the file's modification time, renewed every :data:`HEARTBEAT_S` seconds). A lock
named by a live process of this host, or renewed by another host within :data:`STALE_S`
seconds, is held.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from pathlib import Path

from lmvision.errors import UserError

NAME = ".lmvision.lock"
HEARTBEAT_S = 30.0
STALE_S = 4 * HEARTBEAT_S


class RunLock:
    """Hold the lock of ``run_dir`` (:meth:`acquire`) until :meth:`release` or process exit.

    Args:
        run_dir: The run directory.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / NAME
        self._fd: int | None = None
        self._created = False
        self._stop = threading.Event()

    def acquire(self, ignore_heartbeat: bool = False) -> None:
        """Take the lock, or raise a :class:`UserError` saying who holds it.

        Args:
            ignore_heartbeat: Trust ``flock`` alone (a requeued SLURM job: the job that held
                the lock before has ended, wherever it ran).
        """
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise UserError(self._held_message(holder(self.path))) from None
        other = holder(self.path)
        if other and not ignore_heartbeat and held_elsewhere(other, self.path):  # flock not shared with that machine
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise UserError(self._held_message(other))
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.time()}).encode())
        os.fsync(fd)
        self._fd = fd
        threading.Thread(target=self._beat, name="lmvision-run-lock", daemon=True).start()

    def release(self, remove: bool = False) -> None:
        """Let go of the lock; ``remove`` deletes the lock file when this process created it
        (a refused command leaves a directory as it found it)."""
        import fcntl

        self._stop.set()
        if self._fd is None:
            return
        if remove and self._created:
            self.path.unlink(missing_ok=True)
        else:
            os.ftruncate(self._fd, 0)  # nobody holds it now
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def _held_message(self, info: dict | None) -> str:
        who = (f"process {info.get('pid')} on {info.get('host')}, started "
               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.get('since', 0)))}"
               if info else "another process")
        return (f"{self.path.parent.resolve()} is in use: its run is still running ({who}); "
                "wait for it to end (or stop it) before resuming it, or start a new run with "
                "init_from=<its checkpoint>")


def holder(path: Path) -> dict | None:
    """Who last held the lock file at ``path`` (empty once released)."""
    try:
        text = path.read_text().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def held_elsewhere(info: dict, path: Path) -> bool:
    """Whether the holder named in a lock file that ``flock`` let us take is still alive: a
    process of this host that still runs, or another host that renewed it lately."""
    if info.get("host") == socket.gethostname():
        pid = info.get("pid")
        if not isinstance(pid, int) or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # alive, yet flock was free: a process that reused the pid, or a file system
        # without flock; the heartbeat decides
    try:
        return time.time() - path.stat().st_mtime < STALE_S
    except OSError:
        return False
