"""Reading a store: every file checked against its checksum as it is read, in memory and lazily alike."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from trajgeo.store.layout import (
    FORMAT_VERSION, MARKER, META, CorruptStoreError, StoreError, _hash, _listing, _partial, _read_manifests,
    _read_marker, store_format,
)
from trajgeo.store.lock import StoreLock

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
