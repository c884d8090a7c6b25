"""``<store>.lock``: the run that owns a store, and the multi-process job it belongs to."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from trajgeo.store.layout import StoreLockedError, _json_bytes

try:  # POSIX: a kernel lock tells a live run from a dead one
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

def job_id() -> str | None:
    """The launcher's id of this multi-process job (torchrun/accelerate, a torch master, SLURM), or None."""
    env = os.environ
    if env.get("TORCHELASTIC_RUN_ID"):
        return "torchelastic:" + env["TORCHELASTIC_RUN_ID"]
    if env.get("MASTER_ADDR") and env.get("MASTER_PORT"):
        return f"master:{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm:{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '')}"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(path: str | os.PathLike) -> dict | None:
    """What ``<path>.lock`` records (host, pid, job, since, command), or None without a readable lock."""
    try:
        holder = json.loads(StoreLock(Path(path)).path.read_bytes())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


class StoreLock:
    """``<store>.lock``: the run that owns a store, held from the first check to the last rename.

    The file records host, process id, job id, start time and command. On POSIX the owner also holds
    an ``flock`` on it, which the kernel drops when the process dies: a lock of this host that nobody
    holds is stale and is taken over (with a warning). A live lock, or one of another host (whose
    process this host cannot see), makes :meth:`acquire` fail at once with :class:`StoreLockedError`
    saying who holds it and how to clear it. Only rank 0 of a job acquires it; the other ranks check
    that it names their job (:meth:`StoreWriter.join`).
    """

    def __init__(self, store: str | os.PathLike) -> None:
        self.store = Path(store)
        self.path = self.store.with_name(self.store.name + ".lock")
        self._fd: int | None = None

    def _me(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "job": job_id(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}

    def _busy(self, holder: dict | None) -> StoreLockedError:
        if not holder:
            return StoreLockedError(f"{self.store} is being written by another run (its lock {self.path} is held "
                                    "but not yet filled in); wait for it to finish")
        who = f"process {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"
        if holder.get("job"):
            who += f" (job {holder['job']})"
        if holder.get("host") != socket.gethostname():
            return StoreLockedError(
                f"{self.store} is locked by {who}; this host cannot tell whether that run is still going: if it "
                f"is not, delete {self.path} and run again")
        if holder.get("pid") == os.getpid():
            return StoreLockedError(f"{self.store} is already being written by this process (pid {os.getpid()})")
        return StoreLockedError(f"{self.store} is being written by another run: {who}; wait for it to finish or "
                                f"stop it (a lock whose process is gone is taken over)")

    def acquire(self) -> "StoreLock":
        """Take the lock, or raise :class:`StoreLockedError` at once; returns self."""
        self.store.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL), 0o644)
            except FileExistsError:  # no fcntl: the file is the lock; a dead process of this host leaves it stale
                holder = lock_holder(self.store)
                if holder and holder.get("host") == socket.gethostname() and not _pid_alive(int(holder["pid"])):
                    self._stale(holder)
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._busy(holder) from None
            except OSError as exc:
                raise PermissionError(f"cannot write the store {self.store}: cannot create its lock {self.path} "
                                      f"({exc.strerror or exc})") from exc
            if fcntl:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    kernel = True
                except BlockingIOError:
                    os.close(fd)
                    raise self._busy(self._holder_record()) from None
                except OSError:  # a file system without kernel locks (some network mounts): judge by the record
                    kernel = False
                try:  # a releasing owner unlinks the file: make sure we locked the one the path names
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                holder = lock_holder(self.store)
                if holder and (holder.get("host") != socket.gethostname()
                               or not kernel and _pid_alive(int(holder.get("pid", 0)))):
                    os.close(fd)
                    raise self._busy(holder)
                if holder:
                    self._stale(holder)
            os.ftruncate(fd, 0)
            os.pwrite(fd, _json_bytes(self._me()), 0)
            self._fd = fd
            return self
        raise self._busy(lock_holder(self.store))

    def _holder_record(self, wait: float = 2.0) -> dict | None:
        """The record of a run that holds the kernel lock. It writes its record right after taking the
        lock, so a loser of a close race may read an empty file: wait briefly for the record, so that the
        error names the run (an empty record after ``wait`` seconds is reported as such)."""
        deadline = time.monotonic() + wait
        while True:
            holder = lock_holder(self.store)
            if holder or time.monotonic() >= deadline:
                return holder
            time.sleep(0.01)

    def _stale(self, holder: dict) -> None:
        warnings.warn(f"took over the lock of {self.store}: process {holder.get('pid')} of this host, which took it "
                      f"at {holder.get('since')}, is gone", stacklevel=5)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

