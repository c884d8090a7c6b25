"""Published protocols as presets: the 1-NN sense-vector protocol of Loureiro et al. (2021)."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from trajgeo._api import changed_signature
from trajgeo._arrays import as_states
from trajgeo.normalization import PointNormalizer
from trajgeo.probes._common import _labels, _word_values
from trajgeo.probes.estimators import CosinePrototypeClassifier
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["loureiro_1nn", "LOUREIRO_BERT_BASE"]

#: The paper's figures for BERT-base with the 1-NN protocol on CoarseWSD-20 (Loureiro et al. 2021):
#: mean per-word macro F1 and accuracy, to compare :func:`loureiro_1nn` results against.
LOUREIRO_BERT_BASE = {"macro_f1": 0.910, "accuracy": 0.957}


def _examples_deprecated(fn: Callable[..., pd.DataFrame]) -> Callable[..., pd.DataFrame]:
    """For one release: DataFrames of examples with ``model=`` are extracted first, with a DeprecationWarning."""

    @functools.wraps(fn)
    def wrapper(train_traj: Any, test_traj: Any, *, model: Any = None, batch_size: int = 16,
                **kwargs: Any) -> pd.DataFrame:
        frames = isinstance(train_traj, pd.DataFrame) or isinstance(test_traj, pd.DataFrame)
        if model is None and not frames:
            return fn(train_traj, test_traj, **kwargs)
        warnings.warn("loureiro_1nn(): DataFrames of examples and model= are deprecated since trajgeo 0.2; "
                      "extract first, tg.extract(model, examples, pool='mean') (as analyses/loureiro.py does), "
                      "and pass the trajectories", DeprecationWarning, stacklevel=3)
        if frames and model is None:
            raise ValueError("train/test are DataFrames of examples: pass model= to extract them")
        from trajgeo.extract import extract

        def prepare(obj: Any) -> Any:
            if isinstance(obj, pd.DataFrame):
                return extract(model, obj, pool="mean", batch_size=batch_size, progress=False)
            return obj

        return fn(prepare(train_traj), prepare(test_traj), **kwargs)

    return wrapper


@changed_signature(renamed={"train": "train_traj", "test": "test_traj"}, n_leading=2,
                   positional=("model", "labels", "word", "n_last", "normalize", "batch_size"))
@_examples_deprecated
def loureiro_1nn(
    train_traj: Trajectories | np.ndarray,
    test_traj: Trajectories | np.ndarray,
    *,
    labels: str | Sequence[Any] | np.ndarray = "sense",
    word: str | Sequence[Any] | np.ndarray | None = "word",
    n_last: int = 4,
    normalize: str | None = None,
) -> pd.DataFrame:
    """The 1-NN sense-vector protocol of Loureiro et al. (2021) on a train/test split.

    Token vector: the sum of the last ``n_last`` (4) points, each the mean over the word's
    subtokens (extract with ``pool="mean"``, as ``analyses/loureiro.py`` does). Sense vector: the
    mean of the sense's training token vectors. Prediction: the sense, among the senses of the test
    example's own word, whose vector has the largest cosine with the token vector. The paper's
    BERT-base figures on CoarseWSD-20 are in :data:`LOUREIRO_BERT_BASE` (0.910 mean per-word macro
    F1, 95.7% accuracy).

    Parameters
    ----------
    train_traj, test_traj : Trajectories or ndarray of shape (n, n_points, d_model)
    labels : str or array
        The sense: a ``meta`` column or one label per example (of the set it belongs to).
    word : str, array or None
        The target word: a ``meta`` column or one word per example. ``None`` (or the default
        column missing) makes all examples one word.
    n_last : int
        How many of the top points are summed.
    normalize : {None, "center", "standardize", "whiten"}
        Normalisation of the summed vectors, fitted on the training set. The paper uses raw
        vectors, hence the default None.

    Returns
    -------
    DataFrame with columns ``word, n_train, n_test, accuracy, macro_f1``: one row per word (``""``
    when pooled) and a last row ``word == "mean"`` holding the unweighted means over words (how
    the paper averages).
    """
    tr, te = as_trajectories(train_traj), as_trajectories(test_traj)
    a, b = _token_vectors(tr, n_last), _token_vectors(te, n_last)
    if normalize is not None:
        norm = PointNormalizer(normalize).fit(a[:, None])
        a, b = norm.transform(a[:, None])[:, 0], norm.transform(b[:, None])[:, 0]
    y_tr, y_te = _labels(tr, labels), _labels(te, labels)
    w_tr, w_te = (_word_values(t, word) for t in (tr, te))
    w_tr = np.full(len(y_tr), "") if w_tr is None else w_tr
    w_te = np.full(len(y_te), "") if w_te is None else w_te
    rows = []
    for w in pd.unique(w_te):
        m_tr, m_te = w_tr == w, w_te == w
        if not m_tr.any():
            raise ValueError(f"word {w!r} has test examples but no training examples")
        pred = CosinePrototypeClassifier().fit(a[m_tr], y_tr[m_tr]).predict(b[m_te])
        rows.append({"word": w, "n_train": int(m_tr.sum()), "n_test": int(m_te.sum()),
                     "accuracy": float((pred == y_te[m_te]).mean()),
                     "macro_f1": float(f1_score(y_te[m_te], pred, average="macro"))})
    out = pd.DataFrame(rows)
    mean = {"word": "mean", "n_train": int(out["n_train"].sum()), "n_test": int(out["n_test"].sum()),
            "accuracy": out["accuracy"].mean(), "macro_f1": out["macro_f1"].mean()}
    return pd.concat([out, pd.DataFrame([mean])], ignore_index=True)


def _token_vectors(traj: Trajectories, n_last: int) -> np.ndarray:
    """The sum of the top ``n_last`` points (n_layers - n_last + 1 .. n_layers), (n_examples, d_model)."""
    top = int(traj.n_layers)
    want = list(range(top - n_last + 1, top + 1))
    pos = {int(p): i for i, p in enumerate(traj.points)}
    missing = [p for p in want if p not in pos]
    if missing:
        raise ValueError(f"the 1-NN preset sums points {want}; these trajectories lack {missing}")
    return as_states(traj)[:, [pos[p] for p in want]].sum(axis=1)
