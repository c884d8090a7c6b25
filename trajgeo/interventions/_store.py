"""A sweep's partial results on disk: one Parquet file per chunk of pairs, written atomically, under a folder
keyed by everything the results depend on, so that an interrupted sweep resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

_KEY_FILE = "sweep.json"


def sweep_key(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        if isinstance(p, pd.DataFrame):
            h.update(pd.util.hash_pandas_object(p.astype(str), index=False).to_numpy().tobytes())
            h.update(repr(list(p.columns)).encode())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"|")
    return h.hexdigest()


class ChunkStore:
    """``<path>/sweep.json`` (the key and the number of chunks) and ``<table>-<chunk>.parquet`` files.

    A chunk counts as done when its last table is in place; every file is written to a temporary name and
    renamed, so a crash leaves either a whole file or none.
    """

    def __init__(self, path: Any, key: str, n_chunks: int, tables: tuple[str, ...], *, overwrite: bool = False,
                 what: str = "sweep") -> None:
        self.path = Path(path)
        self.tables = tables
        self.n_chunks = n_chunks
        meta = self.path / _KEY_FILE
        if self.path.exists() and not meta.exists():
            if any(self.path.iterdir()):
                raise FileExistsError(f"{self.path} exists and is not a trajgeo {what} store; give another path")
        if meta.exists():
            old = json.loads(meta.read_text())
            if old.get("key") != key:
                if not overwrite:
                    raise FileExistsError(f"the store at {self.path} holds another {what} (other model, pairs, "
                                          "readout or options); pass overwrite=True to replace it, or another path")
                shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        if not meta.exists():
            self._atomic_write(meta, lambda tmp: tmp.write_text(json.dumps({"key": key, "n_chunks": n_chunks})))

    def _file(self, table: str, i: int) -> Path:
        return self.path / f"{table}-{i:05d}.parquet"

    @staticmethod
    def _atomic_write(target: Path, write: Any) -> None:
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            write(tmp)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()

    def done(self, i: int) -> bool:
        return self._file(self.tables[-1], i).exists()

    def write(self, i: int, frames: dict[str, pd.DataFrame]) -> None:
        for table in self.tables:  # the last table marks the chunk done
            self._atomic_write(self._file(table, i), lambda tmp, t=table: frames[t].to_parquet(tmp, index=False))

    def read(self, table: str) -> pd.DataFrame:
        parts = [pd.read_parquet(self._file(table, i)) for i in range(self.n_chunks)]
        return pd.concat(parts, ignore_index=True)
