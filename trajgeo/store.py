"""The trajgeo store on disk: a Zarr group written chunk by chunk and made visible only when complete.

A store holds ``states`` (n_examples, n_points, d_model), ``components/<name>`` and ``aux/<name>``
arrays chunked by examples, a ``done`` flag per chunk and the metadata table as ``meta.parquet``.
:class:`StoreWriter` writes it to ``<path>.partial`` and renames it into place once every chunk is
done, so nothing half-written ever looks finished; :func:`trajgeo.load` reads it back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

__all__ = ["StoreWriter"]

_FORMAT_VERSION = 1


def _version() -> str:
    from trajgeo import __version__

    return __version__


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class StoreWriter:
    """Streams chunks of examples into a Zarr store and makes it visible only when complete.

    Each chunk covers a contiguous range of ``chunk_size`` examples and matches the Zarr chunking,
    so chunks can be written in any order, by several processes, and a run can resume by skipping
    the chunks already marked done.
    """

    def __init__(self, path: Path, group: Any, chunk_size: int, n_examples: int) -> None:
        self.path = path
        self.partial = _partial(path)
        self.group = group
        self.chunk_size = chunk_size
        self.n_examples = n_examples

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        shapes: Mapping[str, tuple[int, ...]],
        meta: pd.DataFrame,
        attrs: Mapping[str, Any],
        dtype: str = "float32",
        chunk_size: int = 256,
        overwrite: bool = False,
        resume_key: str | None = None,
    ) -> "StoreWriter":
        """Create ``<path>.partial``, or reopen it when its ``resume_key`` matches (resume).

        Raises ``FileExistsError`` if a complete store already exists at ``path`` and not
        ``overwrite``.
        """
        import zarr

        path = Path(path)
        partial = _partial(path)
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"a store already exists at {path}; pass overwrite=True to replace it")
        n = len(meta)
        if partial.exists() and resume_key is not None:
            try:
                group = zarr.open_group(str(partial), mode="r+")
                if group.attrs.get("resume_key") == resume_key and "done" in group:
                    return cls(path, group, int(group.attrs["chunk_size"]), n)
            except Exception:  # unreadable leftovers of a crash: start over
                pass
        if partial.exists():
            shutil.rmtree(partial)
        partial.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(partial), mode="w")
        chunk_size = max(1, int(chunk_size))
        for name, shape in shapes.items():
            group.create_array(
                name,
                shape=shape,
                chunks=(chunk_size,) + tuple(shape[1:]),
                dtype=dtype,
                fill_value=np.nan,
            )
        n_chunks = max(1, -(-n // chunk_size))
        group.create_array("done", shape=(n_chunks,), chunks=(n_chunks,), dtype=bool, fill_value=False)
        meta.to_parquet(partial / "meta.parquet", index=False)
        group.attrs.update(
            {
                "format": "trajgeo",
                "format_version": _FORMAT_VERSION,
                "trajgeo_version": _version(),
                "chunk_size": chunk_size,
                "resume_key": resume_key,
                "arrays": sorted(shapes),
                **json.loads(json.dumps(dict(attrs), default=str)),
            }
        )
        return cls(path, group, chunk_size, n)

    def chunk_bounds(self) -> list[tuple[int, int]]:
        cs = self.chunk_size
        return [(s, min(s + cs, self.n_examples)) for s in range(0, max(self.n_examples, 1), cs)]

    def done_chunks(self) -> np.ndarray:
        return np.asarray(self.group["done"][:], dtype=bool)

    def write_chunk(self, i: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write all arrays of chunk ``i`` and then mark it done (the mark is the commit)."""
        start, stop = self.chunk_bounds()[i]
        for name, arr in arrays.items():
            target = self.group[name]
            if arr.shape[0] != stop - start:
                raise ValueError(f"chunk {i} of {name!r} has {arr.shape[0]} rows, expected {stop - start}")
            target[start:stop] = arr.astype(target.dtype, copy=False)
        done = self.group["done"]
        done[i] = True

    @classmethod
    def join(cls, path: str | os.PathLike, resume_key: str, timeout: float = 600.0) -> "StoreWriter":
        """Open the ``<path>.partial`` that another process (rank 0) creates with this ``resume_key``.

        Raises ``TimeoutError`` if it does not appear within ``timeout`` seconds.
        """
        import zarr

        path = Path(path)
        partial = _partial(path)
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                group = zarr.open_group(str(partial), mode="r+")
                if group.attrs.get("resume_key") == resume_key and "done" in group:
                    return cls(path, group, int(group.attrs["chunk_size"]), group["states"].shape[0])
            except Exception:  # not there yet, or half-created: try again
                pass
            time.sleep(0.5)
        raise TimeoutError(f"rank could not open {partial}: rank 0 did not create it within {timeout:.0f} s")

    def wait_until_done(self, timeout: float = 3600.0) -> None:
        """Block until every chunk is marked done (by whichever process writes it)."""
        t0 = time.time()
        while not self.done_chunks().all():
            if time.time() - t0 > timeout:
                raise TimeoutError("other ranks did not finish their chunks in time")
            time.sleep(0.5)

    def finalize(self, fingerprint: str | None = None) -> Path:
        """Check every chunk is done and atomically rename ``<path>.partial`` to ``<path>``."""
        missing = np.flatnonzero(~self.done_chunks())
        if len(missing):
            raise RuntimeError(f"cannot finalize {self.path}: chunks {missing.tolist()} are not written")
        self.group.attrs.update({"complete": True, "fingerprint": fingerprint or _dir_fingerprint(self.partial)})
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.partial, self.path)
        return self.path


def _dir_fingerprint(path: Path) -> str:
    h = hashlib.blake2b(digest_size=12)
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.name != "zarr.json":
            h.update(str(f.relative_to(path)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()
