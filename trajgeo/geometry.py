"""Path and population geometry of trajectories, rogue dimensions, and point-wise normalisation."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PointNormalizer", "normalize", "NORMALIZE_OPTIONS", "DEFAULT_NORMALIZE"]

NORMALIZE_OPTIONS = (None, "center", "standardize", "whiten")
# Residual streams carry rogue dimensions whose scale grows with depth; raw cosines are then
# dominated by a few coordinates (see rogue_dimensions). Standardising each dimension per point
# (Timkey and van Schijndel 2021) removes them without needing more examples than dimensions.
DEFAULT_NORMALIZE = "standardize"


class PointNormalizer:
    """Centre and scale vectors separately at every point, with statistics from a reference set.

    Parameters
    ----------
    method : {None, "center", "standardize", "whiten"}
        ``None`` leaves vectors as they are; ``"center"`` subtracts the per-point mean;
        ``"standardize"`` also divides each dimension by its per-point standard deviation;
        ``"whiten"`` applies per-point PCA whitening of a shrunk (Ledoit-Wolf) covariance.
    eps : float
        Floor on standard deviations / eigenvalues, so that constant dimensions do not explode.

    Attributes
    ----------
    mean_ : ndarray of shape (n_points, d_model)
    scale_ : ndarray of shape (n_points, d_model)
        Per-dimension standard deviation ("standardize").
    whitener_ : ndarray of shape (n_points, d_model, d_model)
        Per-point whitening matrix ("whiten"): x_white = (x - mean_) @ whitener_.

    Notes
    -----
    Fit on the examples that define the space (a training fold, or all examples) and transform
    any others: statistics never come from the examples being evaluated unless you ask for it.
    """

    def __init__(self, method: str | None = DEFAULT_NORMALIZE, eps: float = 1e-6) -> None:
        self.method = method
        self.eps = eps

    def fit(self, states: Any) -> "PointNormalizer":
        """Learn per-point statistics from states of shape (n_examples, n_points, d_model)."""
        if self.method not in NORMALIZE_OPTIONS:
            raise ValueError(f"normalize must be one of {NORMALIZE_OPTIONS}, got {self.method!r}")
        x = _as_array(states)
        if self.method is None:
            return self
        if x.shape[0] < 2:
            raise ValueError(f"normalize={self.method!r} needs at least 2 reference examples, got {x.shape[0]}")
        self.mean_ = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        if self.method == "standardize":
            self.scale_ = np.maximum(x.std(axis=0, dtype=np.float64), self.eps).astype(np.float32)
        elif self.method == "whiten":
            from sklearn.covariance import LedoitWolf

            mats = []
            for p in range(x.shape[1]):
                cov = LedoitWolf(assume_centered=False).fit(x[:, p].astype(np.float64)).covariance_
                vals, vecs = np.linalg.eigh(cov)
                mats.append((vecs / np.sqrt(np.maximum(vals, self.eps))).astype(np.float32))
            self.whitener_ = np.stack(mats)
        return self

    def transform(self, states: Any) -> np.ndarray:
        """Apply the fitted per-point normalisation; returns float32 of the same shape."""
        x = _as_array(states)
        if self.method is None:
            return x
        if not hasattr(self, "mean_"):
            raise RuntimeError("PointNormalizer is not fitted; call fit first")
        if x.shape[1:] != self.mean_.shape:
            raise ValueError(f"states have shape {x.shape[1:]} per example, fitted on {self.mean_.shape}")
        out = x - self.mean_
        if self.method == "standardize":
            out /= self.scale_
        elif self.method == "whiten":
            out = np.einsum("npd,pde->npe", out, self.whitener_, optimize=True)
        return out.astype(np.float32, copy=False)

    def fit_transform(self, states: Any) -> np.ndarray:
        return self.fit(states).transform(states)


def _as_array(states: Any) -> np.ndarray:
    from trajgeo.trajectories import Trajectories

    if isinstance(states, Trajectories):
        states = states.states
    if hasattr(states, "compute"):
        states = states.compute()
    x = np.asarray(states, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected states of shape (n_examples, n_points, d_model), got {x.shape}")
    return x


def normalize(states: Any, method: str | None = DEFAULT_NORMALIZE, reference: Any = None) -> np.ndarray:
    """Point-wise normalisation of trajectories.

    Parameters
    ----------
    states : Trajectories or ndarray of shape (n_examples, n_points, d_model)
    method : {None, "center", "standardize", "whiten"}
        See :class:`PointNormalizer`.
    reference : boolean mask or integer indices, optional
        The examples whose statistics define the normalisation (default: all).

    Returns
    -------
    ndarray of shape (n_examples, n_points, d_model), float32
    """
    x = _as_array(states)
    ref = x if reference is None else x[np.asarray(reference)]
    return PointNormalizer(method).fit(ref).transform(x)
