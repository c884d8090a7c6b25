"""Helpers the geometry metrics share: unit vectors, grouped sums, codes, row keys, bounded gathers."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Iterator, Sequence

import numpy as np

from trajgeo import _arrays
from trajgeo._arrays import is_lazy, take
from trajgeo.normalization import PointNormalizer

_GROUP_BLOCK = 1024  # rows summed in float32 (one sparse product) before a float64 accumulation
_SMALL_WORK = 5e8  # flops below which BLAS / OpenMP run on one thread (see threads_for)
# odd 64-bit multipliers of the row keys (fixed: keys must not depend on anything but the bytes)
_KEY_MULT = np.random.default_rng(20240531).integers(1, 2**63, size=4096, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def rownorm(a: np.ndarray) -> np.ndarray:
    """Euclidean norms over the last axis (einsum: no temporary ``a * a``)."""
    return np.sqrt(np.einsum("...d,...d->...", a, a))


def unit(x: np.ndarray, return_nonzero: bool = False) -> Any:
    """Unit vectors along the last axis, float32; zero vectors stay zero.

    With ``return_nonzero`` also ``|u|^2`` of each vector as float32: 1, or 0 for a zero vector.
    """
    n = rownorm(x)
    u = (x / np.maximum(n, np.finfo(np.float32).tiny)[..., None]).astype(np.float32, copy=False)
    return (u, (n > 0).astype(np.float32)) if return_nonzero else u


def group_sums(x: np.ndarray, codes: np.ndarray, n_codes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-code sums of ``x`` (n, ...) -> (n_codes, ...) float64, and the sizes (n_codes,).

    Rows with a negative code are left out. Each block of ``_GROUP_BLOCK`` rows is summed in x's
    dtype by one sparse one-hot product (a single pass over the rows, no sorted copy) and the block
    sums are accumulated in float64, so float32 rounding does not grow with the group size.
    """
    from scipy import sparse

    codes = np.asarray(codes).reshape(-1)
    k = int(codes.max()) + 1 if n_codes is None else int(n_codes)
    flat = np.asarray(x).reshape(len(codes), -1)
    out = np.zeros((k, flat.shape[1]), dtype=np.float64)
    for s in range(0, len(codes), _GROUP_BLOCK):
        c = codes[s : s + _GROUP_BLOCK]
        keep = np.flatnonzero(c >= 0)
        if len(keep):
            onehot = sparse.csr_matrix((np.ones(len(keep), dtype=flat.dtype), (c[keep], keep)), shape=(k, len(c)))
            out += onehot @ flat[s : s + _GROUP_BLOCK]
    sizes = np.bincount(codes[codes >= 0], minlength=k)
    return out.reshape((k,) + np.shape(x)[1:]), sizes


def codes_of(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values (as strings) and the code 0..k-1 of each value."""
    uniq, codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return uniq, codes.reshape(-1)


def threads_for(flops: float) -> Any:
    """A context limiting BLAS and OpenMP to one thread for small work, else doing nothing.

    Many small products (one Gram per word and point) and small neighbour searches spend more
    time waking and synchronising threads than computing; on a loaded machine the 550-example
    demo took 20 s with all threads and 2 s with one.
    """
    if flops >= _SMALL_WORK:
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def row_keys(z: np.ndarray) -> np.ndarray:
    """A 64-bit key of each vector's bytes: shape z.shape[:-1], uint64.

    Equal vectors (byte for byte) get equal keys. The key is sum_k w_k v_k mod 2**64 over the
    vector's 32- or 64-bit words v with fixed odd multipliers w: distinct vectors share a key only
    if the multipliers happen to annihilate their difference, a chance of about 2**-64 per pair.
    """
    z = np.ascontiguousarray(z)
    nbytes = z.shape[-1] * z.dtype.itemsize
    if nbytes % 8 == 0:
        words = z.view(np.uint64)
    else:
        words = z.view(np.uint32).astype(np.uint64)
    mult = _KEY_MULT[np.arange(words.shape[-1]) % len(_KEY_MULT)]
    return np.einsum("...d,d->...", words, mult)


def first_distinct(keys: np.ndarray) -> np.ndarray:
    """Sorted positions of the first occurrence of every distinct key (the distinct rows)."""
    return np.sort(np.unique(keys, return_index=True)[1])


class Rows:
    """Normalised rows of in-memory or lazy states, gathered a bounded number at a time.

    Parameters
    ----------
    x : ndarray or dask array of shape (n_examples, n_points, d_model)
    normalizer : PointNormalizer
        Fitted; applied to every gathered block.
    """

    def __init__(self, x: Any, normalizer: PointNormalizer) -> None:
        self.x = x
        self.normalizer = normalizer
        self.lazy = is_lazy(x)

    def budget(self, n_points: int | None = None) -> int:
        """How many rows (of ``n_points`` points, default all) one gather may hold (>= 1), from
        :data:`trajgeo._arrays.GATHER_BYTES` (read at call time)."""
        p = self.x.shape[1] if n_points is None else n_points
        return max(1, _arrays.GATHER_BYTES // max(1, 4 * p * int(self.x.shape[2])))

    def get(self, rows: np.ndarray, positions: Sequence[int] | None = None) -> np.ndarray:
        """Normalised rows, float32 of shape (len(rows), n_points', d_model) (from a lazy store,
        give sorted rows: only the chunks that hold them are read)."""
        block = take(self.x, rows, positions)
        return self.normalizer.transform(block, positions=positions)

    def each(self, index_sets: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        """The normalised rows of each index set in turn (rows in the order given).

        In memory every set is gathered on its own. From a lazy store, consecutive sets are
        gathered together while their distinct rows fit in :meth:`budget`, so that a store is read
        once per batch of sets rather than once per set.
        """
        if not self.lazy:
            for idx in index_sets:
                yield self.get(idx)
            return
        cap, batch, union = self.budget(), [], np.zeros(0, dtype=np.intp)
        for idx in index_sets:
            idx = np.asarray(idx, dtype=np.intp)
            grown = np.union1d(union, idx)
            if batch and len(grown) > cap:
                yield from self._gathered(batch, union)
                batch, grown = [], np.unique(idx)
            batch.append(idx)
            union = grown
        if batch:
            yield from self._gathered(batch, union)

    def _gathered(self, batch: list[np.ndarray], union: np.ndarray) -> Iterator[np.ndarray]:
        got = self.get(union)
        for idx in batch:
            yield got[np.searchsorted(union, idx)]
