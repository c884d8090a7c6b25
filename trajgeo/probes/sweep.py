"""Layer-wise probes done carefully: grouped splits, control tasks, information and transfer.

A probe asks whether a property (here: the sense of the target word) can be read off the
residual stream at one point. Done carelessly, probes leak (the same sentence in training and
test folds), overclaim (a powerful probe memorises anything) and ignore imbalance (CoarseWSD-20
``bank`` is about 90/10). The functions here guard against each:

- :func:`layerwise` cross-validates a probe at every point with grouped, stratified splits and
  normalisation fitted on the training fold only; it reports macro F1, accuracy, balanced
  accuracy, log-loss, the majority baseline, and the control task accuracy and selectivity of
  Hewitt and Liang (2019), each per fold and as a mean with a cluster-bootstrap interval.
- :func:`mdl` gives the online codelength of Voita and Titov (2020).
- :func:`transfer` trains at point i and tests at point j.
- :func:`expected_layer` is the cumulative-probe summary of Tenney et al. (2019).
- :func:`resolution_point` is the first point where accuracy reaches a fraction of its maximum.
- :func:`loureiro_1nn` is the 1-NN sense-vector protocol of Loureiro et al. (2021).

Speed
-----
The sweep normalises all points of a fold at once (one pass over the array), walks the points in
order and warm-starts each point's logistic regressions from the previous point's solution
(adjacent residual states are similar, so lbfgs needs few iterations), and runs the folds in
parallel with joblib. BLAS is held to one thread inside each job: for problems of this size
(a few thousand x a few hundred) multi-threaded BLAS only adds synchronisation, and two shared
cores running competing OpenBLAS pools made each lbfgs iteration ~30x slower on the development
machine. Measured there (``benchmarks/probes.py``, 2,000 examples x 31 points x 576 dims,
5 folds, ``n_jobs=1``, machine heavily shared): the sweep with the tuned logistic probe (5 values
of C x 3 grouped inner folds, i.e. 16 fits per point and fold) plus the control task took 45 s
wall (about 11 s of CPU); the plain loop ``cross_val_score(LogisticRegression())`` per point
took 236 s with default BLAS threading (5.2x slower than the sweep) but 3.2 s with BLAS at one
thread: per fit the sweep is as cheap as the loop, and the extra time is the tuning and the
control task the loop does not do. Cost grows linearly in points, folds, grid size x inner
folds, and roughly linearly in examples; ``n_jobs`` up to the number of folds divides it.

Progress
--------
:func:`layerwise`, :func:`transfer`, :func:`expected_layer` and :func:`mdl` show a tqdm bar over
points x folds (points x blocks for MDL), ``progress=False`` silences it. With ``n_jobs=1`` it
moves after every point; with parallel jobs it moves by a whole fold as each fold completes.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.svm import LinearSVC

from trajgeo.geometry import DEFAULT_NORMALIZE, PointNormalizer
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = [
    "layerwise",
    "transfer",
    "mdl",
    "expected_layer",
    "resolution_point",
    "loureiro_1nn",
    "make_probe",
    "control_labels",
    "make_splits",
    "TunedLogisticRegression",
    "CosinePrototypeClassifier",
    "PROBES",
    "METRICS",
    "VOITA_TITOV_BLOCKS",
    "LOUREIRO_BERT_BASE",
]

PROBES = ("logistic", "svm", "mlp", "prototype", "1nn")
#: Metric names of :func:`layerwise`, in the order they appear (macro F1 first: senses are unbalanced).
METRICS = (
    "macro_f1", "accuracy", "balanced_accuracy", "log_loss",
    "control_accuracy", "selectivity", "majority_baseline",
)
#: Block boundaries of the online code, as fractions of the data (Voita and Titov 2020, section 2.2).
VOITA_TITOV_BLOCKS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)
#: The paper's figures for BERT-base with the 1-NN protocol on CoarseWSD-20 (Loureiro et al. 2021):
#: mean per-word macro F1 and accuracy, to compare :func:`loureiro_1nn` results against.
LOUREIRO_BERT_BASE = {"macro_f1": 0.910, "accuracy": 0.957}
DEFAULT_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# Probabilities are floored before the log so that a confident error costs a finite amount.
_EPS = 1e-15


# ============================================================================ estimators
class CosinePrototypeClassifier(ClassifierMixin, BaseEstimator):
    """Nearest prototype by cosine: each class is the mean of its training vectors.

    This is the sense-vector classifier of Loureiro et al. (2021) and the centroid probe of
    Coenen et al. (2019): the prototype is the plain mean (not of unit vectors), and a vector
    is assigned to the class whose prototype has the largest cosine with it.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    prototypes_ : ndarray of shape (n_classes, n_features)
    """

    def fit(self, X: np.ndarray, y: np.ndarray) -> "CosinePrototypeClassifier":
        X = np.asarray(X, dtype=np.float64)
        self.classes_, codes = np.unique(np.asarray(y), return_inverse=True)
        counts = np.bincount(codes, minlength=len(self.classes_))
        sums = np.zeros((len(self.classes_), X.shape[1]))
        np.add.at(sums, codes, X)
        self.prototypes_ = sums / counts[:, None]
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Cosine of each row of X (n_samples, n_features) with each prototype -> (n_samples, n_classes)."""
        X = np.asarray(X, dtype=np.float64)
        num = X @ self.prototypes_.T
        den = np.linalg.norm(X, axis=1)[:, None] * np.linalg.norm(self.prototypes_, axis=1)[None]
        return num / np.maximum(den, 1e-12)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(axis=1)]


class TunedLogisticRegression(ClassifierMixin, BaseEstimator):
    """L2 logistic regression whose C is chosen by grouped inner cross-validation.

    Like :class:`~sklearn.linear_model.LogisticRegressionCV`, but the inner splits respect
    ``groups`` (examples sharing a sentence stay together, also when tuning) and, with
    ``warm_start=True``, every inner and final model starts from the solution of the previous
    call to :meth:`fit`. :func:`layerwise` calls ``fit`` point after point on the same training
    examples, so each point starts from its predecessor's coefficients.

    Parameters
    ----------
    Cs : sequence of float
        Inverse regularisation strengths to try (features are standardised first, so the default
        grid 1e-4..1 spans strong to weak regularisation).
    inner_cv : int
        Inner folds (StratifiedGroupKFold). Reduced to the smallest class's group count when a
        class has fewer groups; with fewer than 2, no tuning is done and ``fallback_C`` is used.
    scoring : {"log_loss", "accuracy"}
        Validation criterion: mean held-out log-likelihood (default; smoother than accuracy) or accuracy.
    fallback_C : float
        C used when the training data are too small to tune.
    tol, max_iter : float, int
        Passed to the lbfgs solver.
    warm_start : bool
        Reuse the previous fit's coefficients as the starting point.
    random_state : int
        Seeds the inner splits.

    Attributes
    ----------
    C_ : float
        The chosen C.
    cv_scores_ : ndarray of shape (n_Cs,)
        Mean validation score of each C (NaN when not tuned).
    classes_ : ndarray of shape (n_classes,)
    estimator_ : LogisticRegression
        The model refitted on all training data with ``C_``.
    """

    def __init__(
        self,
        Cs: Sequence[float] = DEFAULT_CS,
        inner_cv: int = 3,
        scoring: str = "log_loss",
        fallback_C: float = 1.0,
        tol: float = 1e-4,
        max_iter: int = 500,
        warm_start: bool = False,
        random_state: int | None = 0,
    ) -> None:
        self.Cs = Cs
        self.inner_cv = inner_cv
        self.scoring = scoring
        self.fallback_C = fallback_C
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.random_state = random_state

    def _lr(self, C: float) -> LogisticRegression:
        return LogisticRegression(C=C, tol=self.tol, max_iter=self.max_iter, warm_start=self.warm_start)

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> "TunedLogisticRegression":
        """Tune C on inner folds of (X, y), then refit on all of it.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
        groups : ndarray of shape (n_samples,), optional
            Inner folds never split a group.
        """
        if self.scoring not in ("log_loss", "accuracy"):
            raise ValueError(f"scoring must be 'log_loss' or 'accuracy', got {self.scoring!r}")
        y = np.asarray(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        Cs = [float(c) for c in self.Cs]
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        # the inner splits depend only on (y, groups, random_state): identical from point to point,
        # which is what lets each inner model warm-start from the previous point's
        key = (len(y), hash(codes.tobytes()), hash(pd.util.hash_array(groups).tobytes()))
        if not (self.warm_start and getattr(self, "_split_key", None) == key):
            n_groups = min(len(np.unique(groups[codes == k])) for k in range(len(self.classes_)))
            n_inner = min(self.inner_cv, n_groups)
            self._splits = (
                list(StratifiedGroupKFold(n_inner, shuffle=True, random_state=self.random_state)
                     .split(X, codes, groups))
                if n_inner >= 2 and len(self.classes_) > 1 else []
            )
            self._inner = [[self._lr(C) for C in Cs] for _ in self._splits]
            self._final = self._lr(self.fallback_C)
            self._split_key = key
        scores = np.full(len(Cs), np.nan)
        if self._splits:
            scores[:] = 0.0
            for (tr, va), models in zip(self._splits, self._inner):
                for c, model in enumerate(models):
                    model.fit(X[tr], y[tr])
                    proba = _proba_full(model, X[va], self.classes_)
                    if self.scoring == "log_loss":
                        scores[c] += np.log(np.maximum(proba[np.arange(len(va)), codes[va]], _EPS)).mean()
                    else:
                        scores[c] += (proba.argmax(1) == codes[va]).mean()
            self.C_ = Cs[int(np.argmax(scores))]  # ties go to the stronger regularisation
        else:
            self.C_ = float(self.fallback_C)
        self.cv_scores_ = scores / max(len(self._splits), 1)
        self.estimator_ = self._final.set_params(C=self.C_).fit(X, y)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.estimator_.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.estimator_.predict(X)


def make_probe(probe: str | BaseEstimator = "logistic", random_state: int | None = 0) -> BaseEstimator:
    """The estimator behind a probe name (a fresh clone of a user estimator).

    Parameters
    ----------
    probe : {"logistic", "svm", "mlp", "prototype", "1nn"} or scikit-learn classifier
        ``"logistic"``: :class:`TunedLogisticRegression` (C by grouped inner CV);
        ``"svm"``: :class:`~sklearn.svm.LinearSVC` (C=1, no probabilities, so no log-loss);
        ``"mlp"``: one hidden layer of 256 ReLU units with early stopping;
        ``"prototype"``: :class:`CosinePrototypeClassifier`;
        ``"1nn"``: cosine 1-nearest neighbour (Coenen et al. 2019; Loureiro et al. 2021).
        Any other scikit-learn classifier is cloned as given.
    random_state : int, optional
        Seeds the estimators that are random (inner splits, MLP initialisation).
    """
    if isinstance(probe, str):
        if probe == "logistic":
            return TunedLogisticRegression(random_state=random_state)
        if probe == "svm":
            return LinearSVC(C=1.0, max_iter=5000, random_state=random_state)
        if probe == "mlp":
            return MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-3, early_stopping=True,
                                 max_iter=300, random_state=random_state)
        if probe == "prototype":
            return CosinePrototypeClassifier()
        if probe == "1nn":
            return KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute")
        raise ValueError(f"unknown probe {probe!r}; expected one of {PROBES} or a scikit-learn classifier")
    if not (hasattr(probe, "fit") and hasattr(probe, "predict")):
        raise ValueError(f"probe must be a name in {PROBES} or a scikit-learn classifier, got {probe!r}")
    return clone(probe)


def _has_proba(probe: str | BaseEstimator, est: BaseEstimator) -> bool:
    # 1-NN "probabilities" are 0/1: their log-loss is a count of errors times 34.5, not information
    return hasattr(est, "predict_proba") and probe != "1nn" and not isinstance(est, KNeighborsClassifier)


def _proba_full(est: Any, X: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """predict_proba of est as columns over all ``classes`` (a class unseen in training gets 0)."""
    proba = est.predict_proba(X)
    out = np.zeros((len(X), len(classes)))
    out[:, np.searchsorted(classes, est.classes_)] = proba
    return out


# ============================================================================ inputs
def _states(traj: Trajectories) -> np.ndarray:
    s = traj.states
    if hasattr(s, "compute"):
        s = s.compute()
    return np.asarray(s, dtype=np.float32)


def _labels(traj: Trajectories, labels: str | Sequence[Any] | np.ndarray) -> np.ndarray:
    y = traj.labels(labels)
    missing = pd.isna(pd.Series(y)).to_numpy()
    if missing.any():
        ex = traj.meta["example"].to_numpy()[missing][:5].tolist()
        raise ValueError(f"labels are missing for {int(missing.sum())} examples (example ids {ex} ...)")
    return y


def _balanced_subset(y: np.ndarray, random_state: int | None) -> np.ndarray:
    """Indices of a class-balanced subsample: every class cut to the smallest class's size."""
    rng = np.random.default_rng(random_state)
    classes, codes = np.unique(y, return_inverse=True)
    m = np.bincount(codes).min()
    keep = [rng.permutation(np.flatnonzero(codes == k))[:m] for k in range(len(classes))]
    return np.sort(np.concatenate(keep))


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


def control_labels(
    traj: Trajectories | np.ndarray,
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
        probe can only solve the control task by memorising word identities. With one target
        word per data set (the usual case here) every example would share one type and one
        label, so ``"auto"`` uses the type (target word, the word just before it), both
        lower-cased and read from ``text``/``char_start``: a surface property that recurs across
        sentences, is visible in the target's residual stream, and has to be memorised to be
        predicted. Without text in ``meta``, ``"auto"`` falls back to ``word`` when the data hold
        several words, else to one type per example (the control is then random labels).
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
    meta = traj.meta
    if isinstance(control_by, str) and control_by == "auto":
        word_col = next((c for c in ("target", "word") if c in meta.columns), None)
        if {"text", "char_start"} <= set(meta.columns):
            word = meta[word_col].astype(str).str.lower() if word_col else pd.Series([""] * len(meta))
            prev = [_previous_word(t, s) for t, s in zip(meta["text"], meta["char_start"])]
            types = (word + "|" + pd.Series(prev, index=meta.index)).to_numpy()
        elif word_col and meta[word_col].nunique() > 1:
            types = meta[word_col].astype(str).str.lower().to_numpy()
        else:
            types = np.arange(len(meta))
    elif isinstance(control_by, str):
        if control_by not in meta.columns:
            raise KeyError(f"control_by column {control_by!r} not in meta; columns are {list(meta.columns)}")
        types = meta[control_by].astype(str).str.lower().to_numpy()
    else:
        types = np.asarray(control_by)
        if len(types) != len(y):
            raise ValueError(f"got {len(types)} control types for {len(y)} examples")
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


# ============================================================================ scoring
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


def _bootstrap_weights(units: np.ndarray, n_boot: int, random_state: int | None) -> np.ndarray:
    """Cluster-bootstrap example weights (n_boot, n): each unit drawn with replacement keeps all its examples."""
    rng = np.random.default_rng(random_state)
    n_units = int(units.max()) + 1
    counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot)
    return counts[:, units].astype(np.float64)


# ============================================================================ the sweep
class _CVResult:
    """Out-of-fold predictions of one cross-validated sweep over points (internal)."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def _fold_job(
    x: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    y: np.ndarray,
    y_ctrl: np.ndarray | None,
    groups: np.ndarray | None,
    probe: str | BaseEstimator,
    normalize: str | None,
    cumulative: str | None,
    transfer_all: bool,
    n_classes: int,
    random_state: int | None,
    tick: Callable[[int], Any] | None = None,
) -> dict[str, np.ndarray]:
    """Fit the probe at every point on one fold's training examples and predict its test examples.

    x : (n, P, D) states. Returns predicted codes (n_test, P), log p(true) (n_test, P) and the
    control predictions; with ``transfer_all`` the accuracy matrix (P_train, P_test) instead.
    ``tick(1)`` is called after each point (in-process runs only: it moves the progress bar).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        norm = PointNormalizer(normalize).fit(x[train])  # training fold only
        xn = norm.transform(x)
        if cumulative == "mean":  # Tenney et al.'s probe on points 0..l, as an equal-weight scalar mix
            xn = np.cumsum(xn, axis=1) / np.arange(1, xn.shape[1] + 1)[None, :, None]
        P = xn.shape[1]

        def feats(rows: np.ndarray, p: int) -> np.ndarray:
            if cumulative == "concat":  # points 0..p side by side: the feature count grows with p
                return xn[rows, : p + 1].reshape(len(rows), -1)
            return xn[rows, p]

        classes = np.arange(n_classes)
        est = make_probe(probe, random_state)
        tuned = isinstance(est, TunedLogisticRegression)
        if tuned:
            # warm starts need the same features at every point: not so for growing concatenations
            est.set_params(warm_start=cumulative != "concat")
            ctrl_est = LogisticRegression(warm_start=True, tol=est.tol, max_iter=est.max_iter)
        proba_ok = _has_proba(probe, est)
        g_tr = None if groups is None else groups[train]
        pred = np.zeros((len(test), P), dtype=int)
        logp = np.full((len(test), P), np.nan)
        pred_c = np.zeros((len(test), P), dtype=int)
        acc_matrix = np.zeros((P, P)) if transfer_all else None
        for p in range(P):
            if not tuned:
                est = make_probe(probe, random_state)
            model = _fit_or_constant(est, feats(train, p), y[train], g_tr if tuned else None)
            if transfer_all:
                hits = model.predict(xn[test].reshape(-1, xn.shape[2])).reshape(len(test), P) == y[test, None]
                acc_matrix[p] = hits.mean(0)
                if tick is not None:
                    tick(1)
                continue
            x_te = feats(test, p)
            if proba_ok and not isinstance(model, _Constant):
                proba = _proba_full(model, x_te, classes)
                pred[:, p] = proba.argmax(1)
                logp[:, p] = np.log(np.maximum(proba[np.arange(len(test)), y[test]], _EPS))
            else:
                pred[:, p] = model.predict(x_te)
            if y_ctrl is not None:
                # the control probe has the task probe's hyperparameters (Hewitt and Liang 2019)
                if tuned:
                    c_model = ctrl_est.set_params(C=est.C_)
                else:
                    c_model = make_probe(probe, random_state)
                c_model = _fit_or_constant(c_model, xn[train, p], y_ctrl[train], None)
                pred_c[:, p] = c_model.predict(xn[test, p])
            if tick is not None:
                tick(1)
        return {"pred": pred, "logp": logp, "pred_c": pred_c, "acc_matrix": acc_matrix}


class _OutOfFold:
    """Out-of-fold correctness carried in ``DataFrame.attrs`` for :func:`resolution_point`.

    Compared by identity and never deep-copied: pandas compares and copies ``attrs`` on
    concatenation and slicing, which would fail (or cost) with raw arrays.
    """

    def __init__(self, correct: np.ndarray, units: np.ndarray, points: np.ndarray) -> None:
        self.correct, self.units, self.points = correct, units, points

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    def __deepcopy__(self, memo: dict) -> "_OutOfFold":
        return self


class _Constant:
    """Stands in for a probe when the training labels have a single class."""

    def __init__(self, label: int) -> None:
        self.label = label

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.label)


def _fit_or_constant(est: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> Any:
    uniq = np.unique(y)
    if len(uniq) == 1:
        return _Constant(int(uniq[0]))
    if groups is not None:
        return est.fit(X, y, groups=groups)
    return est.fit(X, y)


def _map_with_progress(
    func: Callable[..., Any],
    args: Sequence[tuple],
    n_jobs: int | None,
    steps_per_job: int,
    progress: bool,
    desc: str,
) -> list[Any]:
    """``[func(*a) for a in args]``, in parallel with joblib when ``n_jobs`` allows, under a tqdm
    bar of ``len(args) * steps_per_job`` steps.

    In process (one job) ``func`` gets ``tick=bar.update`` and reports every step; joblib workers
    cannot reach the bar, so there it advances by ``steps_per_job`` as each job's result arrives
    (in order). Results are the same either way.
    """
    from joblib import Parallel, delayed, effective_n_jobs
    from tqdm.auto import tqdm

    with tqdm(total=len(args) * steps_per_job, desc=desc, unit="fit", disable=not progress) as bar:
        if effective_n_jobs(n_jobs) == 1:
            return [func(*a, tick=bar.update) for a in args]
        out = []
        for r in Parallel(n_jobs=n_jobs, return_as="generator")(delayed(func)(*a) for a in args):
            bar.update(steps_per_job)
            out.append(r)
        return out


def _run_cv(
    traj: Any,
    labels: str | Sequence[Any] | np.ndarray,
    probe: str | BaseEstimator,
    cv: int | Any,
    groups: str | Sequence[Any] | np.ndarray | None,
    control: bool,
    control_by: str | Sequence[Any] | np.ndarray,
    normalize: str | None,
    balance: bool,
    n_jobs: int | None,
    random_state: int | None,
    cumulative: str | None = None,
    transfer_all: bool = False,
    progress: bool = True,
    desc: str = "probes",
) -> _CVResult:
    traj = as_trajectories(traj)
    y_raw = _labels(traj, labels)
    g = traj.group_codes(groups)
    y_ctrl_raw = control_labels(traj, y_raw, control_by, random_state) if control else None
    idx = _balanced_subset(y_raw, random_state) if balance else np.arange(len(y_raw))
    x = _states(traj)[idx]
    y_raw = y_raw[idx]
    g = None if g is None else pd.factorize(g[idx])[0]
    classes, y = np.unique(y_raw, return_inverse=True)
    y_ctrl = None if y_ctrl_raw is None else np.searchsorted(classes, y_ctrl_raw[idx])
    splits = make_splits(y_raw, g, cv, random_state=random_state)  # raw labels: errors name the class
    args = [(x, tr, te, y, y_ctrl, g, probe, normalize, cumulative, transfer_all, len(classes),
             random_state) for tr, te in splits]
    results = _map_with_progress(_fold_job, args, n_jobs, x.shape[1], progress, desc)
    n, P = len(y), x.shape[1]
    fold = np.full(n, -1)
    pred = np.zeros((n, P), dtype=int)
    pred_c = np.zeros((n, P), dtype=int)
    logp = np.full((n, P), np.nan)
    majority = np.zeros(n, dtype=int)
    for f, ((tr, te), res) in enumerate(zip(splits, results)):
        fold[te] = f
        if not transfer_all:
            pred[te], pred_c[te], logp[te] = res["pred"], res["pred_c"], res["logp"]
        majority[te] = np.bincount(y[tr], minlength=len(classes)).argmax()  # the training fold's majority
    return _CVResult(
        y=y, y_ctrl=y_ctrl, classes=classes, pred=pred, pred_c=pred_c, logp=logp, fold=fold,
        majority=majority, groups=g, n_folds=len(splits), points=np.asarray(traj.points),
        acc_matrices=[r["acc_matrix"] for r in results], example=traj.meta["example"].to_numpy()[idx],
    )


def _metric_arrays(res: _CVResult, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every layerwise metric, (B, P), for a batch of example weightings."""
    K, P = len(res.classes), res.pred.shape[1]
    out = _weighted_scores(res.y, res.pred, weights, K)
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


def _frame(res: _CVResult, n_boot: int, ci: float, random_state: int | None) -> pd.DataFrame:
    P = res.pred.shape[1]
    fold_w = (res.fold[None, :] == np.arange(res.n_folds)[:, None]).astype(np.float64)
    per_fold = _metric_arrays(res, fold_w)  # (n_folds, P)
    units = res.groups if res.groups is not None else np.arange(len(res.y))
    boot = _metric_arrays(res, _bootstrap_weights(units, n_boot, random_state))
    alpha = (1 - ci) / 2
    rows = []
    for m in METRICS:
        v = per_fold[m]
        rows.append(pd.DataFrame({
            "point": np.tile(res.points, res.n_folds), "fold": np.repeat(np.arange(res.n_folds), P),
            "metric": m, "value": v.reshape(-1), "ci_low": np.nan, "ci_high": np.nan,
        }))
        b = boot[m]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (no log-loss) stay NaN
            lo, hi = np.nanquantile(b, [alpha, 1 - alpha], axis=0) if not np.isnan(b).all() else (
                np.full(P, np.nan), np.full(P, np.nan))
        rows.append(pd.DataFrame({
            "point": res.points, "fold": -1, "metric": m, "value": v.mean(0), "ci_low": lo, "ci_high": hi,
        }))
    df = pd.concat(rows, ignore_index=True)
    df["fold"] = df["fold"].astype(int)
    return df


def layerwise(
    traj: Trajectories | np.ndarray,
    labels: str | Sequence[Any] | np.ndarray = "sense",
    probe: str | BaseEstimator = "logistic",
    cv: int | Any = 5,
    groups: str | Sequence[Any] | np.ndarray | None = "group",
    control: bool = True,
    control_by: str | Sequence[Any] | np.ndarray = "auto",
    normalize: str | None = DEFAULT_NORMALIZE,
    balance: bool = False,
    n_boot: int = 1000,
    ci: float = 0.95,
    n_jobs: int | None = 1,
    random_state: int | None = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Cross-validated probe accuracy at every point, with control task and majority baseline.

    Parameters
    ----------
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
    labels : str or array of shape (n_examples,)
        A ``meta`` column (default ``"sense"``) or the labels themselves.
    probe : {"logistic", "svm", "mlp", "prototype", "1nn"} or scikit-learn classifier
        See :func:`make_probe`. A user estimator is cloned for every point and fold.
    cv : int or scikit-learn splitter
        Folds; see :func:`make_splits`. The same splits serve every point, the control task and
        the majority baseline, so their differences are paired.
    groups : str, array of shape (n_examples,) or None
        Examples sharing a group never fall on both sides of a split (nor of the inner tuning
        splits). Default: the ``group`` column (the sentence) when ``meta`` has one.
    control : bool
        Also fit the control task (:func:`control_labels`) and report selectivity.
    control_by : "auto", str or array
        The control task's types; see :func:`control_labels`.
    normalize : {None, "center", "standardize", "whiten"}
        Per-point normalisation fitted on each training fold only and applied to its test fold
        (the same as a ``StandardScaler`` in a ``Pipeline`` before the probe, done for all points
        of a fold in one pass).
    balance : bool
        Subsample every class to the size of the smallest (seeded by ``random_state``) first.
    n_boot : int
        Bootstrap replicates for the summary rows' intervals.
    ci : float
        Interval coverage.
    n_jobs : int, optional
        Folds run in parallel (joblib); each fold walks the points in order so that the logistic
        probe warm-starts from the previous point. Results do not depend on ``n_jobs``.
    random_state : int, optional
        Seeds the splits, the control labels, the subsample, the probes and the bootstrap.
    progress : bool
        Show a tqdm bar over points x folds (see the module notes); ``False`` silences it.

    Returns
    -------
    DataFrame with columns ``point, fold, metric, value, ci_low, ci_high``.
        ``metric`` is one of :data:`METRICS`: ``macro_f1``, ``accuracy``, ``balanced_accuracy``,
        ``log_loss`` (natural log per example; NaN for probes without probabilities),
        ``control_accuracy``, ``selectivity`` (accuracy minus control accuracy) and
        ``majority_baseline`` (predicting the training fold's majority class). Rows with
        ``fold >= 0`` are per fold (NaN interval); ``fold == -1`` rows hold the mean over folds
        and a percentile interval from a cluster bootstrap over groups (or examples) of the
        pooled out-of-fold predictions.

    Raises
    ------
    ValueError
        When a class has fewer examples or groups than folds (naming the class and its count).
    """
    res = _run_cv(traj, labels, probe, cv, groups, control, control_by, normalize, balance, n_jobs,
                  random_state, progress=progress, desc="layerwise")
    df = _frame(res, n_boot, ci, random_state)
    # kept so that resolution_point(frame) can bootstrap without refitting
    units = res.groups if res.groups is not None else np.arange(len(res.y))
    df.attrs["trajgeo_oof"] = _OutOfFold(res.pred == res.y[:, None], units, res.points)
    return df


def transfer(
    traj: Trajectories | np.ndarray,
    labels: str | Sequence[Any] | np.ndarray = "sense",
    probe: str | BaseEstimator = "logistic",
    cv: int | Any = 5,
    groups: str | Sequence[Any] | np.ndarray | None = "group",
    normalize: str | None = DEFAULT_NORMALIZE,
    balance: bool = False,
    n_jobs: int | None = 1,
    random_state: int | None = 0,
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
    DataFrame with columns ``train_point, test_point, accuracy`` (mean over folds), one row per pair.
    """
    res = _run_cv(traj, labels, probe, cv, groups, False, "auto", normalize, balance, n_jobs,
                  random_state, transfer_all=True, progress=progress, desc="transfer")
    acc = np.mean(res.acc_matrices, axis=0)
    P = len(res.points)
    return pd.DataFrame({"train_point": np.repeat(res.points, P), "test_point": np.tile(res.points, P),
                         "accuracy": acc.reshape(-1)})


def expected_layer(
    traj: Trajectories | np.ndarray,
    labels: str | Sequence[Any] | np.ndarray = "sense",
    probe: str | BaseEstimator = "logistic",
    metric: str = "macro_f1",
    mix: str = "concat",
    cv: int | Any = 5,
    groups: str | Sequence[Any] | np.ndarray | None = "group",
    normalize: str | None = DEFAULT_NORMALIZE,
    balance: bool = False,
    n_jobs: int | None = 1,
    random_state: int | None = 0,
    progress: bool = True,
) -> tuple[float, pd.DataFrame]:
    """Tenney et al. (2019)'s expected layer from cumulative probes.

    The cumulative probe at point l reads the points 0..l together; its gain
    Delta_l = score(0..l) - score(0..l-1) says how much point l adds, and the expected layer is
    sum_l l * Delta_l / sum_l Delta_l: one number for "where the sense is read".

    Parameters
    ----------
    mix : {"concat", "mean"}
        How points 0..l are combined (each normalised with training-fold statistics first).
        Tenney et al. learn a scalar mix of the layers jointly with the probe. ``"concat"`` (default)
        lets the probe weight every point freely (it can do everything a scalar mix can), at a cost
        that grows with l: the last probe reads n_points x d_model features, about 16x the cost of
        :func:`layerwise` for 31 points. ``"mean"`` is a fixed equal-weight mix that costs the same as
        :func:`layerwise` but dilutes a signal that appears late among many uninformative points,
        which moves the gains, and so the expected layer, later.
    Other parameters are those of :func:`layerwise` (``progress``: a bar over points x folds);
    ``metric`` is the score whose gains are used.

    Returns
    -------
    expected : float
        In original point indices (NaN when the gains sum to zero).
    table : DataFrame with columns ``point, score, gain`` (gain NaN at the first point).
    """
    if metric not in ("macro_f1", "accuracy", "balanced_accuracy"):
        raise ValueError(f"metric must be macro_f1, accuracy or balanced_accuracy, got {metric!r}")
    if mix not in ("concat", "mean"):
        raise ValueError(f"mix must be 'concat' or 'mean', got {mix!r}")
    res = _run_cv(traj, labels, probe, cv, groups, False, "auto", normalize, balance, n_jobs,
                  random_state, cumulative=mix, progress=progress, desc="expected_layer")
    fold_w = (res.fold[None, :] == np.arange(res.n_folds)[:, None]).astype(np.float64)
    score = _metric_arrays(res, fold_w)[metric].mean(0)
    gain = np.r_[np.nan, np.diff(score)]
    total = np.nansum(gain)
    expected = float(np.nansum(res.points * np.nan_to_num(gain)) / total) if total != 0 else float("nan")
    return expected, pd.DataFrame({"point": res.points, "score": score, "gain": gain})


def resolution_point(
    traj_or_frame: Trajectories | np.ndarray | pd.DataFrame,
    fraction: float = 0.95,
    labels: str | Sequence[Any] | np.ndarray = "sense",
    n_boot: int = 1000,
    ci: float = 0.95,
    random_state: int | None = 0,
    **layerwise_kw: Any,
) -> pd.DataFrame:
    """The first point where probe accuracy reaches ``fraction`` of its maximum, with an interval.

    Parameters
    ----------
    traj_or_frame : Trajectories, ndarray or DataFrame
        Trajectories (a :func:`layerwise` run is made with ``layerwise_kw``) or the frame a
        :func:`layerwise` call returned (its out-of-fold predictions travel in ``frame.attrs``).
    fraction : float in (0, 1]
    n_boot, ci : int, float
        The interval resamples groups (or examples) of the out-of-fold predictions and finds the
        resolution point of every replicate's accuracy curve.

    Returns
    -------
    DataFrame with one row: ``metric`` ("accuracy"), ``fraction``, ``max_value``, ``threshold``,
    ``resolution_point``, ``ci_low``, ``ci_high`` (points are original point indices).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if isinstance(traj_or_frame, pd.DataFrame):
        oof = traj_or_frame.attrs.get("trajgeo_oof")
        if oof is None:
            raise ValueError("this frame carries no out-of-fold predictions (attrs['trajgeo_oof']); "
                             "pass the trajectories or a frame straight from layerwise()")
    else:
        df = layerwise(traj_or_frame, labels=labels, n_boot=1, random_state=random_state,
                       control=layerwise_kw.pop("control", False), **layerwise_kw)
        oof = df.attrs["trajgeo_oof"]
    correct = np.asarray(oof.correct, dtype=np.float64)
    points = np.asarray(oof.points)
    curve = correct.mean(0)
    boot = _bootstrap_weights(np.asarray(oof.units), n_boot, random_state)
    curves = boot @ correct / boot.sum(1, keepdims=True)  # (B, P)

    def first(c: np.ndarray) -> np.ndarray:
        reached = c >= fraction * c.max(axis=-1, keepdims=True) - 1e-12
        return points[reached.argmax(axis=-1)]

    alpha = (1 - ci) / 2
    lo, hi = np.quantile(first(curves), [alpha, 1 - alpha])
    return pd.DataFrame({"metric": ["accuracy"], "fraction": [fraction], "max_value": [curve.max()],
                         "threshold": [fraction * curve.max()], "resolution_point": [int(first(curve))],
                         "ci_low": [lo], "ci_high": [hi]})


# ============================================================================ MDL
def mdl(
    traj: Trajectories | np.ndarray,
    labels: str | Sequence[Any] | np.ndarray = "sense",
    probe: str | BaseEstimator = "logistic",
    blocks: Sequence[float] = VOITA_TITOV_BLOCKS,
    normalize: str | None = DEFAULT_NORMALIZE,
    balance: bool = False,
    C: float = 1.0,
    n_jobs: int | None = 1,
    random_state: int | None = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Online codelength of the labels given the states at each point (Voita and Titov 2020).

    The examples are shuffled once (``random_state``) and cut at the fractions ``blocks``
    (default 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25, 50, 100 percent). The first block is
    sent with the uniform code (log2 K bits per label); each later block is sent with the
    probe trained (and normalised) on all earlier examples, costing -log2 p(label) per example.
    A strong, simple relation between states and labels compresses the labels well: codelength
    is low and compression (uniform bits / codelength) high.

    Parameters
    ----------
    probe : str or scikit-learn classifier with predict_proba
        ``"logistic"`` is :class:`TunedLogisticRegression`: each block's C is tuned by inner CV on
        the prefix alone (the receiver can repeat that), falling back to ``C`` on prefixes too
        small to split. An untuned probe overfits the small early blocks and pays for it.
        When a training prefix holds a single class, its block is sent with add-one smoothed
        label frequencies of the prefix, itself a valid code. Model probabilities are mixed with
        1e-3 of the uniform distribution so that no label costs more than log2(1000 K) bits.
    C : float
        Fallback C; see ``probe``.
    n_jobs : int, optional
        Blocks run in parallel (joblib).
    progress : bool
        Show a tqdm bar over points x blocks; ``False`` silences it.

    Returns
    -------
    DataFrame with columns ``point, codelength_bits, uniform_bits, compression``.
    """
    traj = as_trajectories(traj)
    y_raw = _labels(traj, labels)
    idx = _balanced_subset(y_raw, random_state) if balance else np.arange(len(y_raw))
    rng = np.random.default_rng(random_state)
    idx = idx[rng.permutation(len(idx))]
    x = _states(traj)[idx]
    classes, y = np.unique(y_raw[idx], return_inverse=True)
    n, K = len(y), len(classes)
    if K < 2:
        raise ValueError("mdl needs at least 2 classes")
    ends = np.unique(np.clip(np.round(np.asarray(blocks, dtype=float) * n).astype(int), 1, n))
    if ends[-1] != n:
        ends = np.r_[ends, n]
    est = (TunedLogisticRegression(fallback_C=C, random_state=random_state)
           if isinstance(probe, str) and probe == "logistic" else make_probe(probe, random_state))
    if not hasattr(est, "predict_proba"):
        raise ValueError(f"mdl needs a probe with predict_proba; {type(est).__name__} has none")
    args = [(x[:start], y[:start], x[start:stop], y[start:stop], est, normalize, K)
            for start, stop in zip(ends[:-1], ends[1:])]
    bits = np.sum(_map_with_progress(_mdl_block, args, n_jobs, x.shape[1], progress, "mdl"), axis=0)
    bits = bits + ends[0] * np.log2(K)
    uniform = n * np.log2(K)
    return pd.DataFrame({"point": traj.points, "codelength_bits": bits, "uniform_bits": uniform,
                         "compression": uniform / bits})


def _mdl_block(
    x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, est: BaseEstimator,
    normalize: str | None, K: int, tick: Callable[[int], Any] | None = None,
) -> np.ndarray:
    """Bits to send y_te given x_te with a probe trained on the prefix, per point -> (P,).

    ``tick(1)`` is called after each point (in-process runs only: it moves the progress bar).
    """
    from threadpoolctl import threadpool_limits

    P = x_tr.shape[1]
    if len(np.unique(y_tr)) < 2 or len(y_tr) < 2:
        freq = (np.bincount(y_tr, minlength=K) + 1.0) / (len(y_tr) + K)
        if tick is not None:
            tick(P)
        return np.full(P, -np.log2(freq[y_te]).sum())
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        norm = PointNormalizer(normalize).fit(x_tr)
        a, b = norm.transform(x_tr), norm.transform(x_te)
        out = np.empty(P)
        classes = np.arange(K)
        for p in range(P):
            model = clone(est).fit(a[:, p], y_tr)
            proba = (1 - 1e-3) * _proba_full(model, b[:, p], classes) + 1e-3 / K
            out[p] = -np.log2(proba[np.arange(len(y_te)), y_te]).sum()
            if tick is not None:
                tick(1)
    return out


# ============================================================================ Loureiro et al. 2021
def loureiro_1nn(
    train: Trajectories | np.ndarray | pd.DataFrame,
    test: Trajectories | np.ndarray | pd.DataFrame,
    model: Any = None,
    labels: str = "sense",
    word: str = "word",
    n_last: int = 4,
    normalize: str | None = None,
    batch_size: int = 16,
) -> pd.DataFrame:
    """The 1-NN sense-vector protocol of Loureiro et al. (2021) on a train/test split.

    Token vector: the sum of the last ``n_last`` (4) points, each the mean over the word's
    subtokens (extract with ``pool="mean"``; done here when DataFrames and a model are given).
    Sense vector: the mean of the sense's training token vectors. Prediction: the sense, among
    the senses of the test example's own word, whose vector has the largest cosine with the
    token vector. The paper's BERT-base figures on CoarseWSD-20 are in
    :data:`LOUREIRO_BERT_BASE` (0.910 mean per-word macro F1, 95.7% accuracy).

    Parameters
    ----------
    train, test : Trajectories, ndarray of shape (n, n_points, d_model), or DataFrame of examples
        DataFrames (``text, char_start, char_end`` + labels, word) are extracted with ``model``.
    model : LoadedModel, optional
        Needed when ``train``/``test`` are DataFrames.
    labels, word : str
        ``meta`` columns of the sense and the target word (all examples are one word if the
        column is missing).
    n_last : int
        How many of the top points are summed.
    normalize : {None, "center", "standardize", "whiten"}
        Normalisation of the summed vectors, fitted on the training set. The paper uses raw
        vectors, hence the default None.

    Returns
    -------
    DataFrame with columns ``word, n_train, n_test, accuracy, macro_f1``: one row per word and a
    last row ``word == "mean"`` holding the unweighted means over words (how the paper averages).
    """
    from sklearn.metrics import f1_score

    def prepare(obj: Any) -> Trajectories:
        if isinstance(obj, pd.DataFrame):
            if model is None:
                raise ValueError("train/test are DataFrames of examples: pass model= to extract them")
            from trajgeo.extract import extract

            return extract(model, obj, pool="mean", batch_size=batch_size, progress=False)
        return as_trajectories(obj)

    tr, te = prepare(train), prepare(test)

    def token_vectors(t: Trajectories) -> np.ndarray:
        top = int(t.n_layers)
        want = list(range(top - n_last + 1, top + 1))
        pos = {int(p): i for i, p in enumerate(t.points)}
        missing = [p for p in want if p not in pos]
        if missing:
            raise ValueError(f"the 1-NN preset sums points {want}; these trajectories lack {missing}")
        return _states(t)[:, [pos[p] for p in want]].sum(axis=1)

    a, b = token_vectors(tr), token_vectors(te)
    if normalize is not None:
        norm = PointNormalizer(normalize).fit(a[:, None])
        a, b = norm.transform(a[:, None])[:, 0], norm.transform(b[:, None])[:, 0]
    y_tr, y_te = _labels(tr, labels), _labels(te, labels)
    w_tr = tr.meta[word].to_numpy() if word in tr.meta else np.full(len(y_tr), "")
    w_te = te.meta[word].to_numpy() if word in te.meta else np.full(len(y_te), "")
    rows = []
    for w in pd.unique(w_te):
        m_tr, m_te = w_tr == w, w_te == w
        if not m_tr.any():
            raise ValueError(f"word {w!r} has test examples but no training examples")
        clf = CosinePrototypeClassifier().fit(a[m_tr], y_tr[m_tr])
        pred = clf.predict(b[m_te])
        rows.append({"word": w, "n_train": int(m_tr.sum()), "n_test": int(m_te.sum()),
                     "accuracy": float((pred == y_te[m_te]).mean()),
                     "macro_f1": float(f1_score(y_te[m_te], pred, average="macro"))})
    out = pd.DataFrame(rows)
    mean = {"word": "mean", "n_train": int(out["n_train"].sum()), "n_test": int(out["n_test"].sum()),
            "accuracy": out["accuracy"].mean(), "macro_f1": out["macro_f1"].mean()}
    return pd.concat([out, pd.DataFrame([mean])], ignore_index=True)
