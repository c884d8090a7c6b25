"""The trajgeo store on disk: a Zarr group written chunk by chunk, checksummed, owned by one run, and made
visible only when complete.

Layout of a store ``<path>`` (format 2)::

    trajgeo.json       the marker: format and version, what the states depend on (``states_key``), the
                       checksums of meta.parquet and of every zarr.json, the fingerprint; written last
    zarr.json          the Zarr group: points, model info, array names, chunk size
    states/  components/<name>/  aux/<name>/
                       arrays chunked by examples; every chunk is written, even one of fill values
    manifest/<i>.json  the checksum of every file of chunk i: one small file per chunk, written by the
                       process that wrote the chunk (ranks never race), and chunk i's done mark
    meta.parquet       the metadata table: always the caller's (rewritten alone when only it changed)

:class:`StoreWriter` writes ``<path>.partial`` and renames it into place once every chunk is done, so a
final-named store is always complete. ``<path>.lock`` (:class:`StoreLock`) records the host, process
and job of the run that owns the store; the ranks of one ``torchrun``/``accelerate`` job share it.
:func:`read` (behind :func:`trajgeo.load`) checks every file against its checksum as it is read, in
memory and lazily alike; :func:`verify` checks a whole store and lists every problem. Stores of format 1
(trajgeo 0.1, no checksums) still load, with a warning; :func:`upgrade` records checksums for them.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import time
import uuid
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

try:  # POSIX: a kernel lock tells a live run from a dead one
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "StoreWriter", "StoreLock", "StoreError", "CorruptStoreError", "StoreLockedError", "StoreCheck",
    "FORMAT_VERSION", "check_target", "store_format", "read", "verify", "upgrade", "rewrite_meta",
]

FORMAT_VERSION = 2
MARKER = "trajgeo.json"
MANIFEST = "manifest"
META = "meta.parquet"
# The checksum of every file's bytes as they lie on disk: CRC-32 (zlib; what zip, gzip and PNG use) runs at
# 1.3-1.6 GB/s, three times blake2b, and misses an accidental change, truncation or swap of a chunk with
# probability 2**-32. It guards against damage, not against someone who can also rewrite the manifests.
CHECKSUM = "crc32"


class StoreError(RuntimeError):
    """A store that cannot be used as asked (another run owns it, it is not a store, ...)."""


class CorruptStoreError(StoreError, ValueError):
    """A file of a store is missing, truncated, changed or not what it should be."""


class StoreLockedError(StoreError):
    """Another run owns the store."""


def _version() -> str:
    from trajgeo import __version__

    return __version__


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _hash(data: Any) -> str:
    return f"{zlib.crc32(data):08x}"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see all of it or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, default=str).encode()


def _parquet_bytes(meta: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    meta.to_parquet(buf, index=False)
    return buf.getvalue()


# ====================================================================== what is at a path
def store_format(path: str | os.PathLike) -> int | None:
    """The store format of ``path`` (2: this one, 1: trajgeo 0.1), or None if it is not a trajgeo store.

    A store is recognised by its marker ``trajgeo.json`` (whatever its content) or by a readable
    ``zarr.json`` whose attributes say ``format: trajgeo``; nothing else is ever replaced or deleted.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / MARKER).is_file():
        try:
            return int(json.loads((path / MARKER).read_bytes())["format_version"])
        except (OSError, ValueError, KeyError, TypeError):
            return FORMAT_VERSION  # ours, but damaged: reading it says so
    try:
        attrs = json.loads((path / "zarr.json").read_bytes()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
    return int(attrs.get("format_version", 1)) if attrs.get("format") == "trajgeo" else None


def _listing(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_target(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output path that no store may be written to.

    A file, or a non-empty directory that is not a trajgeo store, is never replaced (``overwrite``
    only ever replaces a trajgeo store); the folder must be writable. Returns the path.

    Raises
    ------
    FileExistsError
        For a file or a foreign directory at ``path`` or ``<path>.partial`` (nothing is deleted).
    PermissionError
        When the folder cannot be written.
    """
    path = Path(path)
    for p in (path, _partial(path)):
        if p.is_dir():
            if store_format(p) is None and any(p.iterdir()):
                raise FileExistsError(
                    f"{p} is a directory that is not a trajgeo store (it holds {_listing(p)}); nothing was written "
                    "or deleted: choose another path, or move it away yourself (overwrite only ever replaces a "
                    "trajgeo store)")
        elif p.exists() or p.is_symlink():
            raise FileExistsError(f"{p} is a file, not a trajgeo store; nothing was written or deleted: choose "
                                  "another path (overwrite only ever replaces a trajgeo store)")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with open(parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.probe", "wb") as f:
            os.unlink(f.name)
    except OSError as exc:
        raise PermissionError(f"cannot write the store {path}: its folder {parent} is not writable "
                              f"({exc.strerror or exc})") from exc
    return path


# ====================================================================== the lock
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
                    raise self._busy(lock_holder(self.store)) from None
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


# ====================================================================== writing
def _key_difference(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> str:
    """What differs between the work a store holds (``old``) and this run's (``new``), in words."""
    if not old or not new:
        return "another model, other examples or other options"
    out = []
    if old.get("model_fingerprint") != new.get("model_fingerprint"):
        out.append(f"model {old.get('model')!r} (weights {old.get('model_fingerprint')}), this run "
                   f"{new.get('model')!r} (weights {new.get('model_fingerprint')})")
    if old.get("examples") != new.get("examples"):
        n_old, n_new = old.get("n_examples"), new.get("n_examples")
        out.append(f"{n_old} examples, this run {n_new}" if n_old != n_new else
                   f"{n_old} examples with other texts or spans than this run's")
    oo, no = old.get("options", {}), new.get("options", {})
    out += [f"{k}={oo.get(k)!r}, this run {no.get(k)!r}" for k in sorted(set(oo) | set(no)) if oo.get(k) != no.get(k)]
    return "; ".join(out) or "another model, other examples or other options"


def _done_count(partial: Path) -> int:
    try:
        return sum(1 for p in (partial / MANIFEST).iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except OSError:
        return 0


class StoreWriter:
    """Streams chunks of examples into ``<path>.partial`` and renames it into place when complete.

    Each chunk covers a contiguous range of ``chunk_size`` examples and matches the Zarr chunking,
    so chunks can be written in any order, by several processes, and a run resumes by skipping the
    chunks whose manifest exists. The caller holds the store's :class:`StoreLock` (rank 0) or has
    joined the partial store of its job (:meth:`join`).
    """

    def __init__(self, path: Path, group: Any, chunk_size: int, n_examples: int, marker: dict | None = None,
                 meta: pd.DataFrame | None = None) -> None:
        self.path = path
        self.partial = _partial(path)
        self.group = group
        self.chunk_size = chunk_size
        self.n_examples = n_examples
        self.marker = marker if marker is not None else {"arrays": list(group.attrs.get("arrays", []))}
        self.meta = meta
        self.arrays: list[str] = list(self.marker["arrays"])
        self._zarr: dict[str, Any] = {}  # opened arrays (each opening reads its zarr.json)

    def _array(self, name: str) -> Any:
        if name not in self._zarr:  # the setting is not stored with the array: every writer sets it
            self._zarr[name] = self.group[name].with_config({"write_empty_chunks": True})
        return self._zarr[name]

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        shapes: Mapping[str, tuple[int, ...]],
        meta: pd.DataFrame | None,
        attrs: Mapping[str, Any],
        dtype: str = "float32",
        chunk_size: int = 256,
        overwrite: bool = False,
        resume_key: str | None = None,
        key_parts: Mapping[str, Any] | None = None,
    ) -> "StoreWriter":
        """Create ``<path>.partial``, or reopen it when it holds the same work (``resume_key``).

        Parameters
        ----------
        path : path-like
        shapes : mapping of array name to shape, the first axis being examples (``"states"`` first)
        meta : DataFrame, optional
            Written when the store is finalised (:meth:`finalize` may be given another one).
        attrs : mapping
            Zarr attributes (``points``, ``model_info``).
        dtype : {"float32", "float16"}
        chunk_size : int >= 1
        overwrite : bool
            Replace a complete store at ``path`` and discard another run's unfinished work; never
            anything that is not a trajgeo store.
        resume_key : str, optional
            What the arrays depend on; a partial store with the same key is resumed.
        key_parts : mapping, optional
            The key's parts (model, examples, options), recorded to say what differs.

        Raises
        ------
        FileExistsError
            A store exists at ``path`` and not ``overwrite``; or ``path`` is a file or a foreign folder.
        StoreError
            ``<path>.partial`` holds another extraction's unfinished chunks and not ``overwrite``.
        """
        import zarr

        path = Path(path)
        partial = _partial(path)
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)):
            raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__} {chunk_size!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        check_target(path)
        if store_format(path) is not None and not overwrite:
            raise FileExistsError(f"a store already exists at {path}; pass overwrite=True to replace it")
        n = int(next(iter(shapes.values()))[0]) if shapes else 0
        if store_format(partial) == FORMAT_VERSION:
            old = _read_marker(partial, missing_ok=True)
            if old is not None and resume_key is not None and old.get("states_key") == resume_key:
                group = zarr.open_group(str(partial), mode="r+")
                return cls(path, group, int(old["chunk_size"]), n, old, meta)
            done = _done_count(partial)
            if done and not overwrite:
                raise StoreError(
                    f"{partial} holds an unfinished extraction of other work (it has "
                    f"{_key_difference((old or {}).get('key_parts'), key_parts)}), {done} of "
                    f"{(old or {}).get('n_chunks', '?')} chunks done: run that extraction again to finish it, "
                    "or pass overwrite=True to discard it")
        elif store_format(partial) is not None and _done_count(partial) == 0 and (partial / "done").exists():
            warnings.warn(f"discarding {partial}: an unfinished run of an earlier trajgeo (store format 1) cannot "
                          "be resumed by this one", stacklevel=2)
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        group = zarr.open_group(str(partial), mode="w")
        cs = int(chunk_size)
        for name, shape in shapes.items():
            group.create_array(name, shape=shape, chunks=(cs,) + tuple(shape[1:]), dtype=dtype, fill_value=np.nan,
                               config={"write_empty_chunks": True})  # a missing chunk is then always an error
        (partial / MANIFEST).mkdir()
        group.attrs.update({
            "format": "trajgeo", "format_version": FORMAT_VERSION, "trajgeo_version": _version(),
            "chunk_size": cs, "arrays": list(shapes), **json.loads(json.dumps(dict(attrs), default=str)),
        })
        marker = {
            "format": "trajgeo", "format_version": FORMAT_VERSION, "trajgeo_version": _version(), "complete": False,
            "checksum": CHECKSUM, "states_key": resume_key, "key_parts": dict(key_parts or {}), "n_examples": n,
            "chunk_size": cs, "n_chunks": -(-n // cs), "arrays": list(shapes), "dtype": dtype,
        }
        _write_atomic(partial / MARKER, _json_bytes(marker))  # last: a partial with a marker is ready to join
        return cls(path, group, cs, n, marker, meta)

    @classmethod
    def join(cls, path: str | os.PathLike, resume_key: str, timeout: float = 600.0) -> "StoreWriter":
        """Open the ``<path>.partial`` that rank 0 of this job creates (or resumes) with this ``resume_key``.

        Raises
        ------
        StoreLockedError
            When the store's lock names another job.
        TimeoutError
            If it does not appear within ``timeout`` seconds.
        """
        import zarr

        path = Path(path)
        partial = _partial(path)
        mine = job_id()
        t0 = time.time()
        while time.time() - t0 < timeout:
            holder = lock_holder(path)
            if holder and mine and holder.get("job") != mine:
                # another job's lock: a live one of this host fails at once; a dead one rank 0 takes over
                if holder.get("host") == socket.gethostname() and _pid_alive(int(holder.get("pid", 0))):
                    raise StoreLock(path)._busy(holder)
            elif holder:
                marker = _read_marker(partial, missing_ok=True)
                if marker and marker.get("states_key") == resume_key:
                    group = zarr.open_group(str(partial), mode="r+")
                    return cls(path, group, int(marker["chunk_size"]), int(marker["n_examples"]), marker)
            time.sleep(0.5)
        holder = lock_holder(path)
        if holder and holder.get("job") != mine:
            raise StoreLock(path)._busy(holder)
        raise TimeoutError(f"rank could not open {partial}: rank 0 did not create it within {timeout:.0f} s")

    def chunk_bounds(self) -> list[tuple[int, int]]:
        cs = self.chunk_size
        return [(s, min(s + cs, self.n_examples)) for s in range(0, self.n_examples, cs)]

    def done_chunks(self) -> np.ndarray:
        """Whether each chunk is done (its manifest exists), shape (n_chunks,)."""
        try:
            names = set(os.listdir(self.partial / MANIFEST))
        except FileNotFoundError:
            names = set()
        return np.array([f"{i}.json" in names for i in range(len(self.chunk_bounds()))], dtype=bool)

    def _chunk_key(self, name: str, i: int) -> str:
        arr = self._array(name)
        return f"{name}/" + arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))

    def write_chunk(self, i: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write every array of chunk ``i``, then its manifest (the checksums, and the chunk's done mark)."""
        start, stop = self.chunk_bounds()[i]
        if set(arrays) != set(self.arrays):
            raise ValueError(f"chunk {i}: got arrays {sorted(arrays)}, the store has {sorted(self.arrays)}")
        for name, arr in arrays.items():
            target = self._array(name)
            if arr.shape[0] != stop - start:
                raise ValueError(f"chunk {i} of {name!r} has {arr.shape[0]} rows, expected {stop - start}")
            target[start:stop] = arr.astype(target.dtype, copy=False)
        files = {}
        for name in self.arrays:
            key = self._chunk_key(name, i)
            data = (self.partial / key).read_bytes()
            files[key] = [_hash(data), len(data)]
        _write_atomic(self.partial / MANIFEST / f"{i}.json",
                      _json_bytes({"chunk": i, "start": start, "stop": stop, "files": files}))

    def wait_until_done(self, timeout: float = 3600.0) -> None:
        """Block until every chunk is done (by whichever process writes it)."""
        t0 = time.time()
        while not self.done_chunks().all():
            if time.time() - t0 > timeout:
                raise TimeoutError("other ranks did not finish their chunks in time")
            time.sleep(0.5)

    def finalize(self, meta: pd.DataFrame | None = None, **deprecated: Any) -> Path:
        """Write the metadata and checksums, then rename ``<path>.partial`` to ``<path>`` (the caller holds the lock).

        Parameters
        ----------
        meta : DataFrame, optional
            The metadata of the examples (default: the one given to :meth:`create`).

        Raises
        ------
        RuntimeError
            If a chunk is not written.
        """
        if "fingerprint" in deprecated:
            warnings.warn("StoreWriter.finalize(fingerprint=) is ignored and deprecated: the fingerprint is made from "
                          "the chunks' checksums", DeprecationWarning, stacklevel=2)
            deprecated.pop("fingerprint")
        if deprecated:
            raise TypeError(f"finalize() got unexpected keyword arguments {sorted(deprecated)}")
        missing = np.flatnonzero(~self.done_chunks())
        if len(missing):
            raise RuntimeError(f"cannot finalize {self.path}: chunks {missing.tolist()} are not written")
        meta = self.meta if meta is None else meta
        if meta is None or len(meta) != self.n_examples:
            raise ValueError(f"finalize needs the metadata of the {self.n_examples} examples")
        manifests = _read_manifests(self.partial, len(self.chunk_bounds()))
        for m in manifests:  # cheap: sizes, not contents (the manifest was made from the files)
            for key, (_, size) in m["files"].items():
                if not (self.partial / key).is_file() or (self.partial / key).stat().st_size != size:
                    raise CorruptStoreError(f"cannot finalize {self.path}: {key} changed after it was written")
        _sweep(self.partial, manifests, self.arrays)
        data = _parquet_bytes(meta)
        _write_atomic(self.partial / META, data)
        self.group.attrs.update({"complete": True})
        marker = dict(self.marker, complete=True, trajgeo_version=_version())
        marker["files"] = {**_metadata_hashes(self.partial), META: _hash(data)}
        marker["fingerprint"] = _fingerprint(manifests, meta, self.group.attrs.get("points"))
        _write_atomic(self.partial / MARKER, _json_bytes(marker))
        _replace(self.partial, self.path)
        return self.path


def _sweep(root: Path, manifests: list[dict], arrays: list[str]) -> None:
    """Remove what killed writers left behind: temporary files, and chunk files that no manifest lists."""
    listed = {key for m in manifests for key in m["files"]}
    for name in arrays:
        for f in list((root / name / "c").rglob("*")) if (root / name / "c").is_dir() else []:
            if f.is_file() and f.relative_to(root).as_posix() not in listed:
                f.unlink()
    for f in [*root.glob(".*.tmp"), *(root / MANIFEST).glob(".*.tmp")]:
        f.unlink(missing_ok=True)


def _metadata_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _hash(p.read_bytes()) for p in sorted(root.rglob("zarr.json"))}


def _fingerprint(manifests: list[dict], meta: pd.DataFrame, points: Any) -> str:
    """A short hash of the stored arrays (their chunks' checksums), points and example ids."""
    h = hashlib.blake2b(digest_size=12)
    for m in manifests:
        for key in sorted(m["files"]):
            h.update(f"{key}:{m['files'][key][0]};".encode())
    h.update(json.dumps(list(points or [])).encode())
    if "example" in meta:
        h.update(meta["example"].to_numpy().astype(np.int64).tobytes())
    return h.hexdigest()


def _replace(partial: Path, path: Path) -> None:
    """Rename the finished ``partial`` to ``path``; a store there is moved aside first, so that a crash
    leaves either the old store, or none and the complete partial, never a half-deleted one."""
    old = None
    if path.is_dir() and store_format(path) is not None:
        old = path.with_name(f"{path.name}.replaced-{os.getpid()}")
        os.rename(path, old)
    elif path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    elif path.exists() or path.is_symlink():
        raise FileExistsError(f"{path} appeared during the run and is not a trajgeo store: the finished store is "
                              f"left at {partial}")
    os.replace(partial, path)
    # this run's old store, and any an interrupted replacement left (the caller holds the lock)
    for p in [old] if old else []:
        shutil.rmtree(p, ignore_errors=True)
    for p in path.parent.glob(f"{glob.escape(path.name)}.replaced-*"):
        if store_format(p) is not None:
            shutil.rmtree(p, ignore_errors=True)


def rewrite_meta(path: str | os.PathLike, meta: pd.DataFrame) -> bool:
    """Replace a complete store's metadata table (the caller holds its lock); the arrays stay as they are.

    ``meta.parquet`` is replaced first and the marker's checksum second, each atomically: an
    interruption between the two leaves a mismatch that loading reports and the next run repairs.
    Returns whether anything changed.
    """
    path = Path(path)
    data = _parquet_bytes(meta)
    if store_format(path) == 1:
        if (path / META).is_file() and (path / META).read_bytes() == data:
            return False
        _write_atomic(path / META, data)
        return True
    marker = _read_marker(path)
    if marker.get("files", {}).get(META) == _hash(data):
        return False
    _write_atomic(path / META, data)
    manifests = _read_manifests(path, int(marker["n_chunks"]))
    attrs = json.loads((path / "zarr.json").read_bytes()).get("attributes", {})
    marker["files"] = {**marker.get("files", {}), META: _hash(data)}
    marker["fingerprint"] = _fingerprint(manifests, meta, attrs.get("points"))
    _write_atomic(path / MARKER, _json_bytes(marker))
    return True


def stored_key(path: str | os.PathLike) -> dict | None:
    """What the complete store at ``path`` holds, or None when there is none there.

    A dict: ``key`` (the states key), ``parts`` (model, examples, options) and ``legacy`` (the
    ``resume_key`` of a format-1 store, kept by :func:`upgrade`; it also hashed the example ids).
    """
    path = Path(path)
    fmt = store_format(path)
    if fmt is None:
        return None
    if fmt == 1:
        attrs = json.loads((path / "zarr.json").read_bytes()).get("attributes", {})
        return {"key": None, "parts": None, "legacy": attrs.get("model_info", {}).get("resume_key")}
    marker = _read_marker(path)
    return {"key": marker.get("states_key"), "parts": marker.get("key_parts"),
            "legacy": marker.get("legacy_resume_key")}


# ====================================================================== reading
def _read_marker(root: Path, missing_ok: bool = False) -> dict | None:
    try:
        marker = json.loads((root / MARKER).read_bytes())
    except FileNotFoundError:
        if missing_ok:
            return None
        raise CorruptStoreError(f"store {root}: {MARKER} is missing") from None
    except (OSError, ValueError) as exc:
        if missing_ok:
            return None
        raise CorruptStoreError(f"store {root}: {MARKER} is unreadable (truncated or changed: {exc})") from None
    if not isinstance(marker, dict) or marker.get("format") != "trajgeo":
        if missing_ok:
            return None
        raise CorruptStoreError(f"store {root}: {MARKER} is not a trajgeo marker")
    return marker


def _read_manifest(root: Path, i: int) -> dict:
    f = root / MANIFEST / f"{i}.json"
    try:
        m = json.loads(f.read_bytes())
        m["files"] = {k: tuple(v) for k, v in m["files"].items()}
        return m
    except FileNotFoundError:
        raise CorruptStoreError(f"store {root}: chunk {i} has no checksums ({MANIFEST}/{i}.json is missing)") \
            from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptStoreError(f"store {root}: {MANIFEST}/{i}.json is unreadable (truncated or changed: {exc})") \
            from None


def _read_manifests(root: Path, n_chunks: int) -> list[dict]:
    return [_read_manifest(root, i) for i in range(n_chunks)]


def _problem(root: Path, key: str, what: str, bounds: Mapping[str, tuple[int, int, int]]) -> str:
    if key in bounds:
        i, start, stop = bounds[key]
        array = key.rsplit("/c/", 1)[0]
        return f"store {root}: chunk {i} of array {array!r} (examples {start}..{stop - 1}, file {key}) {what}"
    return f"store {root}: {key} {what}"


_CHECKED_STORE: type | None = None


def _checked_store(root: Path, expected: Mapping[str, str], bounds: Mapping[str, tuple[int, int, int]]) -> Any:
    """A read-only Zarr ``LocalStore`` over ``root`` that checks every file it reads against its checksum.

    The class is built on first use: importing trajgeo must not import zarr.
    """
    global _CHECKED_STORE
    if _CHECKED_STORE is None:
        from zarr.storage import LocalStore

        class CheckedStore(LocalStore):
            def __init__(self, root: Path | str, *, read_only: bool = True, expected: Mapping[str, str] = {},
                         bounds: Mapping[str, tuple[int, int, int]] = {}) -> None:
                super().__init__(root, read_only=True)
                self._expected = dict(expected)
                self._bounds = dict(bounds)

            def with_read_only(self, read_only: bool = False) -> Any:
                return self

            def _check(self, key: str, buf: Any, byte_range: Any) -> None:
                want = self._expected.get(key)
                if want is None or byte_range is not None:
                    return
                if buf is None:
                    raise CorruptStoreError(_problem(self.root, key, "is missing", self._bounds))
                if _hash(memoryview(buf.as_numpy_array())) != want:
                    raise CorruptStoreError(_problem(self.root, key, "does not match its checksum (changed, "
                                                     "truncated, or replaced by another file)", self._bounds))

            async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
                buf = await super().get(key, prototype, byte_range)
                if key in self._expected:  # hash off the event loop: chunks are checked in parallel
                    await asyncio.to_thread(self._check, key, buf, byte_range)
                return buf

            def get_sync(self, key: str, *, prototype: Any = None, byte_range: Any = None) -> Any:
                buf = super().get_sync(key, prototype=prototype, byte_range=byte_range)
                self._check(key, buf, byte_range)
                return buf

        _CHECKED_STORE = CheckedStore
    return _CHECKED_STORE(root, expected=expected, bounds=bounds)


@dataclass
class Contents:
    """What :func:`read` returns: the arrays by store name, the metadata, the attributes and the marker."""

    arrays: dict[str, Any]
    meta: pd.DataFrame
    attrs: dict[str, Any]
    marker: dict[str, Any] | None
    format_version: int


def _existing(path: Path) -> int:
    """The format of the store at ``path``; a clear error when there is none."""
    if not path.exists():
        hint = ""
        if _partial(path).exists():
            hint = f" (an unfinished run left {_partial(path)}; run the extraction again to resume it)"
        replaced = sorted(path.parent.glob(f"{path.name}.replaced-*"))
        if replaced:
            hint += f" (an interrupted replacement left the previous store at {replaced[0]})"
        raise FileNotFoundError(f"no trajgeo store at {path}{hint}")
    if not path.is_dir():
        raise StoreError(f"{path} is a file, not a trajgeo store")
    fmt = store_format(path)
    if fmt is None:
        what = "is empty" if not any(path.iterdir()) else f"holds {_listing(path)}"
        raise StoreError(f"{path} is a directory but not a trajgeo store (no {MARKER}, and no readable zarr.json "
                         f"of a trajgeo store; it {what})")
    if fmt > FORMAT_VERSION:
        raise StoreError(f"{path} was written by a newer trajgeo (store format {fmt}; this one reads up to "
                         f"{FORMAT_VERSION}): upgrade trajgeo")
    return fmt


def _read_meta(root: Path, want: str | None) -> pd.DataFrame:
    try:
        data = (root / META).read_bytes()
    except FileNotFoundError:
        raise CorruptStoreError(f"store {root}: {META} is missing") from None
    if want is not None and _hash(data) != want:
        raise CorruptStoreError(f"store {root}: {META} does not match its checksum (truncated or changed; if a run "
                                "was rewriting the metadata when it stopped, run it again)")
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises its own error types
        raise CorruptStoreError(f"store {root}: {META} is unreadable ({type(exc).__name__}: {exc})") from None


def _expected(root: Path, marker: dict) -> tuple[dict[str, str], dict[str, tuple[int, int, int]]]:
    expected = {k: v for k, v in marker.get("files", {}).items() if k != META}
    bounds = {}
    for m in _read_manifests(root, int(marker["n_chunks"])):
        for key, (h, _) in m["files"].items():
            expected[key] = h
            bounds[key] = (int(m["chunk"]), int(m["start"]), int(m["stop"]))
    return expected, bounds


def read(path: str | os.PathLike, *, lazy: bool = False) -> Contents:
    """Open a store, checking every file it reads against its checksum (format 2).

    In memory every chunk is checked as it is read; lazily (dask arrays) each chunk is checked when
    a computation reads it, so a problem surfaces there, naming the store, array and chunk.
    ``meta.parquet``, ``trajgeo.json`` and every ``zarr.json`` are checked on opening.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    CorruptStoreError
        A file missing, truncated or not matching its checksum (named).
    StoreError
        ``path`` is not a (complete) trajgeo store.
    """
    import zarr

    path = Path(path)
    fmt = _existing(path)
    if fmt == 1:
        return _read_v1(path, lazy)
    marker = _read_marker(path)
    if not marker.get("complete"):
        raise StoreError(f"the store at {path} is incomplete")
    expected, bounds = _expected(path, marker)
    try:
        meta = _read_meta(path, marker.get("files", {}).get(META))
    except CorruptStoreError:
        if not StoreLock(path).path.exists():
            raise
        time.sleep(0.2)  # a run holding the lock may be rewriting the metadata: its marker follows the table
        marker = _read_marker(path)
        meta = _read_meta(path, marker.get("files", {}).get(META))
    group = zarr.open_group(_checked_store(path, expected, bounds), mode="r")
    attrs = dict(group.attrs)
    arrays = {}
    tag = hashlib.blake2b(f"{path.resolve()}|{marker.get('fingerprint')}".encode(), digest_size=8).hexdigest()
    for name in attrs.get("arrays", []):
        arr = group[name]
        if lazy:
            import dask.array as da

            arrays[name] = da.from_array(arr, chunks=arr.chunks, name=f"trajgeo-{tag}-{name}",
                                         asarray=True).astype(np.float32)
        else:
            arrays[name] = np.asarray(arr[:], dtype=np.float32)
    return Contents(arrays, meta, attrs, marker, fmt)


def _read_v1(path: Path, lazy: bool) -> Contents:
    import zarr

    warnings.warn(f"the store {path} was written by trajgeo 0.1 (store format 1, no checksums): its chunks cannot be "
                  f"verified; `trajgeo verify --upgrade {path}` (or trajgeo.store.upgrade) checks that every chunk "
                  "reads and records checksums for it", UserWarning, stacklevel=3)
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise CorruptStoreError(f"store {path}: zarr.json is unreadable ({exc})") from None
    attrs = dict(group.attrs)
    if not attrs.get("complete"):
        raise StoreError(f"the store at {path} is incomplete")
    meta = _read_meta(path, None)
    arrays = {}
    for name in attrs.get("arrays", []):
        try:
            if lazy:
                import dask.array as da

                arrays[name] = da.from_zarr(group[name]).astype(np.float32)
            else:
                arrays[name] = np.asarray(group[name][:], dtype=np.float32)
        except Exception as exc:
            raise CorruptStoreError(f"store {path}: array {name!r} is unreadable ({type(exc).__name__}: {exc})") \
                from None
    return Contents(arrays, meta, attrs, None, 1)


# ====================================================================== checking a whole store
@dataclass
class StoreCheck:
    """What :func:`verify` found.

    Attributes
    ----------
    path : Path
    format_version : int or None
    problems : DataFrame
        One row per problem, columns ``file, array, chunk, problem`` (``array``/``chunk`` empty for
        files that are not chunks); empty when the store is sound.
    n_files : int
        Files checked.
    verifiable : bool
        False for format-1 stores (no checksums: only that every chunk exists and decodes is checked).
    """

    path: Path
    format_version: int | None
    problems: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["file", "array", "chunk", "problem"]))
    n_files: int = 0
    verifiable: bool = True

    @property
    def ok(self) -> bool:
        return self.problems.empty

    def __str__(self) -> str:
        if self.ok:
            note = "" if self.verifiable else " (format 1: no checksums; every chunk exists and decodes)"
            return f"{self.path}: ok, {self.n_files} files checked{note}"
        lines = [f"{self.path}: {len(self.problems)} problem(s) in {self.n_files} files checked"]
        for r in self.problems.itertuples():
            where = f"chunk {r.chunk} of {r.array!r} ({r.file})" if r.array else r.file
            lines.append(f"  {where}: {r.problem}")
        return "\n".join(lines)


def verify(path: str | os.PathLike) -> StoreCheck:
    """Check a whole store: every file against its checksum, every chunk present; list every problem.

    Parameters
    ----------
    path : path-like
        A store written by :func:`trajgeo.extract` or :meth:`Trajectories.save`.

    Returns
    -------
    StoreCheck
        ``.ok``, and ``.problems`` (columns ``file, array, chunk, problem``) naming each missing,
        truncated, changed or swapped file. Format-1 stores have no checksums: each chunk is read
        instead, and ``.verifiable`` is False.

    Raises
    ------
    FileNotFoundError, StoreError
        When ``path`` is not a trajgeo store at all.
    """
    path = Path(path)
    fmt = _existing(path)
    rows: list[dict] = []
    add = lambda file, problem, array="", chunk=None: rows.append(  # noqa: E731
        {"file": file, "array": array, "chunk": chunk, "problem": problem})
    frame = lambda: pd.DataFrame(rows, columns=["file", "array", "chunk", "problem"])  # noqa: E731
    if fmt == 1:
        n = _verify_v1(path, add)
        return StoreCheck(path, 1, frame(), n, False)
    try:
        marker = _read_marker(path)
    except CorruptStoreError as exc:
        add(MARKER, str(exc).split(": ", 1)[-1])
        return StoreCheck(path, fmt, frame(), 1)
    if not marker.get("complete"):
        add(MARKER, "the store is marked incomplete")
    n_files = 1
    for key, want in marker.get("files", {}).items():
        n_files += 1
        f = path / key
        if not f.is_file():
            add(key, "is missing")
        elif _hash(f.read_bytes()) != want:
            add(key, "does not match its checksum")
    listed, unlisted_chunks = set(), set()
    for i in range(int(marker.get("n_chunks", 0))):
        n_files += 1
        try:
            m = _read_manifest(path, i)
        except CorruptStoreError as exc:
            add(f"{MANIFEST}/{i}.json", str(exc).split(": ", 1)[1], chunk=i)
            unlisted_chunks.add(i)  # its files have no checksums: this one problem says so
            continue
        for key, (want, _) in m["files"].items():
            n_files += 1
            listed.add(key)
            array = key.rsplit("/c/", 1)[0]
            f = path / key
            if not f.is_file():
                add(key, "is missing", array, i)
            elif _hash(f.read_bytes()) != want:
                add(key, "does not match its checksum (changed, truncated, or replaced by another chunk)", array, i)
    for name in marker.get("arrays", []):  # a chunk file no manifest lists (e.g. beyond the last chunk)
        for f in sorted((path / name / "c").rglob("*")) if (path / name / "c").is_dir() else []:
            key = f.relative_to(path).as_posix()
            first = key.rsplit("/c/", 1)[1].split("/")[0]
            i = int(first) if first.isdigit() else None
            if f.is_file() and key not in listed and i not in unlisted_chunks:
                add(key, "is not in any chunk's manifest", name, i)
    return StoreCheck(path, fmt, frame(), n_files)


def _verify_v1(path: Path, add: Callable[..., None]) -> int:
    """Format 1: read every chunk of every array (no checksums to compare with)."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:
        add("zarr.json", f"is unreadable ({exc})")
        return 1
    n = 1
    try:
        pd.read_parquet(path / META)
    except Exception as exc:
        add(META, f"is unreadable ({type(exc).__name__})")
    n += 1
    for name in attrs.get("arrays", []):
        arr = group[name]
        cs = arr.chunks[0]
        for i in range(-(-arr.shape[0] // cs)):
            n += 1
            key = f"{name}/" + arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))
            if not (path / key).is_file():
                add(key, "is missing (it would read as NaN)", name, i)
                continue
            try:
                arr[i * cs:(i + 1) * cs]
            except Exception as exc:
                add(key, f"does not decode ({type(exc).__name__})", name, i)
    return n


def upgrade(path: str | os.PathLike) -> StoreCheck:
    """Record checksums for a format-1 store, in place, once every chunk of it reads (format 2 after).

    The checksums are of the files as they are now: the store's earlier history cannot be checked.

    Raises
    ------
    CorruptStoreError
        When a chunk is missing or does not decode (nothing is changed then).
    """
    import zarr

    path = Path(path)
    if _existing(path) != 1:
        return verify(path)
    with StoreLock(path):
        check = verify(path)
        if not check.ok:
            raise CorruptStoreError(f"cannot upgrade {check}")
        group = zarr.open_group(str(path), mode="r+")
        attrs = dict(group.attrs)
        cs = int(attrs["chunk_size"])
        names = list(attrs.get("arrays", []))
        n = int(group["states"].shape[0])
        writer = StoreWriter(path, group, cs, n, {"arrays": names})
        writer.partial = path  # the chunks are where they are
        (path / MANIFEST).mkdir(exist_ok=True)
        manifests = []
        for i, (start, stop) in enumerate(writer.chunk_bounds()):
            files = {}
            for name in names:
                key = writer._chunk_key(name, i)
                data = (path / key).read_bytes()
                files[key] = [_hash(data), len(data)]
            m = {"chunk": i, "start": start, "stop": stop, "files": files}
            _write_atomic(path / MANIFEST / f"{i}.json", _json_bytes(m))
            manifests.append(m)
        meta = pd.read_parquet(path / META)
        group.attrs.update({"format_version": FORMAT_VERSION})
        info = attrs.get("model_info", {})
        marker = {
            "format": "trajgeo", "format_version": FORMAT_VERSION, "trajgeo_version": _version(), "complete": True,
            "checksum": CHECKSUM, "states_key": None, "legacy_resume_key": info.get("resume_key"), "key_parts": {},
            "n_examples": n, "chunk_size": cs, "n_chunks": len(manifests), "arrays": names,
            "upgraded_from": 1, "upgraded": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        marker["files"] = {**_metadata_hashes(path), META: _hash((path / META).read_bytes())}
        marker["fingerprint"] = _fingerprint(manifests, meta, attrs.get("points"))
        _write_atomic(path / MARKER, _json_bytes(marker))
    return verify(path)
