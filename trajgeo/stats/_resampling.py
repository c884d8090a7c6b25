"""Uncertainty for per-point curves: cluster bootstrap intervals, paired sign-flip permutation tests
and paired differences between two models or conditions.

The frame functions take a long DataFrame (as returned by the metric functions) and resample *units*:
examples by default, or any coarser column (``group`` for sentences, ``word``) when rows of one unit
are not independent. Resampling is vectorised: one multinomial weight matrix (n_boot, n_units) or
one sign matrix (n_permutations, n_units) for all cells at once.

This is the one bootstrap of the package: :func:`bootstrap_weights` (cluster-bootstrap replicate
weights) and :func:`percentile_interval` (the interval of a set of replicates) are what
:func:`bootstrap_ci`, the probes and the analysis scripts all resample and summarise with.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["bootstrap_ci", "bootstrap_weights", "percentile_interval", "permutation_test", "paired_difference"]


def _as_tuple(by: str | Sequence[str] | None) -> tuple[str, ...]:
    if by is None:
        return ()
    return (by,) if isinstance(by, str) else tuple(by)


def _check(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} needs a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{what}: DataFrame has no column(s) {missing}; columns are {list(df.columns)}")


def _check_metric_mix(df: pd.DataFrame, by: tuple[str, ...], what: str) -> None:
    # Averaging rows of different metrics (e.g. "cos" and "margin") is never meant.
    for col in ("metric", "to_sense"):
        if col in df.columns and col not in by and df[col].nunique(dropna=False) > 1:
            raise ValueError(
                f"{what}: the rows mix several values of {col!r} ({sorted(map(str, df[col].unique()))[:5]}...); "
                f"filter them first or add {col!r} to by="
            )


def _unit_cells(
    df: pd.DataFrame, value: str, by: tuple[str, ...], unit: str
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Per-unit sums and counts of ``value`` in every ``by`` cell.

    Returns the cells (a DataFrame of the by columns, one row per cell), sums and counts, both
    of shape (n_units, n_cells); a unit absent from a cell has count 0.
    """
    data = df.loc[df[value].notna(), [*by, unit, value]]
    if data.empty:
        raise ValueError(f"no non-NaN values in column {value!r}")
    if by:
        cell_index = pd.MultiIndex.from_frame(data[list(by)])
        cell_codes, cells = pd.factorize(cell_index, sort=True)
        cells_df = pd.DataFrame(list(cells), columns=list(by))
    else:
        cell_codes = np.zeros(len(data), dtype=int)
        cells_df = pd.DataFrame(index=[0])
    unit_codes, _ = pd.factorize(data[unit], sort=True)
    n_units, n_cells = unit_codes.max() + 1, len(cells_df)
    flat = unit_codes * n_cells + cell_codes
    vals = data[value].to_numpy(dtype=np.float64)
    sums = np.bincount(flat, weights=vals, minlength=n_units * n_cells).reshape(n_units, n_cells)
    counts = np.bincount(flat, minlength=n_units * n_cells).reshape(n_units, n_cells).astype(np.float64)
    return cells_df.reset_index(drop=True), sums, counts


def bootstrap_weights(
    units: Sequence[Any] | np.ndarray,
    n_boot: int = 1000,
    random_state: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """Cluster-bootstrap replicate weights: how often each row's unit is drawn in each replicate.

    A replicate draws as many units as there are, with replacement; every row keeps the count of
    its unit, so rows of one unit (examples of one sentence) move together. A weighted mean
    ``w @ values / w.sum(1)`` is then the replicate's mean.

    Parameters
    ----------
    units : array-like of shape (n_rows,)
        The unit of each row (group codes, example ids, any hashable labels). Units are numbered
        in order of first appearance; with ``units = np.arange(n)`` every row is its own unit.
    n_boot : int
        Replicates.
    random_state : int, Generator or None

    Returns
    -------
    ndarray of shape (n_boot, n_rows), float64
        Non-negative integer counts; each replicate's counts over *units* sum to the number of units.

    Examples
    --------
    >>> w = bootstrap_weights(["a", "a", "b"], n_boot=4, random_state=0)
    >>> w.shape, bool((w[:, 0] == w[:, 1]).all())
    ((4, 3), True)
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    units = np.asarray(units)
    if units.ndim != 1 or len(units) == 0:
        raise ValueError(f"units must be a non-empty 1-D array, got shape {units.shape}")
    if pd.isna(pd.Series(units)).any():
        raise ValueError(f"units are missing for rows {np.flatnonzero(pd.isna(pd.Series(units)))[:10].tolist()}")
    codes, uniq = pd.factorize(units)
    n_units = len(uniq)
    rng = np.random.default_rng(random_state)
    counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot)
    return counts[:, codes].astype(np.float64)


def percentile_interval(replicates: np.ndarray, ci: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap replicates, per column; NaN replicates are ignored.

    Parameters
    ----------
    replicates : ndarray of shape (n_boot, ...)
        One replicate statistic per row (e.g. a curve over points per row).
    ci : float
        Coverage, in (0, 1).

    Returns
    -------
    low, high : ndarrays of shape replicates.shape[1:]
        NaN where every replicate is NaN.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    b = np.asarray(replicates, dtype=np.float64)
    alpha = (1 - ci) / 2
    low = np.full(b.shape[1:], np.nan)
    high = np.full(b.shape[1:], np.nan)
    ok = ~np.isnan(b).all(axis=0)  # nanquantile warns on all-NaN columns; they stay NaN
    if ok.any():
        low[ok], high[ok] = np.nanquantile(b[:, ok], [alpha, 1 - alpha], axis=0)
    return low, high


def bootstrap_ci(
    df: pd.DataFrame,
    value: str = "value",
    by: str | Sequence[str] | None = ("point",),
    unit: str = "example",
    n_boot: int = 1000,
    ci: float = 0.95,
    random_state: int | None = 0,
) -> pd.DataFrame:
    """Percentile bootstrap confidence intervals of a mean, resampling units.

    The estimate in each ``by`` cell is the mean of all its rows; a bootstrap sample draws units
    with replacement (the same draw for every cell, so a curve over points is resampled as a whole)
    and takes the mean of the rows of the drawn units. With ``unit="group"`` or ``"word"`` this is a
    cluster bootstrap: correlated rows of one sentence or word move together.

    Parameters
    ----------
    df : DataFrame
        Long form, e.g. from :func:`trajgeo.senses.curves` filtered to one metric.
    value : str
        Column with the numbers (NaN rows are dropped).
    by : str or sequence of str
        Columns defining a cell (one interval each), e.g. ``("point",)`` or ``("point", "sense")``.
        If the rows mix several ``metric`` (or ``to_sense``) values, that column must be in ``by``.
    unit : str
        Column identifying the resampled unit (``"example"``, ``"group"``, ``"word"``...).
    n_boot : int
        Bootstrap samples.
    ci : float
        Coverage of the interval, in (0, 1).
    random_state : int or None

    Returns
    -------
    DataFrame with columns ``*by, mean, ci_low, ci_high, n`` (n = units with data in the cell),
    one row per cell, sorted by ``by``.

    Examples
    --------
    >>> import pandas as pd, trajgeo as tg
    >>> df = pd.DataFrame({"example": [0, 1, 2, 3], "point": 0, "value": [1.0, 2.0, 3.0, 4.0]})
    >>> tg.stats.bootstrap_ci(df, n_boot=200)[["point", "mean", "n"]].to_dict("records")
    [{'point': 0, 'mean': 2.5, 'n': 4}]
    """
    by = _as_tuple(by)
    _check(df, [value, *by, unit], "bootstrap_ci")
    _check_metric_mix(df, by, "bootstrap_ci")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    cells, sums, counts = _unit_cells(df, value, by, unit)
    w = bootstrap_weights(np.arange(sums.shape[0]), n_boot, random_state)  # rows of sums are the units
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = (w @ sums) / (w @ counts)  # (n_boot, n_cells); NaN if a cell's units were all left out
        mean = sums.sum(0) / counts.sum(0)
    low, high = percentile_interval(boot, ci)
    out = cells.copy() if by else pd.DataFrame(index=[0])
    out["mean"] = mean
    out["ci_low"] = low
    out["ci_high"] = high
    out["n"] = (counts > 0).sum(0)
    return out.reset_index(drop=True)


def _paired_diffs(
    df: pd.DataFrame, a: Any, b: Any, column: str, value: str, by: tuple[str, ...], unit: str, what: str
) -> pd.DataFrame:
    """Per (by cell, unit): mean value at a, at b, and their difference; units with both only."""
    _check(df, [value, column, *by, unit], what)
    _check_metric_mix(df, (*by, column), what)
    levels = set(df[column].unique())
    for lvl in (a, b):
        if lvl not in levels:
            raise KeyError(f"{what}: {column}={lvl!r} is not in the data; it has {sorted(map(str, levels))[:10]}")
    sub = df[df[column].isin([a, b]) & df[value].notna()]
    wide = sub.pivot_table(index=[*by, unit], columns=column, values=value, aggfunc="mean", observed=True)
    wide = wide.dropna(subset=[a, b]).reset_index()
    if wide.empty:
        raise ValueError(f"{what}: no {unit} has values at both {column}={a!r} and {column}={b!r}")
    wide = wide.rename(columns={a: "_a", b: "_b"})
    wide["_diff"] = wide["_a"] - wide["_b"]
    return wide


def _signflip_pvalue(d: np.ndarray, alternative: str, n_permutations: int, rng: np.random.Generator) -> float:
    """Sign-flip p-value of mean(d); the observed statistic counts as one permutation."""
    obs = d.mean()
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))  # ties with the observed value count as extreme
    hits = 0
    for start in range(0, n_permutations, 2000):  # bounded (chunk, n_units) sign matrices
        m = min(2000, n_permutations - start)
        null = rng.choice(np.array([-1.0, 1.0]), size=(m, len(d))) @ d / len(d)
        if alternative == "greater":
            hits += int(np.sum(null >= obs - tol))
        elif alternative == "less":
            hits += int(np.sum(null <= obs + tol))
        else:
            hits += int(np.sum(np.abs(null) >= abs(obs) - tol))
    return (1 + hits) / (1 + n_permutations)


def permutation_test(
    df: pd.DataFrame,
    a: Any,
    b: Any,
    column: str = "point",
    value: str = "value",
    by: str | Sequence[str] | None = None,
    unit: str = "example",
    alternative: str = "greater",
    n_permutations: int = 10000,
    random_state: int | None = 0,
) -> pd.DataFrame:
    """Paired sign-flip permutation test that ``value`` is larger at ``column == a`` than at ``b``.

    For each unit (example, or group) the difference d = mean value at a - mean value at b is formed
    (units lacking either are dropped). Under the null of no difference each d is symmetric about 0,
    so flipping signs at random gives the null distribution of the mean difference. The p-value
    counts the observed statistic as one of the permutations, (1 + #{T* >= T}) / (1 + n_permutations),
    so it is never 0.

    Parameters
    ----------
    df : DataFrame
        Long form, e.g. the ``"margin"`` rows of :func:`trajgeo.senses.curves`.
    a, b
        The two levels of ``column`` to compare, e.g. points ``24`` and ``3`` for "the margin at
        point 24 is larger than at point 3", or two models / conditions.
    column : str
        The column holding ``a`` and ``b`` (``"point"``, ``"model"``, ``"cue_position"``...).
    value, unit : str
        The numbers, and the paired unit (rows of one unit are averaged per level first).
    by : str or sequence of str, optional
        One test per cell of these columns (e.g. ``"word"``).
    alternative : {"greater", "less", "two-sided"}
    n_permutations : int
    random_state : int or None

    Returns
    -------
    DataFrame with columns ``*by, a, b, statistic, p_value, n`` (statistic = mean difference a - b
    over the n units), one row per cell.
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    by = _as_tuple(by)
    wide = _paired_diffs(df, a, b, column, value, by, unit, "permutation_test")
    rng = np.random.default_rng(random_state)
    rows = []
    groups = wide.groupby(list(by), sort=True) if by else [((), wide)]
    for key, g in groups:  # one test per cell (few cells); permutations are vectorised
        d = g["_diff"].to_numpy(dtype=np.float64)
        obs = d.mean()
        p_value = _signflip_pvalue(d, alternative, n_permutations, rng)
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row.update(a=a, b=b, statistic=obs, p_value=p_value, n=len(d))
        rows.append(row)
    return pd.DataFrame(rows, columns=[*by, "a", "b", "statistic", "p_value", "n"])


def paired_difference(
    df: pd.DataFrame,
    a: Any,
    b: Any,
    column: str = "model",
    value: str = "value",
    by: str | Sequence[str] | None = ("point",),
    unit: str = "example",
    n_boot: int = 1000,
    ci: float = 0.95,
    n_permutations: int = 10000,
    random_state: int | None = 0,
) -> pd.DataFrame:
    """Paired comparison of two models or conditions, per cell, with a bootstrap CI and a p-value.

    Per unit and cell the difference d = value at ``column == a`` minus value at ``b`` is formed;
    its mean gets a bootstrap interval over units (:func:`bootstrap_ci`, the same units drawn for
    all cells) and a two-sided sign-flip p-value (:func:`permutation_test`). Use ``unit="example"``
    when both models saw the same examples, ``unit="group"`` for minimal pairs (cue before vs after
    the target in sentences that share a group).

    Parameters
    ----------
    df : DataFrame
        Long form with a ``column`` telling the two models / conditions apart.
    a, b
        The two levels of ``column``.
    column, value, unit : str
    by : str or sequence of str
        Cells, e.g. ``("point",)``.
    n_boot, ci, n_permutations, random_state
        As in :func:`bootstrap_ci` and :func:`permutation_test`.

    Returns
    -------
    DataFrame with columns ``*by, mean_a, mean_b, difference, ci_low, ci_high, p_value, n``.
    """
    by = _as_tuple(by)
    wide = _paired_diffs(df, a, b, column, value, by, unit, "paired_difference")
    boot = bootstrap_ci(wide, value="_diff", by=by, unit=unit, n_boot=n_boot, ci=ci, random_state=random_state)
    rng = np.random.default_rng(random_state)
    cells = wide.groupby(list(by), sort=True)["_diff"] if by else None
    pvals = (
        cells.apply(lambda d: _signflip_pvalue(d.to_numpy(np.float64), "two-sided", n_permutations, rng))
        .rename("p_value").reset_index()
        if by else pd.DataFrame({"p_value": [_signflip_pvalue(wide["_diff"].to_numpy(np.float64), "two-sided",
                                                              n_permutations, rng)]})
    )
    means = wide.groupby(list(by), sort=True)[["_a", "_b"]].mean().reset_index() if by else pd.DataFrame(
        {"_a": [wide["_a"].mean()], "_b": [wide["_b"].mean()]}
    )
    out = boot.rename(columns={"mean": "difference"})
    if by:
        out = out.merge(means, on=list(by)).merge(pvals, on=list(by))
    else:
        out = pd.concat([out, means], axis=1)
        out["p_value"] = pvals["p_value"].to_numpy()
    out = out.rename(columns={"_a": "mean_a", "_b": "mean_b"})
    return out[[*by, "mean_a", "mean_b", "difference", "ci_low", "ci_high", "p_value", "n"]]
