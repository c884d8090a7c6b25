"""The surface-cue baseline: how much of the sense the words around the target already give away,
before any model depth.

A probe on the residual stream that separates the senses says that the model *can* tell them apart
at that point; it does not say that the model did anything a bag of words could not. This baseline
reads the same examples through features that need no model at all: which words the model could
see in the context.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from trajgeo.probes.ridge import RIDGE_ALPHAS, RidgeProbe
from trajgeo.probes.sweep import NULL_METRICS, layerwise
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["surface_baseline", "context_texts"]

_CONTEXTS = ("auto", "before", "around")
_Labels = str | Sequence[Any] | np.ndarray


def context_texts(traj: Trajectories, *, context: str = "auto") -> np.ndarray:
    """The context of every example's target that the model could see, as text.

    Parameters
    ----------
    traj : Trajectories
        ``meta`` needs ``text``, ``char_start`` and ``char_end``.
    context : {"auto", "before", "around"}
        ``"before"``: the text before the target (what a causal model sees at the target);
        ``"around"``: the text without the target (an encoder sees both sides); ``"auto"``:
        ``"before"`` when ``model_info["causal"]`` is true, ``"around"`` when it is false.

    Returns
    -------
    ndarray of str, shape (n_examples,)

    Raises
    ------
    ValueError
        When ``meta`` lacks the columns, or ``context="auto"`` and ``model_info`` does not say
        whether the model is causal.
    """
    if context not in _CONTEXTS:
        raise ValueError(f"context must be one of {_CONTEXTS}, got {context!r}")
    missing = [c for c in ("text", "char_start", "char_end") if c not in traj.meta.columns]
    if missing:
        raise ValueError(f"the surface baseline reads the context from meta columns text, char_start and char_end; "
                         f"missing {missing} (columns are {list(traj.meta.columns)})")
    if context == "auto":
        causal = (traj.model_info or {}).get("causal")
        if causal is None:
            raise ValueError("context='auto' reads model_info['causal'], which these trajectories lack; pass "
                             "context='before' (a causal model sees the text before the target) or 'around'")
        context = "before" if causal else "around"
    text = traj.meta["text"].astype(str).to_numpy()
    start = traj.meta["char_start"].to_numpy(dtype=int)
    end = traj.meta["char_end"].to_numpy(dtype=int)
    if context == "before":
        return np.array([t[:s] for t, s in zip(text, start)], dtype=object)
    return np.array([t[:s] + " " + t[e:] for t, s, e in zip(text, start, end)], dtype=object)


def surface_baseline(
    traj: Trajectories,
    *,
    labels: _Labels = "sense",
    word: _Labels | None = "word",
    groups: _Labels | None = "group",
    random_state: int | None = 0,
    context: str = "auto",
    cv: int | Any = 5,
    max_features: int | None = 2000,
    n_boot: int = 1000,
    ci: float = 0.95,
    n_permutations: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """A probe on the words around the target: the sense a bag of words already gives away.

    Each example becomes the set of (lower-cased) words of its visible context
    (:func:`context_texts`; binary presence, the ``max_features`` most frequent words over all
    examples, counted without labels), and the ridge probe (its penalty chosen per labelling by
    generalised cross-validation over :data:`~trajgeo.probes.RIDGE_ALPHAS`: a weak baseline would
    flatter the model) is cross-validated on it with the same grouped, stratified splits (same ``cv``, ``groups`` and
    ``random_state`` give the same folds as a :func:`layerwise` sweep of these examples) and, with
    ``n_permutations``, the same permutation null. A residual-stream probe that does not beat this
    baseline shows nothing a bag of context words does not.

    Parameters
    ----------
    traj : Trajectories
        ``meta`` needs ``text``, ``char_start``, ``char_end`` (and the label, word, group columns).
    labels, word, groups, random_state, cv, n_boot, ci, n_permutations, progress
        As in :func:`layerwise`.
    context : {"auto", "before", "around"}
        What the model could see; see :func:`context_texts`.
    max_features : int or None
        Vocabulary size (the most frequent words; ``None``: all).

    Returns
    -------
    DataFrame with columns ``[word,] fold, metric, value, ci_low, ci_high`` (and, with
    ``n_permutations > 0``, ``null_mean, null_q95, null_fwer, p_value, p_fwer`` on the summary
    rows of the four classification metrics) for the metrics ``macro_f1, accuracy,
    balanced_accuracy, cohen_kappa, majority_baseline``; ``fold == -1`` rows are the mean over
    folds with a cluster-bootstrap interval, as in :func:`layerwise`.

    Raises
    ------
    ValueError
        For missing text columns, an unknown ``context``, or contexts with no words at all.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    traj = as_trajectories(traj)
    texts = context_texts(traj, context=context)
    try:
        bow = CountVectorizer(binary=True, lowercase=True, max_features=max_features,
                              dtype=np.float32).fit_transform(texts)
    except ValueError as err:  # "empty vocabulary": no context has a word
        raise ValueError(f"no context of these {traj.n_examples} examples has a word to count "
                         f"(context={context!r}): {err}") from err
    features = Trajectories(bow.toarray()[:, None, :], traj.meta, model_info=traj.model_info)
    scores = layerwise(features, labels=labels, word=word, groups=groups, normalize=None,
                       random_state=random_state, probe=RidgeProbe(alpha=RIDGE_ALPHAS), cv=cv, n_boot=n_boot, ci=ci,
                       n_permutations=n_permutations, progress=progress)
    keep = scores["metric"].isin(NULL_METRICS + ("majority_baseline",))
    return scores[keep].drop(columns="point").reset_index(drop=True)
