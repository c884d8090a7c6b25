"""Path and population geometry of trajectories, rogue dimensions, and point-wise normalisation.

Path metrics (:func:`path_metrics`) describe each example's own path through the points; population
metrics (:func:`population_metrics`, :func:`cka`, :func:`rogue_dimensions`) describe the cloud of all
examples at each point. Every function accepts a :class:`~trajgeo.trajectories.Trajectories` or a
plain array of shape (n_examples, n_points, d_model) and returns a tidy DataFrame.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from trajgeo._arrays import is_lazy, row_step, unwrap
from trajgeo.normalization import (  # noqa: F401  (re-exported: they lived here before 0.2)
    DEFAULT_NORMALIZE,
    DEFAULT_NORMALIZE_DOC,
    NORMALIZE_OPTIONS,
    PointNormalizer,
    _moments,
    fit_normalizer,
    normalize,
    normalized,
)

__all__ = [
    "PointNormalizer",
    "normalize",
    "NORMALIZE_OPTIONS",
    "DEFAULT_NORMALIZE",
    "PATH_METRICS",
    "POPULATION_METRICS",
    "path_metrics",
    "path_metric_arrays",
    "population_metrics",
    "twonn_dimension",
    "cka",
    "rogue_dimensions",
]


PATH_METRICS = (
    "norm",
    "step_size",
    "relative_step",
    "cos_prev",
    "turning_angle",
    "cos_to_final",
    "dist_to_final",
    "path_length",
    "displacement",
    "straightness",
)
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


# ====================================================================== array helpers
# One normalisation path (trajgeo.normalization) and one set of array helpers (trajgeo._arrays).
_GROUP_BLOCK = 256  # rows summed in float32 before a float64 accumulation (_group_sums)
_is_dask = is_lazy
_unwrap = unwrap
_fit_normalizer = fit_normalizer
_normalized = normalized


def _blocks(n: int, row_bytes: int) -> range:
    """Starts of blocks of examples holding about ``BLOCK_BYTES`` each (at least one example)."""
    return range(0, n, row_step(n, row_bytes))


def _traj(obj: Any):
    from trajgeo.trajectories import as_trajectories

    return as_trajectories(obj)


# ====================================================================== path metrics
def _rownorm(a: np.ndarray) -> np.ndarray:
    # einsum reduces without the temporary a*a that np.linalg.norm allocates
    return np.sqrt(np.einsum("...d,...d->...", a, a))


def _path_block(x: np.ndarray) -> np.ndarray:
    """All path metrics of one block of examples.

    Parameters
    ----------
    x : ndarray of shape (b, n_points, d_model)

    Returns
    -------
    ndarray of shape (b, n_points, len(PATH_METRICS)), float32, in the order of PATH_METRICS.
    """
    x = np.asarray(x, dtype=np.float32)
    b, p, _ = x.shape
    out = np.full((b, p, len(PATH_METRICS)), np.nan, dtype=np.float32)
    m = {name: k for k, name in enumerate(PATH_METRICS)}
    with np.errstate(divide="ignore", invalid="ignore"):
        nrm = _rownorm(x)
        out[..., m["norm"]] = nrm
        final = x[:, -1:]
        out[..., m["cos_to_final"]] = np.einsum("npd,nqd->np", x, final) / (nrm * nrm[:, -1:])
        out[..., m["dist_to_final"]] = _rownorm(x - final)
        disp = _rownorm(x - x[:, :1])
        out[..., m["displacement"]] = disp
        if p > 1:
            step = x[:, 1:] - x[:, :-1]
            size = _rownorm(step)
            out[:, 1:, m["step_size"]] = size
            out[:, 1:, m["relative_step"]] = np.where(nrm[:, :-1] > 0, size / nrm[:, :-1], np.nan)
            out[:, 1:, m["cos_prev"]] = np.einsum("npd,npd->np", x[:, 1:], x[:, :-1]) / (nrm[:, 1:] * nrm[:, :-1])
            length = np.zeros((b, p), dtype=np.float64)
            np.cumsum(size, axis=1, dtype=np.float64, out=length[:, 1:])
            out[..., m["path_length"]] = length
            out[:, 1:, m["straightness"]] = np.where(length[:, 1:] > 0, disp[:, 1:] / length[:, 1:], np.nan)
            if p > 2:
                # Angle between unit steps by Kahan's formula 2*atan2(|u-v|, |u+v|): exact near 0 and
                # 180 degrees, where arccos of a dot product loses all precision.
                unit = step / size[..., None]
                out[:, 2:, m["turning_angle"]] = np.degrees(
                    2.0 * np.arctan2(_rownorm(unit[:, 1:] - unit[:, :-1]), _rownorm(unit[:, 1:] + unit[:, :-1]))
                )
        else:
            out[..., m["path_length"]] = 0.0
    # the path to itself: exactly 0 length and displacement at point 0
    out[:, 0, m["path_length"]] = 0.0
    return out


def path_metric_arrays(
    traj: Any,
    normalize: str | None = None,
    reference: Any = None,
    block_size: int = 128,
) -> dict[str, np.ndarray]:
    """The path metrics as arrays (the work behind :func:`path_metrics`, without the long table).

    Parameters
    ----------
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
        In memory or lazy (dask); lazy states are processed chunk by chunk over examples with
        ``map_blocks`` on whatever dask scheduler is active.
    normalize : {None, "center", "standardize", "whiten"}
        Point-wise normalisation before the metrics (statistics from ``reference``).
    reference : boolean mask or integer indices, optional
        Examples whose statistics define the normalisation (default: all).
    block_size : int
        Examples per block for in-memory states (bounds the temporaries; the result does not
        depend on it).

    Returns
    -------
    dict mapping each name in :data:`PATH_METRICS` to an ndarray of shape (n_examples, n_points)
    """
    x = _unwrap(traj)
    if len(x.shape) != 3:
        raise ValueError(f"expected states of shape (n_examples, n_points, d_model), got {tuple(x.shape)}")
    nz = _fit_normalizer(x, normalize, reference)
    n, p = int(x.shape[0]), int(x.shape[1])
    if _is_dask(x):
        xz = nz.transform_lazy(x).rechunk({1: -1, 2: -1})
        vals = xz.map_blocks(
            _path_block, dtype=np.float32, chunks=(xz.chunks[0], (p,), (len(PATH_METRICS),))
        ).compute()
    else:
        x = np.asarray(x, dtype=np.float32)
        vals = np.empty((n, p, len(PATH_METRICS)), dtype=np.float32)
        for start in range(0, n, max(1, int(block_size))):  # blocks of examples, not one example at a time
            stop = min(n, start + block_size)
            vals[start:stop] = _path_block(nz.transform(x[start:stop]))
    return {name: vals[..., k] for k, name in enumerate(PATH_METRICS)}


def path_metrics(traj: Any, normalize: str | None = None, reference: Any = None) -> pd.DataFrame:
    """Per-example, per-point geometry of each trajectory.

    For example i and point l (h_l its vector; consecutive means consecutive along
    ``traj.points``, so a subset of points gives the coarser path):

    ``norm``            ||h_l||
    ``step_size``       ||h_l - h_{l-1}|| (NaN at the first point)
    ``relative_step``   ||h_l - h_{l-1}|| / ||h_{l-1}||
    ``cos_prev``        cos(h_l, h_{l-1})
    ``turning_angle``   angle in degrees between the consecutive steps h_{l-1} - h_{l-2} and
                        h_l - h_{l-1} (NaN at the first two points, and where a step is zero).
                        This is a curvature **across layers for one token**, not the across-token
                        curvature of Hosseini and Fedorenko (2023), which turns between the vectors
                        of consecutive tokens within one layer.
    ``cos_to_final``    cos(h_l, h_L) (L the last point)
    ``dist_to_final``   ||h_l - h_L||
    ``path_length``     sum of the step sizes up to l (0 at the first point)
    ``displacement``    ||h_l - h_0||
    ``straightness``    displacement / path_length: 1 for a straight path (NaN at the first point)

    Parameters
    ----------
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
        Lazy (dask-backed) trajectories are processed chunk-wise and give the same numbers.
    normalize : {None, "center", "standardize", "whiten"}
        Default ``None``: norms, steps and lengths describe the raw residual stream, which is what
        these metrics are about. Pass ``DEFAULT_NORMALIZE`` for cosines free of rogue dimensions.
    reference : boolean mask or integer indices, optional
        Examples whose statistics define the normalisation (default: all).

    Returns
    -------
    DataFrame with columns ``example, point, word, sense, metric, value`` (``word``/``sense`` when
    in ``meta``), one row per example x point x metric.

    Examples
    --------
    >>> import numpy as np, trajgeo as tg
    >>> x = np.cumsum(np.ones((2, 4, 3), dtype=np.float32), axis=1)  # straight lines
    >>> df = tg.geometry.path_metrics(x)
    >>> df.query("metric == 'straightness' and point == 3")["value"].round(6).tolist()
    [1.0, 1.0]
    """
    t = _traj(traj)
    arrays = path_metric_arrays(t, normalize=normalize, reference=reference)
    return t.to_frame(values=arrays, meta_columns=("word", "sense"))


# ====================================================================== population metrics
def _unit(x: np.ndarray) -> np.ndarray:
    """Unit vectors along the last axis; zero vectors stay zero."""
    n = _rownorm(x)[..., None]
    return (x / np.maximum(n, np.finfo(np.float32).tiny)).astype(np.float32, copy=False)


def _gram(x: np.ndarray) -> np.ndarray:
    """Per-point Gram matrices: (n, p, d) -> (p, n, n), by batched BLAS (einsum would not use it)."""
    xt = np.ascontiguousarray(np.swapaxes(x, 0, 1))
    return xt @ np.swapaxes(xt, 1, 2)


def _scatter(x: np.ndarray) -> np.ndarray:
    """Per-point uncentred scatter matrices: (n, p, d) -> (p, d, d), by batched BLAS."""
    xt = np.ascontiguousarray(np.swapaxes(x, 0, 1))
    return np.swapaxes(xt, 1, 2) @ xt


def _segments(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort order, segment starts and segment sizes of integer codes 0..k-1 (all present)."""
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return order, starts, sizes


def _group_sums(x: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-code sums of x (n, ...) -> (k, ...) in float64, and the sizes (k,). Vectorised (reduceat).

    Sorted blocks of at most ``_GROUP_BLOCK`` rows are summed in x's dtype (reduceat casting to
    float64 row by row is ~10x slower) and the block sums accumulated in float64, so no copy of
    the whole array is made and float32 rounding does not grow with the group size.
    """
    order, starts, sizes = _segments(codes)
    out = np.zeros((len(sizes),) + x.shape[1:], dtype=np.float64)
    sorted_codes = np.repeat(np.arange(len(sizes)), sizes)
    step = min(_GROUP_BLOCK, _blocks(len(codes), x[:1].nbytes).step)
    for s in range(0, len(codes), step):
        ids = sorted_codes[s : s + step]
        runs = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
        out[ids[runs]] += np.add.reduceat(x[order[s : s + step]], runs, axis=0)
    return out, sizes


_SMALL_WORK = 5e8  # flops below which BLAS / OpenMP run on one thread (see _threads_for)


def _threads_for(flops: float) -> Any:
    """A context limiting BLAS and OpenMP to one thread for small work, else doing nothing.

    Many small products (one Gram per word and point) and small neighbour searches spend more
    time waking and synchronising threads than computing; on a loaded machine the 550-example
    demo took 20 s with all threads and 2 s with one.
    """
    from contextlib import nullcontext

    if flops >= _SMALL_WORK:
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


_EIGSH_MIN = 96  # below this Gram/scatter size a full (batched) eigvalsh is cheaper than Lanczos


def _top_eigenvalue(g: np.ndarray) -> float:
    """Largest eigenvalue of one symmetric PSD matrix (k, k), by Lanczos (ARPACK) in float64.

    Only the top eigenvalue is needed, and a full ``eigvalsh`` of a 576 x 576 matrix costs 7x (and
    far more, batched, on a busy machine). The start vector is fixed so results are reproducible;
    if ARPACK does not converge the full decomposition is used instead.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    g = np.asarray(g, dtype=np.float64)
    v0 = np.random.default_rng(0).uniform(0.5, 1.5, size=g.shape[0])  # positive: never orthogonal to a PSD top vector in practice
    try:
        return float(eigsh(g, k=1, which="LA", v0=v0, return_eigenvectors=False, tol=1e-10)[0])
    except ArpackNoConvergence:
        return float(np.linalg.eigvalsh(g)[-1])


def _mev(x: np.ndarray) -> np.ndarray:
    """Maximum explainable variance per point: sigma_1^2 / sum sigma_i^2 of the (uncentred) matrix.

    Parameters
    ----------
    x : ndarray of shape (m, n_points, d)

    Returns
    -------
    ndarray of shape (n_points,), float64; NaN where the matrix is all zeros.

    Notes
    -----
    sigma_1^2 is the top eigenvalue of the smaller of the Gram (m, m) and scatter (d, d) matrices,
    built in float32 by batched BLAS; sum sigma_i^2 is the sum of squares, accumulated in float64.
    Against a float64 SVD this differs by float32 rounding (relative ~1e-6).
    """
    x = np.asarray(x, dtype=np.float32)
    xt = np.ascontiguousarray(np.swapaxes(x, 0, 1))  # (p, m, d)
    total = np.einsum("pmd,pmd->p", xt, xt, dtype=np.float64)
    m, d = x.shape[0], x.shape[2]
    with _threads_for(2.0 * xt.shape[0] * min(m, d) ** 2 * max(m, d)):
        gram = xt @ np.swapaxes(xt, 1, 2) if m <= d else np.swapaxes(xt, 1, 2) @ xt
        if gram.shape[-1] < _EIGSH_MIN:
            top = np.linalg.eigvalsh(gram.astype(np.float64))[:, -1]
        else:
            top = np.array([_top_eigenvalue(g) if t > 0 else 0.0 for g, t in zip(gram, total)])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, top / total, np.nan)


def twonn_dimension(x: np.ndarray, max_samples: int | None = 5000, random_state: int | None = 0) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017) of one point cloud, robust to duplicates.

    Duplicate rows (common at point 0: the embedding is the same for every context of a word)
    would give a zero nearest-neighbour distance and an infinite ratio, so they are merged first
    and any remaining zero distance is dropped. The estimate is the maximum-likelihood one,
    d = (N - 1) / sum_i log(r2_i / r1_i), with r1, r2 the distances to the two nearest neighbours.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_features)
    max_samples : int or None
        Subsample the unique rows to at most this many (random, with ``random_state``).

    Returns
    -------
    float; NaN with fewer than 3 distinct rows.
    """
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    # np.unique sorts rows lexicographically; float32 -> float64 is exact, so deduplicating in the
    # input's own dtype gives the same rows in the same order at a fraction of the cost
    x = np.unique(x, axis=0)
    if max_samples is not None and len(x) > max_samples:
        x = x[np.random.default_rng(random_state).choice(len(x), max_samples, replace=False)]
    if len(x) < 3:
        return float("nan")
    # scikit-learn's float32 neighbour search accumulates distances in float64 chunks: 2-3x faster
    # than float64 input, same neighbours, distances equal up to float32 rounding of the inputs
    with _threads_for(2.0 * len(x) ** 2 * x.shape[1]):
        dist, _ = NearestNeighbors(n_neighbors=3).fit(x).kneighbors(x)
    dist = dist.astype(np.float64)
    r1, r2 = dist[:, 1], dist[:, 2]
    keep = r1 > 0
    if keep.sum() < 3:
        return float("nan")
    logmu = np.log(r2[keep] / r1[keep])
    s = logmu.sum()
    return float((keep.sum() - 1) / s) if s > 0 else float("nan")


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return uniq, codes.reshape(-1)


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


def _mean_pair_cos(u: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Mean over pairs of cos(u_i, u_j) per point; u are unit vectors (n, p, d) -> (p,)."""
    total = np.zeros(u.shape[1], dtype=np.float64)
    for s in range(0, len(i), chunk):  # chunks of pairs bound the (pairs, p, d) temporaries
        total += np.einsum("kpd,kpd->p", u[i[s : s + chunk]], u[j[s : s + chunk]], dtype=np.float64)
    return total / max(len(i), 1)


def population_metrics(
    traj: Any,
    normalize: str | None = DEFAULT_NORMALIZE,
    random_state: int | None = 0,
    n_pairs: int = 2000,
    words: str | Sequence[Any] | None = "word",
    labels: str | Sequence[Any] | None = "sense",
    groups: str | Sequence[Any] | None = "group",
    n_baseline_draws: int = 5,
    max_samples: int | None = 5000,
    reference: Any = None,
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
        TwoNN estimate over all examples (see :func:`twonn_dimension`); duplicates merged.
    ``between_within_ratio``
        Per word: trace of the between-sense scatter over trace of the within-sense scatter,
        sum_s n_s ||mu_s - mu||^2 / sum_i ||x_i - mu_{s(i)}||^2 (NaN with fewer than 2 senses).

    Parameters
    ----------
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
        Lazy trajectories are normalised chunk-wise and then loaded (these metrics need all vectors
        of a point together).
    normalize : {None, "center", "standardize", "whiten"}
        Applied per point before all metrics (default :data:`DEFAULT_NORMALIZE`; cosines of raw
        residuals are dominated by rogue dimensions).
    random_state : int or None
        Seeds the random pairs, baselines and TwoNN subsample.
    n_pairs : int
        Random pairs for the anisotropy.
    words, labels, groups : str or array-like or None
        ``meta`` columns (or per-example arrays) with the word, the sense and the sentence group.
        A missing column skips what needs it (all examples count as one word).
    n_baseline_draws : int
        Random draws averaged for the MEV baseline.
    max_samples : int or None
        Cap on the examples given to TwoNN.
    max_examples : int or None
        Cap on the examples per word for the maximum explainable variance and its baseline draws
        (a seeded random subset; ``None``: all examples). See ``max_explainable_variance``.
    reference : boolean mask or integer indices, optional
        Examples whose statistics define the normalisation (default: all).

    Returns
    -------
    DataFrame with columns ``point, word, metric, value``.
    """
    t = _traj(traj)
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    if max_examples is not None and max_examples < 2:
        raise ValueError(f"max_examples must be >= 2 or None, got {max_examples}")
    rng = np.random.default_rng(random_state)
    x = _normalized(t, normalize, reference)
    n, p, _ = x.shape
    if n < 2:
        raise ValueError(f"population metrics need at least 2 examples, got {n}")
    u = _unit(x)
    word_vals = _optional_labels(t, words)
    has_words = word_vals is not None
    wnames, wcodes = _codes(word_vals) if has_words else (np.array(["<all>"]), np.zeros(n, dtype=int))
    n_words = len(wnames)
    rows: list[tuple[Any, str, np.ndarray]] = []  # (word, metric, values over points)

    def add(metric: str, values: np.ndarray, word: Any = np.nan) -> None:
        rows.append((word, metric, np.asarray(values, dtype=np.float64)))

    # --- anisotropy
    if n_words < 2:
        warnings.warn(
            "population_metrics: only one word, so anisotropy and the MEV baseline use other examples "
            "of the same word; the adjusted metrics are then about 0 by construction",
            UserWarning,
            stacklevel=2,
        )
    pi, pj = _random_pairs(wcodes, n_pairs, rng)
    aniso = _mean_pair_cos(u, pi, pj)
    add("anisotropy", aniso)

    # --- self-similarity per word (exact, from sums of unit vectors)
    sums, sizes = _group_sums(u, wcodes)  # (W, p, d), (W,)
    sq, _ = _group_sums(np.einsum("npd,npd->np", u, u), wcodes)  # (W, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        pairs = (sizes * (sizes - 1))[:, None].astype(np.float64)
        selfsim = np.where(pairs > 0, (np.einsum("wpd,wpd->wp", sums, sums) - sq) / pairs, np.nan)
    _add_per_word(add, "self_similarity", selfsim, wnames, has_words)
    _add_per_word(add, "adjusted_self_similarity", selfsim - aniso, wnames, has_words)

    # --- intra-sentence similarity
    gvals = _optional_labels(t, groups)
    if gvals is None and isinstance(groups, str) and groups == "group":
        gvals = _optional_labels(t, "text")
    intra = np.full(p, np.nan)
    if gvals is not None:
        _, gcodes = _codes(gvals)
        gsum, gsize = _group_sums(x, gcodes)
        multi = gsize >= 2
        if multi.any():
            member = np.flatnonzero(multi[gcodes])
            gdir = _unit(gsum.astype(np.float32))  # direction of each group's mean
            del gsum
            cos = np.empty((len(member), p), dtype=np.float64)
            step = _blocks(len(member), u[:1].nbytes).step
            for s in range(0, len(member), step):  # blocks: no (n, p, d) gather of group means
                blk = member[s : s + step]
                cos[s : s + len(blk)] = np.einsum("npd,npd->np", u[blk], gdir[gcodes[blk]])
            per_group, cnt = _group_sums(cos, np.unique(gcodes[member], return_inverse=True)[1].reshape(-1))
            intra = (per_group / cnt[:, None]).mean(axis=0)
    add("intra_sentence_similarity", intra)

    # --- maximum explainable variance (per word; one Gram per word, not per example)
    mev = np.full((n_words, p), np.nan)
    adj = np.full((n_words, p), np.nan)
    base_sd = np.full((n_words, p), np.nan)
    # the cap has its own stream, so that uncapped words see the same draws with or without it
    cap_rng = np.random.default_rng(None if random_state is None else [int(random_state), 1])
    for w in range(n_words):
        idx = np.flatnonzero(wcodes == w)
        if len(idx) < 2:
            continue
        if max_examples is not None and len(idx) > max_examples:
            idx = np.sort(cap_rng.choice(idx, max_examples, replace=False))
        mev[w] = _mev(x[idx])
        pool = np.flatnonzero(wcodes != w) if n_words > 1 else np.arange(n)
        if len(pool) < len(idx):
            continue
        draws = np.stack(
            [_mev(x[rng.choice(pool, len(idx), replace=False)]) for _ in range(max(1, n_baseline_draws))]
        )
        adj[w] = mev[w] - draws.mean(axis=0)
        if len(draws) > 1:
            base_sd[w] = draws.std(axis=0, ddof=1)
    _add_per_word(add, "max_explainable_variance", mev, wnames, has_words)
    _add_per_word(add, "adjusted_max_explainable_variance", adj, wnames, has_words)
    _add_per_word(add, "max_explainable_variance_baseline_sd", base_sd, wnames, has_words)

    # --- intrinsic dimension (all examples, per point)
    seeds = rng.integers(0, 2**31 - 1, size=p)
    add("intrinsic_dimension", [twonn_dimension(x[:, k], max_samples, int(seeds[k])) for k in range(p)])

    # --- between / within sense scatter per word
    svals = _optional_labels(t, labels)
    bw = np.full((n_words, p), np.nan)
    if svals is not None:
        _, scodes = _codes(np.char.add(np.char.add(wcodes.astype(str), "\x1f"), np.asarray(svals).astype(str)))
        ssum, ssize = _group_sums(x, scodes)  # per (word, sense) cell
        smean = ssum / ssize[:, None, None]
        smean32 = smean.astype(np.float32)
        sq_dev = np.empty((n, p), dtype=np.float64)
        step = _blocks(n, x[:1].nbytes).step
        for s in range(0, n, step):  # squared distance to the own cell mean, in blocks of examples
            dev = x[s : s + step] - smean32[scodes[s : s + step]]
            sq_dev[s : s + step] = np.einsum("npd,npd->np", dev, dev)
        within_cell, _ = _group_sums(sq_dev, scodes)
        cell_word = np.zeros(len(ssize), dtype=int)
        cell_word[scodes] = wcodes
        wmean = _group_sums(ssum, cell_word)[0] / sizes[:, None, None]
        off = smean - wmean[cell_word]
        between_cell = ssize[:, None] * np.einsum("cpd,cpd->cp", off, off)
        within, _ = _group_sums(within_cell, cell_word)
        between, _ = _group_sums(between_cell, cell_word)
        n_senses = np.bincount(cell_word, minlength=n_words)
        with np.errstate(divide="ignore", invalid="ignore"):
            bw = np.where((n_senses[:, None] >= 2) & (within > 0), between / within, np.nan)
    _add_per_word(add, "between_within_ratio", bw, wnames, has_words)

    points = t.points
    frames = [
        pd.DataFrame({"point": points, "word": [word] * p, "metric": metric, "value": values})
        for word, metric, values in rows
    ]
    return pd.concat(frames, ignore_index=True)


def _optional_labels(t: Any, spec: Any) -> np.ndarray | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        return t.meta[spec].to_numpy() if spec in t.meta.columns else None
    return t.labels(spec)


def _add_per_word(add: Any, metric: str, per_word: np.ndarray, names: np.ndarray, has_words: bool) -> None:
    """Rows per word (when words are known), then the unweighted mean over words (word NaN)."""
    if has_words:
        for w, name in enumerate(names):
            add(metric, per_word[w], name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as they should
        add(metric, np.nanmean(per_word, axis=0))


# ====================================================================== CKA
def cka(
    traj: Any,
    normalize: str | None = None,
    max_examples: int | None = 1000,
    random_state: int | None = 0,
) -> pd.DataFrame:
    """Linear CKA (Kornblith et al. 2019) between the clouds of every pair of points.

    CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) with X_c the column-centred
    (n_examples, d_model) matrix of one point; computed from the (n, n) Gram matrices of all points
    at once. It is invariant to rotations and isotropic scaling of either point, so 1 means "the
    same geometry up to rotation and scale".

    Parameters
    ----------
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
    normalize : {None, "center", "standardize", "whiten"}
        Default ``None``: CKA centres by itself, and a per-dimension scaling would break the
        rotation invariance it is meant to have.
    max_examples : int or None
        Random subsample of examples (the Gram matrices cost n_points * n^2 memory).
    random_state : int or None

    Returns
    -------
    DataFrame with columns ``point_a, point_b, cka`` (all ordered pairs, diagonal included).
    """
    t = _traj(traj)
    n = t.n_examples
    idx = np.arange(n)
    if max_examples is not None and n > max_examples:
        idx = np.sort(np.random.default_rng(random_state).choice(n, max_examples, replace=False))
    x = _normalized(t[idx] if len(idx) < n else t, normalize)
    if x.shape[0] < 2:
        raise ValueError(f"cka needs at least 2 examples, got {x.shape[0]}")
    x = x.astype(np.float64)
    x -= x.mean(axis=0)
    gram = _gram(x).reshape(x.shape[1], -1)  # (p, n*n)
    hsic = gram @ gram.T
    diag = np.sqrt(np.diag(hsic))
    with np.errstate(divide="ignore", invalid="ignore"):
        val = hsic / np.outer(diag, diag)
    pts = t.points
    pa, pb = np.meshgrid(pts, pts, indexing="ij")
    return pd.DataFrame({"point_a": pa.ravel(), "point_b": pb.ravel(), "cka": val.ravel()})


# ====================================================================== rogue dimensions
def rogue_dimensions(
    traj: Any,
    top_k: int = 5,
    normalize: str | None = None,
    by: str = "cosine",
) -> pd.DataFrame:
    """The dimensions that dominate the variance or the cosine at each point.

    Following Timkey and van Schijndel (2021): the cosine contribution of dimension k is the mean
    over pairs of distinct examples of u_i[k] u_j[k] (u the unit vectors), so the contributions add
    up to the mean pairwise cosine; ``cosine_share`` is a dimension's contribution over that total
    (it can exceed 1 or be negative when other dimensions pull the total towards 0).
    ``variance_share`` is var_k / sum_k var_k.

    Parameters
    ----------
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
        Lazy trajectories are reduced chunk-wise (only sums are kept).
    top_k : int
        Dimensions reported per point.
    normalize : {None, "center", "standardize", "whiten"}
        Default ``None``: the point is to diagnose the raw space.
    by : {"cosine", "variance"}
        Rank dimensions by their cosine contribution or by their variance share.

    Returns
    -------
    DataFrame with columns ``point, rank, dimension, variance_share, cosine_share`` (rank 1 = top).
    """
    if by not in ("cosine", "variance"):
        raise ValueError(f"by must be 'cosine' or 'variance', got {by!r}")
    t = _traj(traj)
    x = _unwrap(t)
    n = t.n_examples
    if n < 2:
        raise ValueError(f"rogue_dimensions needs at least 2 examples, got {n}")
    if not 1 <= top_k:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    nz = _fit_normalizer(x, normalize, None)
    if _is_dask(x):
        import dask

        xz = nz.transform_lazy(x).astype(np.float64)
        uz = xz / _da_norm(xz)
        s1, s2, us, uq = dask.compute(xz.sum(0), (xz**2).sum(0), uz.sum(0), (uz**2).sum(0))
        var = s2 / n - (s1 / n) ** 2  # (p, d)
    else:
        var, us, uq = _rogue_sums(np.asarray(x, dtype=np.float32), nz)
    contrib = (us**2 - uq) / (n * (n - 1))  # (p, d): sums to the mean pairwise cosine
    with np.errstate(divide="ignore", invalid="ignore"):
        vshare = var / var.sum(axis=1, keepdims=True)
        cshare = contrib / contrib.sum(axis=1, keepdims=True)
    key = contrib if by == "cosine" else var
    k = min(top_k, key.shape[1])
    top = np.argsort(-key, axis=1, kind="stable")[:, :k]  # (p, k)
    p = key.shape[0]
    rows = np.arange(p)[:, None]
    return pd.DataFrame(
        {
            "point": np.repeat(t.points, k),
            "rank": np.tile(np.arange(1, k + 1), p),
            "dimension": top.ravel(),
            "variance_share": vshare[rows, top].ravel(),
            "cosine_share": cshare[rows, top].ravel(),
        }
    )


def _rogue_sums(x: np.ndarray, nz: PointNormalizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-point variance, sum of unit vectors and sum of their squares, each (n_points, d_model).

    Blocks of examples are normalised and turned into unit vectors in float32; only the sums are
    kept, in float64 (the variance via :func:`_moments`, shifted so that offsets do not cancel it).
    """
    n = x.shape[0]
    us = np.zeros(x.shape[1:], dtype=np.float64)
    uq = np.zeros(x.shape[1:], dtype=np.float64)
    step = _blocks(n, 4 * int(np.prod(x.shape[1:]))).step
    moments = []
    for start in range(0, n, step):
        xz = nz.transform(x[start : start + step])
        moments.append((len(xz),) + _moments(xz))
        u = _unit(xz)
        us += u.sum(axis=0, dtype=np.float64)
        u *= u
        uq += u.sum(axis=0, dtype=np.float64)
    # combine the blocks' means and variances (Chan et al.'s parallel formula)
    sizes = np.array([m[0] for m in moments], dtype=np.float64)[:, None, None]
    means = np.stack([m[1] for m in moments])
    mean = (sizes * means).sum(0) / n
    var = (sizes * (np.stack([m[2] for m in moments]) + (means - mean) ** 2)).sum(0) / n
    return var, us, uq


def _da_norm(x: Any) -> Any:
    """Row norms of a dask array over the last axis, kept as a trailing axis (zeros -> 1)."""
    import dask.array as da

    nrm = da.sqrt((x**2).sum(axis=-1, keepdims=True))
    return da.where(nrm > 0, nrm, 1.0)
