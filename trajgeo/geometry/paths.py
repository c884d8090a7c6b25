"""Path metrics: each example's own path through the points (norms, steps, turning, straightness)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from trajgeo._api import changed_signature
from trajgeo._arrays import iter_blocks, unwrap
from trajgeo.geometry._common import rownorm
from trajgeo.normalization import fit_normalizer
from trajgeo.trajectories import as_trajectories

__all__ = ["PATH_METRICS", "path_metrics", "path_metric_arrays"]

PATH_METRICS = (
    "norm",
    "step_size",
    "relative_step",
    "cos_prev",
    "turning_angle",
    "cos_to_final",
    "dist_to_final",
    "path_length",
    "displacement",
    "straightness",
)


def _path_block(x: np.ndarray) -> np.ndarray:
    """All path metrics of one block of examples.

    Parameters
    ----------
    x : ndarray of shape (b, n_points, d_model)

    Returns
    -------
    ndarray of shape (b, n_points, len(PATH_METRICS)), float32, in the order of PATH_METRICS.
    """
    x = np.asarray(x, dtype=np.float32)
    b, p, _ = x.shape
    out = np.full((b, p, len(PATH_METRICS)), np.nan, dtype=np.float32)
    m = {name: k for k, name in enumerate(PATH_METRICS)}
    with np.errstate(divide="ignore", invalid="ignore"):
        nrm = rownorm(x)
        out[..., m["norm"]] = nrm
        final = x[:, -1:]
        out[..., m["cos_to_final"]] = np.einsum("npd,nqd->np", x, final) / (nrm * nrm[:, -1:])
        out[..., m["dist_to_final"]] = rownorm(x - final)
        disp = rownorm(x - x[:, :1])
        out[..., m["displacement"]] = disp
        if p > 1:
            step = x[:, 1:] - x[:, :-1]
            size = rownorm(step)
            out[:, 1:, m["step_size"]] = size
            out[:, 1:, m["relative_step"]] = np.where(nrm[:, :-1] > 0, size / nrm[:, :-1], np.nan)
            out[:, 1:, m["cos_prev"]] = np.einsum("npd,npd->np", x[:, 1:], x[:, :-1]) / (nrm[:, 1:] * nrm[:, :-1])
            length = np.zeros((b, p), dtype=np.float64)
            np.cumsum(size, axis=1, dtype=np.float64, out=length[:, 1:])
            out[..., m["path_length"]] = length
            out[:, 1:, m["straightness"]] = np.where(length[:, 1:] > 0, disp[:, 1:] / length[:, 1:], np.nan)
            if p > 2:
                # Angle between unit steps by Kahan's formula 2*atan2(|u-v|, |u+v|): exact near 0 and
                # 180 degrees, where arccos of a dot product loses all precision.
                unit = step / size[..., None]
                out[:, 2:, m["turning_angle"]] = np.degrees(
                    2.0 * np.arctan2(rownorm(unit[:, 1:] - unit[:, :-1]), rownorm(unit[:, 1:] + unit[:, :-1]))
                )
        else:
            out[..., m["path_length"]] = 0.0
    # the path to itself: exactly 0 length and displacement at point 0
    out[:, 0, m["path_length"]] = 0.0
    return out


@changed_signature(renamed={"reference": "fit_on"}, positional=("normalize", "fit_on", "block_size"))
def path_metric_arrays(
    traj: Any,
    *,
    normalize: str | None = None,
    fit_on: Any = None,
    block_size: int = 128,
) -> dict[str, np.ndarray]:
    """The path metrics as arrays (the work behind :func:`path_metrics`, without the long table).

    Parameters
    ----------
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
        In memory or lazy (dask); lazy states are read and processed one chunk at a time.
    normalize : {None, "center", "standardize", "whiten"}
        Point-wise normalisation before the metrics (statistics from ``fit_on``).
    fit_on : boolean mask or integer indices, optional
        Examples whose statistics define the normalisation (default: all). Formerly ``reference``.
    block_size : int
        Examples per block (bounds the temporaries; the result does not depend on it).

    Returns
    -------
    dict mapping each name in :data:`PATH_METRICS` to an ndarray of shape (n_examples, n_points)
    """
    x = unwrap(traj)
    if len(x.shape) != 3:
        raise ValueError(f"expected states of shape (n_examples, n_points, d_model), got {tuple(x.shape)}")
    nz = fit_normalizer(x, normalize, fit_on)
    n, p = int(x.shape[0]), int(x.shape[1])
    vals = np.empty((n, p, len(PATH_METRICS)), dtype=np.float32)
    for start, stop, block in iter_blocks(x, max_rows=max(1, int(block_size))):
        vals[start:stop] = _path_block(nz.transform(block))
    return {name: vals[..., k] for k, name in enumerate(PATH_METRICS)}


@changed_signature(renamed={"reference": "fit_on"}, positional=("normalize", "fit_on"))
def path_metrics(traj: Any, *, normalize: str | None = None, fit_on: Any = None) -> pd.DataFrame:
    """Per-example, per-point geometry of each trajectory.

    For example i and point l (h_l its vector; consecutive means consecutive along
    ``traj.points``, so a subset of points gives the coarser path):

    ``norm``            ||h_l||
    ``step_size``       ||h_l - h_{l-1}|| (NaN at the first point)
    ``relative_step``   ||h_l - h_{l-1}|| / ||h_{l-1}||
    ``cos_prev``        cos(h_l, h_{l-1})
    ``turning_angle``   angle in degrees between the consecutive steps h_{l-1} - h_{l-2} and
                        h_l - h_{l-1} (NaN at the first two points, and where a step is zero).
                        This is a curvature **across layers for one token**, not the across-token
                        curvature of Hosseini and Fedorenko (2023), which turns between the vectors
                        of consecutive tokens within one layer.
    ``cos_to_final``    cos(h_l, h_L) (L the last point)
    ``dist_to_final``   ||h_l - h_L||
    ``path_length``     sum of the step sizes up to l (0 at the first point)
    ``displacement``    ||h_l - h_0||
    ``straightness``    displacement / path_length: 1 for a straight path (NaN at the first point)

    Parameters
    ----------
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
        Lazy (dask-backed) trajectories are processed chunk by chunk and give the same numbers.
    normalize : {None, "center", "standardize", "whiten"}
        Default ``None``: norms, steps and lengths describe the raw residual stream, which is what
        these metrics are about. Pass ``DEFAULT_NORMALIZE`` for cosines free of rogue dimensions.
    fit_on : boolean mask or integer indices, optional
        Examples whose statistics define the normalisation (default: all). Formerly ``reference``.

    Returns
    -------
    DataFrame with columns ``example, point, word, sense, metric, value`` (``word``/``sense`` when
    in ``meta``), one row per example x point x metric.

    Examples
    --------
    >>> import numpy as np, trajgeo as tg
    >>> x = np.cumsum(np.ones((2, 4, 3), dtype=np.float32), axis=1)  # straight lines
    >>> df = tg.geometry.path_metrics(x)
    >>> df.query("metric == 'straightness' and point == 3")["value"].round(6).tolist()
    [1.0, 1.0]
    """
    t = as_trajectories(traj)
    arrays = path_metric_arrays(t, normalize=normalize, fit_on=fit_on)
    return t.to_frame(values=arrays, meta_columns=("word", "sense"))
