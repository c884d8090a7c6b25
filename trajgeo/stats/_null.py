"""The group-respecting label-permutation null that every per-point claim is read against.

A per-point statistic (probe accuracy, separability, a margin, a projection) says "the senses are
separable here" only if it beats what the same statistic gives when the sense labels carry no
information. The null permutes labels *between groups*, never within one: examples of one group
(a sentence, or a shared input prefix) are not independent, so their label vector moves as a whole
to another group of the same size. A group whose examples carry different senses cannot be resolved
by its input and is counted (:func:`mixed_groups`), not split.

Three numbers per point come out of a null of shape (n_permutations, n_points):
``null_mean``, ``null_q95`` (the pointwise 95% quantile) and ``p_value`` (the raw permutation
p-value, ``(1 + #{null >= observed}) / (1 + n_permutations)``). One number per curve:
``null_fwer``, the upper 5% critical value of the *maximum over points* of each permuted curve. A point
whose value exceeds ``null_fwer`` is significant with a family-wise error rate of 5% over all points
(the max-statistic method, Westfall and Young 1993), so "the best of 31 points" is paid for. The
critical value is an order statistic of the permuted maxima, chosen so that ``value > null_fwer``
holds exactly when ``p_fwer <= 0.05`` (an interpolated quantile would let the two disagree on a
small, discrete null); with fewer than 19 permutations no value can reach 5% and it is NaN. Across
several curves (words), :func:`holm` adjusts their family-wise p-values.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

__all__ = ["group_permutations", "mixed_groups", "null_table", "critical_value", "holm", "permuted_statistic", "NULL_COLUMNS", "FWER_LEVEL"]

NULL_COLUMNS = ("null_mean", "null_q95", "null_fwer", "p_value", "p_fwer")
FWER_LEVEL = 0.95


def _codes(values: Any, n: int | None = None, what: str = "labels") -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"got {len(arr)} {what} for {n} labels")
    if pd.isna(pd.Series(arr)).any():
        raise ValueError(f"{what} contain missing values")
    return pd.factorize(arr)[0]


def group_permutations(
    labels: Any,
    *,
    groups: Any = None,
    n_permutations: int = 1000,
    random_state: int | None = 0,
) -> np.ndarray:
    """Label permutations that respect groups: whole label vectors move among groups of one size.

    Parameters
    ----------
    labels : array-like of shape (n_examples,)
        The labels to permute (any hashable values).
    groups : array-like of shape (n_examples,), optional
        Examples of one group keep their labels together: a permutation hands each group the label
        vector (in member order) of a group of the same size. Default: every example its own group
        (a plain permutation).
    n_permutations : int
        How many permutations.
    random_state : int or None

    Returns
    -------
    ndarray of shape (n_permutations, n_examples)
        Indices into ``labels``: ``labels[perm[k]]`` is the k-th permuted labelling. Each row is a
        permutation of ``range(n_examples)`` that maps every group onto a group of the same size.

    Examples
    --------
    >>> perm = group_permutations(["a", "a", "b", "b"], groups=[0, 0, 1, 1], n_permutations=3)
    >>> sorted({tuple(p) for p in perm.tolist()}) <= [(0, 1, 2, 3), (2, 3, 0, 1)]
    True
    """
    if isinstance(n_permutations, (bool, np.bool_)) or not isinstance(n_permutations, (int, np.integer)) \
            or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive int, got {n_permutations!r}")
    n = len(np.asarray(labels))
    g = np.arange(n) if groups is None else _codes(groups, n, "groups")
    rng = np.random.default_rng(random_state)
    out = np.empty((int(n_permutations), n), dtype=np.int64)
    order = np.argsort(g, kind="stable")  # members of each group, in example order
    sizes = np.bincount(g)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for size in np.unique(sizes[sizes > 0]):
        ids = np.flatnonzero(sizes == size)  # groups of this size
        members = order[starts[ids][:, None] + np.arange(size)]  # (m, size)
        # for each permutation, group ids[j] receives the label vector of group ids[shuffled[j]]
        shuffled = rng.permuted(np.broadcast_to(np.arange(len(ids)), (int(n_permutations), len(ids))), axis=1)
        out[:, members.reshape(-1)] = members[shuffled].reshape(int(n_permutations), -1)
    return out


def mixed_groups(labels: Any, groups: Any) -> np.ndarray:
    """The groups whose examples carry more than one label (unresolvable from their shared input).

    Parameters
    ----------
    labels, groups : array-like of shape (n_examples,)

    Returns
    -------
    ndarray of the group values (as given) that hold two or more distinct labels, sorted by first
    appearance.
    """
    df = pd.DataFrame({"label": np.asarray(labels), "group": np.asarray(groups)})
    n_labels = df.groupby("group", sort=False)["label"].nunique()
    return n_labels.index[n_labels.to_numpy() > 1].to_numpy()


def critical_value(null: Any, level: float = FWER_LEVEL) -> float:
    """The smallest threshold whose exceedance is significant at ``1 - level`` under a permutation null.

    With the permutation p-value ``(1 + #{null >= v}) / (1 + n)``, ``v`` is significant at
    ``alpha = 1 - level`` exactly when fewer than ``k = floor(alpha * (n + 1))`` null values reach it,
    that is when ``v`` exceeds the ``k``-th largest null value. That order statistic is returned, so a
    comparison ``v > critical_value(null)`` and the p-value never disagree.

    Parameters
    ----------
    null : array-like of shape (n_permutations,)
        The statistic under each permutation (NaN entries are ignored).
    level : float
        ``1 - alpha`` (default :data:`FWER_LEVEL`, 0.95).

    Returns
    -------
    float; NaN when the null is empty or too small for any value to reach ``alpha`` (``k < 1``).
    """
    values = np.asarray(null, dtype=np.float64).reshape(-1)
    values = values[~np.isnan(values)]
    k = int(np.floor((1.0 - level) * (len(values) + 1) + 1e-9))
    if k < 1:
        return float("nan")
    return float(np.partition(values, len(values) - k)[len(values) - k])


def null_table(
    observed: Any,
    null: Any,
    *,
    points: Sequence[int] | None = None,
    alternative: str = "greater",
) -> pd.DataFrame:
    """Read a per-point statistic against its permutation null.

    Parameters
    ----------
    observed : array-like of shape (n_points,)
        The statistic with the true labels.
    null : array-like of shape (n_permutations, n_points)
        The same statistic under each permutation (NaN entries are ignored).
    points : sequence of int, optional
        The point index of each column (default ``0..n_points-1``).
    alternative : {"greater", "two-sided"}
        "greater": large values are the claim (accuracy, separability). "two-sided": the absolute
        deviation from the null mean is compared (projections that may go either way).

    Returns
    -------
    DataFrame with one row per point and columns ``point, value, null_mean, null_q95, null_fwer,
    p_value, p_fwer``. ``null_q95`` is the pointwise 95% quantile (a band to draw); ``null_fwer`` the
    upper 5% critical value of the per-permutation maximum over points (:func:`critical_value`; the
    same value on every row; ``value > null_fwer`` exactly when ``p_fwer <= 0.05``); ``p_fwer`` the
    family-wise adjusted p-value of each point, ``(1 + #{max_null >= observed}) / (1 + n)``.
    With ``alternative="two-sided"``, the quantiles are of ``|null - null_mean|`` and are added to
    ``null_mean`` (the band is ``null_mean -/+ (null_q95 - null_mean)``).
    """
    obs = np.asarray(observed, dtype=np.float64).reshape(-1)
    nul = np.asarray(null, dtype=np.float64)
    if nul.ndim != 2 or nul.shape[1] != len(obs):
        raise ValueError(f"null must have shape (n_permutations, {len(obs)}), got {nul.shape}")
    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"alternative must be 'greater' or 'two-sided', got {alternative!r}")
    pts = np.arange(len(obs)) if points is None else np.asarray(points, dtype=int)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        # a point where the statistic is undefined (all NaN) gives NaN, not a RuntimeWarning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(nul, axis=0)
        if alternative == "two-sided":
            stat_obs, stat_null, shift = np.abs(obs - mean), np.abs(nul - mean), mean
        else:
            stat_obs, stat_null, shift = obs, nul, 0.0
        q95 = np.nanquantile(stat_null, FWER_LEVEL, axis=0) + shift
        maxima = np.nanmax(np.where(np.isnan(stat_null), -np.inf, stat_null), axis=1)
        maxima = maxima[np.isfinite(maxima)]
        threshold = critical_value(maxima)
        valid = (~np.isnan(stat_null)).sum(0)
        p = (1.0 + (stat_null >= stat_obs[None]).sum(0)) / (1.0 + valid)
        p_fwer = (1.0 + (maxima[:, None] >= stat_obs[None]).sum(0)) / (1.0 + len(maxima))
    nan_obs = np.isnan(obs)
    p[nan_obs] = np.nan
    p_fwer[nan_obs] = np.nan
    # two-sided: the thresholds are on |deviation from the null mean|, reported as upper band edges
    fwer = threshold + shift
    return pd.DataFrame({"point": pts, "value": obs, "null_mean": mean, "null_q95": q95,
                         "null_fwer": np.broadcast_to(fwer, obs.shape).astype(np.float64), "p_value": p,
                         "p_fwer": p_fwer})


def holm(p_values: Any) -> np.ndarray:
    """Holm's step-down adjustment of several p-values (family-wise error over them).

    Parameters
    ----------
    p_values : array-like of shape (n,)
        NaN entries stay NaN and do not count toward the family.

    Returns
    -------
    ndarray of shape (n,), the adjusted p-values (monotone in the sorted order, capped at 1).
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if not len(ok):
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def permuted_statistic(
    statistic: Callable[[np.ndarray], np.ndarray],
    labels: Any,
    *,
    groups: Any = None,
    n_permutations: int = 1000,
    random_state: int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The observed statistic and its null, for a statistic of one labelling at a time.

    The generic (slow) path: ``statistic(labels)`` is called once with the true labels and once
    per permutation. Statistics that can score many labellings at once (the ridge probe shares its
    solves across permutations) should call :func:`group_permutations` themselves.

    Parameters
    ----------
    statistic : callable
        Maps labels of shape (n_examples,) to per-point values of shape (n_points,).
    labels, groups, n_permutations, random_state
        As in :func:`group_permutations`.

    Returns
    -------
    observed : ndarray of shape (n_points,)
    null : ndarray of shape (n_permutations, n_points)
    """
    y = np.asarray(labels)
    observed = np.asarray(statistic(y), dtype=np.float64)
    perms = group_permutations(y, groups=groups, n_permutations=n_permutations, random_state=random_state)
    null = np.stack([np.asarray(statistic(y[p]), dtype=np.float64) for p in perms])
    return observed, null
