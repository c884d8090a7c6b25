"""Sampling example sets: a stratified subsample that keeps every (word, sense) cell."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["stratified_sample"]


def stratified_sample(df: pd.DataFrame, n: int, *, strata: str | Sequence[str] = ("word", "sense"),
                      random_state: int = 0) -> pd.DataFrame:
    """About ``n`` rows, keeping the proportions of the ``strata`` cells.

    Each non-empty cell keeps ``round(len(cell) * n / len(df))`` rows, at least one, so a rare sense
    is never dropped; the total is ``n`` up to that rounding (it can exceed ``n`` by at most the
    number of cells).

    Parameters
    ----------
    df : DataFrame of examples
    n : int >= 1
        Target number of rows; a frame of at most ``n`` rows is returned as it is.
    strata : str or sequence of str
        Columns whose value combinations define the cells (those absent are ignored; with none
        present, a plain random sample of ``n`` rows).
    random_state : int
        Seeds the draw within every cell.

    Returns
    -------
    DataFrame
        With a fresh index. Stratified: the chosen rows in their original order, an ``example``
        column renumbered ``0..len-1`` (the contract's ids). Unstratified: in drawn order, ids kept.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(df) <= n:
        return df
    cols = [c for c in ((strata,) if isinstance(strata, str) else strata) if c in df.columns]
    if not cols:
        return df.sample(n=n, random_state=random_state).reset_index(drop=True)
    frac = n / len(df)
    parts = [g.sample(n=max(1, int(round(len(g) * frac))), random_state=random_state)
             for _, g in df.groupby(cols, sort=True)]
    out = pd.concat(parts).sort_index().reset_index(drop=True)
    if "example" in out:
        out["example"] = np.arange(len(out))
    return out
