"""What the shared and the aligned projections share: point and example selection, PCA from
streamed moments, block-wise projection, the tidy coordinates, and the estimators' common base."""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from trajgeo._arrays import RunningMoments, iter_blocks
from trajgeo.normalization import PointNormalizer, check_method
from trajgeo.trajectories import Trajectories, as_trajectories

_AXES = ("x", "y", "z")


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


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _sample_index(n: int, sample: int | float | None, random_state: int | None) -> np.ndarray:
    """Sorted indices of the examples to fit on: all, ``sample`` of them (int) or a fraction (float)."""
    if sample is None:
        return np.arange(n)
    if not (_is_int(sample) or isinstance(sample, (float, np.floating))):
        raise TypeError(f"sample must be an int (a number of examples), a float in (0, 1] (a fraction) or None, "
                        f"got {sample!r} ({type(sample).__name__})")
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


def _pca_from_moments(n: int, mean: np.ndarray, m2: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """PCA from the moments of n rows: their mean (d,) and scatter m2 (d, d). Leading eigenvectors
    of the sample covariance (ddof 1, as scikit-learn), descending variances, deterministic signs;
    ``k`` at most min(n, d) (scikit-learn's limit)."""
    cov = m2 / max(n - 1, 1)
    k = min(int(k), n, cov.shape[-1])
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = np.clip(vals[::-1], 0, None), vecs[:, ::-1]
    total = vals.sum()
    return {
        "mean": np.asarray(mean, dtype=np.float32),
        "components": _flip_signs(vecs[:, :k].T).astype(np.float32),
        "explained_variance": vals[:k],
        "explained_variance_ratio": vals[:k] / total if total > 0 else np.zeros(k),
    }


def _select(states: Any, rows: np.ndarray | None, positions: Sequence[int]) -> Any:
    """``states[rows][:, positions]`` without copying what is taken whole (in memory or lazy)."""
    x = states
    if rows is not None and not (len(rows) == x.shape[0] and np.array_equal(rows, np.arange(len(rows)))):
        x = x[rows]
    if list(positions) != list(range(x.shape[1])):
        x = x[:, list(positions)]
    return x


_MOMENT_ROWS = 8192  # vectors per block of the covariance product (bounds float32 accumulation in BLAS)


def _moments(x: Any, normalizer: PointNormalizer, per_point: bool) -> RunningMoments:
    """Moments of the normalised vectors of ``x`` (n, P, d), block by block: of all vectors pooled
    (``m2_`` (d, d)) or of each point's own (``per_point``: ``m2_`` (P, d, d))."""
    moments = RunningMoments(cross=True)
    n_points, d = int(x.shape[1]), int(x.shape[2])
    for _, _, block in iter_blocks(x, max_rows=max(1, _MOMENT_ROWS // n_points)):
        z = normalizer.transform(block)
        moments.add(z if per_point else z.reshape(-1, d))
    return moments


def _project_blocks(x: Any, project: Any, k: int) -> np.ndarray:
    """``project`` applied block by block over examples: (n, P, d) -> (n, P, k) float32."""
    out = np.empty((int(x.shape[0]), int(x.shape[1]), k), dtype=np.float32)
    for start, stop, block in iter_blocks(x):
        out[start:stop] = project(block)
    return out


def _check_common(normalize: Any, n_components: int) -> None:
    check_method(normalize)
    if not _is_int(n_components):  # 2.5 or "2" would be truncated or parsed: refused instead
        raise TypeError(f"n_components must be an int, got {n_components!r} ({type(n_components).__name__})")
    if n_components < 1:
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


class _PointProjection(TransformerMixin, BaseEstimator):
    """What :class:`Projector` and :class:`AlignedPCA` share: the fitting points and examples, the
    normalisation, reading the chosen points of new trajectories, and the tidy coordinates."""

    def _start_fit(self, traj: Any) -> tuple[Trajectories, Any]:
        """Check the parameters, choose points and examples, fit the normalisation; returns the
        trajectories and their selected states (n_fit, n_points, d_model), in memory or lazy."""
        _check_common(self.normalize, self.n_components)
        traj = as_trajectories(traj)
        self.points_ = np.asarray(traj.points if self.points is None else self.points, dtype=int)
        if len(self.points_) == 0:
            raise ValueError("points is empty: give at least one point to project")
        self.fit_index_ = _sample_index(traj.n_examples, self.sample, self.random_state)
        self.n_features_in_ = traj.d_model
        x = _select(traj.states, self.fit_index_, _positions(traj, self.points_))
        self.normalizer_ = PointNormalizer(self.normalize).fit(x)
        return traj, x

    def _states(self, traj: Trajectories) -> Any:
        """The fitted points of ``traj``, (n_examples, n_points, d_model), in memory or lazy."""
        if traj.d_model != self.n_features_in_:
            raise ValueError(f"trajectories have d_model {traj.d_model}, the projector was fitted on {self.n_features_in_}")
        return _select(traj.states, None, _positions(traj, self.points_))

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


def _keyword_signature(fn: Any, estimator: type, extra: Sequence[inspect.Parameter] = ()) -> None:
    """Show ``fn(traj, *, <the estimator's parameters>, <extra>)`` to ``help`` and ``inspect``."""
    own = [p for name, p in inspect.signature(estimator.__init__).parameters.items() if name != "self"]
    traj = inspect.Parameter("traj", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Any")
    fn.__signature__ = inspect.Signature([traj, *own, *extra], return_annotation=estimator.__name__)

