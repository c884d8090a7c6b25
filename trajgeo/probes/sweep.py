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
from trajgeo.probes._cv import (
    _confusion_scores, _fold_weights, _metric_arrays, _Options, _OutOfFold, _run_cv, _weighted_scores,
)
from trajgeo.stats import NULL_COLUMNS, bootstrap_weights, holm, null_table, percentile_interval
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["ProbeSweep", "layerwise", "transfer", "expected_layer", "resolution_point", "word_significance",
           "METRICS", "NULL_METRICS"]

#: Metric names of :func:`layerwise`, in the order they appear (macro F1 first: senses are unbalanced).
METRICS = (
    "macro_f1", "accuracy", "balanced_accuracy", "cohen_kappa", "log_loss",
    "control_accuracy", "selectivity", "majority_baseline",
)
#: The metrics that get a permutation null with ``n_permutations > 0`` (all four come from the same
#: permuted predictions; balanced accuracy and kappa are the chance-corrected ones).
NULL_METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "cohen_kappa")

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
    y, pred : ndarray of int, shapes (n_examples,) and (n_examples, n_points)
        True and predicted (out-of-fold) class codes, numbered within each word.
    null : dict or None
        With ``n_permutations > 0``: per word (None when pooled) a dict from each of
        :data:`NULL_METRICS` to the null of the *pooled* out-of-fold metric, shape
        (n_permutations, n_points) (what :func:`resolution_point` reads its curve against).
    """

    scores: pd.DataFrame
    correct: np.ndarray
    units: np.ndarray
    points: np.ndarray
    example: np.ndarray
    word: np.ndarray | None = None
    y: np.ndarray | None = None
    pred: np.ndarray | None = None
    null: dict[Any, dict[str, np.ndarray]] | None = None


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
    """The layerwise rows of one word: per fold, and the mean over folds with a bootstrap interval
    (and the null's columns on the summary rows when the sweep has a null)."""
    P, F = res.pred.shape[1], res.n_folds
    per_fold = _metric_arrays(res, _fold_weights(res))  # (n_folds, P)
    boot = _metric_arrays(res, bootstrap_weights(units, n_boot, random_state)) if n_boot else None
    # the statistic under each permutation, computed as the value is: per fold, then the mean over folds
    null = None if res.null_conf is None else {m: v.mean(0) for m, v in _confusion_scores(res.null_conf).items()}
    point = np.tile(np.r_[np.tile(res.points, F), res.points], len(METRICS))
    fold = np.tile(np.r_[np.repeat(np.arange(F), P), np.full(P, -1)], len(METRICS))
    cols: dict[str, list[np.ndarray]] = {"value": [], "ci_low": [], "ci_high": []}
    if null is not None:
        cols.update({c: [] for c in NULL_COLUMNS})
    blank = np.full(F * P, np.nan)
    for m in METRICS:
        v = per_fold[m]
        # all-NaN columns (no log-loss) stay NaN; n_boot=0: no interval
        lo, hi = percentile_interval(boot[m], ci) if boot is not None else (np.full(P, np.nan),) * 2
        cols["value"] += [v.reshape(-1), v.mean(0)]
        cols["ci_low"] += [blank, lo]
        cols["ci_high"] += [blank, hi]
        if null is not None:
            table = null_table(v.mean(0), null[m], points=res.points) if m in NULL_METRICS else None
            for c in NULL_COLUMNS:
                cols[c] += [blank, table[c].to_numpy() if table is not None else np.full(P, np.nan)]
    df = pd.DataFrame({"point": point, "fold": fold, "metric": np.repeat(METRICS, (F + 1) * P)})
    for c, parts in cols.items():
        df[c] = np.concatenate(parts)
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
    probe: str | BaseEstimator = "ridge",
    cv: int | Any = 5,
    control: bool = False,
    control_by: _Labels = "auto",
    balance: bool = False,
    n_boot: int = 1000,
    ci: float = 0.95,
    n_permutations: int = 0,
    n_jobs: int | None = 1,
    progress: bool = True,
    return_result: bool = False,
) -> pd.DataFrame | ProbeSweep:
    """Cross-validated probe scores at every point, with the majority baseline and, on request, a
    permutation null and the control task.

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
    probe : {"ridge", "logistic", "svm", "mlp", "prototype", "1nn"} or scikit-learn classifier
        See :func:`make_probe`. A user estimator is cloned for every point and fold. The default,
        ``"ridge"`` (:class:`RidgeProbe`: closed form, a fixed penalty for standardised features,
        equal-prior decision), reads CoarseWSD-20 senses as well as the tuned logistic probe
        (``"logistic"``, the default before 0.3) at about a tenth of its cost, and its permutation
        null shares its solves (see ``benchmarks/probes.py``); it has no probabilities (log-loss NaN).
    cv : int or scikit-learn splitter
        Folds; see :func:`make_splits`. The same splits serve every point, the control task and
        the majority baseline, so their differences are paired.
    control, control_by : bool; "auto", str or array
        Also fit the control task of Hewitt and Liang (:func:`control_labels` with these types)
        and report selectivity. Only for several words pooled in one sweep (``word=None``) whose
        types recur in every fold; otherwise a ValueError says why. With one word per sweep the
        control types are surface cues (the previous word) and the "control" is a previous-word
        probe: read the probe against ``n_permutations`` and :func:`surface_baseline` instead.
    balance : bool
        Subsample every class to the size of the smallest (seeded by ``random_state``) first.
    n_boot, ci : int, float
        Bootstrap replicates and coverage of the summary rows' intervals (``n_boot=0``: none, NaN).
    n_permutations : int
        With ``n > 0``, the labels are permuted ``n`` times among groups of each word
        (:func:`trajgeo.stats.group_permutations`: a sentence's label vector moves as a whole,
        seeded by ``random_state``), each labelling is cross-validated with the same splits and
        probe, and the summary rows of :data:`NULL_METRICS` get the null's columns (see Returns).
        The ridge probe solves all labellings with the true ones (one solve per point and fold;
        1,000 permutations cost about 1-2 sweeps, see ``benchmarks/probes.py``); any other probe
        runs one full sweep per permutation (``n`` times the cost: use a few hundred at most).
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
        ``accuracy``, ``balanced_accuracy`` (mean recall over senses: 0.5 at chance for two
        senses however unbalanced), ``cohen_kappa`` (0 at chance), ``log_loss`` (natural log per
        example; NaN for probes without probabilities, e.g. ridge), ``control_accuracy``,
        ``selectivity`` (accuracy minus control accuracy; both NaN without ``control``) and
        ``majority_baseline`` (the training fold's majority class). Rows with ``fold >= 0`` are per
        fold (NaN interval); ``fold == -1`` rows hold the mean over folds and a percentile interval
        from a cluster bootstrap over groups (or examples) of the pooled out-of-fold predictions.
        With ``n_permutations > 0`` the frame has the columns ``null_mean, null_q95, null_fwer,
        p_value, p_fwer`` (:func:`trajgeo.stats.null_table` of each word's summary curve; filled
        on the summary rows of :data:`NULL_METRICS`, NaN elsewhere): ``null_fwer`` is the 95%
        quantile of the permuted curves' maximum over points, so a point above it is above chance
        at a 5% family-wise error rate over all points of the word; :func:`word_significance`
        reads each word's best point and adjusts across words (Holm). With ``return_result=True``,
        a :class:`ProbeSweep`.

    Raises
    ------
    ValueError
        When a class has fewer examples or groups than folds (naming the class, and the word).
    """
    _check_permutations(n_permutations)
    opts = _Options(probe=probe, normalize=normalize, random_state=random_state, n_permutations=int(n_permutations))
    frames, parts = [], []
    for part, res in _sweeps(traj, labels, word, groups, opts, control_by=control_by, cv=cv, control=control,
                             balance=balance, n_jobs=n_jobs, progress=progress, desc="layerwise"):
        units = part.options["units"][res.rows]
        frames.append(_with_word(_frame(res, units, n_boot, ci, random_state), part.word))
        parts.append((part, res, units))
    scores = pd.concat(frames, ignore_index=True)
    return _probe_sweep(scores, parts) if return_result else scores


def _check_permutations(n_permutations: Any) -> None:
    if isinstance(n_permutations, (bool, np.bool_)) or not isinstance(n_permutations, (int, np.integer)) \
            or n_permutations < 0:
        raise ValueError(f"n_permutations must be a non-negative int, got {n_permutations!r}")


def _probe_sweep(scores: pd.DataFrame, parts: list[tuple[_WordPart, _OutOfFold, np.ndarray]]) -> ProbeSweep:
    """The :class:`ProbeSweep` of the per-word sweeps ``(part, result, units)``, word after word."""
    has_null = parts[0][1].null_conf is not None
    return ProbeSweep(
        scores=scores,
        correct=np.concatenate([res.pred == res.y[:, None] for _, res, _ in parts]),
        units=np.concatenate([u for _, _, u in parts]),
        points=parts[0][1].points,
        example=np.concatenate([part.traj.meta["example"].to_numpy()[res.rows] for part, res, _ in parts]),
        word=None if parts[0][0].word is None else np.concatenate(
            [np.full(len(res.rows), part.word, dtype=object) for part, res, _ in parts]),
        y=np.concatenate([res.y for _, res, _ in parts]),
        pred=np.concatenate([res.pred for _, res, _ in parts]),
        # the pooled out-of-fold statistic under each permutation: the folds' confusions summed
        null={part.word: {m: v for m, v in _confusion_scores(res.null_conf.sum(0)).items() if m in NULL_METRICS}
              for part, res, _ in parts} if has_null else None,
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
    probe: str | BaseEstimator = "ridge",
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
    probe: str | BaseEstimator = "ridge",
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
    metric: str = "accuracy",
    n_boot: int = 1000,
    ci: float = 0.95,
    random_state: int | None = 0,
    **sweep_options: Any,
) -> pd.DataFrame:
    """The first point where the probe's score reaches ``fraction`` of its maximum, with an interval;
    read against the family-wise threshold of the null when the sweep has one.

    Parameters
    ----------
    traj_or_sweep : Trajectories, ndarray or ProbeSweep
        A :class:`ProbeSweep` (``layerwise(..., return_result=True)``) is read as it is; for
        trajectories a sweep is run first with ``sweep_options`` (the options of
        :func:`layerwise`: ``labels``, ``word``, ``groups``, ``probe``, ``n_permutations``, ...).
    fraction : float in (0, 1]
    metric : {"accuracy", "balanced_accuracy", "macro_f1", "cohen_kappa"}
        The score of the pooled out-of-fold predictions (all folds' test examples together).
        On unbalanced words prefer a chance-corrected one: ``"balanced_accuracy"`` or
        ``"cohen_kappa"`` (accuracy is near its peak wherever the majority sense is predicted).
    n_boot, ci : int, float
        The interval resamples groups (or examples) of the out-of-fold predictions and finds the
        resolution point of every replicate's curve (``n_boot=0``: no interval, NaN).
    random_state : int, optional
        Seeds the bootstrap (and the sweep, when one is run).

    Returns
    -------
    DataFrame with one row per word: ``[word,] metric``, ``fraction``, ``max_value``,
    ``threshold`` (``fraction * max_value``), ``resolution_point``, ``ci_low``, ``ci_high``
    (original point indices). When the sweep has a null (``n_permutations > 0``), also
    ``null_fwer`` (the 95% quantile over permutations of the pooled curve's maximum over points)
    and ``resolved``: a word whose peak does not exceed ``null_fwer`` is not resolved (its
    ``resolution_point`` is NaN); otherwise the resolution point is the first point that reaches
    the threshold *and* exceeds ``null_fwer``. Replicates that never exceed it are left out of the
    interval (NaN when all are).

    Raises
    ------
    ValueError
        For a DataFrame (scores alone carry no out-of-fold predictions to resample), or an unknown metric.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if metric not in NULL_METRICS:
        raise ValueError(f"metric must be one of {NULL_METRICS}, got {metric!r}")
    if isinstance(traj_or_sweep, pd.DataFrame):
        raise ValueError("this frame carries no out-of-fold predictions; pass the trajectories or the "
                         "ProbeSweep that layerwise(..., return_result=True) returns")
    if isinstance(traj_or_sweep, ProbeSweep):
        if sweep_options:
            raise TypeError(f"resolution_point(): {sorted(sweep_options)} apply only when trajectories are given; "
                            "this ProbeSweep was already run")
        sweep = traj_or_sweep
    else:
        sweep = layerwise(traj_or_sweep, n_boot=1, random_state=random_state, return_result=True, **sweep_options)
    words = [None] if sweep.word is None else pd.unique(sweep.word)
    rows = []
    for w in words:
        rows.append(_with_word(_resolution(sweep, w, fraction, metric, n_boot, ci, random_state), w))
    return pd.concat(rows, ignore_index=True)


def _resolution(sweep: ProbeSweep, word: Any, fraction: float, metric: str, n_boot: int, ci: float,
                random_state: int | None) -> pd.DataFrame:
    """The resolution-point row of one word (``word`` None: all rows of the sweep)."""
    rows = np.arange(len(sweep.units)) if word is None else np.flatnonzero(sweep.word == word)
    points = np.asarray(sweep.points)
    # n_boot=0: no interval (a zero-row weighting gives no replicate)
    boot = bootstrap_weights(sweep.units[rows], n_boot, random_state) if n_boot else np.zeros((0, len(rows)))
    if metric == "accuracy":
        correct = np.asarray(sweep.correct[rows], dtype=np.float64)
        curve = correct.mean(0)
        curves = boot @ correct / boot.sum(1, keepdims=True)  # (B, P)
    else:
        y, pred = sweep.y[rows], sweep.pred[rows]
        k = int(max(y.max(), pred.max())) + 1
        curve = _weighted_scores(y, pred, np.ones((1, len(rows))), k)[metric][0]
        curves = _weighted_scores(y, pred, boot, k)[metric]
    fwer = None
    if sweep.null is not None:
        fwer = float(null_table(curve, sweep.null[word][metric], points=points)["null_fwer"].iloc[0])

    def first(c: np.ndarray) -> np.ndarray:
        c = np.atleast_2d(c)
        reached = c >= fraction * np.nanmax(c, axis=-1, keepdims=True) - 1e-12
        if fwer is not None:
            reached &= c > fwer
        out = points[reached.argmax(axis=-1)].astype(np.float64)
        out[~reached.any(axis=-1)] = np.nan
        return out

    lo, hi = percentile_interval(first(curves)[:, None], ci) if n_boot else ([np.nan], [np.nan])
    point = first(curve)[0]
    row = {"metric": [metric], "fraction": [fraction], "max_value": [curve.max()],
           "threshold": [fraction * curve.max()],
           "resolution_point": [point if fwer is not None else int(point)],
           "ci_low": [lo[0]], "ci_high": [hi[0]]}
    if fwer is not None:
        row.update(null_fwer=[fwer], resolved=[bool(curve.max() > fwer)])
    return pd.DataFrame(row)


def word_significance(scores: pd.DataFrame, *, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Per word: its best point read against the family-wise null, and Holm's adjustment across words.

    Parameters
    ----------
    scores : DataFrame
        From :func:`layerwise` (or :func:`trajgeo.senses.separability`) run with ``n_permutations > 0``.
    metric : str
        One of :data:`NULL_METRICS`.

    Returns
    -------
    DataFrame with one row per word: ``[word,] metric, peak_point, peak_value, null_fwer, p_fwer,
    p_holm, resolved``. ``p_fwer`` is the family-wise (max-over-points) permutation p-value of
    the word's peak: the probability, with no sense information, that *some* point scores as high;
    ``p_holm`` adjusts these across the words of the frame (Holm 1979), so "at least one point of
    this word is above chance" holds at family-wise level ``p_holm`` over all words and points.
    ``resolved`` is ``peak_value > null_fwer`` (5% family-wise over the word's points).

    Raises
    ------
    ValueError
        When the frame has no null columns (run the sweep with ``n_permutations > 0``).
    """
    if not set(NULL_COLUMNS) <= set(scores.columns):
        raise ValueError("these scores have no null; run layerwise (or separability) with n_permutations > 0")
    rows = scores[(scores["metric"] == metric) & (scores.get("fold", -1) == -1)]
    if rows.empty or rows["null_fwer"].isna().all():
        raise ValueError(f"no null for metric {metric!r}; metrics with a null: {NULL_METRICS}")
    keys = ["word"] if "word" in rows.columns else []
    out = []
    for key, d in (rows.groupby(keys, sort=False) if keys else [(None, rows)]):
        best = d.loc[d["value"].idxmax()]
        out.append({**({"word": key[0] if isinstance(key, tuple) else key} if keys else {}), "metric": metric,
                    "peak_point": int(best["point"]), "peak_value": float(best["value"]),
                    "null_fwer": float(best["null_fwer"]), "p_fwer": float(d["p_fwer"].min())})
    df = pd.DataFrame(out)
    df["p_holm"] = holm(df["p_fwer"].to_numpy())
    df["resolved"] = df["peak_value"] > df["null_fwer"]
    return df
