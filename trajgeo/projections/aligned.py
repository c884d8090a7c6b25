"""One PCA per point, aligned across points by orthogonal Procrustes (:class:`AlignedPCA`, :func:`aligned_pca`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from trajgeo._api import changed_signature
from trajgeo.normalization import DEFAULT_NORMALIZE
from trajgeo.projections._common import (
    _keyword_signature,
    _moments,
    _pca_from_moments,
    _PointProjection,
    _project_blocks,
)
from trajgeo.trajectories import as_trajectories

__all__ = ["AlignedPCA", "aligned_pca"]


class AlignedPCA(_PointProjection):
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

    @changed_signature(positional=("points", "normalize", "n_components", "sample", "random_state", "reference",
                                    "chain"))
    def __init__(
        self,
        *,
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

        traj, x = self._start_fit(traj)
        ref = self._reference_position()
        m = _moments(x, self.normalizer_, per_point=True)  # (P, d, d): the scatter of each point
        fits = [_pca_from_moments(m.n_, m.mean_[j], m.m2_[j], int(self.n_components)) for j in range(len(self.points_))]
        k = len(fits[0]["explained_variance"])
        self.mean_ = np.stack([f["mean"] for f in fits])
        own = np.stack([f["components"] for f in fits]).astype(np.float64)  # (P, k, d)
        self.explained_variance_ratio_ = np.stack([f["explained_variance_ratio"] for f in fits])
        # Unaligned coordinates of the fitting examples, (n, P, k); chunk-wise when lazy.
        self.components_ = own.astype(np.float32)
        scores = self._scores(x)
        rot = np.tile(np.eye(k), (len(self.points_), 1, 1))
        aligned = scores.copy()
        order = list(range(ref + 1, len(self.points_))) + list(range(ref - 1, -1, -1))
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
        return _project_blocks(x, self._project, int(self.components_.shape[1]))

    def transform(self, traj: Any) -> np.ndarray:
        """Aligned coordinates of each example at each point.

        Parameters
        ----------
        traj : Trajectories or array-like of shape (n_examples, n_points_any, d_model)
            In memory or lazy (projected chunk by chunk).

        Returns
        -------
        ndarray of shape (n_examples, n_points, n_components), float32
        """
        if not hasattr(self, "rotations_"):
            raise RuntimeError("this AlignedPCA is not fitted yet; call fit first")
        return self._scores(self._states(as_trajectories(traj)))


@changed_signature(positional=("points", "normalize", "n_components", "sample", "random_state", "reference", "chain"))
def aligned_pca(traj: Any, **params: Any) -> AlignedPCA:
    """Fit a per-point PCA aligned across points by orthogonal Procrustes (see :class:`AlignedPCA`).

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
    points, normalize, n_components, sample, random_state, reference, chain
        The parameters of :class:`AlignedPCA`, keyword-only.

    Returns
    -------
    AlignedPCA
        Fitted; ``transform(traj)`` -> (n_examples, n_points, n_components), ``coords(traj)``.
    """
    return AlignedPCA(**params).fit(traj)



_keyword_signature(aligned_pca, AlignedPCA)
