"""The engine of the cross-validated sweep: fit a probe at every point of every fold, keep the
out-of-fold predictions, and score them under any example weighting (fold masks, bootstrap draws).

Speed notes are in the package docstring (:mod:`trajgeo.probes`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from trajgeo._arrays import as_states
from trajgeo.normalization import PointNormalizer
from trajgeo.probes._common import _balanced_subset, _map_with_progress
from trajgeo.probes.estimators import (
    _EPS, TunedLogisticRegression, _Constant, _fit_or_constant, _has_proba, _proba_full, make_probe,
)
from trajgeo.probes.splits import control_labels, make_splits
from trajgeo.trajectories import Trajectories

__all__: list[str] = []


@dataclass(frozen=True)
class _Options:
    """How one sweep fits its probes (shared by every fold job)."""

    probe: str | BaseEstimator = "logistic"
    normalize: str | None = None
    cumulative: str | None = None  # None, "concat" or "mean": Tenney et al.'s probe on points 0..l
    transfer_all: bool = False  # score every training point's probe at every test point
    random_state: int | None = 0


@dataclass
class _OutOfFold:
    """Out-of-fold predictions of one cross-validated sweep over points (one word).

    Rows are the examples the sweep used (all, or a class-balanced subset): ``y``, ``pred``,
    ``logp``, ``pred_c`` and ``majority`` are integer codes into ``classes``, per example (and point).
    """

    y: np.ndarray  # (n,)
    y_ctrl: np.ndarray | None  # (n,) control-task labels, None without a control task
    classes: np.ndarray  # (K,)
    pred: np.ndarray  # (n, P) predicted codes
    pred_c: np.ndarray  # (n, P) control-task predictions
    logp: np.ndarray  # (n, P) log p(true label); NaN without probabilities
    fold: np.ndarray  # (n,) the test fold of each example
    majority: np.ndarray  # (n,) the training fold's majority class
    groups: np.ndarray | None  # (n,) group codes, None when ungrouped
    rows: np.ndarray  # (n,) positions of the examples in the trajectories given to the sweep
    n_folds: int
    points: np.ndarray  # (P,) original point indices
    acc_matrices: list[np.ndarray | None]  # per fold (P, P) transfer accuracies (transfer_all only)


class _PointFitter:
    """The task and control probes of one fold, refitted point after point.

    The tuned logistic probe is kept from point to point so that every fit warm-starts from the
    previous point's solution; any other probe is made fresh at each point.
    """

    def __init__(self, opts: _Options) -> None:
        self.opts = opts
        self.est = make_probe(opts.probe, opts.random_state)
        self.tuned = isinstance(self.est, TunedLogisticRegression)
        if self.tuned:
            # warm starts need the same features at every point: not so for growing concatenations
            self.est.set_params(warm_start=opts.cumulative != "concat")
            self.ctrl_est = LogisticRegression(warm_start=True, tol=self.est.tol, max_iter=self.est.max_iter)
        self.proba_ok = _has_proba(opts.probe, self.est)

    def task(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> Any:
        if not self.tuned:
            self.est = make_probe(self.opts.probe, self.opts.random_state)
        return _fit_or_constant(self.est, X, y, groups if self.tuned else None)

    def control(self, X: np.ndarray, y_ctrl: np.ndarray) -> Any:
        # the control probe has the task probe's hyperparameters (Hewitt and Liang 2019)
        est = self.ctrl_est.set_params(C=self.est.C_) if self.tuned else make_probe(
            self.opts.probe, self.opts.random_state)
        return _fit_or_constant(est, X, y_ctrl, None)


def _fold_features(x: np.ndarray, train: np.ndarray, opts: _Options) -> np.ndarray:
    """States normalised with the training fold's statistics (all points in one pass), (n, P, D)."""
    xn = PointNormalizer(opts.normalize).fit(x[train]).transform(x)
    if opts.cumulative == "mean":  # Tenney et al.'s probe on points 0..l, as an equal-weight scalar mix
        xn = np.cumsum(xn, axis=1) / np.arange(1, xn.shape[1] + 1)[None, :, None]
    return xn


def _fold_job(
    x: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    y: np.ndarray,
    y_ctrl: np.ndarray | None,
    groups: np.ndarray | None,
    n_classes: int,
    opts: _Options,
    tick: Callable[[int], Any] | None = None,
) -> dict[str, np.ndarray | None]:
    """Fit the probe at every point on one fold's training examples and predict its test examples.

    x : (n, P, D) states. Returns predicted codes (n_test, P), log p(true) (n_test, P) and the
    control predictions; with ``opts.transfer_all`` the accuracy matrix (P_train, P_test) instead.
    ``tick(1)`` is called after each point (in-process runs only: it moves the progress bar).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        xn = _fold_features(x, train, opts)
        P = xn.shape[1]

        def feats(rows: np.ndarray, p: int) -> np.ndarray:
            if opts.cumulative == "concat":  # points 0..p side by side: the feature count grows with p
                return xn[rows, : p + 1].reshape(len(rows), -1)
            return xn[rows, p]

        fitter = _PointFitter(opts)
        g_tr = None if groups is None else groups[train]
        out: dict[str, Any] = {"pred": np.zeros((len(test), P), dtype=int), "logp": np.full((len(test), P), np.nan),
                               "pred_c": np.zeros((len(test), P), dtype=int),
                               "acc_matrix": np.zeros((P, P)) if opts.transfer_all else None}
        for p in range(P):
            model = fitter.task(feats(train, p), y[train], g_tr)
            if opts.transfer_all:
                hits = model.predict(xn[test].reshape(-1, xn.shape[2])).reshape(len(test), P) == y[test, None]
                out["acc_matrix"][p] = hits.mean(0)
            else:
                _predict(model, feats(test, p), y[test], n_classes, fitter.proba_ok, out, p)
                if y_ctrl is not None:
                    out["pred_c"][:, p] = fitter.control(xn[train, p], y_ctrl[train]).predict(xn[test, p])
            if tick is not None:
                tick(1)
        return out


def _predict(model: Any, X: np.ndarray, y: np.ndarray, n_classes: int, proba_ok: bool,
             out: dict[str, np.ndarray], p: int) -> None:
    """Write the predicted codes (and log p(true) when the probe has probabilities) of point p."""
    if proba_ok and not isinstance(model, _Constant):
        proba = _proba_full(model, X, np.arange(n_classes))
        out["pred"][:, p] = proba.argmax(1)
        out["logp"][:, p] = np.log(np.maximum(proba[np.arange(len(y)), y], _EPS))
    else:
        out["pred"][:, p] = model.predict(X)


def _run_cv(
    traj: Trajectories,
    labels: np.ndarray,
    groups: np.ndarray | None,
    opts: _Options,
    *,
    cv: int | Any = 5,
    control: bool = False,
    control_by: str | Sequence[Any] | np.ndarray = "auto",
    balance: bool = False,
    n_jobs: int | None = 1,
    progress: bool = True,
    desc: str = "probes",
) -> _OutOfFold:
    """Cross-validate the probe at every point of ``traj`` (one word) and pool the out-of-fold predictions.

    ``labels`` and ``groups`` are per-example arrays (groups: any values, or None when ungrouped).
    """
    rs = opts.random_state
    g = None if groups is None else pd.factorize(groups)[0]
    y_ctrl_raw = control_labels(traj, labels=labels, control_by=control_by, random_state=rs) if control else None
    idx = _balanced_subset(labels, rs) if balance else np.arange(len(labels))
    x = as_states(traj)[idx]
    y_raw = labels[idx]
    g = None if g is None else pd.factorize(g[idx])[0]
    classes, y = np.unique(y_raw, return_inverse=True)
    y_ctrl = None if y_ctrl_raw is None else np.searchsorted(classes, y_ctrl_raw[idx])
    splits = make_splits(y_raw, g, cv, random_state=rs)  # raw labels: errors name the class
    args = [(x, tr, te, y, y_ctrl, g, len(classes), opts) for tr, te in splits]
    results = _map_with_progress(_fold_job, args, n_jobs, x.shape[1], progress, desc)
    n, P = len(y), x.shape[1]
    res = _OutOfFold(
        y=y, y_ctrl=y_ctrl, classes=classes, pred=np.zeros((n, P), dtype=int), pred_c=np.zeros((n, P), dtype=int),
        logp=np.full((n, P), np.nan), fold=np.full(n, -1), majority=np.zeros(n, dtype=int), groups=g, rows=idx,
        n_folds=len(splits), points=np.asarray(traj.points), acc_matrices=[r["acc_matrix"] for r in results],
    )
    for f, ((tr, te), r) in enumerate(zip(splits, results)):
        res.fold[te] = f
        if not opts.transfer_all:
            res.pred[te], res.pred_c[te], res.logp[te] = r["pred"], r["pred_c"], r["logp"]
        res.majority[te] = np.bincount(y[tr], minlength=len(classes)).argmax()  # the training fold's majority
    return res


def _weighted_scores(
    y: np.ndarray, pred: np.ndarray, weights: np.ndarray, n_classes: int
) -> dict[str, np.ndarray]:
    """Accuracy, macro F1 and balanced accuracy for every point and weighting at once.

    y : (n,) int codes; pred : (n, P) int codes; weights : (B, n) example weights (fold masks or
    bootstrap counts). Returns arrays of shape (B, P). Macro F1 averages over the classes present
    in y or pred (as scikit-learn does), balanced accuracy over the classes present in y.
    """
    correct = (pred == y[:, None]).astype(np.float64)
    tot = weights.sum(1, keepdims=True)
    out = {"accuracy": weights @ correct / tot}
    f1 = np.zeros((weights.shape[0], pred.shape[1]))
    n_f1 = np.zeros_like(f1)
    rec = np.zeros_like(f1)
    n_rec = np.zeros_like(f1)
    for k in range(n_classes):
        is_k = (y == k).astype(np.float64)
        t_k = weights @ is_k  # (B,)
        p_k = weights @ (pred == k).astype(np.float64)  # (B, P)
        tp = weights @ (correct * is_k[:, None])
        denom = t_k[:, None] + p_k
        present = denom > 0
        f1 += np.where(present, 2 * tp / np.where(present, denom, 1), 0.0)
        n_f1 += present
        has = (t_k > 0)[:, None]
        rec += np.where(has, tp / np.where(has, t_k[:, None], 1), 0.0)
        n_rec += has
    out["macro_f1"] = f1 / np.maximum(n_f1, 1)
    out["balanced_accuracy"] = rec / np.maximum(n_rec, 1)
    return out


def _metric_arrays(res: _OutOfFold, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every layerwise metric, (B, P), for a batch of example weightings (B, n)."""
    P = res.pred.shape[1]
    out = _weighted_scores(res.y, res.pred, weights, len(res.classes))
    tot = weights.sum(1, keepdims=True)
    out["log_loss"] = (
        weights @ np.nan_to_num(-res.logp) / tot if not np.isnan(res.logp).any()
        else np.full_like(out["accuracy"], np.nan)
    )
    if res.y_ctrl is not None:
        ctrl_correct = (res.pred_c == res.y_ctrl[:, None]).astype(np.float64)
        out["control_accuracy"] = weights @ ctrl_correct / tot
    else:
        out["control_accuracy"] = np.full_like(out["accuracy"], np.nan)
    out["selectivity"] = out["accuracy"] - out["control_accuracy"]
    base = weights @ (res.majority == res.y).astype(np.float64) / tot[:, 0]
    out["majority_baseline"] = np.repeat(base[:, None], P, axis=1)
    return out


def _fold_weights(res: _OutOfFold) -> np.ndarray:
    """One 0/1 weighting per fold, (n_folds, n): the fold's test examples."""
    return (res.fold[None, :] == np.arange(res.n_folds)[:, None]).astype(np.float64)
