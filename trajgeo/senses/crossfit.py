"""Sense directions at the reference point: leave-one-out prototype differences, and LDA or
logistic-probe directions cross-fitted over sentence-grouped folds.

:class:`SenseDirections` is a mixin of :class:`~trajgeo.senses.SensePrototypes`: it reads the fitted
sums, counts and reference vectors, and adds :meth:`~SenseDirections.directions`.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pandas as pd

from trajgeo._api import changed_signature
from trajgeo.senses._common import DIRECTIONS, keys
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["SenseDirections", "DIRECTIONS"]


class SenseDirections:
    """Unit sense directions per example (mixed into :class:`~trajgeo.senses.SensePrototypes`)."""

    @changed_signature(positional=("method", "y", "cv", "random_state"), n_leading=2)
    def directions(
        self,
        traj: Any,
        *,
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
            folds are grouped by ``groups`` (see :class:`~trajgeo.senses.SensePrototypes`): no
            example's direction was learned from another example of its sentence either.
        y : array-like of shape (n_examples,), optional
            Sense labels overriding ``labels``.
        cv : int
            Folds for cross-fitting (at most the smallest sense count of a word).
        random_state : int or None
            Seeds the fold shuffle and the models.

        Returns
        -------
        ndarray of shape (n_examples, n_groups, d_model)
            Unit vectors; NaN rows for groups of other words, for one-sense words, and for words whose
            vectors at the reference point are a tie (``ties_``: e.g. point 0).
        """
        traj = as_trajectories(traj)
        out = np.full((traj.n_examples, len(self.groups_), self.n_features_in_), np.nan)
        for mine, gk, u in self._word_directions(traj, method, y, cv, random_state):
            out[np.ix_(mine, gk)] = u
        return out

    def _word_directions(
        self, traj: Trajectories, method: str, y: Any, cv: int, random_state: int | None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
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
        words = keys(traj, self.labels if y is None else y, self.word if self.has_word_ else None)[0]
        word_code, word_uniq = pd.factorize(self.groups_["word"])
        score_words = pd.Index(word_uniq).get_indexer(words)
        fit_rows = self._fit_rows(traj)
        for w in range(len(word_uniq)):
            gk = np.flatnonzero(word_code == w)
            mine = np.flatnonzero(score_words == w)
            if len(gk) < 2 or not len(mine):
                continue
            if self.ties_[w, self.reference_index_]:  # every vector the same: no direction tells senses apart
                yield mine, gk, np.full((len(mine), len(gk), self.n_features_in_), np.nan)
                continue
            if method == "prototype":
                u = self._prototype_directions(gk, mine, fit_rows, loo)
            else:
                u = self._learned_directions(gk, mine, fit_rows, loo, method, cv, random_state, word_uniq[w])
            with np.errstate(invalid="ignore", divide="ignore"):
                yield mine, gk, u / np.linalg.norm(u, axis=-1, keepdims=True)

    def _prototype_directions(
        self, gk: np.ndarray, mine: np.ndarray, fit_rows: np.ndarray, loo: np.ndarray
    ) -> np.ndarray:
        """Each group's leave-group-out prototype minus the mean of the word's other prototypes, at
        the reference point, for the scored examples ``mine``: shape (len(mine), len(gk), d_model)."""
        s_ref = self.sums_[:, self.reference_index_]
        protos = np.repeat((s_ref[gk] / self.counts_[gk, None])[None], len(mine), axis=0)
        # fitted examples (in one of this word's groups): their own sense without them
        i = np.flatnonzero(np.isin(loo[mine], gk))
        local = pd.Index(gk).get_indexer(loo[mine][i])
        with np.errstate(invalid="ignore", divide="ignore"):
            protos[i, local] = (s_ref[gk[local]] - self.ref_states_[fit_rows[mine][i]]) / (
                self.counts_[gk[local]] - 1
            )[:, None]
            c = self._cells(fit_rows[mine], gk)
            if c is not None:  # examples whose group holds others: every sense without the whole group
                G = np.zeros((len(c.cell_k), s_ref.shape[-1]))
                np.add.at(G, c.member_cell, self.ref_states_[c.members].astype(np.float64))  # exact: (cells, d)
                rows, k = c.m[c.pair_row], c.pair_k
                left = self.counts_[gk[k]] - c.cell_count[c.pair_cell]
                protos[rows, k] = (s_ref[gk[k]] - G[c.pair_cell]) / left[:, None]
        return protos - (protos.sum(1, keepdims=True) - protos) / (len(gk) - 1)

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
