"""The sense prototypes estimator: per-(word, sense) sums at every point and their leave-one-out
cosines, computed from a few dot products per example (the Gram trick), a few words at a time."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from trajgeo._api import changed_signature
from trajgeo._arrays import RunningMoments, compute, einsum, is_lazy, iter_blocks, like, row_step
from trajgeo.normalization import DEFAULT_NORMALIZE
from trajgeo.senses._common import TIE_RTOL, keys, warn_one_sense, margin_of, normalizer_for, reference_position
from trajgeo.senses.crossfit import SenseDirections
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["SensePrototypes", "prototypes", "nearest_centroid_accuracy"]

# Scoring packs words into blocks while one float64 (examples x points x groups) array of the
# block stays under this; about eight such arrays are alive at once (see _score_blocks).
_SCORE_BLOCK_BYTES = 64 * 2**20
# Group sums gather this many bytes of one group's rows at a time (exact float64 sums, no full copy).
_SUM_BLOCK_BYTES = 4 * 2**20


class SensePrototypes(SenseDirections, BaseEstimator):
    """Per-(word, sense) mean vectors at every point, with leave-one-out scoring.

    Parameters
    ----------
    labels : str or array-like of shape (n_examples,)
        The sense of each example: a ``meta`` column name (default ``"sense"``) or the labels.
    word : str, array-like of shape (n_examples,) or None
        The word of each example (a ``meta`` column, default ``"word"``, or the words); senses
        compete only within a word. If ``"word"`` is absent from ``meta`` (or ``word=None``), all
        examples are one word. (Formerly ``by=``.)
    groups : str, array-like of shape (n_examples,) or None
        What must not score itself (a ``meta`` column, default ``"group"``, the sentence; read by
        :meth:`Trajectories.group_codes`, which for a causal model also joins examples whose input
        up to the target is identical). A fitted example is scored against prototypes built
        without its whole group (leave-group-out; with singleton groups, leave-one-out), and
        learned directions (:meth:`directions`) are cross-fitted over folds that keep a group
        together (``StratifiedGroupKFold`` via :func:`trajgeo.probes.make_splits`). Without that
        column, or with ``None``, each example is its own group.
    reference : {"last", "same"} or int
        Whose prototypes an example is scored against at point l: those of the last point (the
        resolved meaning, default), of a fixed original point index, or of the same point l
        (separability at each point, a different question).
    normalize : {None, "center", "standardize", "whiten"}
        Normalisation before cosines (see :class:`trajgeo.normalization.PointNormalizer`). Default
        ``"standardize"``: on SmolLM2 the residual norm jumps about 4x from layer 12 on and a few
        rogue dimensions take over raw cosines (the raw separation of the two ``bank`` senses
        collapses from about 1.1 to 0.12 while a probe still separates them at 93%). Each point is
        normalised with its own statistics, except ``"whiten"`` with a fixed reference, which fits
        one whitening at the reference point and applies it everywhere. Statistics use every fitted
        example (they use no labels, so this leaks nothing about senses).
    leave_one_out : bool
        Score each fitted example against prototypes without itself and its group (``False``:
        against the prototypes of every fitted example).

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
    ties_ : ndarray of bool, shape (n_words, n_points)
        Per fitted word (in order of first appearance in ``groups_``) and point: whether the word's
        raw vectors there are a tie, i.e. their within-word variance (the trace of the covariance)
        is at most ``TIE_RTOL`` (1e-8) times their mean squared norm. Point 0 is one: every example
        of a word has the same context-free embedding. A decision there (a margin, a nearest
        prototype) would be chance, so margins are NaN where the scored point or the reference
        point is a tie, and no accuracy, commitment or stable point counts it.

    Examples
    --------
    >>> import numpy as np, pandas as pd, trajgeo as tg
    >>> rng = np.random.default_rng(0)
    >>> traj = tg.Trajectories(rng.normal(size=(6, 3, 4)), pd.DataFrame({"sense": list("aaabbb")}))
    >>> protos = tg.senses.prototypes(traj, normalize=None)
    >>> protos.prototypes_.shape
    (2, 3, 4)
    """

    @changed_signature(
        renamed={"by": "word"},
        positional=("labels", "word", "reference", "normalize", "leave_one_out", "groups"),
    )
    def __init__(
        self,
        *,
        labels: Any = "sense",
        word: Any = "word",
        groups: Any = "group",
        reference: int | str = "last",
        normalize: str | None = DEFAULT_NORMALIZE,
        leave_one_out: bool = True,
    ) -> None:
        self.labels = labels
        self.word = word
        self.groups = groups
        self.reference = reference
        self.normalize = normalize
        self.leave_one_out = leave_one_out

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
        words, senses, self.has_word_ = keys(traj, self.labels if y is None else y, self.word)
        group, uniq = pd.factorize(pd.MultiIndex.from_arrays([words, senses], names=["word", "sense"]))
        counts = np.bincount(group, minlength=len(uniq))
        self.groups_ = pd.DataFrame(
            {"word": uniq.get_level_values(0), "sense": uniq.get_level_values(1), "count": counts}
        )
        self.reference_index_ = reference_position(traj, self.reference)
        self.normalizer_ = normalizer_for(self.normalize, self.reference_index_).fit(traj.states)
        z = self.normalizer_.transform(traj.states)
        r = self.reference_index_
        self.sums_, ref = _group_sums(z, group, len(uniq), r)
        self.ref_states_ = None if ref is None else np.asarray(ref, dtype=np.float32)
        self.counts_ = counts
        self.points_ = np.asarray(traj.points)
        self.fit_examples_ = ids
        self.fit_group_ = group
        self.fit_split_group_ = traj.group_codes(self.groups)
        word_uniq = pd.unique(self.groups_["word"])
        self.ties_ = _tie_points(traj.states, pd.Index(word_uniq).get_indexer(words), len(word_uniq))
        self.n_features_in_ = traj.d_model
        return z

    def _same_point(self, traj: Trajectories, z: Any) -> tuple["SensePrototypes", Any]:
        """This fit as one with ``reference="same"``, and the normalised states to score with.

        The sums at every point are the same for every reference; so is the normalisation, except a
        whitening shared at a fixed reference, which needs its own fit on ``traj``.
        """
        if self.reference_index_ is None:
            return self, z
        if self.normalizer_.shared_at is not None:
            same = copy.copy(self)
            same.reference = "same"
            return same, same._fit(traj)
        same = copy.copy(self)
        same.reference, same.reference_index_, same.ref_states_ = "same", None, None
        return same, z

    def _at_reference(self, traj: Trajectories, z: Any, position: int) -> tuple["SensePrototypes", Any]:
        """This fit as one with the fixed reference at ``position`` (along axis 1), and the
        normalised states to score with (the converse of :meth:`_same_point`).

        The sums are the same for every reference; a whitening is shared at the reference point, so
        it is refitted there.
        """
        point = int(self.points_[position])
        if self.normalize == "whiten":
            ref = copy.copy(self)
            ref.reference = point
            return ref, ref._fit(traj)
        ref = copy.copy(self)
        ref.reference, ref.reference_index_ = point, position
        fit_pos = pd.Index(traj.meta["example"].to_numpy()).get_indexer(self.fit_examples_)
        if (fit_pos < 0).any():
            raise ValueError("a reference point needs the trajectories the prototypes were fitted on")
        ref.ref_states_ = np.asarray(compute(z[:, position]), dtype=np.float32)[fit_pos]
        return ref, z

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
        words, senses, _ = keys(traj, self.labels if y is None else y, self.word if self.has_word_ else None)
        gidx = pd.MultiIndex.from_frame(self.groups_[["word", "sense"]])
        own = gidx.get_indexer(pd.MultiIndex.from_arrays([words, senses], names=["word", "sense"]))
        word_codes = pd.factorize(np.concatenate([self.groups_["word"].to_numpy(), words]))[0]
        same_word = word_codes[len(self.groups_):, None] == word_codes[None, : len(self.groups_)]
        row = self._fit_rows(traj)
        loo = np.where(row >= 0, self.fit_group_[np.maximum(row, 0)], -1)
        if not self.leave_one_out:
            loo = np.full(len(row), -1)
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
        traj = as_trajectories(traj)
        cos = np.full((traj.n_examples, traj.n_points, len(self.groups_)), np.nan)
        for rows, gk, cos_b, _, _ in self._score_blocks(traj, y):
            cos[np.ix_(rows, np.arange(traj.n_points), gk)] = cos_b
        return cos

    def _margins(self, traj: Trajectories, y: Any, z: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Margin and nearest-prototype correctness, each (n_examples, n_points), block by block."""
        margin = np.full((traj.n_examples, traj.n_points), np.nan)
        correct = np.zeros((traj.n_examples, traj.n_points), dtype=bool)
        for rows, _, cos_b, own_b, same_b in self._score_blocks(traj, y, z):
            margin[rows], correct[rows] = margin_of(cos_b, own_b, same_b)
        tied = self._tied(traj, y)
        margin[tied], correct[tied] = np.nan, False
        return margin, correct

    def _tied(self, traj: Trajectories, y: Any = None) -> np.ndarray:
        """Where a decision is undefined, shape (n_examples, n_points): the example's word is a tie
        (``ties_``) at the scored point or at the reference point."""
        self._check_fitted()
        words = keys(traj, self.labels if y is None else y, self.word if self.has_word_ else None)[0]
        ex_word = pd.Index(pd.unique(self.groups_["word"])).get_indexer(words)
        pos = pd.Index(self.points_).get_indexer(traj.points)  # scored points among the fitted ones
        ties = np.concatenate([self.ties_, np.zeros((1, self.ties_.shape[1]), bool)])[ex_word]  # unseen: -1
        tied = np.where(pos[None] >= 0, ties[:, np.maximum(pos, 0)], False)
        if self.reference_index_ is not None:
            tied |= ties[:, [self.reference_index_]]
        return tied

    def _score_blocks(self, traj: Trajectories, y: Any, z: Any = None) -> Iterator[tuple[np.ndarray, ...]]:
        """Leave-one-out cosines, a few words at a time.

        Yields ``(rows, gk, cos, own, same_word)``: positions of the block's examples (n_b,),
        ascending, its groups (K_b,), cosines (n_b, n_points, K_b) float64 (NaN for groups of another
        word), the own group as a position in ``gk`` (-1 if unseen) and the same-word mask (n_b, K_b).
        Words are packed into a block while one (n_b, n_points, K_b) float64 array stays under
        ``_SCORE_BLOCK_BYTES``: the scoring keeps about eight such arrays alive, and for all groups
        at once 50 words x 3 senses x 200 examples x 31 points would be 1.1 GB each. Examples of
        words that were not fitted are in no block.
        """
        self._check_fitted()
        if traj.d_model != self.n_features_in_:
            raise ValueError(
                f"trajectories have d_model {traj.d_model}, prototypes were fitted on {self.n_features_in_}"
            )
        if self.reference_index_ is None and traj.n_points != self.sums_.shape[1]:
            raise ValueError(f"reference='same' needs the fitted points {list(self.points_)}, got {list(traj.points)}")
        own, same_word, loo = self._score_keys(traj, y)
        if z is None:
            z = self.normalizer_.transform(traj.states)
        fit_rows = self._fit_rows(traj)
        words = keys(traj, self.labels if y is None else y, self.word if self.has_word_ else None)[0]
        word_code, word_uniq = pd.factorize(self.groups_["word"])
        ex_word = pd.Index(word_uniq).get_indexer(words)
        block: list[tuple[np.ndarray, np.ndarray]] = []
        for w in range(len(word_uniq)):
            rows_w, gk_w = np.flatnonzero(ex_word == w), np.flatnonzero(word_code == w)
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
        rows = np.sort(np.concatenate([a for a, _ in block]))  # ascending: all rows or a slice need no copy
        gk = np.concatenate([b for _, b in block])
        zb = _take_rows(z, rows)
        dots = self._block_dots(zb, gk, fit_rows[rows])
        zz, zS, zx, xS, xx, SS = dots
        # e[i, k] = 1 where example i sits in group k's sum: use (S_k - x_i) / (n_k - 1) there
        e = (loo[rows][:, None] == gk[None]).astype(np.float64)[:, None, :]  # (n_b, 1, K_b)
        count = self.counts_[gk][None, None, :] - e
        dot = zS - e * zx[..., None]
        sq = SS - 2 * e * xS + e * xx[..., None]
        out = self._group_out(zb, fit_rows[rows], gk, zS)
        if out is not None:  # examples whose group holds other fitted examples: without the whole group
            m, cnt, D, C, Q = out
            shape = zS.shape
            count, sq = np.broadcast_to(count, shape).copy(), np.broadcast_to(sq, shape).copy()
            count[m] = self.counts_[gk][None, None, :] - cnt[:, None, :]
            dot[m] = zS[m] - D
            sq[m] = np.broadcast_to(SS, shape)[m] - 2 * C + Q
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = dot / np.sqrt(zz[..., None] * np.maximum(sq, 0.0))
        # A vector at the population mean (point 0 of one word, centred: every context shares it) has no
        # direction and so no preference for any sense: its cosine is 0, and its margin 0.
        at_mean = zz <= 1e-12 * max(float(zz.max(initial=0.0)), np.finfo(np.float64).tiny)  # relative to the block
        same = same_word[np.ix_(rows, gk)]
        cos = np.where(at_mean[..., None], 0.0, cos)
        cos = np.where((count > 0) & same[:, None, :], cos, np.nan)
        return rows, gk, cos, pd.Index(gk).get_indexer(own[rows]), same

    def _cells(self, fr: np.ndarray, gk: np.ndarray) -> "_Cells | None":
        """Which fitted examples each scored example must not see, where that is more than itself.

        ``fr`` (n_s,) is the fit row of each scored example (-1 if it was not fitted) and ``gk`` the
        groups (senses) it is compared with. A cell is one (cross-fitting group, sense) among the
        fitted examples of these senses; a scored example is left out of every cell of its group.
        Returns None when every scored example's group holds only itself (leave-one-out suffices).
        """
        if not self.leave_one_out or self.fit_split_group_ is None:
            return None
        sg = self.fit_split_group_
        cand = np.flatnonzero(np.isin(self.fit_group_, gk))  # fitted examples of these senses
        size = np.bincount(sg[cand], minlength=int(sg.max(initial=-1)) + 1)
        grp = np.where(fr >= 0, sg[np.maximum(fr, 0)], -1)
        m = np.flatnonzero((fr >= 0) & (size[np.maximum(grp, 0)] > 1))
        if not len(m):
            return None
        members = cand[np.isin(sg[cand], grp[m])]
        member_k = pd.Index(gk).get_indexer(self.fit_group_[members])
        member_cell, cells = pd.factorize(pd.MultiIndex.from_arrays([sg[members], member_k]))
        cell_group, cell_k = cells.get_level_values(0).to_numpy(), cells.get_level_values(1).to_numpy()
        pairs = pd.DataFrame({"row": np.arange(len(m)), "group": grp[m]}).merge(
            pd.DataFrame({"cell": np.arange(len(cells)), "group": cell_group}), on="group")
        cell = pairs["cell"].to_numpy()
        return _Cells(m, pairs["row"].to_numpy(), cell_k[cell], cell, cell_k, members, member_cell,
                      np.bincount(member_cell, minlength=len(cells)))

    def _group_out(self, zb: Any, fr: np.ndarray, gk: np.ndarray, zS: np.ndarray
                   ) -> tuple[np.ndarray, ...] | None:
        """The leave-group-out terms of the scored examples whose group holds other fitted examples.

        For such an example i and sense k, with ``G`` the sum of the (normalised) vectors of i's
        group in sense k at the prototypes' point: the prototype is ``(S_k - G) / (n_k - c)``, so
        the cosine needs ``z_i . G`` (``D``), ``S_k . G`` (``C``) and ``|G|^2`` (``Q``) besides the
        dot products of :meth:`_block_dots`.

        Returns
        -------
        None, or ``(m, cnt, D, C, Q)``: positions of those examples in the block (n_m,), the number
        left out per sense (n_m, K_b), and ``D``, ``C``, ``Q`` of shape (n_m, n_points, K_b) (``C``
        and ``Q`` (n_m, 1, K_b) for a fixed reference).
        """
        c = self._cells(fr, gk)
        if c is None:
            return None
        n_m, K, P = len(c.m), len(gk), zS.shape[1]
        cnt = np.zeros((n_m, K))
        cnt[c.pair_row, c.pair_k] = c.cell_count[c.pair_cell]
        zm = _rows_in_memory(zb, c.m)
        # float32 products, as the dot products of _block_dots (their sums are cast to float32 too)
        r = self.reference_index_
        if r is not None:  # the group's vectors at the reference were kept at fit
            G = _cell_sums(self.ref_states_[c.members], c.member_cell, len(c.cell_k))  # (n_cells, d)
            Gi = np.zeros((n_m, K, zm.shape[-1]), np.float32)
            Gi[c.pair_row, c.pair_k] = G[c.pair_cell]
            D = np.matmul(zm, Gi.transpose(0, 2, 1)).astype(np.float64)  # (n_m, P, K)
            C, Q = np.zeros((n_m, 1, K)), np.zeros((n_m, 1, K))
            s_ref = self.sums_[gk[c.cell_k], r].astype(np.float32)
            C[c.pair_row, 0, c.pair_k] = np.einsum("cd,cd->c", G, s_ref)[c.pair_cell]
            Q[c.pair_row, 0, c.pair_k] = np.einsum("cd,cd->c", G, G)[c.pair_cell]
            return c.m, cnt, D, C, Q
        # prototypes of the same point: the group's vectors at every point, from the scored block
        pos = pd.Index(fr).get_indexer(c.members)
        if (pos < 0).any():
            raise ValueError(
                "leave-group-out scoring with reference='same' needs every fitted example of a scored "
                "example's group among the scored examples; fitted examples "
                f"{self.fit_examples_[c.members[pos < 0]][:5].tolist()} are missing (score the trajectories "
                "the prototypes were fitted on, or pass groups=None)")
        G = _cell_sums(_rows_in_memory(zb, pos), c.member_cell, len(c.cell_k))  # (n_cells, P, d)
        D, C, Q = (np.zeros((n_m, P, K)) for _ in range(3))
        D[c.pair_row, :, c.pair_k] = np.einsum("npd,npd->np", zm[c.pair_row], G[c.pair_cell])
        cellC = np.empty((len(c.cell_k), P))
        for k in np.unique(c.cell_k):  # per sense: no (cells, P, d) copy of the sums
            at = np.flatnonzero(c.cell_k == k)
            cellC[at] = np.einsum("cpd,pd->cp", G[at], self.sums_[gk[k]].astype(np.float32))
        C[c.pair_row, :, c.pair_k] = cellC[c.pair_cell]
        Q[c.pair_row, :, c.pair_k] = np.einsum("cpd,cpd->cp", G, G)[c.pair_cell]
        return c.m, cnt, D, C, Q

    def _block_dots(self, z: Any, gk: np.ndarray, rows_fit: np.ndarray) -> tuple[np.ndarray, ...]:
        """The dot products behind the leave-one-out cosines of one block, as float64.

        Returns ``zz`` (n_b, P), ``zS`` (n_b, P, K_b): each point with each group's sum, ``zx`` (n_b,
        P): each point with the example's own vector at the point its prototypes come from, ``xS``
        and ``xx``: that vector with the sums and itself, and ``SS``: the sums' squared norms
        (broadcastable to (n_b, P, K_b)).
        """
        r = self.reference_index_
        zz = einsum("npd,npd->np", z, z)
        if r is None:  # prototypes of the same point: the own vector is z itself
            sums = self.sums_[gk]
            zS = einsum("npd,kpd->npk", z, sums.astype(np.float32))
            zz, zS = _computed(zz, zS)
            SS = np.einsum("kpd,kpd->pk", sums, sums)[None]  # (1, P, K_b)
            return zz, zS, zz, zS, zz, SS
        s_ref = self.sums_[gk, r]  # (K_b, d)
        x_ref = np.where((rows_fit >= 0)[:, None], self.ref_states_[np.maximum(rows_fit, 0)], 0.0)
        x_ref = x_ref.astype(np.float32)
        zS = einsum("npd,kd->npk", z, s_ref.astype(np.float32))
        zx = einsum("npd,nd->np", z, like(x_ref, z))
        zz, zS, zx = _computed(zz, zS, zx)
        x64 = x_ref.astype(np.float64)
        xS = (x64 @ s_ref.T)[:, None, :]  # (n_b, 1, K_b)
        xx = np.einsum("nd,nd->n", x64, x64)[:, None]  # (n_b, 1)
        SS = np.einsum("kd,kd->k", s_ref, s_ref)[None, None, :]  # (1, 1, K_b)
        return zz, zS, zx, xS, xx, SS

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


@dataclass
class _Cells:
    """Leave-group-out bookkeeping of :meth:`SensePrototypes._cells`: ``m`` (n_m,) positions of the
    scored examples concerned; pairs (``pair_row`` into ``m``, ``pair_k`` a sense position in the
    compared groups, ``pair_cell``): every cell of each example's group; per cell its sense
    position ``cell_k`` and size ``cell_count``; ``members`` (fit rows) and their ``member_cell``."""

    m: np.ndarray
    pair_row: np.ndarray
    pair_k: np.ndarray
    pair_cell: np.ndarray
    cell_k: np.ndarray
    members: np.ndarray
    member_cell: np.ndarray
    cell_count: np.ndarray


def _rows_in_memory(z: Any, pos: np.ndarray) -> np.ndarray:
    """``z[pos]`` as a NumPy array (any order, repeats allowed; a dask array reads its rows once)."""
    uniq, inv = np.unique(pos, return_inverse=True)
    block = np.asarray(compute(z[uniq]) if is_lazy(z) else np.take(z, uniq, axis=0))
    return block[inv.ravel()]


def _cell_sums(x: np.ndarray, cell: np.ndarray, n_cells: int) -> np.ndarray:
    """Sums of the rows of ``x`` (n, ...) per ``cell`` (n,): (n_cells, ...) float32, one sparse product."""
    from scipy.sparse import csr_matrix

    onehot = csr_matrix((np.ones(len(cell), np.float32), (cell, np.arange(len(cell)))), shape=(n_cells, len(cell)))
    flat = np.asarray(x, dtype=np.float32).reshape(len(cell), -1)
    return np.asarray(onehot @ flat, dtype=np.float32).reshape((n_cells,) + x.shape[1:])


def _tie_points(states: Any, word_code: np.ndarray, n_words: int) -> np.ndarray:
    """Per word and point, whether the word's raw vectors are a tie: the trace of their covariance is at
    most ``TIE_RTOL`` times their mean squared norm. One streamed pass; (n_words, n_points) bool."""
    moments = [RunningMoments() for _ in range(n_words)]
    for start, stop, x in iter_blocks(states):
        codes = word_code[start:stop]
        for w in np.unique(codes[codes >= 0]):
            moments[w].add(x[codes == w])
    ties = np.zeros((n_words, states.shape[1]), dtype=bool)
    for w, mom in enumerate(moments):
        if mom.n_:
            spread = mom.var_.sum(-1)  # (n_points,)
            ties[w] = spread <= TIE_RTOL * (spread + (mom.mean_**2).sum(-1))
    return ties


def _group_sums(z: Any, group: np.ndarray, n_groups: int, r: int | None) -> tuple[np.ndarray, Any]:
    """Per-group sums of ``z`` (n, P, d) at every point, float64 (n_groups, P, d), and ``z[:, r]``
    (None for ``r=None``).

    In memory, each group's rows are gathered a small block at a time and summed in float64 (exact
    sums, no full copy, about n / block + n_groups steps); lazy states are contracted with a one-hot
    matrix chunk by chunk.
    """
    if is_lazy(z):
        import dask.array as da

        onehot = np.eye(n_groups)[group]  # (n, K), float64: sums are exact to float64
        sums = da.tensordot(like(onehot, z), z.astype(np.float64), axes=(0, 0))
        if r is None:
            return sums.compute(), None
        return da.compute(sums, z[:, r])
    n = z.shape[0]
    flat = z.reshape(n, -1)
    sums = np.zeros((n_groups, flat.shape[1]))
    step = row_step(n, flat.itemsize * flat.shape[1], _SUM_BLOCK_BYTES)
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(n_groups + 1))
    for k in range(n_groups):
        rows = order[starts[k] : starts[k + 1]]
        for i in range(0, len(rows), step):
            sums[k] += np.take(flat, rows[i : i + step], axis=0).sum(0, dtype=np.float64)
    return sums.reshape((n_groups,) + z.shape[1:]), (None if r is None else z[:, r])


def _take_rows(z: Any, rows: np.ndarray) -> Any:
    """``z[rows]`` for ascending ``rows``: ``z`` itself or a slice (a view) where the rows are
    contiguous, a copy only otherwise."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return z[rows[0] : rows[-1] + 1]
    return z[rows] if is_lazy(z) else np.take(z, rows, axis=0)


def _computed(*arrays: Any) -> tuple[np.ndarray, ...]:
    """The arrays in memory as float64 (dask ones computed together, in one graph)."""
    if any(is_lazy(a) for a in arrays):
        import dask

        arrays = dask.compute(*arrays)
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


@changed_signature(renamed={"by": "word"}, positional=("labels", "normalize", "word", "reference"))
def prototypes(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    reference: int | str = "last",
    normalize: str | None = DEFAULT_NORMALIZE,
) -> SensePrototypes:
    """Fit per-(word, sense) prototypes at every point.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
    labels, word, groups
        ``meta`` column names or per-example arrays; see :class:`SensePrototypes`.
    reference : {"last", "same"} or int
        Decides which normalisation the prototypes live in (see :class:`SensePrototypes`).
    normalize : {None, "center", "standardize", "whiten"}

    Returns
    -------
    SensePrototypes
        Fitted; ``prototypes_`` has shape (n_groups, n_points, d_model) and ``groups_`` names the
        (word, sense) of each row.
    """
    return SensePrototypes(labels=labels, word=word, groups=groups, reference=reference, normalize=normalize).fit(traj)


# cosines closer than this are a tie: float32 states carry rounding of about 1e-7
_TIE = 1e-6


@changed_signature(renamed={"by": "word"})
def nearest_centroid_accuracy(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    normalize: str | None = DEFAULT_NORMALIZE,
) -> pd.DataFrame:
    """Leave-group-out nearest-centroid accuracy per word and point.

    At every point, each example is assigned the sense of its word whose centroid *at that point*,
    built without the example's group, is nearest by cosine; the accuracy is the share of examples
    assigned their own sense. These are the leave-group-out prototypes of :class:`SensePrototypes`
    with ``reference="same"``: a separability curve, how decodable the sense is at each point.

    Each word is normalised with its own examples' statistics (as if it were analysed alone), so a
    word's accuracy does not depend on which other words the trajectories hold; with ``"center"``
    that is the classic recipe, cosines after per-point centring on the word's mean.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
    labels, word
        ``meta`` column names or per-example arrays (see :class:`SensePrototypes`); senses compete
        only within a word.
    groups : str, array-like of shape (n_examples,) or None
        An example's centroids are built without its whole group (default the ``group`` column,
        which for a causal model also joins identical input prefixes: see
        :meth:`trajgeo.Trajectories.group_codes`); ``None``: without the example only.
    normalize : {None, "center", "standardize", "whiten"}
        Normalisation before the cosines, fitted per word (whitening per point, as ``"same"`` does).

    Returns
    -------
    DataFrame
        One row per word and point: ``word, point, n_examples, accuracy`` (``word`` only when the
        trajectories have a word column). A tie between the best senses (cosines within 1e-6) is
        no answer: it counts as wrong (chance, not credit). Where the word's vectors themselves are
        a tie (within-word variance at most 1e-8 of their mean squared norm, e.g. point 0, where
        every context shares the context-free embedding) no answer is possible and ``accuracy`` is
        NaN. Words with one sense are left out (one warning names them).
    """
    traj = as_trajectories(traj)
    words, senses, has_word = keys(traj, labels, word)
    skipped = set(warn_one_sense(traj, labels, word, "nearest_centroid_accuracy"))
    codes = traj.group_codes(groups)
    frames = []
    for w, idx in pd.Series(np.arange(traj.n_examples)).groupby(words, sort=False):
        if w in skipped:
            continue
        rows = idx.to_numpy()
        sub = traj[rows]
        fitted = SensePrototypes(labels=senses[rows], word=None, groups=None if codes is None else codes[rows],
                                 reference="same", normalize=normalize)
        margin = fitted._margins(sub, None, fitted._fit(sub))[0]
        with np.errstate(invalid="ignore"):
            acc = np.where(fitted.ties_[0], np.nan, (margin > _TIE).mean(0))
        frames.append(pd.DataFrame({"word": w, "point": traj.points, "n_examples": len(rows), "accuracy": acc}))
    cols = ["word", "point", "n_examples", "accuracy"]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    return out if has_word else out.drop(columns="word")
