"""Table I/O of the standard pipeline: one parquet file per table, each written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

__all__ = ["write_tables", "read_tables", "check_writable"]


def check_writable(folder: str | os.PathLike, *, what: str) -> Path:
    """Refuse, before any work, a folder that cannot be written: a file at its path, or one without write
    access (tried by writing and removing a probe file). Creates the folder; returns its path.

    Parameters
    ----------
    folder : path
    what : str
        What the folder is for, as the errors name it (e.g. ``"a report folder"``).
    """
    import uuid

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not {what}; nothing was run: choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"cannot write {what} {folder}: {exc.strerror or exc}; nothing was run") from None
    return folder


def write_tables(tables: Mapping[str, pd.DataFrame], out: str | os.PathLike) -> Path:
    """Write each table as ``<out>/<name>.parquet``, each file atomically (temp file + rename).

    Parameters
    ----------
    tables : mapping of name -> DataFrame
    out : path
        The folder (created if missing).

    Returns
    -------
    Path of the folder.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".parquet")
        os.close(fd)
        try:
            _parquet_safe(df).to_parquet(tmp, index=False)
            os.replace(tmp, out / f"{name}.parquet")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return out


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    # object columns mixing None and numbers/strings break pyarrow's type inference: store them as text
    df = df.copy()
    df.attrs = {}  # a table is its rows and columns: whatever a caller left in attrs stays out of the file
    for c in df.columns:
        if df[c].dtype == object:
            kinds = {type(v) for v in df[c].dropna()}
            if len(kinds) > 1:
                df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    return df


def read_tables(folder: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Read every ``*.parquet`` table of a folder written by :func:`write_tables` (or ``analyze``).

    Returns
    -------
    dict of name -> DataFrame, in name order.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no tables folder at {folder}")
    return {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}
