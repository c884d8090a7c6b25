"""Sense resolution along trajectories: prototypes, cosine-to-sense curves, margins, commitment,
superposition at the embedding, reinforcement along sense directions, and attribution of the nudges.

Vocabulary (see DESIGN.md): a **point** is a position along a trajectory (0 = context-free
embedding, l = residual after block l); a **layer** is a block 1..L; the **reference** point is the
one whose sense prototypes define "the resolved meaning".

Three rules hold throughout.

* **Senses compete only within a word.** Prototypes are kept per (word, sense); an example is
  compared only with the senses of its own word (the ``by`` column, ``"word"`` by default; without
  that column all examples are one word).
* **Leave-one-out.** An example is never scored against a prototype that contains itself: its own
  sense's prototype is replaced, in closed form, by ``(n * mean - x_i) / (n - 1)``. Directions
  learned by LDA or a probe are cross-fitted (each example's direction comes from a model fitted on
  the other folds), and the folds are grouped: examples sharing a ``group`` (the sentence) fall in
  the same fold, so a duplicated sentence cannot teach the model the example it is scored on.
* **One basis per comparison.** With a fixed reference (``"last"`` or an integer), every point is
  compared with prototypes of the reference point: all blocks write into one residual space.
  ``"center"`` and ``"standardize"`` use each point's own statistics (a per-point shift and a
  per-dimension scale: the coordinates stay the same axes, so cosines across points keep their
  meaning), because a scale fitted at one point is wrong at the others: MiniLM's last point has a
  dimension of zero variance, and dividing the other points by it made every margin before the
  last point exactly 0. ``"whiten"`` would rotate each point into its own eigenbasis, so it fits
  one whitening at the reference point and applies it at every point. With ``reference="same"``
  each point is normalised with its own statistics.

Everything is computed from a few dot products per example (the Gram trick), so the cost is one
pass over the states, and lazy (dask) trajectories are processed chunk by chunk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from trajgeo.normalization import DEFAULT_NORMALIZE, PointNormalizer
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = [
    "DIRECTIONS",
    "SensePrototypes",
    "prototypes",
    "curves",
    "commitment",
    "superposition",
    "reinforcement",
    "attribution",
]

DIRECTIONS = ("prototype", "lda", "probe")

# Scoring packs words into blocks while one float64 (examples x points x groups) array of the
# block stays under this; about eight such arrays are alive at once (see _score_blocks).
_SCORE_BLOCK_BYTES = 64 * 2**20

# ====================================================================== helpers
def _is_dask(a: Any) -> bool:
    return not isinstance(a, np.ndarray) and hasattr(a, "compute") and hasattr(a, "chunks")


def _compute(a: Any) -> np.ndarray:
    return np.asarray(a.compute() if _is_dask(a) else a)


def _xp(a: Any) -> Any:
    """The array module for ``a``: dask.array for dask arrays, numpy otherwise."""
    if _is_dask(a):
        import dask.array as da

        return da
    return np


_MATMUL = {  # contractions with a new output axis, as BLAS matmuls (einsum's own loop is slow there)
    "npd,kd->npk": lambda a, b: a @ b.T,
    "npd,kpd->npk": lambda a, b: np.matmul(a.transpose(1, 0, 2), b.transpose(1, 2, 0)).transpose(1, 0, 2),
    "npd,nkd->npk": lambda a, b: np.matmul(a, b.transpose(0, 2, 1)),
}


def _einsum(spec: str, *ops: Any) -> Any:
    """``einsum`` for numpy or dask operands; BLAS matmul for the contractions in ``_MATMUL``."""
    if any(_is_dask(o) for o in ops):
        import dask.array as da

        return da.einsum(spec, *ops)
    if spec in _MATMUL:
        return _MATMUL[spec](*ops)
    return np.einsum(spec, *ops)


def _like(arr: np.ndarray, ref: Any) -> Any:
    """``arr`` (per example along axis 0) as a dask array chunked like ``ref`` when ``ref`` is lazy."""
    if not _is_dask(ref):
        return arr
    import dask.array as da

    return da.from_array(arr, chunks=(ref.chunks[0],) + tuple((s,) for s in arr.shape[1:]))


def _reference_position(traj: Trajectories, reference: int | str) -> int | None:
    """Position along axis 1 of the reference point; ``None`` for ``"same"``."""
    if isinstance(reference, str):
        if reference == "last":
            return traj.n_points - 1
        if reference == "same":
            return None
        raise ValueError(f"reference must be 'last', 'same' or a point index, got {reference!r}")
    if isinstance(reference, (bool, np.bool_)) or not isinstance(reference, (int, np.integer)):
        raise ValueError(f"reference must be 'last', 'same' or a point index, got {reference!r}")
    hits = np.flatnonzero(traj.points == int(reference))
    if not len(hits):
        raise ValueError(f"reference point {reference} is not in these trajectories (points {list(traj.points)})")
    return int(hits[0])


def _normalizer(method: str | None, ref_pos: int | None) -> PointNormalizer:
    """The normaliser of a comparison: per-point statistics, except ``"whiten"`` with a fixed
    reference, which fits one whitening at the reference point and applies it at every point
    (per-point whitenings would rotate each point into its own basis)."""
    shared = ref_pos if (ref_pos is not None and method == "whiten") else None
    return PointNormalizer(method, shared_at=shared)


def _keys(traj: Trajectories, labels: Any, by: str | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-example word and sense keys; ``has_word`` says whether a word column exists."""
    senses = traj.labels(labels)
    bad = pd.isna(senses)
    if bad.any():
        raise ValueError(f"sense labels are missing for examples {traj.meta['example'].to_numpy()[bad][:10].tolist()}")
    if by is None or (by == "word" and "word" not in traj.meta.columns):
        return np.zeros(len(senses), dtype=object), senses, False
    if by not in traj.meta.columns:
        raise KeyError(f"meta has no column {by!r} to group senses by; columns are {list(traj.meta.columns)}")
    words = traj.meta[by].to_numpy()
    if pd.isna(words).any():
        raise ValueError(f"{by!r} is missing for examples {traj.meta['example'].to_numpy()[pd.isna(words)][:10].tolist()}")
    return words, senses, True


def _suffix_onset(ok: np.ndarray, points: np.ndarray) -> np.ndarray:
    """First point from which ``ok`` holds through the last point; NaN if it does not hold at the end.

    ``ok`` has shape (n_examples, n_points); returns float original point indices, shape (n_examples,).
    """
    holds_after = np.flip(np.logical_and.accumulate(np.flip(ok, 1), axis=1), 1)
    first = holds_after.argmax(1)
    return np.where(holds_after[:, -1], points[first].astype(float), np.nan)


# ====================================================================== prototypes
class SensePrototypes:
    """Per-(word, sense) mean vectors at every point, with leave-one-out scoring.

    Parameters
    ----------
    labels : str or array-like of shape (n_examples,)
        The sense of each example: a ``meta`` column name (default ``"sense"``) or the labels.
    by : str or None
        ``meta`` column naming the word; senses compete only within a word. If ``"word"`` is
        absent from ``meta`` (or ``by=None``), all examples are one word.
    reference : {"last", "same"} or int
        Whose prototypes an example is scored against at point l: those of the last point (the
        resolved meaning, default), of a fixed original point index, or of the same point l
        (separability at each point, a different question).
    normalize : {None, "center", "standardize", "whiten"}
        Normalisation before cosines (see :class:`trajgeo.geometry.PointNormalizer`). Default
        ``"standardize"``: on SmolLM2 the residual norm jumps about 4x from layer 12 on and a few
        rogue dimensions take over raw cosines (the raw separation of the two ``bank`` senses
        collapses from about 1.1 to 0.12 while a probe still separates them at 93%).
        Each point is normalised with its own statistics, except ``"whiten"`` with a fixed
        reference, which fits one whitening at the reference point and applies it everywhere. Statistics use every fitted example
        (they use no labels, so this leaks nothing about senses).
    leave_one_out : bool
        Score each fitted example against its own sense's prototype without itself.
    groups : str, array-like of shape (n_examples,) or None
        Cross-fitting groups for learned directions (:meth:`directions`): examples sharing a group
        (a ``meta`` column, default ``"group"``, the sentence) always fall in the same fold
        (``StratifiedGroupKFold`` via :func:`trajgeo.probes.make_splits`). Without that column, or
        with ``None``, folds are plain stratified.

    Attributes
    ----------
    groups_ : DataFrame
        One row per (word, sense) group k: columns ``word, sense, count``.
    sums_ : ndarray of shape (n_groups, n_points, d_model)
        Sum of each group's normalised vectors at every point (float64).
    counts_ : ndarray of shape (n_groups,)
    points_ : ndarray of shape (n_points,)
        Original point indices the prototypes were fitted on.
    reference_index_ : int or None
        Position of the reference point along axis 1 (``None`` for ``"same"``).
    normalizer_ : PointNormalizer
        Fitted normalisation; statistics of shape (n_points, d_model), or (1, d_model) for
        ``"whiten"`` with a fixed reference.
    fit_examples_ : ndarray of shape (n_fit,)
        Example ids of the fitted examples: leave-one-out applies to scored examples with these ids
        (ids are the examples' identity; they are stable through saving).
    fit_group_ : ndarray of shape (n_fit,)
        Group index each fitted example was added to.
    fit_split_group_ : ndarray of shape (n_fit,) or None
        Cross-fitting group code of each fitted example (from ``groups``); None when ungrouped.
    ref_states_ : ndarray of shape (n_fit, d_model) or None
        Normalised vectors of the fitted examples at the reference point (fixed reference only):
        exactly what was added to the sums, so leave-one-out never re-reads the store.
    has_word_ : bool
        Whether a word column was used.

    Examples
    --------
    >>> import numpy as np, pandas as pd, trajgeo as tg
    >>> rng = np.random.default_rng(0)
    >>> traj = tg.Trajectories(rng.normal(size=(6, 3, 4)), pd.DataFrame({"sense": list("aaabbb")}))
    >>> protos = tg.senses.prototypes(traj, normalize=None)
    >>> protos.prototypes_.shape
    (2, 3, 4)
    """

    def __init__(
        self,
        labels: Any = "sense",
        by: str | None = "word",
        reference: int | str = "last",
        normalize: str | None = DEFAULT_NORMALIZE,
        leave_one_out: bool = True,
        groups: Any = "group",
    ) -> None:
        self.labels = labels
        self.by = by
        self.reference = reference
        self.normalize = normalize
        self.leave_one_out = leave_one_out
        self.groups = groups

    # ------------------------------------------------------------------ fit
    def fit(self, traj: Any, y: Any = None) -> "SensePrototypes":
        """Fit the normalisation and the per-group sums.

        Parameters
        ----------
        traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
        y : array-like of shape (n_examples,), optional
            Sense labels overriding ``labels``.
        """
        self._fit(as_trajectories(traj), y)
        return self

    def _fit(self, traj: Trajectories, y: Any = None) -> Any:
        """Fit and return the normalised states (numpy or dask), so that scoring the same
        trajectories right after does not normalise them twice."""
        ids = traj.meta["example"].to_numpy()
        if pd.Index(ids).has_duplicates:
            raise ValueError("example ids are not unique; leave-one-out identifies examples by id")
        words, senses, self.has_word_ = _keys(traj, self.labels if y is None else y, self.by)
        keys = pd.MultiIndex.from_arrays([words, senses], names=["word", "sense"])
        group, uniq = pd.factorize(keys)
        counts = np.bincount(group, minlength=len(uniq))
        self.groups_ = pd.DataFrame(
            {"word": uniq.get_level_values(0), "sense": uniq.get_level_values(1), "count": counts}
        )
        self.reference_index_ = _reference_position(traj, self.reference)
        self.normalizer_ = _normalizer(self.normalize, self.reference_index_).fit(traj.states)
        z = self.normalizer_.transform(traj.states)
        if _is_dask(z):
            import dask.array as da

            onehot = np.eye(len(uniq))[group]  # (n, K), float64: sums are exact to float64
            sums = da.tensordot(_like(onehot, z), z.astype(np.float64), axes=(0, 0))
            ref = z[:, self.reference_index_] if self.reference_index_ is not None else None
            self.sums_, ref = da.compute(sums, ref) if ref is not None else (sums.compute(), None)
        else:
            # one pass per group (not per example); float64 accumulation
            self.sums_ = np.stack([z[group == k].sum(0, dtype=np.float64) for k in range(len(uniq))])
            ref = z[:, self.reference_index_] if self.reference_index_ is not None else None
        self.ref_states_ = None if ref is None else np.asarray(ref, dtype=np.float32)
        self.counts_ = counts
        self.points_ = np.asarray(traj.points)
        self.fit_examples_ = ids
        self.fit_group_ = group
        self.fit_split_group_ = traj.group_codes(self.groups)
        self.n_features_in_ = traj.d_model
        return z

    def _check_fitted(self) -> None:
        if not hasattr(self, "sums_"):
            raise RuntimeError("SensePrototypes is not fitted; call fit first")

    @property
    def prototypes_(self) -> np.ndarray:
        """Mean normalised vector per group and point, shape (n_groups, n_points, d_model)."""
        self._check_fitted()
        return self.sums_ / self.counts_[:, None, None]

    # ------------------------------------------------------------ scoring
    def _score_keys(self, traj: Trajectories, y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Own group (-1 if unseen), same-word mask (n, K) and leave-one-out group (-1 if none)."""
        words, senses, _ = _keys(traj, self.labels if y is None else y, self.by if self.has_word_ else None)
        gidx = pd.MultiIndex.from_frame(self.groups_[["word", "sense"]])
        own = gidx.get_indexer(pd.MultiIndex.from_arrays([words, senses], names=["word", "sense"]))
        word_codes = pd.factorize(np.concatenate([self.groups_["word"].to_numpy(), words]))[0]
        same_word = word_codes[len(self.groups_):, None] == word_codes[None, : len(self.groups_)]
        row = pd.Index(self.fit_examples_).get_indexer(traj.meta["example"].to_numpy())
        loo = np.where(row >= 0, self.fit_group_[np.maximum(row, 0)], -1) if self.leave_one_out else np.full(len(row), -1)
        return own, same_word, loo

    def _fit_rows(self, traj: Trajectories) -> np.ndarray:
        return pd.Index(self.fit_examples_).get_indexer(traj.meta["example"].to_numpy())

    def transform(self, traj: Any, y: Any = None) -> np.ndarray:
        """Cosine of every point with every sense prototype of the example's word.

        Parameters
        ----------
        traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
        y : array-like of shape (n_examples,), optional
            Sense labels overriding ``labels`` (they decide nothing here but unseen senses).

        Returns
        -------
        ndarray of shape (n_examples, n_points, n_groups)
            ``cos(z_i(l), prototype_k(r))`` for the groups k of example i's word, NaN for the
            groups of other words, and for a prototype left empty by leave-one-out.
        """
        return self._score(as_trajectories(traj), y)[0]

    def _score(self, traj: Trajectories, y: Any, z: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cosines (n, P, K) to every group (NaN outside the example's word), own group (n,) and the
        same-word mask (n, K), assembled from :meth:`_score_blocks`. Memory n x P x all groups:
        only :meth:`transform` needs this; the metrics consume the blocks."""
        own, same_word, _ = self._score_keys(traj, y)
        cos = np.full((traj.n_examples, traj.n_points, len(self.groups_)), np.nan)
        for rows, gk, cos_b, _, _ in self._score_blocks(traj, y, z):
            cos[np.ix_(rows, np.arange(traj.n_points), gk)] = cos_b
        return cos, own, same_word

    def _margins(self, traj: Trajectories, y: Any, z: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Margin and nearest-prototype correctness, each (n_examples, n_points), block by block."""
        margin = np.full((traj.n_examples, traj.n_points), np.nan)
        correct = np.zeros((traj.n_examples, traj.n_points), dtype=bool)
        for rows, _, cos_b, own_b, same_b in self._score_blocks(traj, y, z):
            margin[rows], correct[rows] = _margin(cos_b, own_b, same_b)
        return margin, correct

    def _score_blocks(self, traj: Trajectories, y: Any, z: Any = None) -> Any:
        """Leave-one-out cosines, a few words at a time.

        Yields ``(rows, gk, cos, own, same_word)``: positions of the block's examples (n_b,), its
        groups (K_b,), cosines (n_b, n_points, K_b) float64 (NaN for groups of another word), the
        own group as a position in ``gk`` (-1 if unseen) and the same-word mask (n_b, K_b).
        Words are packed into a block while one (n_b, n_points, K_b) float64 array stays under
        ``_SCORE_BLOCK_BYTES``: the scoring keeps about eight such arrays alive, and for all groups
        at once 50 words x 3 senses x 200 examples x 31 points would be 1.1 GB each. Examples of
        words that were not fitted are in no block.
        """
        self._check_fitted()
        if traj.d_model != self.n_features_in_:
            raise ValueError(f"trajectories have d_model {traj.d_model}, prototypes were fitted on {self.n_features_in_}")
        r = self.reference_index_
        if r is None and traj.n_points != self.sums_.shape[1]:
            raise ValueError(f"reference='same' needs the fitted points {list(self.points_)}, got {list(traj.points)}")
        own, same_word, loo = self._score_keys(traj, y)
        if z is None:
            z = self.normalizer_.transform(traj.states)
        fit_rows = self._fit_rows(traj)
        words = _keys(traj, self.labels if y is None else y, self.by if self.has_word_ else None)[0]
        word_code, word_uniq = pd.factorize(self.groups_["word"])
        ex_word = pd.Index(word_uniq).get_indexer(words)
        per_word = [(np.flatnonzero(ex_word == w), np.flatnonzero(word_code == w)) for w in range(len(word_uniq))]
        block: list[tuple[np.ndarray, np.ndarray]] = []
        for w, (rows_w, gk_w) in enumerate(per_word):
            if not len(rows_w):
                continue
            n_b = sum(len(a) for a, _ in block) + len(rows_w)
            k_b = sum(len(b) for _, b in block) + len(gk_w)
            if block and n_b * traj.n_points * k_b * 8 > _SCORE_BLOCK_BYTES:
                yield self._score_block(z, block, own, same_word, loo, fit_rows)
                block = []
            block.append((rows_w, gk_w))
        if block:
            yield self._score_block(z, block, own, same_word, loo, fit_rows)

    def _score_block(
        self,
        z: Any,
        block: list[tuple[np.ndarray, np.ndarray]],
        own: np.ndarray,
        same_word: np.ndarray,
        loo: np.ndarray,
        fit_rows: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Cosines of the examples of a few words with those words' groups (see :meth:`_score_blocks`)."""
        rows = np.concatenate([a for a, _ in block])
        gk = np.concatenate([b for _, b in block])
        if not (len(rows) == z.shape[0] and np.array_equal(rows, np.arange(len(rows)))):
            z = z[rows] if _is_dask(z) else np.take(z, rows, axis=0)
        same = same_word[np.ix_(rows, gk)]
        own_b = pd.Index(gk).get_indexer(own[rows])  # -1 for an unseen sense
        rows_fit = fit_rows[rows]
        r = self.reference_index_
        xp = _xp(z)
        zz = _einsum("npd,npd->np", z, z)
        if r is not None:
            s_ref = self.sums_[gk, r]  # (K_b, d)
            zS = _einsum("npd,kd->npk", z, s_ref.astype(np.float32))
            x_ref = np.where((rows_fit >= 0)[:, None], self.ref_states_[np.maximum(rows_fit, 0)], 0.0)
            x_ref = x_ref.astype(np.float32)
            zx = _einsum("npd,nd->np", z, _like(x_ref, z))
            if xp is not np:
                zz, zS, zx = xp.compute(zz, zS, zx)
            xS = (x_ref.astype(np.float64) @ s_ref.T)[:, None, :]  # (n_b, 1, K_b)
            xx = (x_ref.astype(np.float64) ** 2).sum(1)[:, None]  # (n_b, 1)
            SS = np.einsum("kd,kd->k", s_ref, s_ref)[None, None, :]  # (1, 1, K_b)
        else:
            sums = self.sums_[gk]
            zS = _einsum("npd,kpd->npk", z, sums.astype(np.float32))
            if xp is not np:
                zz, zS = xp.compute(zz, zS)
            zx, xS, xx = zz, zS, zz
            SS = np.einsum("kpd,kpd->pk", sums, sums)[None]  # (1, P, K_b)
        zz, zS, zx = (np.asarray(a, dtype=np.float64) for a in (zz, zS, zx))
        # e[i, k] = 1 where example i sits in group k's sum: use (S_k - x_i) / (n_k - 1) there
        e = (loo[rows][:, None] == gk[None]).astype(np.float64)[:, None, :]  # (n_b, 1, K_b)
        count = self.counts_[gk][None, None, :] - e
        dot = zS - e * zx[..., None]
        sq = SS - 2 * e * xS + e * np.asarray(xx, dtype=np.float64)[..., None]
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = dot / np.sqrt(zz[..., None] * np.maximum(sq, 0.0))
        # A vector at the population mean (point 0 of one word, centred: every context shares it) has no
        # direction and so no preference for any sense: its cosine is 0, and its margin 0.
        at_mean = zz <= 1e-12 * max(float(zz.max()), np.finfo(np.float64).tiny)  # relative to the block
        cos = np.where(at_mean[..., None], 0.0, cos)
        cos = np.where((count > 0) & same[:, None, :], cos, np.nan)
        return rows, gk, cos, own_b, same

    def margin(self, traj: Any, y: Any = None) -> np.ndarray:
        """Cosine to the correct sense minus the largest cosine to another sense of the same word.

        Returns
        -------
        ndarray of shape (n_examples, n_points); NaN for unseen senses or one-sense words.
        """
        return self._margins(as_trajectories(traj), y)[0]

    def predict_correct(self, traj: Any, y: Any = None) -> np.ndarray:
        """Whether the nearest (leave-one-out) prototype of the word is the example's sense.

        Returns
        -------
        ndarray of bool, shape (n_examples, n_points). A tie is not right (chance, not credit).
        """
        return self._margins(as_trajectories(traj), y)[1]

    # ------------------------------------------------------------ directions
    def directions(
        self,
        traj: Any,
        method: str = "prototype",
        y: Any = None,
        cv: int = 5,
        random_state: int | None = 0,
    ) -> np.ndarray:
        """Unit sense directions at the reference point, per example, in normalised coordinates.

        Parameters
        ----------
        traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
            The examples the directions are for (their ids decide leave-one-out / cross-fitting).
        method : {"prototype", "lda", "probe"}
            ``"prototype"``: a sense's prototype minus the mean of the word's other prototypes
            (leave-one-out for the example's own sense). ``"lda"``: shrinkage LDA
            (``LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")``); ``"probe"``: a
            logistic-regression weight vector. For these two a class's direction is its
            coefficient row minus the mean of the other rows (in the binary case +/- the weight
            vector), cross-fitted over ``cv`` stratified folds so that no fitted example's
            direction was learned from itself; other examples use a model fitted on all. The
            folds are grouped by ``groups`` (see :class:`SensePrototypes`): no example's
            direction was learned from another example of its sentence either.
        cv : int
            Folds for cross-fitting (at most the smallest sense count of a word).
        random_state : int or None
            Seeds the fold shuffle and the models.

        Returns
        -------
        ndarray of shape (n_examples, n_groups, d_model)
            Unit vectors; NaN rows for groups of other words and for one-sense words.
        """
        traj = as_trajectories(traj)
        out = np.full((traj.n_examples, len(self.groups_), self.n_features_in_), np.nan)
        for mine, gk, u in self._word_directions(traj, method, y, cv, random_state):
            out[np.ix_(mine, gk)] = u
        return out

    def _word_directions(
        self, traj: Trajectories, method: str, y: Any, cv: int, random_state: int | None
    ) -> Any:
        """Per word with at least two senses: ``(rows, groups, u)`` -- positions of the word's
        scored examples (n_w,), its group indices (K_w,), and unit directions (n_w, K_w, d_model).

        One word at a time, so memory is n_w x K_w x d_model, not n x all groups x d_model.
        """
        self._check_fitted()
        if method not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {method!r}")
        if self.reference_index_ is None:
            raise ValueError("sense directions need a fixed reference point ('last' or an int), not 'same'")
        _, _, loo = self._score_keys(traj, y)
        words = _keys(traj, self.labels if y is None else y, self.by if self.has_word_ else None)[0]
        word_code, word_uniq = pd.factorize(self.groups_["word"])
        score_words = pd.Index(word_uniq).get_indexer(words)
        fit_rows = self._fit_rows(traj)
        s_ref = self.sums_[:, self.reference_index_]
        for w in range(len(word_uniq)):
            gk = np.flatnonzero(word_code == w)
            mine = np.flatnonzero(score_words == w)
            if len(gk) < 2 or not len(mine):
                continue
            if method == "prototype":
                protos = np.repeat((s_ref[gk] / self.counts_[gk, None])[None], len(mine), axis=0)
                # fitted examples (in one of this word's groups): their own sense without them
                i = np.flatnonzero(np.isin(loo[mine], gk))
                local = np.searchsorted(gk, loo[mine][i])
                with np.errstate(invalid="ignore", divide="ignore"):
                    protos[i, local] = (s_ref[gk[local]] - self.ref_states_[fit_rows[mine][i]]) / (
                        self.counts_[gk[local]] - 1
                    )[:, None]
                # p_k minus the mean of the word's other prototypes
                u = protos - (protos.sum(1, keepdims=True) - protos) / (len(gk) - 1)
            else:
                u = self._learned_directions(gk, mine, fit_rows, loo, method, cv, random_state, word_uniq[w])
            with np.errstate(invalid="ignore", divide="ignore"):
                yield mine, gk, u / np.linalg.norm(u, axis=-1, keepdims=True)

    def _learned_directions(
        self,
        gk: np.ndarray,
        mine: np.ndarray,
        fit_rows: np.ndarray,
        loo: np.ndarray,
        method: str,
        cv: int,
        random_state: int | None,
        word: Any,
    ) -> np.ndarray:
        """Cross-fitted LDA / probe directions of one word's groups ``gk`` for the scored examples
        ``mine``: shape (len(mine), len(gk), d_model), not yet unit."""
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
        from sklearn.linear_model import LogisticRegression

        def model() -> Any:
            if method == "lda":
                return LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
            return LogisticRegression(max_iter=2000, random_state=random_state)

        def dirs_of(m: Any) -> np.ndarray:  # (len(gk), d): classes_ are the sorted gk
            coef = np.asarray(m.coef_, dtype=np.float64)
            if len(m.classes_) == 2:
                return np.stack([-coef[0], coef[0]])
            return coef - (coef.sum(0, keepdims=True) - coef) / (len(coef) - 1)

        train_rows = np.flatnonzero(np.isin(self.fit_group_, gk))
        X, yk = self.ref_states_[train_rows], self.fit_group_[train_rows]
        out = np.repeat(dirs_of(model().fit(X, yk))[None], len(mine), axis=0)
        held = np.flatnonzero(loo[mine] >= 0)  # scored examples that were fitted: cross-fit them
        if not len(held):
            return out
        held_pos = pd.Index(train_rows).get_indexer(fit_rows[mine][held])
        for train, test in self._cross_fit_splits(train_rows, yk, gk, cv, random_state, method, word):
            out[held[np.isin(held_pos, test)]] = dirs_of(model().fit(X[train], yk[train]))
        return out

    def _cross_fit_splits(
        self,
        train_rows: np.ndarray,
        yk: np.ndarray,
        gk: np.ndarray,
        cv: int,
        random_state: int | None,
        method: str,
        word: Any,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Folds over one word's fitted examples (positions into ``train_rows``), stratified by sense
        and, when ``groups`` was given, grouped: a sentence never sits on both sides, so no
        example's direction is learned from a duplicate of itself.

        The number of folds is ``cv`` capped by the smallest per-sense count of examples (or of
        groups): every training fold then holds every sense.
        """
        from sklearn.model_selection import StratifiedKFold

        from trajgeo.probes import make_splits

        grp = None if self.fit_split_group_ is None else self.fit_split_group_[train_rows]
        units = np.arange(len(yk)) if grp is None else grp
        per_sense = [len(np.unique(units[yk == k])) for k in gk]
        k_min = int(np.argmin(per_sense))
        if per_sense[k_min] < 2:
            what = "example" if grp is None else "group"
            raise ValueError(
                f"word {word!r}: sense {self.groups_['sense'].iloc[gk[k_min]]!r} has {per_sense[k_min]} "
                f"{what}(s), too few to cross-fit {method!r} directions (need 2)"
            )
        n_splits = min(cv, per_sense[k_min])
        if grp is None:  # plain stratified folds, as before grouping existed
            folds = StratifiedKFold(n_splits, shuffle=True, random_state=random_state)
            splits = list(folds.split(yk, yk))
        else:
            splits = make_splits(yk, grp, n_splits, random_state=random_state)
        for train, _ in splits:
            if len(np.unique(yk[train])) < len(gk):  # possible with very uneven groups
                raise ValueError(
                    f"word {word!r}: a training fold of the grouped cross-fit lacks a sense; "
                    f"use fewer folds (cv={cv}) or groups=None"
                )
        return splits


def _local_index(gk: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each ``group`` in the sorted word groups ``gk``, and whether it is there at all."""
    local = np.minimum(np.searchsorted(gk, group), len(gk) - 1)
    return local, gk[local] == group


def _margin(cos: np.ndarray, own: np.ndarray, same_word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Margin (n, P) and nearest-prototype correctness (n, P) from cosines (n, P, K)."""
    n, p, K = cos.shape
    has_own = own >= 0
    own_cos = np.where(has_own[:, None], cos[np.arange(n), :, np.maximum(own, 0)], np.nan)
    other = same_word & (np.arange(K)[None] != own[:, None])
    masked = np.where(other[:, None, :], cos, -np.inf)
    masked = np.where(np.isnan(masked), -np.inf, masked)
    best_other = masked.max(-1)
    best_other = np.where(np.isinf(best_other), np.nan, best_other)
    margin = own_cos - best_other
    with np.errstate(invalid="ignore"):
        correct = margin > 0  # NaN (unseen sense, one-sense word) and ties are not right
    return margin, correct


# ====================================================================== functions
def prototypes(
    traj: Any,
    labels: Any = "sense",
    normalize: str | None = DEFAULT_NORMALIZE,
    by: str | None = "word",
    reference: int | str = "last",
) -> SensePrototypes:
    """Fit per-(word, sense) prototypes at every point.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
    labels : str or array-like of shape (n_examples,)
    normalize : {None, "center", "standardize", "whiten"}
    by : str or None
        Word column; see :class:`SensePrototypes`.
    reference : {"last", "same"} or int
        Decides which normalisation the prototypes live in (see :class:`SensePrototypes`).

    Returns
    -------
    SensePrototypes
        Fitted; ``prototypes_`` has shape (n_groups, n_points, d_model) and ``groups_`` names the
        (word, sense) of each row.
    """
    return SensePrototypes(labels=labels, by=by, reference=reference, normalize=normalize).fit(traj)


def _meta_cols(traj: Trajectories, idx: np.ndarray, fitted: SensePrototypes, y: Any) -> dict[str, np.ndarray]:
    words, senses, _ = _keys(traj, fitted.labels if y is None else y, fitted.by if fitted.has_word_ else None)
    cols = {"example": traj.meta["example"].to_numpy()[idx]}
    if fitted.has_word_:
        cols["word"] = words[idx]
    cols["sense"] = senses[idx]
    return cols


def curves(
    traj: Any,
    labels: Any = "sense",
    reference: int | str = "last",
    normalize: str | None = DEFAULT_NORMALIZE,
    by: str | None = "word",
) -> pd.DataFrame:
    """Cosine-to-sense curves and the margin, per example and point (leave-one-out).

    ``cos`` rows give ``cos(h_l, prototype_s(r))`` for every sense s of the example's word;
    ``margin`` rows give ``m_l = cos to the correct sense - max cos to another sense of the word``.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
    labels : str or array-like of shape (n_examples,)
    reference : {"last", "same"} or int
        ``"last"`` (default): prototypes of the last point, the resolved meaning; all layers write
        into one residual space, so the curve measures convergence toward it. An int: that
        original point. ``"same"``: r = l, separability at each point -- a path that is separable
        early but heads toward the wrong sense looks good there and not under ``"last"``.
    normalize : {None, "center", "standardize", "whiten"}
        See :class:`SensePrototypes` for the default and where statistics come from.
    by : str or None
        Word column; senses compete only within a word.

    Returns
    -------
    DataFrame
        Columns ``example, point, word, sense, metric, to_sense, value`` (``word`` only when the
        trajectories have a word column); ``metric`` in {"cos", "margin"}; ``to_sense`` is the
        prototype's sense on "cos" rows and None on "margin" rows.
    """
    traj = as_trajectories(traj)
    fitted = SensePrototypes(labels, by, reference, normalize)
    n, p = traj.n_examples, traj.n_points
    margin = np.full((n, p), np.nan)
    parts = []  # per block of words: (example, group, cosines (pairs, P)) of same-word pairs
    for rows, gk, cos_b, own_b, same_b in fitted._score_blocks(traj, None, fitted._fit(traj)):
        margin[rows] = _margin(cos_b, own_b, same_b)[0]
        i, j = np.nonzero(same_b)
        parts.append((rows[i], gk[j], cos_b[i, :, j]))
    ex, k, val = (np.concatenate(a) for a in zip(*parts)) if parts else (
        np.zeros(0, int), np.zeros(0, int), np.zeros((0, p)))
    order = np.lexsort((k, ex))  # example by example, groups in order
    ex, k, val = ex[order], k[order], val[order]
    cos_rows = pd.DataFrame(
        {
            **{c: np.repeat(v, p) for c, v in _meta_cols(traj, ex, fitted, None).items()},
            "point": np.tile(traj.points, len(ex)),
            "metric": "cos",
            "to_sense": np.repeat(fitted.groups_["sense"].to_numpy()[k], p),
            "value": val.reshape(-1),
        }
    )
    all_ex = np.arange(n)
    margin_rows = pd.DataFrame(
        {
            **{c: np.repeat(v, p) for c, v in _meta_cols(traj, all_ex, fitted, None).items()},
            "point": np.tile(traj.points, n),
            "metric": "margin",
            "to_sense": None,
            "value": margin.reshape(-1),
        }
    )
    out = pd.concat([cos_rows, margin_rows], ignore_index=True)
    order = [c for c in ("example", "point", "word", "sense", "metric", "to_sense", "value") if c in out.columns]
    return out[order]


def commitment(
    traj: Any,
    threshold: float = 0.0,
    labels: Any = "sense",
    reference: int | str = "last",
    normalize: str | None = DEFAULT_NORMALIZE,
    by: str | None = "word",
) -> pd.DataFrame:
    """When each example commits to its sense.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
    threshold : float
        The margin must stay strictly above this.
    labels, reference, normalize, by
        As in :func:`curves`.

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
        never happens, e.g. when the last point is not above the threshold. A tie is not right.

    Notes
    -----
    Both need the condition to hold *through the last point*; with the default reference the
    margin at the last point is a leave-one-out nearest-centroid check of the final vectors.
    """
    traj = as_trajectories(traj)
    fitted = SensePrototypes(labels, by, reference, normalize)
    margin, correct = fitted._margins(traj, None, fitted._fit(traj))
    if reference != "same":
        per_point = SensePrototypes(labels, by, "same", normalize)
        correct = per_point._margins(traj, None, per_point._fit(traj))[1]
    with np.errstate(invalid="ignore"):
        above = margin > threshold
    out = pd.DataFrame(_meta_cols(traj, np.arange(traj.n_examples), fitted, None))
    out["commitment_point"] = _suffix_onset(above, traj.points)
    out["stable_point"] = _suffix_onset(correct, traj.points)
    return out


def superposition(
    traj: Any,
    labels: Any = "sense",
    reference: int | str = "last",
    normalize: str | None = None,
    by: str | None = "word",
) -> pd.DataFrame:
    """Does the context-free embedding (point 0) lie between the word's senses?

    For each word and sense s: the mean over the word's examples of ``cos(h_i(0),
    prototype_s(reference))`` (leave-one-out, as in :func:`curves`), and the balance index
    ``min_s cos / max_s cos`` -- 1 when the embedding is equally close to every resolved sense,
    near 0 when it sits on one of them.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
        Must contain point 0.
    labels, by
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
        Columns ``word, sense, cosine, balance`` (``word`` only when there is a word column);
        ``balance`` is repeated within a word and NaN where the largest cosine is not positive.
    """
    traj = as_trajectories(traj)
    if reference == "same":
        raise ValueError("superposition compares point 0 with resolved prototypes; reference='same' is not allowed")
    if 0 not in set(traj.points.tolist()):
        raise ValueError(f"superposition needs point 0 (the embedding); these trajectories have {list(traj.points)}")
    fitted = SensePrototypes(labels, by, reference, normalize)
    z = fitted._fit(traj)
    # point 0 normalised with its own statistics (a point-0-only copy would not match the fitted ones)
    at0 = int(np.flatnonzero(traj.points == 0)[0])
    groups = fitted.groups_
    total, seen = np.zeros(len(groups)), np.zeros(len(groups))
    for _, gk, cos_b, _, _ in fitted._score_blocks(traj.select_points([0]), None, z[:, at0 : at0 + 1]):
        c = cos_b[:, 0, :]  # (n_b, K_b): NaN for other words' groups
        np.add.at(total, gk, np.nansum(c, axis=0))
        np.add.at(seen, gk, (~np.isnan(c)).sum(0))
    cosine = np.where(seen > 0, total / np.maximum(seen, 1), np.nan)
    out = pd.DataFrame({"word": groups["word"].to_numpy(), "sense": groups["sense"].to_numpy(), "cosine": cosine})
    g = out.groupby("word", sort=False)["cosine"]
    hi, lo = g.transform("max"), g.transform("min")
    out["balance"] = np.where(hi > 0, lo / hi, np.nan)
    return out if fitted.has_word_ else out.drop(columns="word")


def _fixed_reference(reference: Any, what: str) -> None:
    if reference == "same":
        raise ValueError(f"{what} needs one sense direction per example: reference must be 'last' or an int, not 'same'")


def reinforcement(
    traj: Any,
    labels: Any = "sense",
    reference: int | str = "last",
    normalize: str | None = DEFAULT_NORMALIZE,
    direction: str = "prototype",
    by: str | None = "word",
    cv: int = 5,
    random_state: int | None = 0,
    groups: Any = "group",
) -> pd.DataFrame:
    """Projection of each point on the example's correct-sense direction and on the others'.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
    labels, by
        As in :func:`curves`.
    reference : "last" or int
        The point whose sense directions are used.
    normalize : {None, "center", "standardize", "whiten"}
        Projections are taken in normalised coordinates (statistics of the reference point).
    direction : {"prototype", "lda", "probe"}
        See :meth:`SensePrototypes.directions` (leave-one-out / cross-fitted).
    cv, random_state
        Cross-fitting of learned directions.
    groups : str, array-like of shape (n_examples,) or None
        Cross-fitting groups (default: the ``group`` column, the sentence, when present); see
        :class:`SensePrototypes`.

    Returns
    -------
    DataFrame
        Columns ``example, point, word, sense, metric, value``; metric ``"correct"`` is
        ``z_l . u_correct`` and ``"other"`` the mean of ``z_l . u_s`` over the word's other senses
        (with two senses and ``direction="prototype"``, other = -correct).
    """
    traj = as_trajectories(traj)
    _fixed_reference(reference, "reinforcement")
    fitted = SensePrototypes(labels, by, reference, normalize, groups=groups)
    z = fitted._fit(traj)
    own = fitted._score_keys(traj, None)[0]
    n = traj.n_examples
    correct = np.full((n, traj.n_points), np.nan)
    other = np.full((n, traj.n_points), np.nan)
    for rows, gk, u in fitted._word_directions(traj, direction, None, cv, random_state):
        zw = z[rows] if _is_dask(z) else np.take(z, rows, axis=0)
        proj = np.asarray(_compute(_einsum("npd,nkd->npk", zw, _like(u.astype(np.float32), zw))), np.float64)
        local, has_own = _local_index(gk, own[rows])
        correct[rows] = np.where(has_own[:, None], proj[np.arange(len(rows)), :, local], np.nan)
        is_other = np.arange(len(gk))[None] != np.where(has_own, local, -1)[:, None]  # (n_w, K_w)
        other[rows] = (proj * is_other[:, None]).sum(-1) / is_other.sum(-1)[:, None]
    frame = Trajectories(np.empty((n, traj.n_points, 0), np.float32), _frame_meta(traj, fitted), points=traj.points)
    return frame.to_frame({"correct": correct, "other": other}, meta_columns=("word", "sense"))


def _frame_meta(traj: Trajectories, fitted: SensePrototypes) -> pd.DataFrame:
    return pd.DataFrame(_meta_cols(traj, np.arange(traj.n_examples), fitted, None))


def attribution(
    traj: Any,
    labels: Any = "sense",
    direction: str = "prototype",
    reference: int | str = "last",
    normalize: str | None = DEFAULT_NORMALIZE,
    by: str | None = "word",
    cv: int = 5,
    random_state: int | None = 0,
    groups: Any = "group",
) -> pd.DataFrame:
    """Which layers (and heads) pushed each example toward its sense.

    Each layer's attention write, MLP write and (when extracted) each head's write is projected on
    the example's unit correct-sense direction (from :meth:`SensePrototypes.directions`, at the
    reference point).

    The direction is found in normalised coordinates (where cosines are trustworthy) and mapped
    back to the raw residual space as the linear functional ``w`` with
    ``normalise(x) . u = (x - mean) . w`` (``w = u / std`` for "standardize", ``W u`` for
    "whiten"). Sublayer writes are raw vectors, and centring cancels in differences, so for a
    pre-LN model the attributions of one example add up exactly to the change of its normalised
    projection from the block-1 input (``aux["block_input"]``) to the last point:
    ``sum_l (attn_l + mlp_l) . w = normalise(h_L) . u - normalise(block_input) . u``.
    With ``normalize=None`` this is the plain projection on the unit raw direction.

    Parameters
    ----------
    traj : Trajectories
        Extracted with ``components=True`` (``heads=True`` for head rows).
    labels, by
        As in :func:`curves`.
    direction : {"prototype", "lda", "probe"}
    reference : "last" or int
    normalize : {None, "center", "standardize", "whiten"}
    cv, random_state
        Cross-fitting of learned directions.
    groups : str, array-like of shape (n_examples,) or None
        Cross-fitting groups (default: the ``group`` column, the sentence, when present).

    Returns
    -------
    DataFrame
        Columns ``example, word, sense, layer, component, head, attribution``; ``component`` in
        {"attn", "mlp", "head"}, ``head`` is -1 unless component is "head"; ``layer`` is 1..L.
    """
    traj = as_trajectories(traj)
    _fixed_reference(reference, "attribution")
    for name in ("attn", "mlp"):
        if name not in traj.components:
            raise KeyError(f"attribution needs components[{name!r}]; extract with components=True")
    fitted = SensePrototypes(labels, by, reference, normalize, groups=groups).fit(traj)
    own = fitted._score_keys(traj, None)[0]
    n = traj.n_examples
    u_own = np.full((n, traj.d_model), np.nan)
    for rows, gk, u in fitted._word_directions(traj, direction, None, cv, random_state):
        local, ok = _local_index(gk, own[rows])
        u_own[rows[ok]] = u[np.flatnonzero(ok), local[ok]]
    r = fitted.reference_index_
    w = fitted.normalizer_.pull_back(u_own, r).astype(np.float64)
    meta = _frame_meta(traj, fitted)
    frames = []
    for name in ("attn", "mlp", "heads"):
        if name not in traj.components:
            continue
        comp = traj.components[name]
        spec = "nlhd,nd->nlh" if name == "heads" else "nld,nd->nl"
        a = np.asarray(_compute(_einsum(spec, comp, _like(w, comp))), dtype=np.float64)
        if name != "heads":
            a = a[..., None]
        n_layers, n_heads = a.shape[1], a.shape[2]
        rows = meta.loc[np.repeat(np.arange(n), n_layers * n_heads)].reset_index(drop=True)
        rows["layer"] = np.tile(np.repeat(np.arange(1, n_layers + 1), n_heads), n)
        rows["component"] = "head" if name == "heads" else name
        rows["head"] = np.tile(np.arange(n_heads), n * n_layers) if name == "heads" else -1
        rows["attribution"] = a.reshape(-1)
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)
