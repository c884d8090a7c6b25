"""Writing a store: chunks streamed into ``<path>.partial`` (resumable, by several processes), then
renamed into place when complete; and rewriting a finished store's metadata."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from trajgeo.store.layout import (
    CHECKSUM, FORMAT_VERSION, MANIFEST, MARKER, META, CorruptStoreError, StoreError, _done_count, _fingerprint,
    _hash, _json_bytes, _key_difference, _metadata_hashes, _parquet_bytes, _partial, _read_manifests, _read_marker,
    _sweep, _version, _write_atomic, check_target, store_format,
)
from trajgeo.store.lock import StoreLock, _pid_alive, job_id, lock_holder

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

