"""The probe estimators: a cosine nearest-prototype classifier, an L2 logistic regression tuned by
grouped inner cross-validation, and :func:`make_probe`, the estimator behind each probe name."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.svm import LinearSVC

__all__ = ["CosinePrototypeClassifier", "TunedLogisticRegression", "make_probe", "PROBES", "DEFAULT_CS"]

PROBES = ("logistic", "ridge", "svm", "mlp", "prototype", "1nn")
#: The C grid of :class:`TunedLogisticRegression` (features are standardised first).
DEFAULT_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# Probabilities are floored before the log so that a confident error costs a finite amount.
_EPS = 1e-15


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
    call to :meth:`fit`. :func:`~trajgeo.probes.layerwise` calls ``fit`` point after point on the
    same training examples, so each point starts from its predecessor's coefficients.

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
        self._prepare_splits(X, codes, groups, Cs)
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

    def _prepare_splits(self, X: np.ndarray, codes: np.ndarray, groups: np.ndarray, Cs: list[float]) -> None:
        """Inner splits and one model per (split, C); kept from the previous fit when warm-starting."""
        # the inner splits depend only on (y, groups, random_state): identical from point to point,
        # which is what lets each inner model warm-start from the previous point's
        key = (len(codes), hash(codes.tobytes()), hash(pd.util.hash_array(groups).tobytes()))
        if self.warm_start and getattr(self, "_split_key", None) == key:
            return
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

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.estimator_.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.estimator_.predict(X)


def make_probe(probe: str | BaseEstimator = "logistic", random_state: int | None = 0) -> BaseEstimator:
    """The estimator behind a probe name (a fresh clone of a user estimator).

    Parameters
    ----------
    probe : {"logistic", "ridge", "svm", "mlp", "prototype", "1nn"} or scikit-learn classifier
        ``"logistic"``: :class:`TunedLogisticRegression` (C by grouped inner CV);
        ``"ridge"``: :class:`~trajgeo.probes.ridge.RidgeProbe` (closed form, a fixed penalty for
        standardised features, equal-prior decision; one solve serves every labelling);
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
        if probe == "ridge":
            from trajgeo.probes.ridge import RidgeProbe  # ridge imports nothing from here

            return RidgeProbe()
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
    """Whether the probe's probabilities carry information (1-NN's are 0/1: no log-loss)."""
    # 1-NN "probabilities" are 0/1: their log-loss is a count of errors times 34.5, not information
    return hasattr(est, "predict_proba") and probe != "1nn" and not isinstance(est, KNeighborsClassifier)


def _proba_full(est: Any, X: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """predict_proba of est as columns over all ``classes`` (a class unseen in training gets 0)."""
    proba = est.predict_proba(X)
    out = np.zeros((len(X), len(classes)))
    out[:, np.searchsorted(classes, est.classes_)] = proba
    return out


class _Constant:
    """Stands in for a probe when the training labels have a single class."""

    def __init__(self, label: int) -> None:
        self.label = label

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.label)


def _fit_or_constant(est: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> Any:
    """``est`` fitted on (X, y) (with ``groups`` when given), or a :class:`_Constant` for one class."""
    uniq = np.unique(y)
    if len(uniq) == 1:
        return _Constant(int(uniq[0]))
    if groups is not None:
        return est.fit(X, y, groups=groups)
    return est.fit(X, y)
