"""Outer cross-validation splits that respect groups, and the control task of Hewitt and Liang (2019)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from trajgeo._api import changed_signature
from trajgeo.probes._common import _labels
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["make_splits", "control_labels"]

def make_splits(
    y: np.ndarray,
    groups: np.ndarray | None = None,
    cv: int | Any = 5,
    stratify: bool = True,
    random_state: int | None = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Outer cross-validation splits that never put one group on both sides.

    Parameters
    ----------
    y : ndarray of shape (n_examples,)
    groups : ndarray of shape (n_examples,), optional
        Examples with the same group (e.g. the same sentence) always fall in the same fold.
    cv : int or scikit-learn splitter
        Number of folds (StratifiedGroupKFold, shuffled; GroupKFold when ``stratify=False``), or
        a splitter object used as given (called with ``groups``).
    stratify : bool
        Keep class proportions similar across folds.
    random_state : int, optional

    Raises
    ------
    ValueError
        When a class has fewer examples, or fewer groups, than folds: it could not appear in every
        test fold, and per-fold macro F1 and balanced accuracy would be undefined.
    """
    y = np.asarray(y)
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    if not isinstance(cv, (int, np.integer)):
        return [(np.asarray(a), np.asarray(b)) for a, b in cv.split(np.zeros(len(y)), y, g)]
    if cv < 2:
        raise ValueError(f"cv must be at least 2 folds, got {cv}")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"probing needs at least 2 classes; all {len(y)} examples have label {classes[0]}")
    counts = np.bincount(codes)
    for k, c in enumerate(classes):
        c = c.item() if hasattr(c, "item") else c  # 'rare', not np.str_('rare')
        if counts[k] < cv:
            raise ValueError(f"class {c!r} has {counts[k]} examples, fewer than the cv={cv} folds")
        n_g = len(np.unique(g[codes == k]))
        if n_g < cv:
            raise ValueError(
                f"class {c!r} has {counts[k]} examples but only {n_g} groups, fewer than the cv={cv} folds"
            )
    if stratify:
        splitter: Any = StratifiedGroupKFold(cv, shuffle=True, random_state=random_state)
    else:
        splitter = GroupKFold(cv, shuffle=True, random_state=random_state)
    return [(np.asarray(a), np.asarray(b)) for a, b in splitter.split(np.zeros(len(y)), codes, g)]


def _previous_word(text: str, start: int) -> str:
    words = str(text)[: int(start)].split()
    return words[-1].strip(".,;:!?\"'()[]").lower() if words else "<s>"


@changed_signature(positional=("labels", "control_by", "random_state"))
def control_labels(
    traj: Trajectories | np.ndarray,
    *,
    labels: str | Sequence[Any] | np.ndarray = "sense",
    control_by: str | Sequence[Any] | np.ndarray = "auto",
    random_state: int | None = 0,
) -> np.ndarray:
    """Control-task labels (Hewitt and Liang 2019): one random but fixed label per type.

    Parameters
    ----------
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
    labels : str or array of shape (n_examples,)
        The task labels whose label set and distribution the control task copies.
    control_by : "auto", meta column name, or array of shape (n_examples,)
        What a "type" is. Hewitt and Liang give each *word type* its own control label, so a
        probe can only solve the control task by memorising word identities. ``"auto"`` uses
        the word (``target`` or ``word`` column, lower-cased) when the data hold several words:
        Hewitt and Liang's type, and the only case :func:`layerwise` accepts. With one word,
        ``"auto"`` falls back to (target word, the word just before it) read from
        ``text``/``char_start`` (a previous-word task: on CoarseWSD-20 and the built-in set one
        rule, "the previous word is *the*", reproduces most of its labels), else to one type per
        example (random labels).
    random_state : int, optional

    Returns
    -------
    ndarray of shape (n_examples,)
        Control labels drawn from the task's label set. Types are visited in random order and
        each gets the label currently furthest below its share of the task's label counts, so the
        control task has (as nearly as the type sizes allow) the task's label distribution.
    """
    traj = as_trajectories(traj)
    y = _labels(traj, labels)
    types = _control_types(traj.meta, control_by, len(y))
    classes, codes = np.unique(y, return_inverse=True)
    share = np.bincount(codes, minlength=len(classes)) / len(y)
    type_codes = pd.factorize(types)[0]
    sizes = np.bincount(type_codes)
    rng = np.random.default_rng(random_state)
    assigned = np.zeros(len(classes))
    type_label = np.empty(len(sizes), dtype=int)
    for t in rng.permutation(len(sizes)):  # one step per type, not per example
        total = assigned.sum() + sizes[t]
        k = int(np.argmax(share * total - assigned))
        type_label[t] = k
        assigned[k] += sizes[t]
    return classes[type_label[type_codes]]


def _control_types(meta: pd.DataFrame, control_by: str | Sequence[Any] | np.ndarray, n: int) -> np.ndarray:
    """The control task's type of every example, shape (n,); see :func:`control_labels`."""
    if isinstance(control_by, str) and control_by == "auto":
        word_col = next((c for c in ("target", "word") if c in meta.columns), None)
        if word_col and meta[word_col].astype(str).str.lower().nunique() > 1:
            return meta[word_col].astype(str).str.lower().to_numpy()  # Hewitt and Liang's word type
        if {"text", "char_start"} <= set(meta.columns):
            word = meta[word_col].astype(str).str.lower() if word_col else pd.Series([""] * len(meta))
            prev = [_previous_word(t, s) for t, s in zip(meta["text"], meta["char_start"])]
            return (word + "|" + pd.Series(prev, index=meta.index)).to_numpy()
        return np.arange(len(meta))
    if isinstance(control_by, str):
        if control_by not in meta.columns:
            raise KeyError(f"control_by column {control_by!r} not in meta; columns are {list(meta.columns)}")
        return meta[control_by].astype(str).str.lower().to_numpy()
    types = np.asarray(control_by)
    if len(types) != n:
        raise ValueError(f"got {len(types)} control types for {n} examples")
    return types


_CONTROL_INSTEAD = ("read the probe against its permutation null instead (layerwise(..., n_permutations=1000): "
                    "group-respecting label permutations with a family-wise threshold over points), and against "
                    "the surface-cue baseline (tg.probes.surface_baseline: what the words around the target give away)")


def _check_control(meta: pd.DataFrame, control_by: str | Sequence[Any] | np.ndarray, rows: np.ndarray,
                   splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    """Refuse the Hewitt and Liang control task where it measures nothing.

    It needs several words pooled in one sweep (``word=None``): with one word per sweep its types
    are surface properties such as the previous word, and the "control" is a previous-word probe.
    And each control type must recur in every fold: a type seen only in the test fold cannot be
    memorised, so the control would be scored on labels no probe could learn.
    ``rows`` are the examples the sweep uses (positions in ``meta``), ``splits`` its folds over them.
    """
    word_col = next((c for c in ("word", "target") if c in meta.columns), None)
    n_words = meta[word_col].astype(str).str.lower().nunique() if word_col else 1
    if n_words < 2:
        raise ValueError(
            "control=True: the control task of Hewitt and Liang (2019) gives each word type a random label; it "
            "needs several words pooled in one sweep (word=None over data with a word column), and this sweep "
            "holds one word, where its types would be surface cues such as the previous word (a previous-word "
            f"probe, not a control); {_CONTROL_INSTEAD}")
    types = pd.factorize(_control_types(meta, control_by, len(meta))[rows])[0]
    missing = [t for t in range(types.max() + 1)
               if any(not (types[te] == t).any() for _, te in splits)]
    if missing:
        names = pd.unique(np.asarray(_control_types(meta, control_by, len(meta))[rows]))
        shown = [str(names[t]) for t in missing[:5]]
        raise ValueError(
            f"control=True: {len(missing)} of {types.max() + 1} control types do not recur in every fold "
            f"(e.g. {shown}); a type missing from a training fold cannot be memorised, so its control labels "
            f"measure nothing; pool words with examples in every fold, or {_CONTROL_INSTEAD}")
