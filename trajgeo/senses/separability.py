"""Reference-free separability: how well the senses of a word can be told apart at each point,
from directions fitted at that same point on held-out groups.

A convergence curve scored against the prototypes of one reference point peaks at that point by
construction (it measures alignment with the reference representation). Separability has no
reference: at every point a linear read-out is fitted on some sentences and scored on others, so
its curve rises where the model makes the senses separable, wherever that is.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from trajgeo.normalization import DEFAULT_NORMALIZE
from trajgeo.probes.sweep import layerwise
from trajgeo.stats import NULL_COLUMNS
from trajgeo.trajectories import Trajectories

__all__ = ["separability"]

_Labels = str | Sequence[Any] | np.ndarray


def separability(
    traj: Trajectories | np.ndarray,
    *,
    labels: _Labels = "sense",
    word: _Labels | None = "word",
    groups: _Labels | None = "group",
    normalize: str | None = DEFAULT_NORMALIZE,
    cv: int | Any = 5,
    random_state: int | None = 0,
    n_permutations: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Cross-fitted separability of the senses at every point, with no reference point.

    At each point, the closed-form ridge probe (:class:`~trajgeo.probes.RidgeProbe`: a fixed
    penalty for standardised features, equal-prior decision) is fitted on the training folds' vectors
    of that point, normalised with the training folds' statistics, and scored on the held-out
    groups; the value is its balanced accuracy (the mean recall over senses: chance is 1/K
    however unbalanced the senses), averaged over folds. The same sweep as
    ``tg.probes.layerwise(traj, probe="ridge", ...)``: its ``balanced_accuracy`` summary rows.

    Parameters
    ----------
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
    labels : str or array of shape (n_examples,)
        The senses (a ``meta`` column or the labels themselves).
    word : str, array of shape (n_examples,) or None
        Senses compete only within a word: one curve per word (``None`` pools all examples).
    groups : str, array of shape (n_examples,) or None
        Examples of one group (the sentence, or a shared input prefix) never fall on both sides of
        a split, and move together under the permutations.
    normalize : {None, "center", "standardize", "whiten"}
        Per point, fitted on each training fold only.
    cv : int or scikit-learn splitter
        Folds (stratified, grouped; see :func:`trajgeo.probes.make_splits`).
    random_state : int, optional
        Seeds the splits and the permutations.
    n_permutations : int
        With ``n > 0``, the senses are permuted ``n`` times among groups of each word and every
        permutation is cross-validated with the same splits and probe (one solve per point and fold
        serves them all): the null columns below.
    progress : bool
        Show a tqdm bar over points x folds (per word); ``False`` silences it.

    Returns
    -------
    DataFrame with columns ``[word,] point, metric, value`` (``metric == "balanced_accuracy"``),
    plus, with ``n_permutations > 0``, ``null_mean, null_q95, null_fwer, p_value, p_fwer``
    (:func:`trajgeo.stats.null_table` per word: ``null_fwer`` is the 95% quantile of the permuted
    curves' maximum over points, the family-wise threshold; a point above it is separable at a 5%
    family-wise error rate over the word's points). :func:`trajgeo.probes.word_significance` reads
    each word's best point and adjusts across words.

    Raises
    ------
    ValueError
        When a sense has fewer examples or groups than folds (naming the sense and the word).
    """
    scores = layerwise(traj, labels=labels, word=word, groups=groups, normalize=normalize,
                       random_state=random_state, probe="ridge", cv=cv, n_boot=0,
                       n_permutations=n_permutations, progress=progress)
    rows = scores[(scores["fold"] == -1) & (scores["metric"] == "balanced_accuracy")]
    keep = [c for c in ("word", "point", "metric", "value") if c in rows.columns]
    if n_permutations:
        keep += list(NULL_COLUMNS)
    return rows[keep].reset_index(drop=True)
