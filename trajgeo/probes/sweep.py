"""The cross-validated layer-wise sweep and what is read from it: per-point scores
(:func:`layerwise`), cross-layer transfer (:func:`transfer`), Tenney et al.'s expected layer
(:func:`expected_layer`) and the resolution point (:func:`resolution_point`).

Senses compete only within a word: with a word column (``word="word"`` by default) every
function runs once per word and adds a ``word`` column; ``word=None`` pools all examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from trajgeo._api import changed_signature
from trajgeo.normalization import DEFAULT_NORMALIZE
from trajgeo.probes._common import _by_word, _labels, _naming_word, _with_word, _WordPart
from trajgeo.probes._cv import _fold_weights, _metric_arrays, _Options, _OutOfFold, _run_cv
from trajgeo.stats import bootstrap_weights, percentile_interval
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["ProbeSweep", "layerwise", "transfer", "expected_layer", "resolution_point", "METRICS"]

#: Metric names of :func:`layerwise`, in the order they appear (macro F1 first: senses are unbalanced).
METRICS = (
    "macro_f1", "accuracy", "balanced_accuracy", "log_loss",
    "control_accuracy", "selectivity", "majority_baseline",
)

_Labels = str | Sequence[Any] | np.ndarray


@dataclass
class ProbeSweep:
    """A layer-wise sweep with the out-of-fold predictions behind its scores.

    Returned by ``layerwise(..., return_result=True)``; :func:`resolution_point` reads it without
    fitting again. Rows of the arrays are the examples the sweep used (all of them, or the
    class-balanced subsample with ``balance=True``), word after word.

    Attributes
    ----------
    scores : DataFrame
        What :func:`layerwise` returns.
    correct : ndarray of bool, shape (n_examples, n_points)
        Whether the task probe's out-of-fold prediction is right, per example and point.
    units : ndarray of shape (n_examples,)
        The resampling unit of each example: its group code (one numbering over all words) when
        the sweep was grouped, else its example id.
    points : ndarray of shape (n_points,)
        Original point indices.
    example : ndarray of shape (n_examples,)
        Example ids of the rows.
    word : ndarray of shape (n_examples,) or None
        The word of each row; None when the sweep pooled all examples.
    """

    scores: pd.DataFrame
    correct: np.ndarray
    units: np.ndarray
    points: np.ndarray
    example: np.ndarray
    word: np.ndarray | None = None


def _sweeps(
    traj: Trajectories | np.ndarray,
    labels: _Labels,
    word: _Labels | None,
    groups: _Labels | None,
    opts: _Options,
    *,
    control_by: _Labels = "auto",
    desc: str,
    **cv_options: Any,
) -> Iterator[tuple[_WordPart, _OutOfFold]]:
    """One cross-validated sweep per word: (part, out-of-fold result), word after word.

    Labels and groups are read from the full trajectories once, so errors name example ids and
    group codes are one numbering over all words (``part.options["units"]``: the resampling unit).
    """
    traj = as_trajectories(traj)
    y = _labels(traj, labels)
    g = traj.group_codes(groups)
    units = g if g is not None else traj.meta["example"].to_numpy()
    parts = list(_by_word(traj, word, {"labels": y, "groups": g, "units": units, "control_by": control_by}))
    for part in parts:
        with _naming_word(part, len(parts) > 1):
            res = _run_cv(part.traj, part.options["labels"], part.options["groups"], opts,
                          control_by=part.options["control_by"],
                          desc=desc if len(parts) == 1 else f"{desc} {part.word}", **cv_options)
        yield part, res


def _frame(res: _OutOfFold, units: np.ndarray, n_boot: int, ci: float, random_state: int | None) -> pd.DataFrame:
    """The layerwise rows of one word: per fold, and the mean over folds with a bootstrap interval."""
    P = res.pred.shape[1]
    per_fold = _metric_arrays(res, _fold_weights(res))  # (n_folds, P)
    boot = _metric_arrays(res, bootstrap_weights(units, n_boot, random_state))
    rows = []
    for m in METRICS:
        v = per_fold[m]
        rows.append(pd.DataFrame({
            "point": np.tile(res.points, res.n_folds), "fold": np.repeat(np.arange(res.n_folds), P),
            "metric": m, "value": v.reshape(-1), "ci_low": np.nan, "ci_high": np.nan,
        }))
        lo, hi = percentile_interval(boot[m], ci)  # all-NaN columns (no log-loss) stay NaN
        rows.append(pd.DataFrame({
            "point": res.points, "fold": -1, "metric": m, "value": v.mean(0), "ci_low": lo, "ci_high": hi,
        }))
    df = pd.concat(rows, ignore_index=True)
    df["fold"] = df["fold"].astype(int)
    return df


@changed_signature(positional=("labels", "probe", "cv", "groups", "control", "control_by", "normalize", "balance",
                               "n_boot", "ci", "n_jobs", "random_state", "progress"))
def layerwise(
    traj: Trajectories | np.ndarray,
    *,
    labels: _Labels = "sense",
    word: _Labels | None = "word",
    groups: _Labels | None = "group",
    normalize: str | None = DEFAULT_NORMALIZE,
    random_state: int | None = 0,
    probe: str | BaseEstimator = "logistic",
    cv: int | Any = 5,
    control: bool = True,
    control_by: _Labels = "auto",
    balance: bool = False,
    n_boot: int = 1000,
    ci: float = 0.95,
    n_jobs: int | None = 1,
    progress: bool = True,
    return_result: bool = False,
) -> pd.DataFrame | ProbeSweep:
    """Cross-validated probe accuracy at every point, with control task and majority baseline.

    Parameters
    ----------
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
    labels : str or array of shape (n_examples,)
        A ``meta`` column (default ``"sense"``) or the labels themselves.
    word : str, array of shape (n_examples,) or None
        Senses compete only within a word: one sweep per word (default: the ``word`` column when
        ``meta`` has one). ``None`` pools all examples in one sweep.
    groups : str, array of shape (n_examples,) or None
        Examples sharing a group never fall on both sides of a split (nor of the inner tuning
        splits). Default: the ``group`` column (the sentence) when ``meta`` has one.
    normalize : {None, "center", "standardize", "whiten"}
        Per-point normalisation fitted on each training fold only and applied to its test fold
        (a ``StandardScaler`` in a ``Pipeline`` before the probe, for all points of a fold in one pass).
    random_state : int, optional
        Seeds the splits, the control labels, the subsample, the probes and the bootstrap.
    probe : {"logistic", "svm", "mlp", "prototype", "1nn"} or scikit-learn classifier
        See :func:`make_probe`. A user estimator is cloned for every point and fold.
    cv : int or scikit-learn splitter
        Folds; see :func:`make_splits`. The same splits serve every point, the control task and
        the majority baseline, so their differences are paired.
    control, control_by : bool; "auto", str or array
        Also fit the control task (:func:`control_labels` with these types) and report selectivity.
    balance : bool
        Subsample every class to the size of the smallest (seeded by ``random_state``) first.
    n_boot, ci : int, float
        Bootstrap replicates and coverage of the summary rows' intervals.
    n_jobs : int, optional
        Folds run in parallel (joblib); results do not depend on ``n_jobs``.
    progress : bool
        Show a tqdm bar over points x folds (per word); ``False`` silences it.
    return_result : bool
        Return a :class:`ProbeSweep` (the scores and the out-of-fold predictions) instead of the frame.

    Returns
    -------
    DataFrame with columns ``[word,] point, fold, metric, value, ci_low, ci_high``
        (``word`` when the data have words). ``metric`` is one of :data:`METRICS`: ``macro_f1``,
        ``accuracy``, ``balanced_accuracy``, ``log_loss`` (natural log per example; NaN for
        probes without probabilities), ``control_accuracy``, ``selectivity`` (accuracy minus
        control accuracy) and ``majority_baseline`` (the training fold's majority class). Rows with
        ``fold >= 0`` are per fold (NaN interval); ``fold == -1`` rows hold the mean over folds and
        a percentile interval from a cluster bootstrap over groups (or examples) of the pooled
        out-of-fold predictions. With ``return_result=True``, a :class:`ProbeSweep`.

    Raises
    ------
    ValueError
        When a class has fewer examples or groups than folds (naming the class, and the word).
    """
    opts = _Options(probe=probe, normalize=normalize, random_state=random_state)
    frames, parts = [], []
    for part, res in _sweeps(traj, labels, word, groups, opts, control_by=control_by, cv=cv, control=control,
                             balance=balance, n_jobs=n_jobs, progress=progress, desc="layerwise"):
        units = part.options["units"][res.rows]
        frames.append(_with_word(_frame(res, units, n_boot, ci, random_state), part.word))
        parts.append((part, res, units))
    scores = pd.concat(frames, ignore_index=True)
    return _probe_sweep(scores, parts) if return_result else scores


def _probe_sweep(scores: pd.DataFrame, parts: list[tuple[_WordPart, _OutOfFold, np.ndarray]]) -> ProbeSweep:
    """The :class:`ProbeSweep` of the per-word sweeps ``(part, result, units)``, word after word."""
    return ProbeSweep(
        scores=scores,
        correct=np.concatenate([res.pred == res.y[:, None] for _, res, _ in parts]),
        units=np.concatenate([u for _, _, u in parts]),
        points=parts[0][1].points,
        example=np.concatenate([part.traj.meta["example"].to_numpy()[res.rows] for part, res, _ in parts]),
        word=None if parts[0][0].word is None else np.concatenate(
            [np.full(len(res.rows), part.word, dtype=object) for part, res, _ in parts]),
    )


@changed_signature(positional=("labels", "probe", "cv", "groups", "normalize", "balance", "n_jobs", "random_state",
                               "progress"))
def transfer(
    traj: Trajectories | np.ndarray,
    *,
    labels: _Labels = "sense",
    word: _Labels | None = "word",
    groups: _Labels | None = "group",
    normalize: str | None = DEFAULT_NORMALIZE,
    random_state: int | None = 0,
    probe: str | BaseEstimator = "logistic",
    cv: int | Any = 5,
    balance: bool = False,
    n_jobs: int | None = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Cross-layer transfer: train the probe at point i, test it at point j, for all pairs.

    Each point is normalised with its own training-fold statistics (residual norms grow with
    depth; without this, transfer would mostly measure scale). Splits and probes are those of
    :func:`layerwise` with the same arguments, so the diagonal equals its per-point accuracy.
    Where the sense direction stops moving, a probe trained there keeps working later on.
    Parameters are those of :func:`layerwise` (``progress``: a bar over training points x folds).

    Returns
    -------
    DataFrame with columns ``[word,] train_point, test_point, accuracy`` (mean over folds), one row
    per pair (and word).
    """
    opts = _Options(probe=probe, normalize=normalize, transfer_all=True, random_state=random_state)
    frames = []
    for part, res in _sweeps(traj, labels, word, groups, opts, cv=cv, balance=balance, n_jobs=n_jobs,
                             progress=progress, desc="transfer"):
        acc = np.mean(res.acc_matrices, axis=0)
        P = len(res.points)
        frames.append(_with_word(pd.DataFrame({
            "train_point": np.repeat(res.points, P), "test_point": np.tile(res.points, P),
            "accuracy": acc.reshape(-1)}), part.word))
    return pd.concat(frames, ignore_index=True)


@changed_signature(positional=("labels", "probe", "metric", "mix", "cv", "groups", "normalize", "balance", "n_jobs",
                               "random_state", "progress"))
def expected_layer(
    traj: Trajectories | np.ndarray,
    *,
    labels: _Labels = "sense",
    word: _Labels | None = "word",
    groups: _Labels | None = "group",
    normalize: str | None = DEFAULT_NORMALIZE,
    random_state: int | None = 0,
    probe: str | BaseEstimator = "logistic",
    metric: str = "macro_f1",
    mix: str = "concat",
    cv: int | Any = 5,
    balance: bool = False,
    n_jobs: int | None = 1,
    progress: bool = True,
) -> tuple[float | pd.Series, pd.DataFrame]:
    """Tenney et al. (2019)'s expected layer from cumulative probes.

    The cumulative probe at point l reads the points 0..l together; its gain
    Delta_l = score(0..l) - score(0..l-1) says how much point l adds, and the expected layer is
    sum_l l * Delta_l / sum_l Delta_l: one number for "where the sense is read".

    Parameters
    ----------
    metric : {"macro_f1", "accuracy", "balanced_accuracy"}
        The score whose gains are used.
    mix : {"concat", "mean"}
        How points 0..l are combined (each normalised with training-fold statistics first).
        Tenney et al. learn a scalar mix of the layers jointly with the probe. ``"concat"`` (default)
        lets the probe weight every point freely (it can do everything a scalar mix can), at a cost
        that grows with l: the last probe reads n_points x d_model features, about 16x the cost of
        :func:`layerwise` for 31 points. ``"mean"`` is a fixed equal-weight mix that costs the same as
        :func:`layerwise` but dilutes a signal that appears late among many uninformative points,
        which moves the gains, and so the expected layer, later.
    Other parameters are those of :func:`layerwise` (``progress``: a bar over points x folds).

    Returns
    -------
    expected : float, or Series indexed by word
        In original point indices (NaN when the gains sum to zero); a float when the data are one
        word (or pooled), one value per word otherwise.
    table : DataFrame with columns ``[word,] point, score, gain`` (gain NaN at the first point).
    """
    if metric not in ("macro_f1", "accuracy", "balanced_accuracy"):
        raise ValueError(f"metric must be macro_f1, accuracy or balanced_accuracy, got {metric!r}")
    if mix not in ("concat", "mean"):
        raise ValueError(f"mix must be 'concat' or 'mean', got {mix!r}")
    opts = _Options(probe=probe, normalize=normalize, cumulative=mix, random_state=random_state)
    expected, tables = {}, []
    for part, res in _sweeps(traj, labels, word, groups, opts, cv=cv, balance=balance, n_jobs=n_jobs,
                             progress=progress, desc="expected_layer"):
        score = _metric_arrays(res, _fold_weights(res))[metric].mean(0)
        gain = np.r_[np.nan, np.diff(score)]
        total = np.nansum(gain)
        expected[part.word] = (float(np.nansum(res.points * np.nan_to_num(gain)) / total) if total != 0
                               else float("nan"))
        tables.append(_with_word(pd.DataFrame({"point": res.points, "score": score, "gain": gain}), part.word))
    table = pd.concat(tables, ignore_index=True)
    if len(expected) == 1:
        return next(iter(expected.values())), table
    return pd.Series(expected, name="expected_layer").rename_axis("word"), table


@changed_signature(renamed={"traj_or_frame": "traj_or_sweep"},
                   positional=("fraction", "labels", "n_boot", "ci", "random_state"))
def resolution_point(
    traj_or_sweep: Trajectories | np.ndarray | ProbeSweep,
    *,
    fraction: float = 0.95,
    n_boot: int = 1000,
    ci: float = 0.95,
    random_state: int | None = 0,
    **sweep_options: Any,
) -> pd.DataFrame:
    """The first point where probe accuracy reaches ``fraction`` of its maximum, with an interval.

    Parameters
    ----------
    traj_or_sweep : Trajectories, ndarray or ProbeSweep
        A :class:`ProbeSweep` (``layerwise(..., return_result=True)``) is read as it is; for
        trajectories a sweep is run first with ``sweep_options`` (the options of
        :func:`layerwise`: ``labels``, ``word``, ``groups``, ``probe``, ... ; ``control`` defaults
        to False here, as the control task does not enter the resolution point).
    fraction : float in (0, 1]
    n_boot, ci : int, float
        The interval resamples groups (or examples) of the out-of-fold predictions and finds the
        resolution point of every replicate's accuracy curve.
    random_state : int, optional
        Seeds the bootstrap (and the sweep, when one is run).

    Returns
    -------
    DataFrame with one row per word: ``[word,] metric`` ("accuracy"), ``fraction``, ``max_value``,
    ``threshold``, ``resolution_point``, ``ci_low``, ``ci_high`` (original point indices).

    Raises
    ------
    ValueError
        For a DataFrame (scores alone carry no out-of-fold predictions to resample).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if isinstance(traj_or_sweep, pd.DataFrame):
        raise ValueError("this frame carries no out-of-fold predictions; pass the trajectories or the "
                         "ProbeSweep that layerwise(..., return_result=True) returns")
    if isinstance(traj_or_sweep, ProbeSweep):
        if sweep_options:
            raise TypeError(f"resolution_point(): {sorted(sweep_options)} apply only when trajectories are given; "
                            "this ProbeSweep was already run")
        sweep = traj_or_sweep
    else:
        sweep = layerwise(traj_or_sweep, n_boot=1, random_state=random_state,
                          control=sweep_options.pop("control", False), return_result=True, **sweep_options)
    words = [None] if sweep.word is None else pd.unique(sweep.word)
    rows = []
    for w in words:
        rows.append(_with_word(_resolution(sweep, w, fraction, n_boot, ci, random_state), w))
    return pd.concat(rows, ignore_index=True)


def _resolution(sweep: ProbeSweep, word: Any, fraction: float, n_boot: int, ci: float,
                random_state: int | None) -> pd.DataFrame:
    """The resolution-point row of one word (``word`` None: all rows of the sweep)."""
    rows = np.arange(len(sweep.units)) if word is None else np.flatnonzero(sweep.word == word)
    correct = np.asarray(sweep.correct[rows], dtype=np.float64)
    points = np.asarray(sweep.points)
    curve = correct.mean(0)
    boot = bootstrap_weights(sweep.units[rows], n_boot, random_state)
    curves = boot @ correct / boot.sum(1, keepdims=True)  # (B, P)

    def first(c: np.ndarray) -> np.ndarray:
        reached = c >= fraction * c.max(axis=-1, keepdims=True) - 1e-12
        return points[reached.argmax(axis=-1)]

    lo, hi = percentile_interval(first(curves)[:, None], ci)
    return pd.DataFrame({"metric": ["accuracy"], "fraction": [fraction], "max_value": [curve.max()],
                         "threshold": [fraction * curve.max()], "resolution_point": [int(first(curve))],
                         "ci_low": [lo[0]], "ci_high": [hi[0]]})
