"""Estimators on one cloud of vectors: the maximum explainable variance and the TwoNN intrinsic dimension."""

from __future__ import annotations

import numpy as np

from trajgeo._api import changed_signature
from trajgeo.geometry._common import first_distinct, row_keys, threads_for

__all__ = ["twonn_dimension"]

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


def _twonn(x: np.ndarray) -> float:
    """TwoNN maximum-likelihood estimate of distinct rows ``x`` (n, d); NaN below 3 rows.

    d = (N - 1) / sum_i log(r2_i / r1_i) with r1, r2 the distances to the two nearest neighbours;
    rows at distance 0 from their nearest neighbour (duplicates left in) are dropped.
    """
    from sklearn.neighbors import NearestNeighbors

    if len(x) < 3:
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


@changed_signature(positional=("max_samples", "random_state"))
def twonn_dimension(x: np.ndarray, *, max_samples: int | None = 5000, random_state: int | None = 0) -> float:
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

    Returns
    -------
    float; NaN with fewer than 3 distinct rows.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    first = first_distinct(row_keys(x))
    rank = np.empty(len(x), dtype=np.int64)
    rank[np.random.default_rng(random_state).permutation(len(x))] = np.arange(len(x))
    return _twonn(x[_sample_distinct(first, rank, max_samples)])
