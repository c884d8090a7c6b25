"""The closed-form ridge probe: one decomposition of a fold's training states serves any number of
labellings (the true labels, the control labels and every permutation of the null at once).

Ridge regression on one-hot targets coded -1/+1 (one column for two classes, as
:class:`~sklearn.linear_model.RidgeClassifier`) with an unpenalised intercept. The solve depends on
the training states only; the labels enter through the right-hand side. So a fold's solve is made
once and applied to a target *matrix* whose columns are all the labellings:

- a fixed penalty (``alpha`` a float): one Cholesky factor of ``K + alpha I`` (the centred Gram
  matrix, n x n, when there are fewer training examples than features) or of ``G + alpha I``
  (the centred covariance, d x d, otherwise);
- a grid (``alpha`` a sequence): one eigendecomposition of the same matrix, and the penalty is chosen
  *per labelling* from the grid by generalised cross-validation (Golub, Heath and Wahba 1979; cheap:
  O(rank) per labelling and value) or by exact leave-one-out (``criterion="loo"``, as
  :class:`~sklearn.linear_model.RidgeClassifierCV`; O(n x rank) per labelling and value). A permuted
  labelling gets the penalty the same rule would give it, so the null includes the tuning.

The decision rule ``prior="equal"`` reads the fitted indicator of each class, ``(f_k + 1) / 2``,
divided by the class's share of the training fold: the Bayes rule under equal class priors, which is
what balanced accuracy rewards; ``prior="fitted"`` takes the largest fitted value (scikit-learn's rule).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import linalg
from sklearn.base import BaseEstimator, ClassifierMixin

__all__ = ["RidgeProbe", "RIDGE_ALPHA", "RIDGE_ALPHAS"]

#: The penalty of :class:`RidgeProbe` by default, for standardised features (the sweep's default
#: normalisation): measured on CoarseWSD-20 (``benchmarks/probes.py``'s docstring), a fixed penalty
#: of 100 reads as well as the tuned logistic probe and as a penalty chosen by GCV, at a fraction of the cost.
RIDGE_ALPHA = 100.0
#: A grid for ``RidgeProbe(alpha=RIDGE_ALPHAS)``: the penalty chosen per labelling by GCV (any scale
#: of the features; the centred covariance's eigenvalues sum to n_train x d_model when standardised).
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 6, 15))
_CRITERIA = ("gcv", "loo")
_PRIORS = ("equal", "fitted")
# Labellings are solved in blocks of this many target columns (bounds memory for large words).
_BLOCK_COLUMNS = 512


def _check(alpha: Any, criterion: str, prior: str) -> np.ndarray:
    """The penalties as a 1-D float array (one value: fixed); errors name the bad option."""
    a = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    if a.ndim != 1 or not len(a) or not np.isfinite(a).all() or (a <= 0).any():
        raise ValueError(f"alpha must be a positive float or a sequence of them, got {alpha!r}")
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion must be one of {_CRITERIA}, got {criterion!r}")
    if prior not in _PRIORS:
        raise ValueError(f"prior must be one of {_PRIORS}, got {prior!r}")
    return a


def _targets(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Targets coded -1/+1, shape (n, L, c): one column per labelling for two classes (+1 for
    class 1, as scikit-learn's LabelBinarizer), else one per class."""
    if n_classes == 2:
        return (2.0 * codes - 1.0)[:, :, None]
    return 2.0 * (codes[:, :, None] == np.arange(n_classes)) - 1.0


class _RidgeSolver:
    """The decomposition of one training matrix, applied to any number of labellings.

    Parameters
    ----------
    X : ndarray of shape (n_train, n_features)
    alphas : ndarray of shape (n_alphas,)
        One value: fixed penalty (Cholesky); several: chosen per labelling (eigendecomposition).
    criterion : {"gcv", "loo"}

    :meth:`from_scatter` builds the same solver from a training fold's centred scatter matrix and
    its rows' affine map, without a normalised copy of the training rows.
    """

    def __init__(self, X: np.ndarray, alphas: np.ndarray, criterion: str = "gcv") -> None:
        X = np.asarray(X, dtype=np.float64)
        self.n, self.d = X.shape
        self.mean = X.mean(0)
        self._Xc = X - self.mean
        self.dual = self.n <= self.d
        self._factor(self._Xc @ self._Xc.T if self.dual else self._Xc.T @ self._Xc, alphas, criterion)

    @classmethod
    def from_scatter(cls, gram: np.ndarray, rows: np.ndarray, train: np.ndarray, shift: np.ndarray,
                     scale: np.ndarray | float, alphas: np.ndarray, criterion: str = "gcv") -> "_RidgeSolver":
        """The solver of the training rows ``(rows[train] - shift) / scale`` given their centred scatter.

        gram : (d, d), the scatter of those rows about their mean (more rows than features;
        the solver takes it over and may overwrite it);
        rows : (N, d) float64, all examples (training and test); ``shift`` is the training rows'
        mean, so the normalised training rows are centred.
        """
        self = cls.__new__(cls)
        self.n, self.d = len(train), rows.shape[1]
        if self.n <= self.d:
            raise ValueError("a scatter matrix serves the d x d form only (more training rows than features)")
        self.dual = False
        self._rows, self._train, self._shift, self._scale = rows, train, shift, scale
        self.mean = np.zeros(self.d)  # test rows come normalised by the same map: centred on the training mean
        self._Xc = None
        self._factor(gram, alphas, criterion)
        return self

    def _factor(self, gram: np.ndarray, alphas: np.ndarray, criterion: str) -> None:
        self.alphas, self.criterion = alphas, criterion
        if len(alphas) == 1:
            gram.flat[:: len(gram) + 1] += alphas[0]  # the solver owns its Gram matrix: no copy
            self.chol = linalg.cho_factor(gram, lower=True, overwrite_a=True, check_finite=False)
            return
        s, vecs = linalg.eigh(gram, check_finite=False, driver="evd")
        keep = s > max(s.max(), 0.0) * max(self.n, self.d) * np.finfo(np.float64).eps
        self.s, self.vecs = s[keep], vecs[:, keep]  # dual: U (n x r); primal: V (d x r)
        if criterion == "loo":
            # the left singular vectors U (n x r): the hat matrix's diagonal needs their squares
            self.U = self.vecs if self.dual else (self.Xc @ self.vecs) / np.sqrt(self.s)

    @property
    def Xc(self) -> np.ndarray:
        """The centred (normalised) training rows, (n_train, d); made on demand from a scatter."""
        if self._Xc is None:
            self._Xc = (self._rows[self._train] - self._shift) / self._scale
        return self._Xc

    def _xty(self, Yc: np.ndarray) -> np.ndarray:
        """``Xc.T @ Yc`` for centred targets (n_train, m) -> (d, m)."""
        if self._Xc is not None:
            return self._Xc.T @ Yc
        # from a scatter: the shift drops out (Yc sums to 0), and no copy of the training rows is made
        full = np.zeros((len(self._rows), Yc.shape[1]))
        full[self._train] = Yc
        return (self._rows.T @ full) / np.reshape(self._scale, (-1, 1))

    def _features(self, X: np.ndarray) -> np.ndarray:
        """Test rows in the solver's coordinates: K_test (dual, n_test x n) or X_test - mean (primal)."""
        Xt = np.asarray(X, dtype=np.float64) - self.mean
        return Xt @ self.Xc.T if self.dual else Xt

    def decisions(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fitted values at ``X`` for the targets ``Y``.

        Parameters
        ----------
        X : ndarray of shape (n_test, n_features)
        Y : ndarray of shape (n_train, n_labellings, n_columns)
            Targets; the penalty is chosen per labelling (over its columns together).

        Returns
        -------
        decision : ndarray of shape (n_test, n_labellings, n_columns)
        alpha : ndarray of shape (n_labellings,), the penalty of each labelling
        """
        n, L, c = Y.shape
        F = self._features(X)
        out = np.empty((len(F), L, c))
        alpha = np.empty(L)
        step = max(1, _BLOCK_COLUMNS // c)
        nt, m = len(F), L * c
        # with many labellings, make the map from training targets to test decisions once,
        # (n_test, n_train): each labelling then costs one product with it; with few, solve for each
        if self.dual:  # the map costs one solve per test row; directly, one solve per column
            mapped = len(self.alphas) == 1 and m > nt
        else:
            per_column = n * self.d + self.d**2 + nt * self.d
            mapped = len(self.alphas) == 1 and nt * self.d * (self.d + n) + m * nt * n < m * per_column
        if mapped:
            M = linalg.cho_solve(self.chol, F.T, check_finite=False).T
            if not self.dual:
                M = M @ self.Xc.T
        alpha[:] = self.alphas[0]
        if len(self.alphas) > 1:
            P = F @ self.vecs  # (n_test, r): both forms project test rows once
        for lo in range(0, L, step):
            block = slice(lo, min(L, lo + step))
            Yb = Y[:, block]
            ybar = Yb.mean(0)
            Yc = (Yb - ybar).reshape(n, -1)
            if mapped:
                out[:, block] = (M @ Yc).reshape(nt, -1, c) + ybar
                continue
            if len(self.alphas) == 1:
                W = linalg.cho_solve(self.chol, Yc if self.dual else self._xty(Yc), check_finite=False)
                out[:, block] = (F @ W).reshape(nt, -1, c) + ybar
                continue
            # Z: the targets in the fitted-value basis U (r x m); Zp: what the test projection multiplies
            Zp = self.vecs.T @ (Yc if self.dual else self._xty(Yc))
            Z = Zp if self.dual else Zp / np.sqrt(self.s)[:, None]
            best = self._choose(Yc, Z, c)
            alpha[block] = self.alphas[best]
            dec = np.empty((len(F), Yc.shape[1]))
            cols = np.repeat(best, c)
            for a in np.unique(best):
                on = cols == a
                dec[:, on] = P @ (Zp[:, on] / (self.s + self.alphas[a])[:, None])
            out[:, block] = dec.reshape(len(F), -1, c) + ybar
        return out, alpha

    def _choose(self, Yc: np.ndarray, Z: np.ndarray, c: int) -> np.ndarray:
        """Index into ``alphas`` chosen for each labelling (columns ``c`` at a time); ties: the first."""
        m = Yc.shape[1]
        scores = np.empty((len(self.alphas), m // c))
        if self.criterion == "gcv":
            outside = (Yc**2).sum(0) - (Z**2).sum(0)  # the part of the targets no penalty can fit
            Z2 = Z**2
            for i, a in enumerate(self.alphas):
                shrink = a / (self.s + a)
                rss = (shrink**2) @ Z2 + outside
                df = 1.0 + (self.s / (self.s + a)).sum()  # the intercept is one more
                scores[i] = (rss / (1.0 - df / self.n) ** 2).reshape(-1, c).sum(1)
        else:
            for i, a in enumerate(self.alphas):
                w = self.s / (self.s + a)
                h = 1.0 / self.n + (self.U**2) @ w
                loo = (Yc - self.U @ (w[:, None] * Z)) / (1.0 - h)[:, None]
                scores[i] = (loo**2).reshape(self.n, -1, c).sum((0, 2))
        return np.argmin(scores, axis=0)

    def coef(self, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Weights (c, n_features), intercepts (c,) and penalty for one labelling ``Y`` (n_train, c)."""
        Y = np.asarray(Y, dtype=np.float64)
        ybar = Y.mean(0)
        Yc = Y - ybar
        if len(self.alphas) == 1:
            sol = linalg.cho_solve(self.chol, Yc if self.dual else self._xty(Yc), check_finite=False)
            W, a = (self.Xc.T @ sol if self.dual else sol), self.alphas[0]
        else:
            Zp = self.vecs.T @ (Yc if self.dual else self._xty(Yc))
            Z = Zp if self.dual else Zp / np.sqrt(self.s)[:, None]
            a = self.alphas[self._choose(Yc, Z, Y.shape[1])[0]]
            sol = self.vecs @ (Zp / (self.s + a)[:, None])
            W = self.Xc.T @ sol if self.dual else sol
        return W.T, ybar - self.mean @ W, float(a)


def _decide(decision: np.ndarray, train_codes: np.ndarray, n_classes: int, prior: str) -> np.ndarray:
    """Predicted class codes (n_test, L) from decisions (n_test, L, c) of -1/+1 targets.

    ``train_codes`` (n_train, L) gives each labelling's training class shares for ``prior="equal"``.
    A class absent from a labelling's training fold is never predicted under ``"equal"``.
    """
    if n_classes == 2:
        d = decision[..., 0]
        if prior == "fitted":
            return (d > 0).astype(np.int64)  # scikit-learn's rule for one column
        # (d + 1) / (2 share1) > (1 - d) / (2 share0)  <=>  d > share1 - share0
        share1 = train_codes.mean(0)
        pred = d > 2 * share1 - 1
        return np.where(share1 == 1, True, np.where(share1 == 0, False, pred)).astype(np.int64)
    if prior == "fitted":
        return decision.argmax(-1)
    share = (train_codes[:, :, None] == np.arange(n_classes)).mean(0)  # (L, K)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(share > 0, (decision + 1) / (2 * share), -np.inf)
    return score.argmax(-1)


class RidgeProbe(ClassifierMixin, BaseEstimator):
    """Ridge classifier in closed form whose solve is shared across labellings.

    Parameters
    ----------
    alpha : float or sequence of float
        A float: a fixed penalty, independent of the labels (default :data:`RIDGE_ALPHA`, for
        standardised features). A sequence (e.g. :data:`RIDGE_ALPHAS`): a grid from which the
        penalty is chosen for each labelling by ``criterion``; it adapts to any feature scale and
        costs one eigendecomposition instead of one Cholesky factor per point and fold.
    criterion : {"gcv", "loo"}
        Generalised cross-validation (default; O(rank) per value) or exact leave-one-out squared
        error of the -1/+1 targets (scikit-learn's ``RidgeClassifierCV``).
    prior : {"equal", "fitted"}
        ``"equal"`` (default): predict the class whose fitted indicator, relative to its training
        share, is largest (the decision under equal priors; balanced accuracy's target).
        ``"fitted"``: the largest fitted value, as :class:`~sklearn.linear_model.RidgeClassifier`.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, n_features) for two classes, else (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    alpha_ : float
        The penalty used.
    """

    def __init__(self, alpha: float | Sequence[float] = RIDGE_ALPHA, criterion: str = "gcv",
                 prior: str = "equal") -> None:
        self.alpha = alpha
        self.criterion = criterion
        self.prior = prior

    def _solver(self, X: np.ndarray) -> _RidgeSolver:
        return _RidgeSolver(X, _check(self.alpha, self.criterion, self.prior), self.criterion)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "RidgeProbe":
        """Fit on X of shape (n_samples, n_features) and labels y of shape (n_samples,)."""
        X = np.asarray(X, dtype=np.float64)
        self.classes_, codes = np.unique(np.asarray(y), return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"RidgeProbe needs at least 2 classes; all labels are {self.classes_[0]!r}")
        K = len(self.classes_)
        W, b, self.alpha_ = self._solver(X).coef(_targets(codes[:, None], K)[:, 0])
        self.coef_, self.intercept_ = W, b
        self._share = np.bincount(codes, minlength=K) / len(codes)
        self._train_codes = codes
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Fitted -1/+1 targets: shape (n_samples,) for two classes, else (n_samples, n_classes)."""
        d = np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_
        return d[:, 0] if len(self.classes_) == 2 else d

    def predict(self, X: np.ndarray) -> np.ndarray:
        d = self.decision_function(X)
        d = d[:, None, None] if d.ndim == 1 else d[:, None, :]
        return self.classes_[_decide(d, self._train_codes[:, None], len(self.classes_), self.prior)[:, 0]]


def shared_predictions(probe: RidgeProbe, X_train: np.ndarray | _RidgeSolver, X_test: np.ndarray,
                       codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Predicted codes of ``probe`` at ``X_test`` for every labelling of the training rows at once.

    Parameters
    ----------
    X_train : ndarray of shape (n_train, n_features), or a solver already made for them
    X_test : ndarray of shape (n_test, n_features)
    codes : ndarray of int, shape (n_train, n_labellings)
        Class codes 0..n_classes-1 of each labelling (columns: the true labels, the control labels,
        the permutations).

    Returns
    -------
    ndarray of int, shape (n_test, n_labellings): what ``probe`` fitted on each labelling predicts.
    """
    solver = X_train if isinstance(X_train, _RidgeSolver) else probe._solver(X_train)
    dec, _ = solver.decisions(X_test, _targets(codes, n_classes))
    return _decide(dec, codes, n_classes, probe.prior)
