"""Per-example sense directions as raw-space functionals, fitted as :mod:`trajgeo.senses` fits them."""

from __future__ import annotations

from typing import Any

import numpy as np

from trajgeo.senses import DIRECTIONS, SensePrototypes
from trajgeo.senses.directional import _raw_directions
from trajgeo.trajectories import Trajectories


def own_sense_functionals(traj: Trajectories, *, method: str, labels: Any, word: Any, groups: Any,
                          reference: Any, normalize: str | None, cv: int, random_state: int | None) -> np.ndarray:
    """Each example's unit direction toward its own sense at the reference point, as the raw functional ``w``
    with ``normalise(x) . u = (x - mean) . w``: shape (n_examples, d_model), float64, NaN rows where there is
    none (one-sense words, ties).

    Exactly the directions :func:`trajgeo.senses.attribution` projects on: ``"prototype"`` is the own sense's
    leave-group-out prototype minus the mean of the word's other prototypes; ``"lda"`` and ``"probe"`` are
    cross-fitted over folds that keep a group together.
    """
    if method not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS} or an array, got {method!r}")
    fitted = SensePrototypes(labels=labels, word=word, groups=groups, reference=reference, normalize=normalize)
    fitted.fit(traj)
    return _raw_directions(traj, fitted, fitted.reference_index_, method, cv, random_state)


def explicit_functionals(direction: Any, n_examples: int, layers: list[int], n_points: int,
                         d_model: int) -> np.ndarray:
    """An explicit direction as functionals per (example, layer): shape (n_examples, len(layers), d_model).

    ``(d_model,)``: one vector for every layer; ``(n_points, d_model)``: for layer l the vector of point l (the
    residual the layer writes into).
    """
    v = np.asarray(direction, dtype=np.float64)
    if v.ndim == 1 and v.shape[0] == d_model:
        return np.broadcast_to(v, (n_examples, len(layers), d_model))
    if v.ndim == 2 and v.shape == (n_points, d_model):
        return np.broadcast_to(v[layers], (n_examples, len(layers), d_model))
    raise ValueError(f"direction must have shape ({d_model},) or ({n_points}, {d_model}) (points 0..{n_points - 1}), "
                     f"got {v.shape}")
