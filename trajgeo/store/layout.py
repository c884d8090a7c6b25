"""The on-disk layout of a store: its format, marker and manifests, their checksums, and what may be written where.

Every file's bytes are checksummed as they lie on disk (CRC-32); a chunk's manifest lists the checksums
of its files and is its done mark; the marker ``trajgeo.json`` (written last) holds the checksums of the
metadata files and a fingerprint of the whole store.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

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


# ====================================================================== marker and manifests
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



def _sweep(root: Path, manifests: list[dict], arrays: list[str]) -> None:
    """Remove what killed writers left behind: temporary files, and chunk files that no manifest lists."""
    listed = {key for m in manifests for key in m["files"]}
    for name in arrays:
        for f in list((root / name / "c").rglob("*")) if (root / name / "c").is_dir() else []:
            if f.is_file() and f.relative_to(root).as_posix() not in listed:
                f.unlink()
    for f in [*root.glob(".*.tmp"), *(root / MANIFEST).glob(".*.tmp")]:
        f.unlink(missing_ok=True)


