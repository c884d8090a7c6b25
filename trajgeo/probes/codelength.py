"""Online codelength (minimum description length) of the labels given the states at each point,
after Voita and Titov (2020)."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import ConvergenceWarning

from trajgeo._api import changed_signature
from trajgeo._arrays import as_states
from trajgeo.normalization import DEFAULT_NORMALIZE, PointNormalizer
from trajgeo.probes._common import (
    _balanced_subset, _by_word, _labels, _map_with_progress, _naming_word, _with_word,
)
from trajgeo.probes.estimators import TunedLogisticRegression, _proba_full, make_probe
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["mdl", "VOITA_TITOV_BLOCKS"]

#: Block boundaries of the online code, as fractions of the data (Voita and Titov 2020, section 2.2).
VOITA_TITOV_BLOCKS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)


@changed_signature(positional=("labels", "probe", "blocks", "normalize", "balance", "C", "n_jobs", "random_state",
                               "progress"))
def mdl(
    traj: Trajectories | np.ndarray,
    *,
    labels: str | Sequence[Any] | np.ndarray = "sense",
    word: str | Sequence[Any] | np.ndarray | None = "word",
    normalize: str | None = DEFAULT_NORMALIZE,
    random_state: int | None = 0,
    probe: str | BaseEstimator = "logistic",
    blocks: Sequence[float] = VOITA_TITOV_BLOCKS,
    balance: bool = False,
    C: float = 1.0,
    n_jobs: int | None = 1,
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
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
    labels : str or array of shape (n_examples,)
    word : str, array of shape (n_examples,) or None
        One code per word (the senses of a word are sent given the word); ``None`` pools all
        examples. Default: the ``word`` column when ``meta`` has one.
    normalize : {None, "center", "standardize", "whiten"}
        Fitted on each block's training prefix (a probe: the package default applies).
    random_state : int, optional
        Seeds the shuffle, the subsample and the probe.
    probe : str or scikit-learn classifier with predict_proba
        ``"logistic"`` is :class:`TunedLogisticRegression`: each block's C is tuned by inner CV on
        the prefix alone (the receiver can repeat that), falling back to ``C`` on prefixes too
        small to split. An untuned probe overfits the small early blocks and pays for it.
        When a training prefix holds a single class, its block is sent with add-one smoothed
        label frequencies of the prefix, itself a valid code. Model probabilities are mixed with
        1e-3 of the uniform distribution so that no label costs more than log2(1000 K) bits.
    blocks : sequence of float
        Block ends as fractions of the examples.
    balance : bool
        Subsample every class to the size of the smallest first.
    C : float
        Fallback C; see ``probe``.
    n_jobs : int, optional
        Blocks run in parallel (joblib).
    progress : bool
        Show a tqdm bar over points x blocks (per word); ``False`` silences it.

    Returns
    -------
    DataFrame with columns ``[word,] point, codelength_bits, uniform_bits, compression``.
    """
    traj = as_trajectories(traj)
    y_all = _labels(traj, labels)
    parts = list(_by_word(traj, word, {"labels": y_all}))
    frames = []
    for part in parts:
        desc = "mdl" if len(parts) == 1 else f"mdl {part.word}"
        with _naming_word(part, len(parts) > 1):
            bits, uniform = _codelength(part.traj, part.options["labels"], probe=probe, blocks=blocks,
                                        normalize=normalize, balance=balance, C=C, n_jobs=n_jobs,
                                        random_state=random_state, progress=progress, desc=desc)
        frames.append(_with_word(pd.DataFrame({"point": traj.points, "codelength_bits": bits,
                                               "uniform_bits": uniform, "compression": uniform / bits}), part.word))
    return pd.concat(frames, ignore_index=True)


def _codelength(
    traj: Trajectories, y_raw: np.ndarray, *, probe: str | BaseEstimator, blocks: Sequence[float],
    normalize: str | None, balance: bool, C: float, n_jobs: int | None, random_state: int | None,
    progress: bool, desc: str,
) -> tuple[np.ndarray, float]:
    """Online codelength per point (n_points,) and the uniform codelength of one word's labels."""
    idx = _balanced_subset(y_raw, random_state) if balance else np.arange(len(y_raw))
    rng = np.random.default_rng(random_state)
    idx = idx[rng.permutation(len(idx))]
    x = as_states(traj)[idx]
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
    bits = np.sum(_map_with_progress(_mdl_block, args, n_jobs, x.shape[1], progress, desc), axis=0)
    return bits + ends[0] * np.log2(K), n * np.log2(K)


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
