"""Along the sense directions: reinforcement (each point's projection on the example's correct-sense
direction and on the others') and attribution (which layer and head writes pushed it there)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from trajgeo._api import changed_signature
from trajgeo._arrays import compute, einsum, is_lazy, like
from trajgeo.normalization import DEFAULT_NORMALIZE
from trajgeo.senses._common import fixed_reference, frame_meta, local_index, warn_one_sense
from trajgeo.senses.estimator import SensePrototypes
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["reinforcement", "attribution"]


@changed_signature(
    renamed={"by": "word"},
    positional=("labels", "reference", "normalize", "direction", "word", "cv", "random_state", "groups"),
)
def reinforcement(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    reference: int | str = "last",
    normalize: str | None = DEFAULT_NORMALIZE,
    random_state: int | None = 0,
    direction: str = "prototype",
    cv: int = 5,
) -> pd.DataFrame:
    """Projection of each point on the example's correct-sense direction and on the others'.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
    labels, word
        As in :func:`~trajgeo.senses.curves`.
    groups : str, array-like of shape (n_examples,) or None
        Cross-fitting groups (default: the ``group`` column, the sentence, when present); see
        :class:`~trajgeo.senses.SensePrototypes`.
    reference : "last" or int
        The point whose sense directions are used.
    normalize : {None, "center", "standardize", "whiten"}
        Projections are taken in normalised coordinates (statistics of the reference point).
    random_state : int or None
        Seeds the cross-fitting of learned directions.
    direction : {"prototype", "lda", "probe"}
        See :meth:`SensePrototypes.directions` (leave-one-out / cross-fitted).
    cv : int
        Folds for the cross-fitting of learned directions.

    Returns
    -------
    DataFrame
        Columns ``example, point, word, sense, metric, value``; metric ``"correct"`` is
        ``z_l . u_correct`` and ``"other"`` the mean of ``z_l . u_s`` over the word's other senses
        (with two senses and ``direction="prototype"``, other = -correct).
    """
    traj = as_trajectories(traj)
    fixed_reference(reference, "reinforcement")
    fitted = SensePrototypes(labels=labels, word=word, groups=groups, reference=reference, normalize=normalize)
    z = fitted._fit(traj)
    own = fitted._score_keys(traj, None)[0]
    n = traj.n_examples
    correct = np.full((n, traj.n_points), np.nan)
    other = np.full((n, traj.n_points), np.nan)
    for rows, gk, u in fitted._word_directions(traj, direction, None, cv, random_state):
        zw = z[rows] if is_lazy(z) else np.take(z, rows, axis=0)
        proj = np.asarray(compute(einsum("npd,nkd->npk", zw, like(u.astype(np.float32), zw))), np.float64)
        local, has_own = local_index(gk, own[rows])
        correct[rows] = np.where(has_own[:, None], proj[np.arange(len(rows)), :, local], np.nan)
        is_other = np.arange(len(gk))[None] != np.where(has_own, local, -1)[:, None]  # (n_w, K_w)
        other[rows] = (proj * is_other[:, None]).sum(-1) / is_other.sum(-1)[:, None]
    frame = Trajectories(np.empty((n, traj.n_points, 0), np.float32), frame_meta(traj, fitted), points=traj.points)
    return frame.to_frame({"correct": correct, "other": other}, meta_columns=("word", "sense"))


@changed_signature(
    renamed={"by": "word"},
    positional=("labels", "direction", "reference", "normalize", "word", "cv", "random_state", "groups"),
)
def attribution(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    reference: int | str = "last",
    normalize: str | None = DEFAULT_NORMALIZE,
    random_state: int | None = 0,
    direction: str = "prototype",
    cv: int = 5,
    direction_point: str = "reference",
) -> pd.DataFrame:
    """Which layers (and heads) pushed each example toward its sense.

    Each layer's attention write, MLP write and (when extracted) each head's write is projected on
    the example's unit correct-sense direction (from :meth:`SensePrototypes.directions`), found at
    the point ``direction_point`` says: the reference point for every layer (default), or a point
    of the layer's own (``"same"``: point l for layer l, ``"previous"``: point l - 1, the input
    the layer read). Under the reference's direction the late layers look decisive partly by
    construction (the direction is made of the last vectors); a per-layer direction asks what
    each layer adds to the sense as it is represented where the layer writes.

    The direction is found in normalised coordinates (where cosines are trustworthy) and mapped
    back to the raw residual space as the linear functional ``w`` with
    ``normalise(x) . u = (x - mean) . w`` (``w = u / std`` for "standardize", ``W u`` for
    "whiten"; the statistics of the direction's point). Sublayer writes are raw vectors, and
    centring cancels in differences, so for a pre-LN model:

    * with the reference's direction (one ``w`` for every layer) the attributions of one example
      add up exactly to the change of its normalised projection from the block-1 input
      (``aux["block_input"]``) to the last point: ``sum_l (attn_l + mlp_l) . w = normalise(h_L) . u
      - normalise(block_input) . u``;
    * with per-layer directions ``w_l`` each layer's two writes add up exactly to the change of the
      projection on ``w_l`` across that block: ``(attn_l + mlp_l) . w_l = (h_l - h_{l-1}) . w_l``
      (``h_0`` the block-1 input). The layers no longer add up to one total: each has its own
      yardstick.

    With ``normalize=None`` this is the plain projection on the unit raw direction.

    Parameters
    ----------
    traj : Trajectories
        Extracted with ``components=True`` (``heads=True`` for head rows). With a per-layer
        ``direction_point``, the trajectories must hold every point a layer's direction is found at.
    labels, word, groups, reference, normalize, random_state, direction, cv
        As in :func:`reinforcement` (``reference`` is used only with ``direction_point="reference"``).
    direction_point : {"reference", "same", "previous"}
        Where the direction of layer l's writes is found: the reference point, point l, or point
        l - 1. Directions are leave-group-out prototypes (or cross-fitted, learned) at that point.

    Returns
    -------
    DataFrame
        Columns ``example, word, sense, layer, component, head, direction_point, attribution``;
        ``component`` in {"attn", "mlp", "head"}, ``head`` is -1 unless component is "head";
        ``layer`` is 1..L; ``direction_point`` is the point whose direction the row was projected
        on. NaN where that point is a tie for the word (``"previous"`` at layer 1: point 0 is one
        embedding per word, no direction tells its senses apart). Words with one sense are left
        out (one warning names them).
    """
    traj = as_trajectories(traj)
    if direction_point not in ("reference", "same", "previous"):
        raise ValueError(f"direction_point must be 'reference', 'same' or 'previous', got {direction_point!r}")
    if direction_point == "reference":
        fixed_reference(reference, "attribution")
    for name in ("attn", "mlp"):
        if name not in traj.components:
            raise KeyError(f"attribution needs components[{name!r}]; extract with components=True")
    skipped = warn_one_sense(traj, labels, word, "attribution")
    n_layers = int(traj.components["attn"].shape[1])
    layers = np.arange(1, n_layers + 1)
    if direction_point == "reference":
        fitted = SensePrototypes(labels=labels, word=word, groups=groups, reference=reference, normalize=normalize)
        fitted.fit(traj)
        w = _raw_directions(traj, fitted, fitted.reference_index_, direction, cv, random_state)
        w_layer, at = w[:, None, :], np.full(n_layers, int(traj.points[fitted.reference_index_]))
    else:
        at = layers - (1 if direction_point == "previous" else 0)
        pos = pd.Index(traj.points).get_indexer(at)
        if (pos < 0).any():
            raise ValueError(f"direction_point={direction_point!r} needs points {sorted(set(at[pos < 0].tolist()))}, "
                             f"which these trajectories do not hold (points {list(traj.points)})")
        fitted = SensePrototypes(labels=labels, word=word, groups=groups, reference="same", normalize=normalize)
        z = fitted._fit(traj)
        per_point = {}
        for p in np.unique(pos):
            est, _ = fitted._at_reference(traj, z, int(p))
            per_point[p] = _raw_directions(traj, est, int(p), direction, cv, random_state)
        w_layer = np.stack([per_point[p] for p in pos], axis=1)  # (n, L, d)
    meta = frame_meta(traj, fitted)
    frames = [_component_rows(traj.components[name], name, w_layer, at, meta)
              for name in ("attn", "mlp", "heads") if name in traj.components]
    out = pd.concat(frames, ignore_index=True)
    if skipped:
        out = out.iloc[:0] if not fitted.has_word_ else out[~out["word"].isin(skipped)]
    return out.reset_index(drop=True)


def _raw_directions(traj: Trajectories, fitted: SensePrototypes, position: int, direction: str, cv: int,
                    random_state: int | None) -> np.ndarray:
    """Each example's correct-sense direction at ``position`` as a raw-space functional, (n, d)
    float64 (NaN rows where there is none)."""
    own = fitted._score_keys(traj, None)[0]
    u_own = np.full((traj.n_examples, traj.d_model), np.nan)
    for rows, gk, u in fitted._word_directions(traj, direction, None, cv, random_state):
        local, ok = local_index(gk, own[rows])
        u_own[rows[ok]] = u[np.flatnonzero(ok), local[ok]]
    return fitted.normalizer_.pull_back(u_own, position).astype(np.float64)


def _component_rows(comp: Any, name: str, w: np.ndarray, at: np.ndarray, meta: pd.DataFrame) -> pd.DataFrame:
    """Rows of :func:`attribution` for one component: its writes ``comp`` of shape (n, L, d), or
    (n, L, H, d) for ``"heads"``, projected on the raw functionals ``w`` of shape (n, 1, d) (one per
    example) or (n, L, d) (one per example and layer), found at the points ``at`` (L,)."""
    wl = np.broadcast_to(w, (w.shape[0], comp.shape[1], w.shape[-1]))
    spec = "nlhd,nld->nlh" if name == "heads" else "nld,nld->nl"
    a = np.asarray(compute(einsum(spec, comp, like(np.ascontiguousarray(wl), comp))), dtype=np.float64)
    if name != "heads":
        a = a[..., None]
    n, n_layers, n_heads = a.shape
    rows = meta.loc[np.repeat(np.arange(n), n_layers * n_heads)].reset_index(drop=True)
    rows["layer"] = np.tile(np.repeat(np.arange(1, n_layers + 1), n_heads), n)
    rows["component"] = "head" if name == "heads" else name
    rows["head"] = np.tile(np.arange(n_heads), n * n_layers) if name == "heads" else -1
    rows["direction_point"] = np.tile(np.repeat(np.asarray(at, dtype=int), n_heads), n)
    rows["attribution"] = a.reshape(-1)
    return rows
