"""Checking a whole store (every file against its checksum, every problem listed), and upgrading a
format-1 store to checksums."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from trajgeo.store.layout import (
    CHECKSUM, FORMAT_VERSION, MANIFEST, MARKER, META, CorruptStoreError, _fingerprint, _hash, _json_bytes,
    _metadata_hashes, _read_manifest, _read_marker, _version, _write_atomic,
)
from trajgeo.store.lock import StoreLock
from trajgeo.store.reader import _existing
from trajgeo.store.writer import StoreWriter

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
