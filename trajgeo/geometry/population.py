"""Population geometry per point (Ethayarajh 2019 and friends), in one streamed pass over the examples.

:func:`population_metrics` is a short driver over one private helper per metric family. The
families that sum over all examples (self-similarity, intra-sentence similarity, the between/within
sense scatter) and the row keys that find duplicate vectors are accumulated block by block in a
single pass (a lazy store is read one chunk at a time); the families that work on random samples
(anisotropy pairs, the maximum explainable variance and its baseline draws, the TwoNN subsample)
then gather only their sampled rows, a bounded number at a time. Memory is one block, the per-word
and per-sense sums, the sums of the sentence groups that span blocks, and the samples; never the
whole array.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from trajgeo._api import changed_signature
from trajgeo._arrays import block_bounds, iter_blocks, unwrap
from trajgeo.geometry._common import Rows, codes_of, first_distinct, group_sums, row_keys, unit
from trajgeo.geometry.cloud import TWONN_MIN_DISTINCT, _mev, _sample_distinct, _too_few_warning, _twonn
from trajgeo.normalization import fit_normalizer
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["POPULATION_METRICS", "population_metrics"]

POPULATION_METRICS = (
    "anisotropy",
    "self_similarity",
    "adjusted_self_similarity",
    "intra_sentence_similarity",
    "max_explainable_variance",
    "adjusted_max_explainable_variance",
    "max_explainable_variance_baseline_sd",
    "intrinsic_dimension",
    "between_within_ratio",
)


# ====================================================================== columns and random draws
@dataclass
class _Columns:
    """Codes of the meta columns the metrics read (see :func:`_columns`)."""

    word_names: np.ndarray  # (n_words,)
    words: np.ndarray  # (n,) word code of each example
    has_words: bool
    cells: np.ndarray | None  # (n,) code of each example's (word, sense) cell; None without senses
    cell_word: np.ndarray | None  # (n_cells,) word code of each cell
    groups: np.ndarray | None  # (n,) sentence group code; None when ungrouped

    @property
    def n_words(self) -> int:
        return len(self.word_names)


def _column(t: Trajectories, spec: Any, default: str) -> np.ndarray | None:
    """Values of a meta column or per-example array; None for ``None`` or a missing default column."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec not in t.meta.columns:
        if spec == default:
            return None
        raise KeyError(f"meta has no column {spec!r}; columns are {list(t.meta.columns)}")
    return t.labels(spec)


def _columns(t: Trajectories, labels: Any, word: Any, groups: Any) -> _Columns:
    n = t.n_examples
    wvals = _column(t, word, "word")
    names, words = codes_of(wvals) if wvals is not None else (np.array(["<all>"]), np.zeros(n, dtype=np.intp))
    svals = _column(t, labels, "sense")
    cells = cell_word = None
    if svals is not None:
        _, cells = codes_of(np.char.add(np.char.add(words.astype(str), "\x1f"), np.asarray(svals).astype(str)))
        cell_word = np.zeros(cells.max() + 1, dtype=np.intp)
        cell_word[cells] = words
    gcodes = t.group_codes(groups)
    if gcodes is None and isinstance(groups, str) and groups == "group" and "text" in t.meta.columns:
        gcodes = t.group_codes("text")  # targets of one text share a sentence
    return _Columns(names, words, wvals is not None, cells, cell_word, gcodes)


def _random_pairs(pool_codes: np.ndarray, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n_pairs random pairs (i, j), i != j, whose codes differ when there are >= 2 codes."""
    n = len(pool_codes)
    distinct = len(np.unique(pool_codes)) > 1
    got_i, got_j, have = [], [], 0
    for _ in range(100):  # rejection sampling in vectorised rounds
        i = rng.integers(0, n, size=2 * n_pairs + 16)
        j = rng.integers(0, n, size=2 * n_pairs + 16)
        ok = (pool_codes[i] != pool_codes[j]) if distinct else (i != j)
        got_i.append(i[ok])
        got_j.append(j[ok])
        have += int(ok.sum())
        if have >= n_pairs:
            break
    return np.concatenate(got_i)[:n_pairs], np.concatenate(got_j)[:n_pairs]


@dataclass
class _Plan:
    """Every random draw of :func:`population_metrics`, made before any vector is read.

    ``pairs``: the anisotropy pairs. ``mev``: per word with >= 2 examples, (word code, its
    examples, capped at ``max_examples`` by a stream of its own, and the baseline draws of as many
    other-word examples; sorted). ``rank``: a random rank of every example, from a third stream;
    the TwoNN subsample at each point is the ``max_samples`` distinct vectors of lowest rank.
    """

    pairs: tuple[np.ndarray, np.ndarray]
    mev: list[tuple[int, np.ndarray, list[np.ndarray]]]
    rank: np.ndarray

    @classmethod
    def draw(cls, words: np.ndarray, n_words: int, *, n_pairs: int, n_baseline_draws: int,
             max_examples: int | None, random_state: int | None) -> "_Plan":
        n = len(words)
        rng = np.random.default_rng(random_state)
        pairs = _random_pairs(words, n_pairs, rng)
        # the cap has its own stream, so that uncapped words see the same draws with or without it
        cap_rng = np.random.default_rng(None if random_state is None else [int(random_state), 1])
        mev = []
        for w in range(n_words):
            idx = np.flatnonzero(words == w)
            if len(idx) < 2:
                continue
            if max_examples is not None and len(idx) > max_examples:
                idx = np.sort(cap_rng.choice(idx, max_examples, replace=False))
            pool = np.flatnonzero(words != w) if n_words > 1 else np.arange(n)
            draws = [] if len(pool) < len(idx) else [
                np.sort(rng.choice(pool, len(idx), replace=False)) for _ in range(max(1, n_baseline_draws))
            ]
            mev.append((w, idx, draws))
        rank = np.empty(n, dtype=np.int64)
        rank[np.random.default_rng(None if random_state is None else [int(random_state), 2]).permutation(n)] = np.arange(n)
        return cls(pairs, mev, rank)


# ====================================================================== families summed over all examples
class _SelfSimilarity:
    """Per word: mean cosine over all pairs of its examples, exactly, from sums of unit vectors:
    ((sum u)^2 - sum |u|^2) / (n (n - 1))."""

    def __init__(self, cols: _Columns, shape: tuple[int, int]) -> None:
        self.words, self.k = cols.words, cols.n_words
        self.sums = np.zeros((self.k,) + shape)
        self.sq = np.zeros((self.k, shape[0]))

    def add(self, start: int, stop: int, u: np.ndarray, nonzero: np.ndarray) -> None:
        w = self.words[start:stop]
        self.sums += group_sums(u, w, self.k)[0]
        self.sq += group_sums(nonzero, w, self.k)[0]  # |u|^2: 1 for a vector, 0 for a zero vector

    def result(self) -> np.ndarray:
        sizes = np.bincount(self.words, minlength=self.k)
        pairs = (sizes * (sizes - 1))[:, None].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(pairs > 0, (np.einsum("wpd,wpd->wp", self.sums, self.sums) - self.sq) / pairs, np.nan)


class _IntraSentence:
    """Mean over groups with >= 2 targets of the mean cosine of each target with its group's mean
    vector, (sum u) . (sum x) / (n_g |sum x|) per group.

    A group inside one block is finished there. A group that spans blocks keeps its two sums in a
    slot from its first block to its last; slots are reused, so memory grows with the groups that
    are open at once (those that straddle a block boundary), not with the data.
    """

    def __init__(self, groups: np.ndarray | None, bounds: list[tuple[int, int]], shape: tuple[int, int]) -> None:
        self.total, self.count = np.zeros(shape[0]), 0
        self.groups = groups
        if groups is None:
            return
        self.size = np.bincount(groups)
        self.starts = np.array([s for s, _ in bounds])
        block = np.searchsorted(self.starts, np.arange(len(groups)), side="right") - 1
        self.first = np.full(len(self.size), len(bounds))
        self.last = np.full(len(self.size), -1)
        np.minimum.at(self.first, groups, block)
        np.maximum.at(self.last, groups, block)
        self.slot = self._slots(self.first, self.last, (self.size >= 2) & (self.first < self.last), len(bounds))
        n_slots = int(self.slot.max()) + 1 if len(self.slot) else 0
        self.sx = np.zeros((n_slots,) + shape)
        self.su = np.zeros((n_slots,) + shape)

    @staticmethod
    def _slots(first: np.ndarray, last: np.ndarray, spans: np.ndarray, n_blocks: int) -> np.ndarray:
        """A slot for every spanning group, taken at its first block and free after its last
        (-1 for the others): groups open at the same time never share one."""
        slot = np.full(len(first), -1)
        ids = np.flatnonzero(spans)
        opens = ids[np.argsort(first[ids], kind="stable")]
        closes = ids[np.argsort(last[ids], kind="stable")]
        free: list[int] = []
        top = oi = ci = 0
        for b in range(n_blocks):
            while oi < len(opens) and first[opens[oi]] == b:
                if free:
                    slot[opens[oi]] = free.pop()
                else:
                    slot[opens[oi]], top = top, top + 1
                oi += 1
            while ci < len(closes) and last[closes[ci]] == b:
                free.append(int(slot[closes[ci]]))
                ci += 1
        return slot

    def add(self, start: int, stop: int, z: np.ndarray, u: np.ndarray) -> None:
        if self.groups is None:
            return
        g = self.groups[start:stop]
        member = self.size[g] >= 2
        present, local = np.unique(np.where(member, g, -1), return_inverse=True)
        if present[0] == -1:  # rows of one-target groups take no part
            present, local = present[1:], local.reshape(-1) - 1
        sx = group_sums(z, local, len(present))[0]
        su = group_sums(u, local, len(present))[0]
        spans = self.slot[present] >= 0
        self._finish(sx[~spans], su[~spans], self.size[present[~spans]])
        if spans.any():
            open_groups, s = present[spans], self.slot[present[spans]]
            self.sx[s] += sx[spans]
            self.su[s] += su[spans]
            ends = self.last[open_groups] == int(np.searchsorted(self.starts, start, side="right")) - 1
            self._finish(self.sx[s[ends]], self.su[s[ends]], self.size[open_groups[ends]])
            self.sx[s[ends]] = 0.0
            self.su[s[ends]] = 0.0

    def _finish(self, sx: np.ndarray, su: np.ndarray, size: np.ndarray) -> None:
        nrm = np.sqrt(np.einsum("gpd,gpd->gp", sx, sx))
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(nrm > 0, np.einsum("gpd,gpd->gp", su, sx) / (nrm * size[:, None]), 0.0)
        self.total += score.sum(axis=0)
        self.count += len(score)

    def result(self) -> np.ndarray:
        return self.total / self.count if self.count else np.full(len(self.total), np.nan)


class _BetweenWithin:
    """Per word: sum_s n_s ||mu_s - mu||^2 / sum_i ||x_i - mu_{s(i)}||^2 over its senses s, from the
    count, mean and within-cell sum of squares of every (word, sense) cell, merged block by block
    (Chan et al.'s update: deviations are taken from each block's cell mean, so no cancellation)."""

    def __init__(self, cols: _Columns, shape: tuple[int, int]) -> None:
        self.cells, self.cell_word, self.n_words = cols.cells, cols.cell_word, cols.n_words
        k = 0 if self.cells is None else len(self.cell_word)
        self.n = np.zeros(k)
        self.mean = np.zeros((k,) + shape)
        self.m2 = np.zeros((k, shape[0]))

    def add(self, start: int, stop: int, z: np.ndarray) -> None:
        if self.cells is None:
            return
        c = self.cells[start:stop]
        sums, cnt = group_sums(z, c, len(self.n))
        here = cnt > 0
        mean_b = np.zeros_like(sums)
        mean_b[here] = sums[here] / cnt[here, None, None]
        dev = z - mean_b.astype(np.float32)[c]
        m2_b = group_sums(np.einsum("npd,npd->np", dev, dev), c, len(self.n))[0]
        n = self.n + cnt
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(n > 0, self.n * cnt / n, 0.0)
            delta = mean_b - self.mean
            self.m2 += m2_b + w[:, None] * np.einsum("cpd,cpd->cp", delta, delta)
            self.mean[here] += delta[here] * (cnt[here] / n[here])[:, None, None]
        self.n = n

    def result(self) -> np.ndarray:
        p = self.m2.shape[1]
        if self.cells is None:
            return np.full((self.n_words, p), np.nan)
        within, _ = group_sums(self.m2, self.cell_word, self.n_words)
        wsum, _ = group_sums(self.n[:, None, None] * self.mean, self.cell_word, self.n_words)
        wmean = wsum / np.bincount(self.cell_word, weights=self.n, minlength=self.n_words)[:, None, None]
        off = self.mean - wmean[self.cell_word]
        between, _ = group_sums(self.n[:, None] * np.einsum("cpd,cpd->cp", off, off), self.cell_word, self.n_words)
        n_senses = np.bincount(self.cell_word, minlength=self.n_words)
        # vectors that do not vary (point 0: one embedding for every context) leave only float
        # rounding in the within-sense scatter: the ratio is 0/0 there, not a number
        sq_means, _ = group_sums(self.n[:, None] * np.einsum("cpd,cpd->cp", self.mean, self.mean), self.cell_word, self.n_words)
        varies = within > 1e-9 * (within + sq_means)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((n_senses[:, None] >= 2) & varies, between / within, np.nan)


# ====================================================================== families on random samples
def _anisotropy(rows: Rows, pairs: tuple[np.ndarray, np.ndarray], n_points: int) -> np.ndarray:
    """Mean cosine of the random pairs per point, (n_points,); the pairs' rows are gathered in
    batches that fit the gather budget."""
    i, j = pairs
    total = np.zeros(n_points)
    per = max(1, rows.budget() // 2)
    for s in range(0, len(i), per):
        a, b = i[s : s + per], j[s : s + per]
        union = np.unique(np.concatenate([a, b]))
        u = unit(rows.get(union))
        ia, ib = np.searchsorted(union, a), np.searchsorted(union, b)
        for c in range(0, len(a), 1024):  # chunks of pairs bound the (pairs, p, d) temporaries
            total += np.einsum("kpd,kpd->p", u[ia[c : c + 1024]], u[ib[c : c + 1024]], dtype=np.float64)
    return total / max(len(i), 1)


def _max_explainable_variance(rows: Rows, plan: _Plan, n_words: int, n_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per word (n_words, n_points): the MEV of its (capped) examples, that minus the mean MEV of
    the baseline draws, and the draws' standard deviation (ddof 1)."""
    mev, adj, sd = (np.full((n_words, n_points), np.nan) for _ in range(3))
    blocks = rows.each([s for _, idx, draws in plan.mev for s in [idx, *draws]])
    for w, _, draws in plan.mev:
        mev[w] = _mev(next(blocks))
        if draws:
            base = np.stack([_mev(next(blocks)) for _ in draws])
            adj[w] = mev[w] - base.mean(axis=0)
            if len(base) > 1:
                sd[w] = base.std(axis=0, ddof=1)
    return mev, adj, sd


def _intrinsic_dimension(rows: Rows, keys: np.ndarray, rank: np.ndarray, max_samples: int | None,
                         points: np.ndarray) -> np.ndarray:
    """TwoNN at every point on the ``max_samples`` distinct vectors of lowest rank, (n_points,).
    Where no vectors repeat the sample is the same examples at every point, so their union (what
    is gathered, a few points at a time within the budget) stays about ``max_samples`` rows.
    Points with fewer than :data:`TWONN_MIN_DISTINCT` distinct vectors are NaN, with one warning
    naming them (at point 0 every context of a word shares its embedding)."""
    p = keys.shape[1]
    samples = [_sample_distinct(first_distinct(keys[:, k]), rank, max_samples) for k in range(p)]
    few = [k for k in range(p) if len(samples[k]) < TWONN_MIN_DISTINCT]
    if few:
        counts = sorted({len(samples[k]) for k in few})
        _too_few_warning(f" at point(s) {[int(points[k]) for k in few]}",
                         counts[0] if len(counts) == 1 else f"{counts[0]}-{counts[-1]}", TWONN_MIN_DISTINCT,
                         stacklevel=5)
    todo = [k for k in range(p) if k not in few]
    out = np.full(p, np.nan)
    if not todo:
        return out
    union = np.unique(np.concatenate([samples[k] for k in todo]))
    per = max(1, rows.budget(1) // len(union))  # points per gather
    for s in range(0, len(todo), per):
        pos = todo[s:s + per]
        block = rows.get(union, positions=pos)
        for j, k in enumerate(pos):
            out[k] = _twonn(block[np.searchsorted(union, samples[k]), j])
    return out


# ====================================================================== the table
class _Table:
    """Rows ``point, word, metric, value``: per-word rows (when words are known), then the
    unweighted mean over words on a row with word NaN."""

    def __init__(self, word_names: np.ndarray, has_words: bool) -> None:
        self.names, self.has_words = word_names, has_words
        self.parts: list[tuple[Any, str, np.ndarray]] = []

    def add(self, metric: str, values: Any, word: Any = np.nan) -> None:
        self.parts.append((word, metric, np.asarray(values, dtype=np.float64)))

    def add_per_word(self, metric: str, per_word: np.ndarray) -> None:
        if self.has_words:
            for w, name in enumerate(self.names):
                self.add(metric, per_word[w], name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as they should
            self.add(metric, np.nanmean(per_word, axis=0))

    def frame(self, points: np.ndarray) -> pd.DataFrame:
        p = len(points)
        return pd.DataFrame({
            "point": np.tile(points, len(self.parts)),
            "word": np.repeat(np.array([w for w, _, _ in self.parts], dtype=object), p),
            "metric": np.repeat([m for _, m, _ in self.parts], p),
            "value": np.concatenate([v for _, _, v in self.parts]) if self.parts else np.zeros(0),
        })


# ====================================================================== the driver
@changed_signature(
    renamed={"words": "word", "reference": "fit_on"},
    positional=("normalize", "random_state", "n_pairs", "word", "labels", "groups", "n_baseline_draws",
                "max_samples", "fit_on", "max_examples"),
)
def population_metrics(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    fit_on: Any = None,
    normalize: str | None = None,
    random_state: int | None = 0,
    n_pairs: int = 2000,
    n_baseline_draws: int = 5,
    max_samples: int | None = 5000,
    max_examples: int | None = 500,
) -> pd.DataFrame:
    """Population geometry per point: anisotropy, self-similarity and friends (Ethayarajh 2019).

    Metrics (``word`` is the word for per-word rows; NaN on rows about all words, which for the
    per-word metrics hold the unweighted mean over words):

    ``anisotropy``
        Mean cosine of ``n_pairs`` random pairs of vectors of *different* words (the baseline of how
        similar any two vectors are). With a single word there are no such pairs: random pairs of
        different examples are used instead (a ``UserWarning`` says so), and the adjusted metrics
        below are then about 0 by construction.
    ``self_similarity``
        Per word: mean cosine over all pairs of its examples (different contexts). Computed exactly
        from the sum of unit vectors, ((sum u)^2 - sum u^2) / (n (n - 1)).
    ``adjusted_self_similarity``
        self_similarity - anisotropy.
    ``intra_sentence_similarity``
        Where several targets share a group (``groups``, falling back to ``text``): the mean cosine
        of each target's vector with the mean of its group's target vectors, averaged in the group,
        then over groups with at least 2 targets (NaN when there are none). Ethayarajh averages over
        all words of a sentence; here only the extracted targets are available.
    ``max_explainable_variance`` / ``adjusted_max_explainable_variance``
        Per word: the share of the variance of its (uncentred) occurrence matrix explained by the
        first principal component, sigma_1^2 / sum sigma_i^2. The adjusted form subtracts the same
        estimator applied to as many random vectors of other words (mean of ``n_baseline_draws``
        draws), so sample size biases cancel. NaN for words with fewer than 2 examples, or fewer
        other-word examples than the word has (after the cap below).
        A word with more than ``max_examples`` examples is represented by a seeded random subset
        of ``max_examples`` of them, and the baseline draws have that same size: the metric and
        its baseline always use the same estimator. The cost per word is about
        min(m, d)^2 max(m, d) per point and draw (m examples, d dimensions), so the cap (default
        500) bounds it: at 5,000 examples of one word and d = 576 the uncapped metric with its 5
        draws costs minutes, the capped one seconds. ``max_examples=None`` gives the exact
        all-examples estimator.
    ``max_explainable_variance_baseline_sd``
        Per word: the standard deviation over the ``n_baseline_draws`` baseline draws (ddof 1; NaN
        with a single draw), so one can judge whether the number of draws is enough (the standard
        error of the adjustment is this over sqrt(n_baseline_draws)).
    ``intrinsic_dimension``
        TwoNN estimate over all examples (see :func:`~trajgeo.geometry.twonn_dimension`), on at
        most ``max_samples`` distinct vectors per point: a seeded random subset, the same examples
        at every point where no vectors repeat. NaN, with a ``UserWarning`` naming the points, where
        a point has fewer than :data:`~trajgeo.geometry.cloud.TWONN_MIN_DISTINCT` (100) distinct vectors:
        at point 0 every context of a word shares its embedding, so a set of 12 words has 12.
    ``between_within_ratio``
        Per word: trace of the between-sense scatter over trace of the within-sense scatter,
        sum_s n_s ||mu_s - mu||^2 / sum_i ||x_i - mu_{s(i)}||^2 (NaN with fewer than 2 senses, and
        where the vectors do not vary: a within-sense scatter below 1e-9 of the vectors' squared
        norms is float rounding, e.g. at point 0, where every context shares the embedding).

    Parameters
    ----------
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
        In memory or lazy: a lazy store is read one chunk at a time (one pass for the sums, then
        the sampled rows, at most :data:`trajgeo._arrays.GATHER_BYTES` at a time); it is never
        loaded whole.
    labels, word, groups : str or array-like of shape (n_examples,) or None
        ``meta`` columns (or per-example arrays) with the sense, the word and the sentence group.
        ``word=None``, or no ``"word"`` column, makes all examples one word; no ``"sense"`` column
        leaves the between/within ratio NaN; no ``"group"`` column falls back to ``"text"``. Any
        other missing column is a KeyError. Formerly ``words=``.
    fit_on : boolean mask or integer indices, optional
        Examples whose statistics define the normalisation (default: all). Formerly ``reference``.
    normalize : {None, "center", "standardize", "whiten"}
        Applied per point before all metrics. Default ``None`` (changed in 0.2; it was
        ``"standardize"``): Ethayarajh's anisotropy, self-similarity and maximum explainable
        variance are defined on the raw vectors, and their anisotropy adjustment is what corrects
        for the common direction. Pass ``DEFAULT_NORMALIZE`` for the 0.1 numbers. Under any other
        ``normalize`` the rows keep their names but are no longer Ethayarajh's quantities: centring
        removes the common direction that anisotropy measures (on SmolLM2's built-in set,
        "standardize" gives anisotropy -0.09..-0.03 where the raw vectors give 0.28..0.79).
    random_state : int or None
        Seeds the random pairs, baselines and TwoNN subsample (each from its own stream).
    n_pairs : int
        Random pairs for the anisotropy.
    n_baseline_draws : int
        Random draws averaged for the MEV baseline.
    max_samples : int or None
        Cap on the distinct vectors given to TwoNN per point.
    max_examples : int or None
        Cap on the examples per word for the maximum explainable variance and its baseline draws
        (a seeded random subset; ``None``: all examples). See ``max_explainable_variance``.

    Returns
    -------
    DataFrame with columns ``point, word, metric, value``.
    """
    t = as_trajectories(traj)
    n, p, d = t.n_examples, t.n_points, t.d_model
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    if max_examples is not None and max_examples < 2:
        raise ValueError(f"max_examples must be >= 2 or None, got {max_examples}")
    if n < 2:
        raise ValueError(f"population metrics need at least 2 examples, got {n}")
    cols = _columns(t, labels, word, groups)
    if cols.n_words < 2:
        warnings.warn(
            "population_metrics: only one word, so anisotropy and the MEV baseline use other examples "
            "of the same word; the adjusted metrics are then about 0 by construction",
            UserWarning,
            stacklevel=3,
        )
    plan = _Plan.draw(cols.words, cols.n_words, n_pairs=n_pairs, n_baseline_draws=n_baseline_draws,
                      max_examples=max_examples, random_state=random_state)
    x = unwrap(t)
    nz = fit_normalizer(x, normalize, fit_on)
    bounds = block_bounds(x)
    selfsim, intra, bw = _SelfSimilarity(cols, (p, d)), _IntraSentence(cols.groups, bounds, (p, d)), _BetweenWithin(cols, (p, d))
    keys = np.empty((n, p), dtype=np.uint64)
    for start, stop, block in iter_blocks(x, bounds):  # the one pass over all examples
        z = nz.transform(block)
        u, nonzero = unit(z, return_nonzero=True)
        selfsim.add(start, stop, u, nonzero)
        intra.add(start, stop, z, u)
        bw.add(start, stop, z)
        keys[start:stop] = row_keys(z)
    rows = Rows(x, nz)
    aniso = _anisotropy(rows, plan.pairs, p)
    ss = selfsim.result()
    mev, adj, sd = _max_explainable_variance(rows, plan, cols.n_words, p)
    table = _Table(cols.word_names, cols.has_words)
    table.add("anisotropy", aniso)
    table.add_per_word("self_similarity", ss)
    table.add_per_word("adjusted_self_similarity", ss - aniso)
    table.add("intra_sentence_similarity", intra.result())
    table.add_per_word("max_explainable_variance", mev)
    table.add_per_word("adjusted_max_explainable_variance", adj)
    table.add_per_word("max_explainable_variance_baseline_sd", sd)
    table.add("intrinsic_dimension", _intrinsic_dimension(rows, keys, plan.rank, max_samples, np.asarray(t.points)))
    table.add_per_word("between_within_ratio", bw.result())
    return table.frame(t.points)
