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
from trajgeo.probes.ridge import RidgeProbe, _check as _check_ridge_options, _RidgeSolver, shared_predictions
from trajgeo.probes.splits import _check_control, control_labels, make_splits
from trajgeo.stats import group_permutations
from trajgeo.trajectories import Trajectories

__all__: list[str] = []

_CONTROLLER: Any = None


def _one_blas_thread() -> Any:
    """A context holding BLAS to one thread (the controller, slow to make, is made once per process)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1)


# PointNormalizer's default floor on standard deviations (constant dimensions do not explode)
_SCALE_EPS = PointNormalizer().eps


@dataclass(frozen=True)
class _Options:
    """How one sweep fits its probes (shared by every fold job)."""

    probe: str | BaseEstimator = "logistic"
    normalize: str | None = None
    cumulative: str | None = None  # None, "concat" or "mean": Tenney et al.'s probe on points 0..l
    transfer_all: bool = False  # score every training point's probe at every test point
    random_state: int | None = 0
    n_permutations: int = 0  # group-respecting label permutations for the null (0: none)


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
    # per fold, permutation and point the confusion counts (true x predicted) of the permuted labels
    # on the fold's test examples: (n_folds, n_permutations, P, K, K); None without a null
    null_conf: np.ndarray | None = None


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
    with _one_blas_thread(), warnings.catch_warnings():
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


def _partitions(splits: Sequence[tuple[np.ndarray, np.ndarray]], n: int) -> bool:
    """Whether the test folds partition the examples and each training fold is the rest."""
    tests = np.concatenate([te for _, te in splits])
    return (len(tests) == n and (np.sort(tests) == np.arange(n)).all()
            and all(len(tr) + len(te) == n for tr, te in splits))


def _ridge_point_job(
    xp: np.ndarray,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    normalize: str | None,
    codes: np.ndarray,
    n_first: int,
    n_classes: int,
    probe: RidgeProbe,
    tick: Callable[[int], Any] | None = None,
) -> dict[str, np.ndarray]:
    """The ridge probe at one point, every fold, every labelling at once.

    xp : (n, D) raw states at one point; each fold's normaliser is fitted on its training rows.
    ``codes`` (n, L): the labellings (the true labels, [control labels,] then the permutations,
    from column ``n_first`` on). Returns ``pred`` (n, n_first): the out-of-fold predictions of the
    first columns, and ``null_conf`` (n_folds, L - n_first, K, K): each permutation's confusion
    counts on each test fold.

    When training examples outnumber features (the d x d form), the normaliser is per dimension
    and the test folds partition the examples, one pass serves all folds: each fold's scatter
    matrix is the sum of the other folds' blocks, and its mean and standard deviations (what
    :class:`~trajgeo.normalization.PointNormalizer` would fit on the fold, in float64) come from
    the same sums. Otherwise each fold is normalised by a ``PointNormalizer`` fitted on its rows.
    """
    n, d = xp.shape
    n_perm = codes.shape[1] - n_first
    out = {"pred": np.zeros((n, n_first), dtype=np.int64),
           "null_conf": np.zeros((len(splits), n_perm, n_classes, n_classes), dtype=np.int64)}
    with _one_blas_thread():
        shared = (normalize in (None, "center", "standardize") and min(len(tr) for tr, _ in splits) > d
                  and _partitions(splits, n))
        if shared:
            z = xp - xp.mean(0, dtype=np.float64)  # float64, shifted: large means must not cancel
            blocks = [_scatter(z[te]) for _, te in splits]
            total = (sum(b[0] for b in blocks), sum(b[1] for b in blocks))
        alphas = _check_ridge(probe)
        for f, (tr, te) in enumerate(splits):
            if shared:
                m = len(tr)
                mean = (total[1] - blocks[f][1]) / m
                gram = total[0] - blocks[f][0]
                root = np.sqrt(m) * mean
                gram -= np.outer(root, root)  # the training rows' centred scatter
                scale: np.ndarray | float = 1.0
                if normalize == "standardize":
                    scale = np.maximum(np.sqrt(np.maximum(np.diag(gram) / m, 0.0)), _SCALE_EPS)
                    inv = 1.0 / scale
                    gram *= inv[:, None]
                    gram *= inv[None, :]
                solver = _RidgeSolver.from_scatter(gram, z, tr, mean, scale, alphas, probe.criterion)
                pred = shared_predictions(probe, solver, (z[te] - mean) / scale, codes[tr], n_classes)
            else:
                norm = PointNormalizer(normalize).fit(xp[tr][:, None])
                x_tr, x_te = norm.transform(xp[tr][:, None])[:, 0], norm.transform(xp[te][:, None])[:, 0]
                pred = shared_predictions(probe, x_tr, x_te, codes[tr], n_classes)
            out["pred"][te] = pred[:, :n_first]
            if n_perm:
                out["null_conf"][f] = _confusions(codes[te, n_first:].T, pred[:, n_first:].T, n_classes)
            if tick is not None:
                tick(1)
    return out


def _check_ridge(probe: RidgeProbe) -> np.ndarray:
    return _check_ridge_options(probe.alpha, probe.criterion, probe.prior)


def _scatter(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(z.T @ z, z.sum(0))`` of a block of rows (one buffer, so BLAS takes the symmetric product)."""
    z = np.ascontiguousarray(z)
    return z.T @ z, z.sum(0)


def _confusions(t: np.ndarray, p: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion counts of B labellings at once: t, p (B, n) int codes -> (B, K, K), [true, predicted]."""
    B, K = len(t), n_classes
    idx = (np.arange(B)[:, None] * K * K + t * K + p).reshape(-1)
    return np.bincount(idx, minlength=B * K * K).reshape(B, K, K)


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
    With ``opts.n_permutations`` the labels are also permuted among groups
    (:func:`trajgeo.stats.group_permutations`, seeded by ``opts.random_state``) and each
    permutation is cross-validated with the *same* splits: the ridge probe in the same solves as
    the true labels, any other probe by a full sweep per permutation (slow).
    """
    rs = opts.random_state
    g = None if groups is None else pd.factorize(groups)[0]
    idx = _balanced_subset(labels, rs) if balance else np.arange(len(labels))
    x = as_states(traj)[idx]
    y_raw = labels[idx]
    g = None if g is None else pd.factorize(g[idx])[0]
    classes, y = np.unique(y_raw, return_inverse=True)
    splits = make_splits(y_raw, g, cv, random_state=rs)  # raw labels: errors name the class
    y_ctrl = None
    if control:
        y_ctrl_raw = control_labels(traj, labels=labels, control_by=control_by, random_state=rs)
        _check_control(traj.meta, control_by, idx, splits)
        y_ctrl = np.searchsorted(classes, y_ctrl_raw[idx])
    perm_codes = None
    if opts.n_permutations:
        perm_codes = y[group_permutations(y, groups=g, n_permutations=opts.n_permutations, random_state=rs)]
    K = len(classes)
    n, P = len(y), x.shape[1]
    res = _OutOfFold(
        y=y, y_ctrl=y_ctrl, classes=classes, pred=np.zeros((n, P), dtype=int), pred_c=np.zeros((n, P), dtype=int),
        logp=np.full((n, P), np.nan), fold=np.full(n, -1), majority=np.zeros(n, dtype=int), groups=g, rows=idx,
        n_folds=len(splits), points=np.asarray(traj.points), acc_matrices=[None] * len(splits),
    )
    for f, (tr, te) in enumerate(splits):
        res.fold[te] = f
        res.majority[te] = np.bincount(y[tr], minlength=K).argmax()  # the training fold's majority
    probe = make_probe(opts.probe, rs)
    if isinstance(probe, RidgeProbe) and opts.cumulative is None and not opts.transfer_all:
        # the ridge probe: every labelling (true, control, permuted) in one solve per point and fold
        cols = [y] + ([y_ctrl] if y_ctrl is not None else []) + ([perm_codes.T] if perm_codes is not None else [])
        codes = np.column_stack(cols)
        n_first = 2 if y_ctrl is not None else 1
        args = [(np.ascontiguousarray(x[:, p]), splits, opts.normalize, codes, n_first, K, probe) for p in range(P)]
        results = _map_with_progress(_ridge_point_job, args, n_jobs, len(splits), progress, desc)
        for p, r in enumerate(results):
            res.pred[:, p] = r["pred"][:, 0]
            if y_ctrl is not None:
                res.pred_c[:, p] = r["pred"][:, 1]
        if perm_codes is not None:
            res.null_conf = np.stack([r["null_conf"] for r in results], axis=2)  # (n_folds, B, P, K, K)
        return res
    args = [(x, tr, te, y, y_ctrl, g, K, opts) for tr, te in splits]
    results = _map_with_progress(_fold_job, args, n_jobs, P, progress, desc)
    res.acc_matrices = [r["acc_matrix"] for r in results]
    for (tr, te), r in zip(splits, results):
        if not opts.transfer_all:
            res.pred[te], res.pred_c[te], res.logp[te] = r["pred"], r["pred_c"], r["logp"]
    if perm_codes is not None:
        res.null_conf = _permuted_sweeps(x, splits, perm_codes, g, K, opts, n_jobs, progress, desc)
    return res


def _permuted_sweeps(x: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], perm_codes: np.ndarray,
                     groups: np.ndarray | None, n_classes: int, opts: _Options, n_jobs: int | None,
                     progress: bool, desc: str) -> np.ndarray:
    """The null of a probe that cannot share its solve: one full sweep per permuted labelling, with
    the same splits. Returns confusion counts (n_folds, n_permutations, P, K, K)."""
    from tqdm.auto import tqdm

    B, P = len(perm_codes), x.shape[1]
    conf = np.zeros((len(splits), B, P, n_classes, n_classes), dtype=np.int64)
    for b in tqdm(range(B), desc=f"{desc} null", unit="permutation", disable=not progress):
        yb = perm_codes[b]
        args = [(x, tr, te, yb, None, groups, n_classes, opts) for tr, te in splits]
        for f, ((_, te), r) in enumerate(zip(splits, _map_with_progress(_fold_job, args, n_jobs, P, False, desc))):
            conf[f, b] = _confusions(np.broadcast_to(yb[te], (P, len(te))), r["pred"].T, n_classes)
    return conf


def _confusion_scores(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro F1 and Cohen's kappa from confusion counts (..., K, K).

    The same definitions as :func:`_weighted_scores` (classes present in the true labels for balanced
    accuracy; present in the true or predicted labels for macro F1; kappa NaN where chance agreement is 1).
    """
    conf = np.asarray(conf, dtype=np.float64)
    tot = conf.sum((-2, -1))
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    t_k, p_k = conf.sum(-1), conf.sum(-2)
    acc = tp.sum(-1) / tot
    with np.errstate(divide="ignore", invalid="ignore"):
        has = t_k > 0
        bal = np.where(has, tp / np.where(has, t_k, 1), 0.0).sum(-1) / np.maximum(has.sum(-1), 1)
        present = (t_k + p_k) > 0
        f1 = np.where(present, 2 * tp / np.where(present, t_k + p_k, 1), 0.0).sum(-1) / np.maximum(present.sum(-1), 1)
        pe = (t_k * p_k).sum(-1) / tot**2
        kappa = np.where(pe < 1, (acc - pe) / np.where(pe < 1, 1 - pe, 1), np.nan)
    return {"accuracy": acc, "balanced_accuracy": bal, "macro_f1": f1, "cohen_kappa": kappa}


def _weighted_scores(
    y: np.ndarray, pred: np.ndarray, weights: np.ndarray, n_classes: int
) -> dict[str, np.ndarray]:
    """Accuracy, macro F1, balanced accuracy and Cohen's kappa for every point and weighting at once.

    y : (n,) int codes; pred : (n, P) int codes; weights : (B, n) example weights (fold masks or
    bootstrap counts). Returns arrays of shape (B, P). Macro F1 averages over the classes present
    in y or pred (as scikit-learn does), balanced accuracy over the classes present in y; kappa is
    (accuracy - chance) / (1 - chance) with chance = sum_k share_true(k) share_pred(k), NaN when
    chance is 1 (one class on both sides).
    """
    correct = (pred == y[:, None]).astype(np.float64)
    tot = weights.sum(1, keepdims=True)
    out = {"accuracy": weights @ correct / tot}
    f1 = np.zeros((weights.shape[0], pred.shape[1]))
    n_f1 = np.zeros_like(f1)
    rec = np.zeros_like(f1)
    n_rec = np.zeros_like(f1)
    chance = np.zeros_like(f1)  # the agreement expected from the marginals (Cohen's kappa)
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
        chance += t_k[:, None] * p_k / tot**2
    out["macro_f1"] = f1 / np.maximum(n_f1, 1)
    out["balanced_accuracy"] = rec / np.maximum(n_rec, 1)
    out["cohen_kappa"] = np.where(chance < 1, (out["accuracy"] - chance) / np.where(chance < 1, 1 - chance, 1), np.nan)
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
