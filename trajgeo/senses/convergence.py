"""Convergence toward the resolved senses: cosine-to-sense curves and margins, the commitment and
stable points of each example, and superposition of the context-free embedding between senses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from trajgeo._api import changed_signature
from trajgeo.normalization import DEFAULT_NORMALIZE
from trajgeo.senses._common import margin_of, meta_cols, suffix_onset
from trajgeo.senses.estimator import SensePrototypes
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["curves", "commitment", "superposition"]

_COLUMNS = ("example", "point", "word", "sense", "metric", "to_sense", "value")


@changed_signature(renamed={"by": "word"}, positional=("labels", "reference", "normalize", "word"))
def curves(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    reference: int | str = "last",
    normalize: str | None = DEFAULT_NORMALIZE,
) -> pd.DataFrame:
    """Cosine-to-sense curves and the margin, per example and point (leave-one-out).

    ``cos`` rows give ``cos(h_l, prototype_s(r))`` for every sense s of the example's word;
    ``margin`` rows give ``m_l = cos to the correct sense - max cos to another sense of the word``.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
    labels : str or array-like of shape (n_examples,)
        The senses: a ``meta`` column name or the labels.
    word : str, array-like of shape (n_examples,) or None
        The word column (or words); senses compete only within a word. (Formerly ``by=``.)
    reference : {"last", "same"} or int
        ``"last"`` (default): prototypes of the last point, the resolved meaning; all layers write
        into one residual space, so the curve measures convergence toward it. An int: that
        original point. ``"same"``: r = l, separability at each point -- a path that is separable
        early but heads toward the wrong sense looks good there and not under ``"last"``.
    normalize : {None, "center", "standardize", "whiten"}
        See :class:`SensePrototypes` for the default and where statistics come from.

    Returns
    -------
    DataFrame
        Columns ``example, point, word, sense, metric, to_sense, value`` (``word`` only when the
        trajectories have a word column); ``metric`` in {"cos", "margin"}; ``to_sense`` is the
        prototype's sense on "cos" rows and None on "margin" rows.
    """
    traj = as_trajectories(traj)
    fitted = SensePrototypes(labels=labels, word=word, reference=reference, normalize=normalize)
    n, p = traj.n_examples, traj.n_points
    margin = np.full((n, p), np.nan)
    parts = []  # per block of words: (example, group, cosines (pairs, P)) of same-word pairs
    for rows, gk, cos_b, own_b, same_b in fitted._score_blocks(traj, None, fitted._fit(traj)):
        margin[rows] = margin_of(cos_b, own_b, same_b)[0]
        i, j = np.nonzero(same_b)
        parts.append((rows[i], gk[j], cos_b[i, :, j]))
    ex, k, val = (np.concatenate(a) for a in zip(*parts)) if parts else (
        np.zeros(0, int), np.zeros(0, int), np.zeros((0, p)))
    order = np.lexsort((k, ex))  # example by example, groups in order
    cos_rows = _long(traj, fitted, ex[order], "cos", fitted.groups_["sense"].to_numpy()[k[order]], val[order])
    margin_rows = _long(traj, fitted, np.arange(n), "margin", None, margin)
    out = pd.concat([cos_rows, margin_rows], ignore_index=True)
    return out[[c for c in _COLUMNS if c in out.columns]]


def _long(traj: Trajectories, fitted: SensePrototypes, ex: np.ndarray, metric: str, to_sense: Any,
          values: np.ndarray) -> pd.DataFrame:
    """Rows of :func:`curves` for examples at positions ``ex`` with ``values`` (len(ex), n_points)."""
    p = traj.n_points
    return pd.DataFrame(
        {
            **{c: np.repeat(v, p) for c, v in meta_cols(traj, ex, fitted).items()},
            "point": np.tile(traj.points, len(ex)),
            "metric": metric,
            "to_sense": None if to_sense is None else np.repeat(to_sense, p),
            "value": values.reshape(-1),
        }
    )


@changed_signature(renamed={"by": "word"}, positional=("threshold", "labels", "reference", "normalize", "word"))
def commitment(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    reference: int | str = "last",
    normalize: str | None = DEFAULT_NORMALIZE,
    threshold: float = 0.0,
) -> pd.DataFrame:
    """When each example commits to its sense.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
    labels, word, reference, normalize
        As in :func:`curves`.
    threshold : float
        The margin must stay strictly above this.

    Returns
    -------
    DataFrame
        One row per example: ``example, word, sense, commitment_point, stable_point``.
        ``commitment_point`` is the first (original) point from which the leave-one-out margin
        (prototypes of ``reference``) stays above ``threshold`` through the last point: when the
        path has turned toward its resolved sense for good. ``stable_point`` is the first point
        from which the leave-one-out nearest-prototype prediction *at each point* (prototypes of
        that same point, i.e. a nearest-centroid classifier per point) is right through the last
        point: when the sense has become decodable for good. The two differ for a path that is
        separable early but heads toward the wrong sense (stable early, committed late). (Against
        the reference's prototypes the prediction would just be ``margin > 0``.) NaN where it
        never happens, e.g. when the last point is not above the threshold. A tie is not right.

    Notes
    -----
    Both need the condition to hold *through the last point*; with the default reference the
    margin at the last point is a leave-one-out nearest-centroid check of the final vectors.
    One fit serves both: the per-point prototypes are the sums the fit keeps at every point.
    """
    traj = as_trajectories(traj)
    fitted = SensePrototypes(labels=labels, word=word, reference=reference, normalize=normalize)
    z = fitted._fit(traj)
    margin, correct = fitted._margins(traj, None, z)
    if fitted.reference_index_ is not None:
        per_point, z_same = fitted._same_point(traj, z)
        correct = per_point._margins(traj, None, z_same)[1]
    with np.errstate(invalid="ignore"):
        above = margin > threshold
    out = pd.DataFrame(meta_cols(traj, np.arange(traj.n_examples), fitted))
    out["commitment_point"] = suffix_onset(above, traj.points)
    out["stable_point"] = suffix_onset(correct, traj.points)
    return out


@changed_signature(renamed={"by": "word"}, positional=("labels", "reference", "normalize", "word"))
def superposition(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    reference: int | str = "last",
    normalize: str | None = None,
) -> pd.DataFrame:
    """Does the context-free embedding (point 0) lie between the word's senses?

    For each word and sense s: the mean over the word's examples of ``cos(h_i(0),
    prototype_s(reference))`` (leave-one-out, as in :func:`curves`), and the balance index
    ``min_s cos / max_s cos`` -- 1 when the embedding is equally close to every resolved sense,
    near 0 when it sits on one of them.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
        Must contain point 0.
    labels, word
        As in :func:`curves`.
    reference : "last" or int
        The point whose prototypes are the resolved senses (``"same"`` makes no sense here).
    normalize : {None, "center", "standardize", "whiten"}
        Default ``None`` (raw vectors), unlike the other metrics: centring with the word's own
        examples makes two sense prototypes antipodal by construction (``c_a = n_b / n (p_a - p_b)``
        and ``c_b = -n_a / n (p_a - p_b)``), so the balance would be -1 whatever the model. A
        centring method is meaningful only when the trajectories hold many words, whose mean
        then serves as the neutral origin.

    Returns
    -------
    DataFrame
        Columns ``word, sense, cosine, balance`` (``word`` only when there is a word column);
        ``balance`` is repeated within a word and NaN where the largest cosine is not positive.
    """
    traj = as_trajectories(traj)
    if isinstance(reference, str) and reference == "same":
        raise ValueError("superposition compares point 0 with resolved prototypes; reference='same' is not allowed")
    if 0 not in set(traj.points.tolist()):
        raise ValueError(f"superposition needs point 0 (the embedding); these trajectories have {list(traj.points)}")
    fitted = SensePrototypes(labels=labels, word=word, reference=reference, normalize=normalize)
    z = fitted._fit(traj)
    # point 0 normalised with its own statistics (a point-0-only copy would not match the fitted ones)
    at0 = int(np.flatnonzero(traj.points == 0)[0])
    groups = fitted.groups_
    total, seen = np.zeros(len(groups)), np.zeros(len(groups))
    for _, gk, cos_b, _, _ in fitted._score_blocks(traj.select_points([0]), None, z[:, at0 : at0 + 1]):
        c = cos_b[:, 0, :]  # (n_b, K_b): NaN for other words' groups
        np.add.at(total, gk, np.nansum(c, axis=0))
        np.add.at(seen, gk, (~np.isnan(c)).sum(0))
    cosine = np.where(seen > 0, total / np.maximum(seen, 1), np.nan)
    out = pd.DataFrame({"word": groups["word"].to_numpy(), "sense": groups["sense"].to_numpy(), "cosine": cosine})
    g = out.groupby("word", sort=False)["cosine"]
    hi, lo = g.transform("max"), g.transform("min")
    out["balance"] = np.where(hi > 0, lo / hi, np.nan)
    return out if fitted.has_word_ else out.drop(columns="word")
