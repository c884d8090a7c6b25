"""Alignment with the senses of a reference point: cosine-to-sense curves and margins, the point x
reference matrix of mean margins, the commitment and stable points of each example, and
superposition of the context-free embedding between senses (against the other words' embeddings).

A curve scored against the prototypes of a fixed reference point measures *alignment with the
representation at the reference*; it peaks at the reference by construction (the prototypes are
made of the vectors scored there). ``reference="last"`` is alignment with the final representation,
not a reference-free measure of when the sense is resolved: for that, read separability at each
point (``reference="same"``, :func:`trajgeo.senses.nearest_centroid_accuracy`, or the cross-fitted
``trajgeo.senses.separability``), and :func:`reference_matrix` shows every reference at once."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from trajgeo._api import changed_signature
from trajgeo._arrays import compute
from trajgeo.normalization import DEFAULT_NORMALIZE
from trajgeo.senses._common import keys, margin_of, reference_position, meta_cols, suffix_onset, warn_one_sense
from trajgeo.senses.estimator import SensePrototypes
from trajgeo.stats import FWER_LEVEL, NULL_COLUMNS, critical_value
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["curves", "reference_matrix", "commitment", "superposition"]

_COLUMNS = ("example", "point", "word", "sense", "metric", "to_sense", "value")


@changed_signature(renamed={"by": "word"}, positional=("labels", "reference", "normalize", "word"))
def curves(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    reference: int | str = "last",
    normalize: str | None = DEFAULT_NORMALIZE,
) -> pd.DataFrame:
    """Cosine-to-sense curves and the margin, per example and point (leave-group-out).

    ``cos`` rows give ``cos(h_l, prototype_s(r))`` for every sense s of the example's word;
    ``margin`` rows give ``m_l = cos to the correct sense - max cos to another sense of the word``.
    With a fixed reference r this is **alignment with the representation at r**: the prototypes are
    the vectors at r, so the margin peaks at r by construction (``reference="last"``: alignment with
    the final representation; it rises toward the last point whatever the model does earlier).
    Where the sense becomes separable is read with ``reference="same"`` (or
    ``trajgeo.senses.separability``); :func:`reference_matrix` gives every reference at once.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
    labels : str or array-like of shape (n_examples,)
        The senses: a ``meta`` column name or the labels.
    word : str, array-like of shape (n_examples,) or None
        The word column (or words); senses compete only within a word. (Formerly ``by=``.)
    groups : str, array-like of shape (n_examples,) or None
        What must not score itself: an example is scored against prototypes built without its
        whole group (default the ``group`` column, which for a causal model also joins identical
        input prefixes; see :meth:`trajgeo.Trajectories.group_codes`). ``None``: leave-one-out.
    reference : {"last", "same"} or int
        ``"last"`` (default): prototypes of the last point, alignment with the final
        representation (all layers write into one residual space). An int: that original point.
        ``"same"``: r = l, separability at each point -- a path that is separable early but heads
        toward the wrong sense looks good there and not under ``"last"``.
    normalize : {None, "center", "standardize", "whiten"}
        See :class:`SensePrototypes` for the default and where statistics come from.

    Returns
    -------
    DataFrame
        Columns ``example, point, word, sense, metric, to_sense, value`` (``word`` only when the
        trajectories have a word column); ``metric`` in {"cos", "margin"}; ``to_sense`` is the
        prototype's sense on "cos" rows and None on "margin" rows. The margin is NaN where the
        word's vectors at the point, or at the reference, are a tie (within-word variance at most
        ``TIE_RTOL`` = 1e-8 of their mean squared norm, e.g. point 0: see
        :attr:`SensePrototypes.ties_`): no decision is possible there. Words with one sense are
        left out (one warning names them).
    """
    traj = as_trajectories(traj)
    skipped = warn_one_sense(traj, labels, word, "curves")
    fitted = SensePrototypes(labels=labels, word=word, groups=groups, reference=reference, normalize=normalize)
    n, p = traj.n_examples, traj.n_points
    margin = np.full((n, p), np.nan)
    parts = []  # per block of words: (example, group, cosines (pairs, P)) of same-word pairs
    for rows, gk, cos_b, own_b, same_b in fitted._score_blocks(traj, None, fitted._fit(traj)):
        margin[rows] = margin_of(cos_b, own_b, same_b)[0]
        i, j = np.nonzero(same_b)
        parts.append((rows[i], gk[j], cos_b[i, :, j]))
    margin[fitted._tied(traj)] = np.nan
    ex, k, val = (np.concatenate(a) for a in zip(*parts)) if parts else (
        np.zeros(0, int), np.zeros(0, int), np.zeros((0, p)))
    order = np.lexsort((k, ex))  # example by example, groups in order
    cos_rows = _long(traj, fitted, ex[order], "cos", fitted.groups_["sense"].to_numpy()[k[order]], val[order])
    margin_rows = _long(traj, fitted, np.arange(n), "margin", None, margin)
    out = pd.concat([cos_rows, margin_rows], ignore_index=True)
    out = _without_words(out, skipped, fitted.has_word_)
    return out[[c for c in _COLUMNS if c in out.columns]]


def _without_words(out: pd.DataFrame, skipped: list, has_word: bool) -> pd.DataFrame:
    """``out`` without the rows of the ``skipped`` words (all rows when the data are one word)."""
    if not skipped:
        return out
    if not has_word:
        return out.iloc[:0].reset_index(drop=True)
    return out[~out["word"].isin(skipped)].reset_index(drop=True)


def reference_matrix(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    normalize: str | None = DEFAULT_NORMALIZE,
    references: Any = None,
) -> pd.DataFrame:
    """Mean margin at every point scored against the prototypes of every reference point.

    Row ``reference = r`` is the mean of the margins of :func:`curves` with ``reference=r``: the
    alignment of each point with the representation at r. Its diagonal (``point == reference``) is
    separability at each point (``reference="same"``), and each row peaks near its own reference
    by construction; a figure of the whole matrix shows both views at once.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
    labels, word, groups, normalize
        As in :func:`curves`.
    references : sequence of int, optional
        The reference points (original indices; default every point).

    Returns
    -------
    DataFrame
        Columns ``word, point, reference, metric, value`` (``word`` only when the trajectories have
        a word column), per word. ``metric`` ``"margin"``: the mean leave-group-out margin over the
        word's examples; ``"accuracy"``: the share of them whose nearest prototype (of the
        reference point) is their own sense. Both NaN where the point or the reference is a tie
        for the word (e.g. point 0). Words with one sense are left out (one warning names them).

    Notes
    -----
    The prototypes are fitted once; each reference is one scoring pass over the states (a
    whitening, which is shared at the reference point, is refitted per reference).
    """
    traj = as_trajectories(traj)
    skipped = warn_one_sense(traj, labels, word, "reference_matrix")
    refs = [int(r) for r in (traj.points if references is None else np.atleast_1d(references))]
    base = SensePrototypes(labels=labels, word=word, groups=groups, reference="same", normalize=normalize)
    z = base._fit(traj)
    words = keys(traj, labels, word)[0]
    frames = []
    for r in refs:
        est, z_r = base._at_reference(traj, z, reference_position(traj, r))
        margin, correct = est._margins(traj, None, z_r)
        tied = est._tied(traj)
        with np.errstate(invalid="ignore"):
            right = np.where(tied, np.nan, correct.astype(float))
        for w, idx in pd.Series(np.arange(traj.n_examples)).groupby(words, sort=False):
            rows = idx.to_numpy()
            for metric, values in (("margin", margin[rows]), ("accuracy", right[rows])):
                with np.errstate(invalid="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # a tied point: all NaN
                    mean = np.nanmean(values, axis=0)
                frames.append(pd.DataFrame({"word": w, "point": traj.points, "reference": r,
                                            "metric": metric, "value": mean}))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["word", "point", "reference", "metric", "value"])
    out = out.sort_values(["word", "metric", "reference", "point"], kind="stable", key=_first_seen(out))
    out = _without_words(out.reset_index(drop=True), skipped, base.has_word_)
    return out if base.has_word_ else out.drop(columns="word")


def _first_seen(out: pd.DataFrame) -> Any:
    """A sort key that keeps words in order of first appearance and sorts the other columns."""
    order = {w: i for i, w in enumerate(pd.unique(out["word"]))} if len(out) else {}
    return lambda col: col.map(order) if col.name == "word" else col


def _long(traj: Trajectories, fitted: SensePrototypes, ex: np.ndarray, metric: str, to_sense: Any,
          values: np.ndarray) -> pd.DataFrame:
    """Rows of :func:`curves` for examples at positions ``ex`` with ``values`` (len(ex), n_points)."""
    p = traj.n_points
    return pd.DataFrame(
        {
            **{c: np.repeat(v, p) for c, v in meta_cols(traj, ex, fitted).items()},
            "point": np.tile(traj.points, len(ex)),
            "metric": metric,
            "to_sense": None if to_sense is None else np.repeat(to_sense, p),
            "value": values.reshape(-1),
        }
    )


@changed_signature(renamed={"by": "word"}, positional=("threshold", "labels", "reference", "normalize", "word"))
def commitment(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    reference: int | str = "last",
    normalize: str | None = DEFAULT_NORMALIZE,
    threshold: float = 0.0,
) -> pd.DataFrame:
    """When each example commits to its sense.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
    labels, word, groups, reference, normalize
        As in :func:`curves`.
    threshold : float
        The margin must stay strictly above this.

    Returns
    -------
    DataFrame
        One row per example: ``example, word, sense, commitment_point, stable_point``.
        ``commitment_point`` is the first (original) point from which the leave-one-out margin
        (prototypes of ``reference``) stays above ``threshold`` through the last point: when the
        path has turned toward its resolved sense for good. ``stable_point`` is the first point
        from which the leave-one-out nearest-prototype prediction *at each point* (prototypes of
        that same point, i.e. a nearest-centroid classifier per point) is right through the last
        point: when the sense has become decodable for good. The two differ for a path that is
        separable early but heads toward the wrong sense (stable early, committed late). (Against
        the reference's prototypes the prediction would just be ``margin > 0``.) NaN where it
        never happens, e.g. when the last point is not above the threshold. A tie is not right,
        and a point where the word's vectors are a tie (point 0: see :func:`curves`) never counts:
        neither point is ever 0 for a context-free embedding. Words with one sense are left out
        (one warning names them).

    Notes
    -----
    Both need the condition to hold *through the last point*; with the default reference the
    margin at the last point is a leave-one-out nearest-centroid check of the final vectors.
    One fit serves both: the per-point prototypes are the sums the fit keeps at every point.
    """
    traj = as_trajectories(traj)
    skipped = warn_one_sense(traj, labels, word, "commitment")
    fitted = SensePrototypes(labels=labels, word=word, groups=groups, reference=reference, normalize=normalize)
    z = fitted._fit(traj)
    margin, correct = fitted._margins(traj, None, z)
    if fitted.reference_index_ is not None:
        per_point, z_same = fitted._same_point(traj, z)
        correct = per_point._margins(traj, None, z_same)[1]
    with np.errstate(invalid="ignore"):
        above = margin > threshold
    out = pd.DataFrame(meta_cols(traj, np.arange(traj.n_examples), fitted))
    out["commitment_point"] = suffix_onset(above, traj.points)
    out["stable_point"] = suffix_onset(correct, traj.points)
    return _without_words(out, skipped, fitted.has_word_)


@changed_signature(renamed={"by": "word"}, positional=("labels", "reference", "normalize", "word"))
def superposition(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    reference: int | str = "last",
    normalize: str | None = None,
) -> pd.DataFrame:
    """Does the context-free embedding (point 0) lie between the word's senses, more than other words' do?

    For each word and sense s: the mean over the word's examples of ``cos(h_i(0),
    prototype_s(reference))`` (leave-group-out, as in :func:`curves`), and the balance index
    ``min_s cos / max_s cos`` -- 1 when the embedding is equally close to every resolved sense,
    near 0 when it sits on one of them.

    A balance near 1 says little by itself: the prototypes of a word's senses share most of their
    direction, so an unrelated word's embedding can be about as balanced between them. The null is
    the balance of every *other* word's point-0 vectors against the same prototypes (their mean
    cosine to each sense, then min / max), and the word's balance is reported against it.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
        Must contain point 0.
    labels, word, groups
        As in :func:`curves`.
    reference : "last" or int
        The point whose prototypes are the resolved senses (``"same"`` makes no sense here).
    normalize : {None, "center", "standardize", "whiten"}
        Default ``None`` (raw vectors), unlike the other metrics: centring with the word's own
        examples makes two sense prototypes antipodal by construction (``c_a = n_b / n (p_a - p_b)``
        and ``c_b = -n_a / n (p_a - p_b)``), so the balance would be -1 whatever the model. A
        centring method is meaningful only when the trajectories hold many words, whose mean
        then serves as the neutral origin.

    Returns
    -------
    DataFrame
        Columns ``word, sense, cosine, balance, n_null, null_mean, null_q95, null_fwer, p_value,
        p_fwer`` (``word`` only when there is a word column); ``balance`` and the null columns are
        repeated within a word. ``balance`` is NaN where the largest cosine is not positive. The
        null is the other words' balances (``n_null`` of them, NaN ones left out): ``null_mean``,
        ``null_q95`` (their 95% quantile), ``p_value`` = ``(1 + #{null >= balance}) / (1 + n_null)``;
        one number per word, so ``null_fwer`` and ``p_fwer`` equal ``null_q95`` and ``p_value``.
        With one word there is no null (NaN, ``n_null`` 0). Words with one sense are left out
        (one warning names them).
    """
    traj = as_trajectories(traj)
    if isinstance(reference, str) and reference == "same":
        raise ValueError("superposition compares point 0 with resolved prototypes; reference='same' is not allowed")
    if 0 not in set(traj.points.tolist()):
        raise ValueError(f"superposition needs point 0 (the embedding); these trajectories have {list(traj.points)}")
    skipped = warn_one_sense(traj, labels, word, "superposition")
    fitted = SensePrototypes(labels=labels, word=word, groups=groups, reference=reference, normalize=normalize)
    z = fitted._fit(traj)
    # point 0 normalised with its own statistics (a point-0-only copy would not match the fitted ones)
    at0 = int(np.flatnonzero(traj.points == 0)[0])
    groups_ = fitted.groups_
    total, seen = np.zeros(len(groups_)), np.zeros(len(groups_))
    for _, gk, cos_b, _, _ in fitted._score_blocks(traj.select_points([0]), None, z[:, at0 : at0 + 1]):
        c = cos_b[:, 0, :]  # (n_b, K_b): NaN for other words' groups
        np.add.at(total, gk, np.nansum(c, axis=0))
        np.add.at(seen, gk, (~np.isnan(c)).sum(0))
    cosine = np.where(seen > 0, total / np.maximum(seen, 1), np.nan)
    out = pd.DataFrame({"word": groups_["word"].to_numpy(), "sense": groups_["sense"].to_numpy(), "cosine": cosine})
    g = out.groupby("word", sort=False)["cosine"]
    hi, lo = g.transform("max"), g.transform("min")
    out["balance"] = np.where(hi > 0, lo / hi, np.nan)
    out = out.join(_other_words_null(traj, fitted, z[:, at0], out), on="word")
    out = _without_words(out, skipped, fitted.has_word_)
    return out if fitted.has_word_ else out.drop(columns="word")


def _other_words_null(traj: Trajectories, fitted: SensePrototypes, z0: Any, out: pd.DataFrame) -> pd.DataFrame:
    """Per word: the balance of every other word's point-0 vectors against its prototypes, read as a
    null of its own balance (index ``word``; columns ``n_null`` and the null columns)."""
    r = fitted.reference_index_
    words = keys(traj, fitted.labels, fitted.word if fitted.has_word_ else None)[0]
    word_uniq = pd.unique(fitted.groups_["word"])
    ex_word = pd.Index(word_uniq).get_indexer(words)
    x = np.asarray(compute(z0), dtype=np.float64)  # (n, d): one point, in memory
    protos = fitted.sums_[:, r] / fitted.counts_[:, None]  # (K, d); no example of another word is in them
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
        cos = unit(x) @ unit(protos).T
    at_zero = np.linalg.norm(x, axis=1) <= 1e-6 * max(float(np.linalg.norm(x, axis=1).max(initial=0.0)), 1e-300)
    cos[at_zero] = 0.0  # a vector at the origin has no preference (as in the scoring)
    # mean cosine of each word's examples (rows) to each prototype (columns)
    onehot = np.eye(len(word_uniq))[ex_word]
    mean_cos = (onehot.T @ np.nan_to_num(cos)) / np.maximum(onehot.sum(0), 1)[:, None]
    group_word = pd.Index(word_uniq).get_indexer(fitted.groups_["word"])
    balance = out.groupby("word", sort=False)["balance"].first()
    rows = []
    for w, name in enumerate(word_uniq):
        gk = np.flatnonzero(group_word == w)
        c = mean_cos[np.arange(len(word_uniq)) != w][:, gk]  # other words x this word's senses
        hi, lo = c.max(1, initial=-np.inf), c.min(1, initial=np.inf)
        with np.errstate(invalid="ignore", divide="ignore"):
            null = np.where(hi > 0, lo / hi, np.nan)
        null = null[~np.isnan(null)]
        obs = balance.get(name, np.nan)
        if len(null):
            q95, p = np.quantile(null, FWER_LEVEL), (1.0 + (null >= obs).sum()) / (1.0 + len(null))
            # the decision threshold matches p_value (NaN with fewer than 19 other words: no value can reach 5%)
            row = dict(n_null=len(null), null_mean=null.mean(), null_q95=q95, null_fwer=critical_value(null),
                       p_value=p if np.isfinite(obs) else np.nan)
        else:
            row = dict(n_null=0, null_mean=np.nan, null_q95=np.nan, null_fwer=np.nan, p_value=np.nan)
        row["p_fwer"] = row["p_value"]
        rows.append(pd.Series(row, name=name))
    return pd.DataFrame(rows, columns=["n_null", *NULL_COLUMNS]).astype({"n_null": int})
