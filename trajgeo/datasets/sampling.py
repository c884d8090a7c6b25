"""Sampling example sets: a stratified subsample of exactly ``n`` rows that keeps every (word, sense) cell."""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["stratified_sample"]


def _check_n(n: object, name: str = "n") -> int:
    """``n`` as an int >= 1; floats, strings and booleans are refused, not coerced."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be a positive int (a number of rows), got {n!r} ({type(n).__name__})")
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return int(n)


def _allocate(sizes: np.ndarray, n: int, low: np.ndarray | int = 1) -> np.ndarray:
    """Rows per cell: integers in ``[low, size]`` summing to ``n``, closest to the proportional shares.

    Closest in squared deviation from the shares ``n * size / sum(sizes)``. The objective is separable
    and convex, so starting from the shares rounded down (within the bounds) and moving one row at a
    time to (or from) the cell where it changes the objective least reaches the optimum; ties go to
    the larger cell, then to the earlier one.

    Requires ``sum(low) <= n <= sum(sizes)`` and ``low <= sizes``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    low = np.broadcast_to(np.asarray(low, dtype=np.int64), sizes.shape)
    share = n * sizes / sizes.sum()
    alloc = np.clip(np.floor(share).astype(np.int64), low, sizes)
    order = np.lexsort((np.arange(len(sizes)), -sizes))  # larger cell first, then earlier
    while alloc.sum() < n:  # add where alloc is furthest below its share: cost 2 (alloc - share) + 1
        gap = np.where(alloc < sizes, alloc - share, np.inf)
        best = order[np.argmin(gap[order])]
        alloc[best] += 1
    while alloc.sum() > n:  # remove where alloc is furthest above its share: cost 1 - 2 (alloc - share)
        gap = np.where(alloc > low, alloc - share, -np.inf)
        best = order[np.argmax(gap[order])]
        alloc[best] -= 1
    return alloc


def stratified_sample(df: pd.DataFrame, n: int, *, strata: str | Sequence[str] = ("word", "sense"),
                      min_per_cell: int = 1, random_state: int = 0) -> pd.DataFrame:
    """Exactly ``n`` rows (all of them if there are at most ``n``), keeping every ``strata`` cell.

    Every cell (a combination of the ``strata`` values that occurs; a missing value is a value of its
    own) keeps at least ``min_per_cell`` rows (all of its rows if it has fewer), so a rare sense is
    never dropped; the cell sizes are the integers closest to the proportional shares
    ``n * len(cell) / len(df)`` (least squares) within those bounds that add up to ``n``. A sample
    too small to keep that many rows of every cell is an error, not a silently larger sample.

    Parameters
    ----------
    df : DataFrame of examples
    n : int >= 1
        Number of rows; a frame of at most ``n`` rows is returned as it is. Floats, strings and
        booleans are refused (no silent coercion).
    strata : str or sequence of str
        Columns whose value combinations define the cells (those absent are ignored; with none
        present, a plain random sample of ``n`` rows).
    min_per_cell : int >= 1
        Rows every cell keeps at least (or all of its rows): e.g. the number of cross-validation
        folds, so that a rare sense keeps one example per fold.
    random_state : int
        Seeds the draw within every cell.

    Returns
    -------
    DataFrame
        With a fresh index. Stratified: the chosen rows in their original order, an ``example``
        column renumbered ``0..len-1`` (the contract's ids). Unstratified: in drawn order, ids kept.

    Raises
    ------
    TypeError
        ``n`` is not an int.
    ValueError
        ``n < 1``, ``df`` is empty, or ``n`` is smaller than the number of cells (times
        ``min_per_cell``, for cells that large; the message says how many rows are needed).
    """
    n = _check_n(n)
    min_per_cell = _check_n(min_per_cell, "min_per_cell")
    if len(df) == 0:
        raise ValueError("no examples to sample from: the frame is empty (an empty selection?)")
    if len(df) <= n:
        return df
    cols = [c for c in ((strata,) if isinstance(strata, str) else strata) if c in df.columns]
    if not cols:
        return df.sample(n=n, random_state=random_state).reset_index(drop=True)
    groups = [g for _, g in df.groupby(cols, sort=True, dropna=False)]
    sizes = np.array([len(g) for g in groups])
    low = np.minimum(sizes, min_per_cell)
    if n < low.sum():
        keep = "one row" if min_per_cell == 1 else f"min_per_cell={min_per_cell} rows (or all)"
        raise ValueError(
            f"n={n} is smaller than the {len(groups)} cells of {', '.join(cols)} in these examples, and a "
            f"stratified sample keeps {keep} of every cell: give n >= {int(low.sum())}, fewer strata, or "
            "strata=() for a plain random sample")
    alloc = _allocate(sizes, n, low)
    parts = [g.sample(n=int(k), random_state=random_state) for g, k in zip(groups, alloc)]
    out = pd.concat(parts).sort_index().reset_index(drop=True)
    if "example" in out:
        out["example"] = np.arange(len(out))
    return out
