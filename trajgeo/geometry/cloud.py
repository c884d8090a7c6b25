"""Estimators on one cloud of vectors: the maximum explainable variance and the TwoNN intrinsic dimension."""

from __future__ import annotations

import warnings

import numpy as np

from trajgeo._api import changed_signature
from trajgeo.geometry._common import first_distinct, row_keys, threads_for

__all__ = ["twonn_dimension", "TWONN_MIN_DISTINCT"]

# TwoNN's estimate is (N - 1) / sum of N exponential variables of rate d, so its relative standard
# error is about 1 / sqrt(N): with 100 distinct rows the 95% interval is about +-20%. Below that the
# number says more about N than about the cloud (12 distinct embeddings at point 0 gave "52").
TWONN_MIN_DISTINCT = 100

_EIGSH_MIN = 96  # below this Gram/scatter size a full (batched) eigvalsh is cheaper than Lanczos


def _top_eigenvalue(g: np.ndarray) -> float:
    """Largest eigenvalue of one symmetric PSD matrix (k, k), by Lanczos (ARPACK) in float64.

    Only the top eigenvalue is needed, and a full ``eigvalsh`` of a 576 x 576 matrix costs 7x (and
    far more, batched, on a busy machine). The start vector is fixed so results are reproducible;
    if ARPACK does not converge the full decomposition is used instead.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    g = np.asarray(g, dtype=np.float64)
    v0 = np.random.default_rng(0).uniform(0.5, 1.5, size=g.shape[0])  # positive: never orthogonal to a PSD top vector in practice
    try:
        return float(eigsh(g, k=1, which="LA", v0=v0, return_eigenvectors=False, tol=1e-10)[0])
    except ArpackNoConvergence:
        return float(np.linalg.eigvalsh(g)[-1])


def _mev(x: np.ndarray) -> np.ndarray:
    """Maximum explainable variance per point: sigma_1^2 / sum sigma_i^2 of the (uncentred) matrix.

    Parameters
    ----------
    x : ndarray of shape (m, n_points, d)

    Returns
    -------
    ndarray of shape (n_points,), float64; NaN where the matrix is all zeros.

    Notes
    -----
    sigma_1^2 is the top eigenvalue of the smaller of the Gram (m, m) and scatter (d, d) matrices,
    built in float32 by batched BLAS; sum sigma_i^2 is the sum of squares, accumulated in float64.
    Against a float64 SVD this differs by float32 rounding (relative ~1e-6).
    """
    xt = np.ascontiguousarray(np.swapaxes(np.asarray(x, dtype=np.float32), 0, 1))  # (p, m, d)
    total = np.einsum("pmd,pmd->p", xt, xt, dtype=np.float64)
    m, d = xt.shape[1], xt.shape[2]
    with threads_for(2.0 * xt.shape[0] * min(m, d) ** 2 * max(m, d)):
        gram = xt @ np.swapaxes(xt, 1, 2) if m <= d else np.swapaxes(xt, 1, 2) @ xt
        if gram.shape[-1] < _EIGSH_MIN:
            top = np.linalg.eigvalsh(gram.astype(np.float64))[:, -1]
        else:
            top = np.array([_top_eigenvalue(g) if t > 0 else 0.0 for g, t in zip(gram, total)])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, top / total, np.nan)


def _sample_distinct(first: np.ndarray, rank: np.ndarray, max_samples: int | None) -> np.ndarray:
    """The ``max_samples`` distinct rows (positions ``first``) that come first in a random order
    (``rank`` of every row), sorted; all of them when there are fewer. A uniform random subset of
    the distinct rows, and the same examples at every point where no rows repeat."""
    if max_samples is None or len(first) <= max_samples:
        return first
    return np.sort(first[np.argsort(rank[first], kind="stable")[:max_samples]])


def _twonn(x: np.ndarray, min_distinct: int = TWONN_MIN_DISTINCT) -> float:
    """TwoNN maximum-likelihood estimate of distinct rows ``x`` (n, d); NaN below ``min_distinct`` rows
    (and below 3, where it is undefined). Silent: the callers say why.

    d = (N - 1) / sum_i log(r2_i / r1_i) with r1, r2 the distances to the two nearest neighbours;
    rows at distance 0 from their nearest neighbour (duplicates left in) are dropped.
    """
    from sklearn.neighbors import NearestNeighbors

    if len(x) < max(3, min_distinct):
        return float("nan")
    # scikit-learn's float32 neighbour search accumulates distances in float64 chunks: 2-3x faster
    # than float64 input, same neighbours, distances equal up to float32 rounding of the inputs
    with threads_for(2.0 * len(x) ** 2 * x.shape[1]):
        dist, _ = NearestNeighbors(n_neighbors=3).fit(x).kneighbors(x)
    dist = dist.astype(np.float64)
    r1, r2 = dist[:, 1], dist[:, 2]
    keep = r1 > 0
    if keep.sum() < 3:
        return float("nan")
    s = np.log(r2[keep] / r1[keep]).sum()
    return float((keep.sum() - 1) / s) if s > 0 else float("nan")


def _too_few_warning(where: str, n_distinct: int | str, min_distinct: int, stacklevel: int = 4) -> None:
    warnings.warn(f"TwoNN intrinsic dimension is NaN{where}: {n_distinct} distinct row(s), fewer than "
                  f"min_distinct={min_distinct} (its relative error is about 1/sqrt(N); with few rows the "
                  "estimate says more about N than about the cloud)", UserWarning, stacklevel=stacklevel)


@changed_signature(positional=("max_samples", "random_state"))
def twonn_dimension(x: np.ndarray, *, max_samples: int | None = 5000, random_state: int | None = 0,
                    min_distinct: int = TWONN_MIN_DISTINCT) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017) of one point cloud, robust to duplicates.

    Duplicate rows (common at point 0: the embedding is the same for every context of a word)
    would give a zero nearest-neighbour distance and an infinite ratio, so they are merged first
    (rows equal byte for byte) and any remaining zero distance is dropped. The estimate is the
    maximum-likelihood one, d = (N - 1) / sum_i log(r2_i / r1_i), with r1, r2 the distances to the
    two nearest neighbours.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_features)
    max_samples : int or None
        Use at most this many of the distinct rows: a seeded uniform random subset (those first in
        a random permutation of all rows drawn with ``random_state``).
    random_state : int or None
    min_distinct : int
        Fewest distinct rows (after ``max_samples``) that give a number; below it the result is
        NaN with a ``UserWarning`` saying why. The estimate's relative standard error is about
        1/sqrt(N), so the default (100) gives a 95% interval of about +-20%. At least 3.

    Returns
    -------
    float; NaN (with a warning) with fewer than ``min_distinct`` distinct rows.
    """
    if min_distinct < 3:
        raise ValueError(f"min_distinct must be >= 3 (TwoNN needs two neighbours), got {min_distinct}")
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    first = first_distinct(row_keys(x))
    rank = np.empty(len(x), dtype=np.int64)
    rank[np.random.default_rng(random_state).permutation(len(x))] = np.arange(len(x))
    rows = _sample_distinct(first, rank, max_samples)
    if len(rows) < min_distinct:
        _too_few_warning("", len(rows), min_distinct)
        return float("nan")
    return _twonn(x[rows], min_distinct)
