"""How the clouds of different points relate (linear CKA) and which dimensions dominate them (rogue dimensions)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from trajgeo._api import changed_signature
from trajgeo._arrays import BLOCK_BYTES, RunningMoments, iter_blocks, unwrap
from trajgeo.geometry._common import Rows, unit
from trajgeo.normalization import fit_normalizer
from trajgeo.trajectories import as_trajectories

__all__ = ["cka", "rogue_dimensions"]


def _hsic(rows: Rows, idx: np.ndarray) -> np.ndarray:
    """Unnormalised linear HSIC of every pair of points, (n_points, n_points), float64.

    HSIC(a, b) = sum_ij K_a[i, j] K_b[i, j] with K_a = X_a X_a^T the Gram matrix of the examples
    ``idx`` at point a, column-centred. The examples are taken in slabs; every pair of slabs (I, J)
    contributes the products of its Gram blocks (twice for I != J, by symmetry), so memory is two
    slabs and one (n_points, slab, slab) block, never the (n_points, n, n) Gram matrices, and a
    lazy store is read a slab at a time.
    """
    p, d = int(rows.x.shape[1]), int(rows.x.shape[2])
    size = max(2, min(rows.budget() // 2, int(np.sqrt(BLOCK_BYTES / (8 * p)))))
    slabs = [idx[s : s + size] for s in range(0, len(idx), size)]
    mean = sum(block.sum(axis=0, dtype=np.float64) for block in rows.each(slabs)) / len(idx)

    def centred(block: np.ndarray) -> np.ndarray:  # (r, p, d) -> (p, r, d), float64
        return np.ascontiguousarray(np.swapaxes(block.astype(np.float64) - mean, 0, 1))

    hsic = np.zeros((p, p))
    for i, slab in enumerate(slabs):
        a = centred(rows.get(slab))
        for j in range(i, len(slabs)):
            b = a if j == i else centred(rows.get(slabs[j]))
            g = (a @ np.swapaxes(b, 1, 2)).reshape(p, -1)
            hsic += (1.0 if j == i else 2.0) * (g @ g.T)
    return hsic


@changed_signature(positional=("normalize", "max_examples", "random_state"))
def cka(
    traj: Any,
    *,
    normalize: str | None = None,
    max_examples: int | None = 1000,
    random_state: int | None = 0,
) -> pd.DataFrame:
    """Linear CKA (Kornblith et al. 2019) between the clouds of every pair of points.

    CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) with X_c the column-centred
    (n_examples, d_model) matrix of one point; computed from the Gram matrices of the examples,
    block by block. It is invariant to rotations and isotropic scaling of either point, so 1 means
    "the same geometry up to rotation and scale".

    Parameters
    ----------
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
        In memory or lazy; a lazy store is read a slab of examples at a time, never whole.
    normalize : {None, "center", "standardize", "whiten"}
        Default ``None``: CKA centres by itself, and a per-dimension scaling would break the
        rotation invariance it is meant to have. Statistics come from the examples used.
    max_examples : int or None
        Random subsample of examples (the cost grows as n_points * n^2 * d_model).
    random_state : int or None

    Returns
    -------
    DataFrame with columns ``point_a, point_b, cka`` (all ordered pairs, diagonal included).
    """
    t = as_trajectories(traj)
    n = t.n_examples
    idx = np.arange(n)
    if max_examples is not None and n > max_examples:
        idx = np.sort(np.random.default_rng(random_state).choice(n, max_examples, replace=False))
    if len(idx) < 2:
        raise ValueError(f"cka needs at least 2 examples, got {len(idx)}")
    x = unwrap(t)
    hsic = _hsic(Rows(x, fit_normalizer(x, normalize, idx if len(idx) < n else None)), idx)
    diag = np.sqrt(np.diag(hsic))
    with np.errstate(divide="ignore", invalid="ignore"):
        val = hsic / np.outer(diag, diag)
    pa, pb = np.meshgrid(t.points, t.points, indexing="ij")
    return pd.DataFrame({"point_a": pa.ravel(), "point_b": pb.ravel(), "cka": val.ravel()})


@changed_signature(renamed={"by": "rank_by"}, positional=("top_k", "normalize", "rank_by"))
def rogue_dimensions(
    traj: Any,
    *,
    top_k: int = 5,
    normalize: str | None = None,
    rank_by: str = "cosine",
) -> pd.DataFrame:
    """The dimensions that dominate the variance or the cosine at each point.

    Following Timkey and van Schijndel (2021): the cosine contribution of dimension k is the mean
    over pairs of distinct examples of u_i[k] u_j[k] (u the unit vectors), so the contributions add
    up to the mean pairwise cosine; ``cosine_share`` is a dimension's contribution over that total
    (it can exceed 1 or be negative when other dimensions pull the total towards 0).
    ``variance_share`` is var_k / sum_k var_k.

    Parameters
    ----------
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
        In memory or lazy; one pass over blocks of examples keeps only sums.
    top_k : int
        Dimensions reported per point.
    normalize : {None, "center", "standardize", "whiten"}
        Default ``None``: the point is to diagnose the raw space.
    rank_by : {"cosine", "variance"}
        Rank dimensions by their cosine contribution or by their variance share. Formerly ``by``.

    Returns
    -------
    DataFrame with columns ``point, rank, dimension, variance_share, cosine_share`` (rank 1 = top).
    """
    if rank_by not in ("cosine", "variance"):
        raise ValueError(f"rank_by must be 'cosine' or 'variance', got {rank_by!r}")
    t = as_trajectories(traj)
    n = t.n_examples
    if n < 2:
        raise ValueError(f"rogue_dimensions needs at least 2 examples, got {n}")
    if not 1 <= top_k:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    x = unwrap(t)
    nz = fit_normalizer(x, normalize)
    moments, us, uq = RunningMoments(), np.zeros(x.shape[1:]), np.zeros(x.shape[1:])
    for _, _, block in iter_blocks(x):  # only sums are kept, in float64
        z = nz.transform(block)
        moments.add(z)
        u = unit(z)
        us += u.sum(axis=0, dtype=np.float64)
        u *= u
        uq += u.sum(axis=0, dtype=np.float64)
    var = moments.var_  # (p, d)
    contrib = (us**2 - uq) / (n * (n - 1))  # (p, d): sums to the mean pairwise cosine
    with np.errstate(divide="ignore", invalid="ignore"):
        vshare = var / var.sum(axis=1, keepdims=True)
        cshare = contrib / contrib.sum(axis=1, keepdims=True)
    key = contrib if rank_by == "cosine" else var
    k = min(top_k, key.shape[1])
    top = np.argsort(-key, axis=1, kind="stable")[:, :k]  # (p, k)
    p = key.shape[0]
    rows = np.arange(p)[:, None]
    return pd.DataFrame(
        {
            "point": np.repeat(t.points, k),
            "rank": np.tile(np.arange(1, k + 1), p),
            "dimension": top.ravel(),
            "variance_share": vshare[rows, top].ravel(),
            "cosine_share": cshare[rows, top].ravel(),
        }
    )
