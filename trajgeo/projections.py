"""Low-dimensional views of trajectories: a shared PCA/UMAP space, and Procrustes-aligned per-point PCA.

A *shared* projection is fitted on the vectors of all chosen points at once, so that every point of
every example lands in the same plane and a path can be drawn from the embedding (point 0) to the
top. New contexts are projected into the same axes without refitting: the projector stores the
normalisation statistics it was fitted with.

Normalisation (``normalize=``)
------------------------------
The default is :data:`trajgeo.geometry.DEFAULT_NORMALIZE` (``"standardize"``): every point is
centred and each dimension scaled by its standard deviation *at that point*, with statistics from
the fitting examples. Without it the first principal axis of a shared fit is depth itself (the
residual norm grows by orders of magnitude through the stack) and the next few are rogue
dimensions, so all examples trace the same curve and the differences between contexts, which is
what the plot is for, are invisible. The price is that the common drift between points is removed:
each point's cloud is centred on the origin, so a path shows how an example moves *relative to the
population at each depth*. Pass ``normalize=None`` to see the raw drift, or use
:class:`AlignedPCA`, which fits one plane per point and aligns them by orthogonal Procrustes.

Large stores
------------
For lazily loaded (dask-backed) trajectories the PCA is computed out of core: the per-point
normalisation statistics and the d x d covariance of the normalised vectors are accumulated chunk by
chunk by dask (one pass for the statistics, one for the covariance), and the components are the
covariance's leading eigenvectors. This is exact (the same subspace as the in-memory fit, which
scikit-learn's ``covariance_eigh``/SVD solvers give), unlike :class:`sklearn.decomposition.IncrementalPCA`,
whose per-batch truncation approximates it, and it runs unchanged on a ``dask.distributed`` cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from trajgeo.normalization import DEFAULT_NORMALIZE, NORMALIZE_OPTIONS, PointNormalizer, fit_normalizer
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["Projector", "AlignedPCA", "fit", "aligned_pca", "METHODS"]

METHODS = ("pca", "umap")
_CACHE_FORMAT = 1
_AXES = ("x", "y", "z")


# ====================================================================== helpers
def _axis_names(k: int) -> list[str]:
    """Column names of the projected coordinates: x, y, z, then c4, c5, ..."""
    return [(_AXES[i] if i < len(_AXES) else f"c{i + 1}") for i in range(k)]


def _positions(traj: Trajectories, points: Sequence[int]) -> list[int]:
    """Axis-1 positions of the given original point indices in ``traj`` (KeyError naming missing ones)."""
    pos = {int(p): i for i, p in enumerate(traj.points)}
    missing = [int(p) for p in points if int(p) not in pos]
    if missing:
        raise KeyError(
            f"points {missing} are not in these trajectories (they have points {list(map(int, traj.points))}); "
            "the projector was fitted on them"
        )
    return [pos[int(p)] for p in points]


def _sample_index(n: int, sample: int | float | None, random_state: int | None) -> np.ndarray:
    """Sorted indices of the examples to fit on: all, ``sample`` of them (int) or a fraction (float)."""
    if sample is None:
        return np.arange(n)
    if isinstance(sample, (float, np.floating)):
        if not 0 < sample <= 1:
            raise ValueError(f"sample as a fraction must be in (0, 1], got {sample}")
        size = max(2, int(round(sample * n)))
    else:
        size = int(sample)
        if size < 2:
            raise ValueError(f"sample must keep at least 2 examples, got {sample}")
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=size, replace=False))


def _flip_signs(components: np.ndarray) -> np.ndarray:
    """Deterministic signs: the largest-magnitude entry of every component is positive.

    This is scikit-learn's convention for PCA (``svd_flip(..., u_based_decision=False)``), so the
    in-memory and out-of-core fits agree in sign too.
    """
    idx = np.abs(components).argmax(axis=-1)
    signs = np.sign(np.take_along_axis(components, idx[..., None], axis=-1))
    signs[signs == 0] = 1
    return components * signs


def _pca_in_memory(flat: np.ndarray, k: int, random_state: int | None) -> dict[str, np.ndarray]:
    """PCA of rows ``flat`` (n_samples, d) with scikit-learn; returns mean, components, variances."""
    from sklearn.decomposition import PCA

    k = min(k, *flat.shape)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        # constant inputs (e.g. point 0 of a single word) give 0/0 ratios: reported as 0
        warnings.simplefilter("ignore", RuntimeWarning)
        pca = PCA(n_components=k, random_state=random_state).fit(flat)
    return {
        "mean": pca.mean_.astype(np.float32),
        "components": _flip_signs(pca.components_.astype(np.float64)).astype(np.float32),
        "explained_variance": pca.explained_variance_.astype(np.float64),
        "explained_variance_ratio": np.nan_to_num(pca.explained_variance_ratio_.astype(np.float64)),
    }


def _pca_from_moments(mean: np.ndarray, cov: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """PCA from a mean (d,) and covariance (d, d): leading eigenvectors, descending variances."""
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = np.clip(vals[::-1], 0, None), vecs[:, ::-1]
    total = vals.sum()
    return {
        "mean": np.asarray(mean, dtype=np.float32),
        "components": _flip_signs(vecs[:, :k].T).astype(np.float32),
        "explained_variance": vals[:k],
        "explained_variance_ratio": vals[:k] / total if total > 0 else np.zeros(k),
    }


def _lazy_moments(flat: Any) -> tuple[Any, Any]:
    """Dask expressions for the mean (d,) and sample covariance (d, d) of rows (n_samples, d)."""
    flat = flat.astype(np.float64)
    mean = flat.mean(axis=0)
    centred = flat - mean
    cov = (centred.T @ centred) / max(flat.shape[0] - 1, 1)
    return mean, cov


def _full_feature_chunks(x: Any) -> Any:
    """Dask array chunked along examples only, so blocks hold whole (n_points, d_model) slabs."""
    return x.rechunk({i: -1 for i in range(1, x.ndim)})


def _check_common(normalize: Any, n_components: int) -> None:
    if normalize not in NORMALIZE_OPTIONS:
        raise ValueError(f"normalize must be one of {NORMALIZE_OPTIONS}, got {normalize!r}")
    if int(n_components) < 1:
        raise ValueError(f"n_components must be at least 1, got {n_components}")


def _coords_frame(
    traj: Trajectories, points: np.ndarray, y: np.ndarray, meta_columns: Sequence[str] | None
) -> pd.DataFrame:
    """Tidy frame example, point, x, y[, z], <meta columns> from coordinates (n_examples, n_points, k)."""
    n, p, k = y.shape
    if meta_columns is None:
        cols = [c for c in ("word", "sense") if c in traj.meta.columns]
    else:
        cols = list(meta_columns)
        missing = [c for c in cols if c not in traj.meta.columns]
        if missing:
            raise KeyError(f"meta has no columns {missing}; columns are {list(traj.meta.columns)}")
    df = pd.DataFrame(
        {"example": np.repeat(traj.meta["example"].to_numpy(), p), "point": np.tile(np.asarray(points), n)}
    )
    flat = y.reshape(n * p, k)
    for i, name in enumerate(_axis_names(k)):
        df[name] = flat[:, i]
    for c in cols:
        if c not in ("example", "point"):
            df[c] = np.repeat(traj.meta[c].to_numpy(), p)
    return df


# ================================================================== projector
class Projector(TransformerMixin, BaseEstimator):
    """A shared low-dimensional space for the vectors of all points (PCA or UMAP).

    Parameters
    ----------
    method : {"pca", "umap"}
        Linear PCA (exact, with explained variance) or UMAP (umap-learn, imported when fitted).
    points : sequence of int, optional
        Original point indices to fit on and to project (default: all points of the fitting
        trajectories). Trajectories given to :meth:`transform` must contain them.
    normalize : {None, "center", "standardize", "whiten"}
        Per-point normalisation before fitting (see the module docstring for why the default is
        ``"standardize"``). Its statistics come from the fitting examples and are reused for new ones.
    n_components : int
        Dimension of the projection (2 for a plane, 3 for a ``z`` column).
    sample : int or float, optional
        Fit on this many randomly drawn examples (int) or this fraction of them (float in (0, 1]);
        all examples by default. The normalisation statistics come from the same sample.
    random_state : int or None
        Seed for the example sample, PCA's solver and UMAP.
    umap_kwargs : dict, optional
        Further arguments to :class:`umap.UMAP` (e.g. ``n_neighbors``, ``min_dist``, ``n_epochs``).

    Attributes
    ----------
    points_ : ndarray of shape (n_points,)
        The original point indices the projector works on.
    normalizer_ : PointNormalizer
        Fitted per-point statistics, shape (n_points, d_model) each.
    mean_ : ndarray of shape (d_model,)
        Mean of the normalised fitting vectors (PCA).
    components_ : ndarray of shape (n_components, d_model)
        Principal axes in normalised space (PCA); the largest-magnitude entry of each is positive.
    explained_variance_ : ndarray of shape (n_components,)
    explained_variance_ratio_ : ndarray of shape (n_components,)
        Share of the total variance of the normalised fitting vectors along each axis (PCA).
    umap_ : umap.UMAP
        The fitted UMAP model (UMAP).
    embedding_ : ndarray of shape (n_fit_examples, n_points, n_components)
        UMAP's coordinates of the fitting vectors; :meth:`transform` returns these for the
        fitting examples, since ``umap.UMAP.transform`` of training data only approximates them.
    fit_index_ : ndarray of shape (n_fit_examples,)
        Positions (rows) of the examples the projector was fitted on.
    fit_fingerprint_ : str
        ``traj.fingerprint()`` of the fitting trajectories.
    n_features_in_ : int
        d_model.

    Examples
    --------
    >>> import numpy as np, trajgeo as tg
    >>> states = np.random.default_rng(0).normal(size=(20, 4, 8)).astype("float32")
    >>> proj = tg.projections.Projector(n_components=2).fit(states)
    >>> proj.transform(states).shape
    (20, 4, 2)
    """

    def __init__(
        self,
        method: str = "pca",
        points: Sequence[int] | None = None,
        normalize: str | None = DEFAULT_NORMALIZE,
        n_components: int = 2,
        sample: int | float | None = None,
        random_state: int | None = 0,
        umap_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.points = points
        self.normalize = normalize
        self.n_components = n_components
        self.sample = sample
        self.random_state = random_state
        self.umap_kwargs = umap_kwargs

    # ---------------------------------------------------------------- fit
    def fit(self, traj: Any, y: Any = None) -> "Projector":
        """Fit the normalisation and the projection.

        Parameters
        ----------
        traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
            In memory or lazy (dask); lazy trajectories are reduced chunk by chunk for PCA.
        y : ignored

        Returns
        -------
        self
        """
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        _check_common(self.normalize, self.n_components)
        traj = as_trajectories(traj)
        self.points_ = np.asarray(traj.points if self.points is None else self.points, dtype=int)
        if len(self.points_) == 0:
            raise ValueError("points is empty: give at least one point to project")
        pos = _positions(traj, self.points_)
        self.fit_index_ = _sample_index(traj.n_examples, self.sample, self.random_state)
        self.fit_fingerprint_ = traj.fingerprint()
        self.n_features_in_ = traj.d_model
        x = traj.states[self.fit_index_][:, pos]
        k = int(self.n_components)
        if traj.is_lazy and self.method == "pca":
            import dask

            x = _full_feature_chunks(x)
            self.normalizer_ = fit_normalizer(x, self.normalize)
            xn = x.map_blocks(self.normalizer_.transform, dtype=np.float32)
            mean, cov = dask.compute(*_lazy_moments(xn.reshape(-1, traj.d_model)))
            fitted = _pca_from_moments(mean, cov, min(k, traj.d_model))
        else:
            x = np.asarray(x.compute() if hasattr(x, "compute") else x, dtype=np.float32)
            self.normalizer_ = fit_normalizer(x, self.normalize)
            flat = self.normalizer_.transform(x).reshape(-1, traj.d_model)
            if self.method == "pca":
                fitted = _pca_in_memory(flat, k, self.random_state)
            else:
                self._fit_umap(flat, x.shape[:2])
                return self
        self.mean_ = fitted["mean"]
        self.components_ = fitted["components"]
        self.explained_variance_ = fitted["explained_variance"]
        self.explained_variance_ratio_ = fitted["explained_variance_ratio"]
        return self

    def _fit_umap(self, flat: np.ndarray, shape: tuple[int, int]) -> None:
        try:
            import umap  # slow to import (numba): only when a UMAP is actually fitted
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("method='umap' needs umap-learn: pip install umap-learn") from err
        kwargs = {"n_neighbors": min(15, max(2, flat.shape[0] - 1))}
        kwargs.update(self.umap_kwargs or {})
        with warnings.catch_warnings():
            # umap warns that a fixed random_state disables parallelism: that is the point (reproducible)
            warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
            self.umap_ = umap.UMAP(n_components=int(self.n_components), random_state=self.random_state, **kwargs)
            emb = self.umap_.fit_transform(flat)
        self.embedding_ = np.asarray(emb, dtype=np.float32).reshape(*shape, int(self.n_components))

    # ---------------------------------------------------------- transform
    def _check_fitted(self) -> None:
        if not hasattr(self, "normalizer_"):
            raise RuntimeError("this Projector is not fitted yet; call fit first (or tg.projections.fit)")

    def _project(self, x: np.ndarray) -> np.ndarray:
        """Normalise raw states (n, n_points, d) with the stored statistics and project them."""
        xn = self.normalizer_.transform(x)
        n, p, d = xn.shape
        if self.method == "pca":
            out = (xn - self.mean_) @ self.components_.T
        else:
            out = self.umap_.transform(xn.reshape(n * p, d)).reshape(n, p, -1)
        return np.asarray(out, dtype=np.float32)

    def transform(self, traj: Any) -> np.ndarray:
        """Project trajectories into the fitted space, without refitting anything.

        Parameters
        ----------
        traj : Trajectories or array-like of shape (n_examples, n_points_any, d_model)
            Must contain the points in ``points_``; in memory or lazy (projected chunk by chunk).

        Returns
        -------
        ndarray of shape (n_examples, n_points, n_components), float32
            Coordinates of each example at each point of ``points_``.
        """
        self._check_fitted()
        traj = as_trajectories(traj)
        if traj.d_model != self.n_features_in_:
            raise ValueError(f"trajectories have d_model {traj.d_model}, the projector was fitted on {self.n_features_in_}")
        x = traj.states[:, _positions(traj, self.points_)]
        if traj.is_lazy:
            x = _full_feature_chunks(x)
            k = int(self.components_.shape[0]) if self.method == "pca" else int(self.n_components)
            out = x.map_blocks(
                self._project, chunks=(x.chunks[0], (len(self.points_),), (k,)), dtype=np.float32
            ).compute()
        else:
            out = self._project(np.asarray(x))
        if self.method == "umap" and traj.fingerprint() == self.fit_fingerprint_:
            out[self.fit_index_] = self.embedding_  # the fitted layout itself, not its re-projection
        return out

    def coords(self, traj: Any, meta_columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Tidy coordinates for plotting: one row per example and point.

        Parameters
        ----------
        traj : Trajectories or array-like of shape (n_examples, n_points_any, d_model)
        meta_columns : sequence of str, optional
            ``meta`` columns to copy into every row. By default ``word`` and ``sense`` where present;
            columns named explicitly must exist.

        Returns
        -------
        DataFrame with columns ``example, point, x, y[, z], <meta columns>``; ``point`` is the
        original point index.
        """
        traj = as_trajectories(traj)
        return _coords_frame(traj, self.points_, self.transform(traj), meta_columns)


# ================================================================ aligned PCA
class AlignedPCA(TransformerMixin, BaseEstimator):
    """One PCA per point, rotated by orthogonal Procrustes so that neighbouring points share axes.

    A shared space is dominated by whatever changes most across depth (norm growth, rogue
    dimensions). Fitting each point on its own gives every depth its best plane, but PCA's axes are
    arbitrary up to rotation and sign between points; the planes are therefore aligned by the
    orthogonal matrix that best maps one point's coordinates of the fitting examples onto the
    already aligned coordinates of its neighbour (:func:`scipy.linalg.orthogonal_procrustes`),
    chaining outwards from a reference point.

    Parameters
    ----------
    points : sequence of int, optional
        Original point indices to fit and project (default: all).
    normalize : {None, "center", "standardize", "whiten"}
        Per-point normalisation before each PCA (default ``"standardize"``, as for :class:`Projector`).
    n_components : int
    sample : int or float, optional
        Fit on a random subset of examples (see :class:`Projector`).
    random_state : int or None
    reference : "last", "first" or int
        The point whose PCA axes are kept as they are; the others are rotated toward it.
    chain : bool
        Align every point to its already aligned neighbour (smooth along depth; default) rather
        than directly to the reference point.

    Attributes
    ----------
    points_ : ndarray of shape (n_points,)
    normalizer_ : PointNormalizer
    mean_ : ndarray of shape (n_points, d_model)
        Per-point mean of the normalised fitting vectors.
    components_ : ndarray of shape (n_points, n_components, d_model)
        Aligned axes per point: coordinates are ``(x_norm[:, p] - mean_[p]) @ components_[p].T``.
    rotations_ : ndarray of shape (n_points, n_components, n_components)
        The Procrustes rotation applied to each point's own PCA coordinates.
    explained_variance_ratio_ : ndarray of shape (n_points, n_components)
        Per point, the share of that point's variance along each axis (before rotation).
    """

    def __init__(
        self,
        points: Sequence[int] | None = None,
        normalize: str | None = DEFAULT_NORMALIZE,
        n_components: int = 2,
        sample: int | float | None = None,
        random_state: int | None = 0,
        reference: str | int = "last",
        chain: bool = True,
    ) -> None:
        self.points = points
        self.normalize = normalize
        self.n_components = n_components
        self.sample = sample
        self.random_state = random_state
        self.reference = reference
        self.chain = chain

    def _reference_position(self) -> int:
        if self.reference == "last":
            return len(self.points_) - 1
        if self.reference == "first":
            return 0
        where = np.flatnonzero(self.points_ == int(self.reference))
        if len(where) == 0:
            raise KeyError(f"reference point {self.reference} is not among the points {list(self.points_)}")
        return int(where[0])

    def fit(self, traj: Any, y: Any = None) -> "AlignedPCA":
        """Fit a PCA per point and align them.

        Parameters
        ----------
        traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
            In memory or lazy (the per-point covariances are then reduced chunk by chunk).
        y : ignored

        Returns
        -------
        self
        """
        from scipy.linalg import orthogonal_procrustes

        _check_common(self.normalize, self.n_components)
        traj = as_trajectories(traj)
        self.points_ = np.asarray(traj.points if self.points is None else self.points, dtype=int)
        if len(self.points_) == 0:
            raise ValueError("points is empty: give at least one point to project")
        ref = self._reference_position()
        pos = _positions(traj, self.points_)
        self.fit_index_ = _sample_index(traj.n_examples, self.sample, self.random_state)
        self.n_features_in_ = traj.d_model
        k = min(int(self.n_components), traj.d_model)
        x = traj.states[self.fit_index_][:, pos]
        if traj.is_lazy:
            import dask

            x = _full_feature_chunks(x)
            self.normalizer_ = fit_normalizer(x, self.normalize)
            xn = x.map_blocks(self.normalizer_.transform, dtype=np.float32)
            moments = dask.compute(*[_lazy_moments(xn[:, j]) for j in range(len(pos))])
            fits = [_pca_from_moments(m, c, k) for m, c in moments]
        else:
            x = np.asarray(x, dtype=np.float32)
            self.normalizer_ = fit_normalizer(x, self.normalize)
            xn = self.normalizer_.transform(x)
            fits = [_pca_in_memory(xn[:, j], k, self.random_state) for j in range(len(pos))]
        self.mean_ = np.stack([f["mean"] for f in fits])
        own = np.stack([f["components"] for f in fits]).astype(np.float64)  # (P, k, d)
        self.explained_variance_ratio_ = np.stack([f["explained_variance_ratio"] for f in fits])
        # Unaligned coordinates of the fitting examples, (n, P, k); chunk-wise when lazy.
        self.components_ = own.astype(np.float32)
        scores = self._scores(x)
        rot = np.tile(np.eye(k), (len(pos), 1, 1))
        aligned = scores.copy()
        order = list(range(ref + 1, len(pos))) + list(range(ref - 1, -1, -1))
        for j in order:
            nb = (j - 1 if j > ref else j + 1) if self.chain else ref
            rot[j], _ = orthogonal_procrustes(scores[:, j], aligned[:, nb])
            aligned[:, j] = scores[:, j] @ rot[j]
        self.rotations_ = rot
        # y = (x - m) @ own.T @ R  ==  (x - m) @ (R.T @ own).T
        self.components_ = np.einsum("pji,pjd->pid", rot, own).astype(np.float32)
        return self

    def _project(self, x: np.ndarray) -> np.ndarray:
        xn = self.normalizer_.transform(x)
        return np.einsum("npd,pkd->npk", xn - self.mean_, self.components_, optimize=True).astype(np.float32)

    def _scores(self, x: Any) -> np.ndarray:
        if hasattr(x, "map_blocks") and not isinstance(x, np.ndarray):
            k = self.components_.shape[1]
            return x.map_blocks(self._project, chunks=(x.chunks[0], (x.shape[1],), (k,)), dtype=np.float32).compute()
        return self._project(np.asarray(x))

    def transform(self, traj: Any) -> np.ndarray:
        """Aligned coordinates of each example at each point.

        Parameters
        ----------
        traj : Trajectories or array-like of shape (n_examples, n_points_any, d_model)

        Returns
        -------
        ndarray of shape (n_examples, n_points, n_components), float32
        """
        if not hasattr(self, "rotations_"):
            raise RuntimeError("this AlignedPCA is not fitted yet; call fit first")
        traj = as_trajectories(traj)
        x = traj.states[:, _positions(traj, self.points_)]
        return self._scores(_full_feature_chunks(x) if traj.is_lazy else x)

    def coords(self, traj: Any, meta_columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Tidy coordinates ``example, point, x, y[, z], <meta columns>`` (see :meth:`Projector.coords`)."""
        traj = as_trajectories(traj)
        return _coords_frame(traj, self.points_, self.transform(traj), meta_columns)


# ================================================================= functions
def _cache_key(fingerprint: str, params: dict[str, Any]) -> str:
    blob = json.dumps({"fingerprint": fingerprint, "format": _CACHE_FORMAT, **params}, sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def _cache_folder(cache: bool | str | os.PathLike | None, method: str) -> Path | None:
    """Where to cache: None caches UMAP only (PCA refits faster than a disk round trip)."""
    if cache is False or (cache is None and method != "umap"):
        return None
    if cache is None or cache is True:
        from trajgeo.models import cache_dir

        return cache_dir() / "projections"
    return Path(cache)


def _atomic_dump(obj: Any, path: Path) -> None:
    """joblib-dump to a temporary file beside ``path`` and rename it into place."""
    import joblib

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        joblib.dump(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fit(
    traj: Any,
    method: str = "pca",
    points: Sequence[int] | None = None,
    normalize: str | None = DEFAULT_NORMALIZE,
    n_components: int = 2,
    sample: int | float | None = None,
    random_state: int | None = 0,
    cache: bool | str | os.PathLike | None = None,
    umap_kwargs: dict[str, Any] | None = None,
) -> Projector:
    """Fit a shared projection of trajectories (PCA or UMAP), loading it from the cache if fitted before.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
        In memory or lazy; lazy stores are reduced chunk by chunk for PCA.
    method : {"pca", "umap"}
    points : sequence of int, optional
        Original point indices to fit on and project (default: all).
    normalize : {None, "center", "standardize", "whiten"}
        Per-point normalisation (default ``"standardize"``; see the module docstring).
    n_components : int
    sample : int or float, optional
        Fit on a random subset of examples (count or fraction).
    random_state : int or None
    cache : bool, path or None
        ``None`` (default) caches UMAP fits under ``trajgeo.models.cache_dir() / "projections"`` and
        refits PCA; ``True`` caches either method there; ``False`` never caches; a path caches there.
        The key is ``traj.fingerprint()`` plus every parameter above.
    umap_kwargs : dict, optional
        Further arguments to :class:`umap.UMAP`.

    Returns
    -------
    Projector
        Fitted; ``transform``, ``coords`` and (PCA) ``explained_variance_ratio_``.

    Examples
    --------
    >>> import numpy as np, trajgeo as tg
    >>> states = np.random.default_rng(0).normal(size=(30, 5, 16)).astype("float32")
    >>> proj = tg.projections.fit(states, method="pca")
    >>> list(proj.coords(states).columns)
    ['example', 'point', 'x', 'y']
    """
    traj = as_trajectories(traj)
    proj = Projector(
        method=method, points=points, normalize=normalize, n_components=n_components,
        sample=sample, random_state=random_state, umap_kwargs=umap_kwargs,
    )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    folder = _cache_folder(cache, method)
    if folder is None:
        return proj.fit(traj)
    params = proj.get_params()
    params["points"] = None if points is None else [int(p) for p in points]
    path = folder / f"{_cache_key(traj.fingerprint(), params)}.joblib"
    if path.exists():
        import joblib

        try:
            cached = joblib.load(path)
            if isinstance(cached, Projector):
                return cached
        except Exception:  # unreadable or from an incompatible version: refit and overwrite
            pass
    proj.fit(traj)
    _atomic_dump(proj, path)
    return proj


def aligned_pca(
    traj: Any,
    points: Sequence[int] | None = None,
    normalize: str | None = DEFAULT_NORMALIZE,
    n_components: int = 2,
    sample: int | float | None = None,
    random_state: int | None = 0,
    reference: str | int = "last",
    chain: bool = True,
) -> AlignedPCA:
    """Fit a per-point PCA aligned across points by orthogonal Procrustes (see :class:`AlignedPCA`).

    Returns
    -------
    AlignedPCA
        Fitted; ``transform(traj)`` -> (n_examples, n_points, n_components), ``coords(traj)``.
    """
    return AlignedPCA(
        points=points, normalize=normalize, n_components=n_components, sample=sample,
        random_state=random_state, reference=reference, chain=chain,
    ).fit(traj)
