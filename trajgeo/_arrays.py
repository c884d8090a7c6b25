"""Helpers shared by every analysis for arrays that may live in memory (numpy) or on disk (dask).

One place for "is this lazy?", "bring it into memory", "the states of a Trajectories or of an
array", block sizes of chunked passes, one pass over blocks of examples that reads a lazy array
one chunk at a time (:func:`iter_blocks`), bounded gathers of rows (:func:`take`), streamed
moments (:class:`RunningMoments`), and ``einsum`` over numpy or dask operands.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

__all__ = [
    "is_lazy", "compute", "unwrap", "as_states", "row_step", "einsum", "like", "BLOCK_BYTES", "GATHER_BYTES",
    "block_bounds", "iter_blocks", "take", "RunningMoments",
]

BLOCK_BYTES = 64 * 2**20  # bytes of one block of examples in chunked in-memory passes
GATHER_BYTES = 256 * 2**20  # bytes of rows an analysis gathers at once (samples, pairs) from a lazy store


def is_lazy(x: Any) -> bool:
    """Whether ``x`` is a dask array (lazy trajectories), not an in-memory array."""
    return not isinstance(x, np.ndarray) and hasattr(x, "compute") and hasattr(x, "chunks")


def compute(x: Any) -> np.ndarray:
    """``x`` in memory as a numpy array (dask arrays are computed; nothing is copied otherwise)."""
    return np.asarray(x.compute() if is_lazy(x) else x)


def unwrap(obj: Any) -> Any:
    """The states array of a :class:`~trajgeo.trajectories.Trajectories`, or ``obj`` itself."""
    from trajgeo.trajectories import Trajectories

    return obj.states if isinstance(obj, Trajectories) else obj


def as_states(obj: Any) -> np.ndarray:
    """States in memory as float32 of shape (n_examples, n_points, d_model).

    Parameters
    ----------
    obj : Trajectories, ndarray or dask array of shape (n_examples, n_points, d_model)

    Raises
    ------
    ValueError
        If the array is not three-dimensional.
    """
    x = np.asarray(compute(unwrap(obj)), dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected states of shape (n_examples, n_points, d_model), got {x.shape}")
    return x


def row_step(n: int, row_bytes: int, block_bytes: int = BLOCK_BYTES) -> int:
    """How many rows (examples) of ``row_bytes`` each make one block of about ``block_bytes`` (>= 1)."""
    return max(1, min(max(n, 1), block_bytes // max(1, row_bytes)))


# contractions with a new output axis, as BLAS matmuls (einsum's own loop is slow there)
_MATMUL = {
    "npd,kd->npk": lambda a, b: a @ b.T,
    "npd,kpd->npk": lambda a, b: np.matmul(a.transpose(1, 0, 2), b.transpose(1, 2, 0)).transpose(1, 0, 2),
    "npd,nkd->npk": lambda a, b: np.matmul(a, b.transpose(0, 2, 1)),
}


def einsum(spec: str, *ops: Any) -> Any:
    """``einsum`` for numpy or dask operands (dask when any operand is lazy); BLAS matmul for the
    contractions that numpy's einsum would loop over."""
    if any(is_lazy(o) for o in ops):
        import dask.array as da

        return da.einsum(spec, *ops)
    if spec in _MATMUL:
        return _MATMUL[spec](*ops)
    return np.einsum(spec, *ops)


def like(arr: np.ndarray, ref: Any) -> Any:
    """``arr`` (one row per example along axis 0) as a dask array chunked like ``ref`` when ``ref``
    is lazy; ``arr`` itself otherwise."""
    if not is_lazy(ref):
        return arr
    import dask.array as da

    return da.from_array(arr, chunks=(ref.chunks[0],) + tuple((s,) for s in arr.shape[1:]))


def _row_bytes(x: Any) -> int:
    """Bytes of one example (row along axis 0) once in memory as float32 or wider."""
    return max(4, np.dtype(x.dtype).itemsize) * int(np.prod(x.shape[1:], dtype=np.int64))


def block_bounds(x: Any, max_rows: int | None = None, block_bytes: int | None = None) -> list[tuple[int, int]]:
    """``(start, stop)`` of the blocks of examples :func:`iter_blocks` yields, in order.

    Blocks hold about ``block_bytes`` (default :data:`BLOCK_BYTES`, read at call time; at least one
    example, at most ``max_rows``); for a dask array they never straddle a chunk along axis 0, so
    each chunk is read once.
    """
    n = int(x.shape[0])
    step = row_step(n, _row_bytes(x), BLOCK_BYTES if block_bytes is None else block_bytes)
    if max_rows is not None:
        step = max(1, min(step, int(max_rows)))
    edges = np.cumsum((0,) + tuple(x.chunks[0])) if is_lazy(x) else np.array([0, n])
    return [(s, min(s + step, int(hi))) for lo, hi in zip(edges[:-1], edges[1:]) for s in range(int(lo), int(hi), step)]


def iter_blocks(
    x: Any, bounds: Sequence[tuple[int, int]] | None = None, max_rows: int | None = None
) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, block)`` over axis 0, each block in memory.

    In-memory arrays give views; a dask array is computed one chunk at a time (the next chunk is
    read while the current one is processed), so a pass holds at most two chunks, never the array.

    Parameters
    ----------
    x : ndarray or dask array of shape (n_examples, ...)
    bounds : sequence of (start, stop), optional
        From :func:`block_bounds` (default: ``block_bounds(x, max_rows)``).
    max_rows : int, optional
        Most examples per block.
    """
    bounds = list(block_bounds(x, max_rows) if bounds is None else bounds)
    if not is_lazy(x):
        for s, e in bounds:
            yield s, e, x[s:e]
        return
    # one compute per chunk (the blocks inside it are slices), the next chunk read in the background
    from concurrent.futures import ThreadPoolExecutor

    edges = np.cumsum((0,) + tuple(x.chunks[0]))
    spans: dict[int, list[tuple[int, int]]] = {}
    for s, e in bounds:
        spans.setdefault(int(np.searchsorted(edges, s, side="right")) - 1, []).append((s, e))
    parts = list(spans.values())

    def read(blocks: list[tuple[int, int]]) -> np.ndarray:
        return compute(x[blocks[0][0] : blocks[-1][1]])

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, parts[0]) if parts else None
        for k, blocks in enumerate(parts):
            chunk = pending.result()
            if k + 1 < len(parts):
                pending = pool.submit(read, parts[k + 1])
            lo = blocks[0][0]
            for s, e in blocks:
                yield s, e, chunk[s - lo : e - lo]


def take(x: Any, rows: np.ndarray, positions: Sequence[int] | None = None) -> np.ndarray:
    """Rows ``rows`` of ``x`` (and only the points ``positions`` along axis 1) in memory.

    A dask array reads only the chunks that hold those rows; give sorted rows, and keep their
    number bounded (e.g. by :data:`GATHER_BYTES`): the result is what is held.
    """
    rows = np.asarray(rows, dtype=np.intp)
    if is_lazy(x):
        sel = x[rows]
        return compute(sel if positions is None else sel[:, list(positions)])
    if positions is None:
        return np.take(x, rows, axis=0)
    return x[np.ix_(rows, np.asarray(positions, dtype=np.intp))]


def _outer(v: np.ndarray) -> np.ndarray:
    """Outer product over the last axis: (..., d) -> (..., d, d)."""
    return v[..., :, None] * v[..., None, :]


class RunningMoments:
    """Count, mean and centred second moments of rows added block by block, in float64.

    Each block is centred on its own first row before squaring (float32 in, float64 sums) and the
    blocks are merged with the pairwise update of Chan, Golub and LeVeque (1979), so large offsets
    (rogue dimensions) do not cancel the variance away and no float64 copy of a block is made.

    Parameters
    ----------
    cross : bool
        ``False``: per-feature sums of squares, ``m2_`` of shape ``x.shape[1:]``. ``True``: the last
        axis holds vectors, and ``m2_`` is their scatter matrix: (d, d) for rows (b, d), one per
        leading position, (..., d, d), for blocks (b, ..., d) (one BLAS product per block).

    Attributes
    ----------
    n_ : int
    mean_ : ndarray of shape x.shape[1:] (float64)
    m2_ : ndarray (float64)
        Sum of squared deviations from the mean (``/ n_`` is the population variance).
    """

    def __init__(self, cross: bool = False) -> None:
        self.cross = cross
        self.n_ = 0
        self.mean_: np.ndarray | None = None
        self.m2_: np.ndarray | None = None

    def add(self, x: Any) -> "RunningMoments":
        """Merge a block of rows, shape (b, ...) (b may be 0)."""
        x = np.asarray(x)
        b = len(x)
        if b == 0:
            return self
        dtype = np.float32 if x.dtype.itemsize <= 4 else x.dtype
        shift = np.asarray(x[0], dtype=dtype)
        c = np.subtract(x, shift, dtype=dtype)
        s1 = c.sum(axis=0, dtype=np.float64)
        m1 = s1 / b
        if self.cross:  # (b, ..., d) -> scatter (..., d, d); 2-D blocks are one symmetric BLAS product
            ct = c if c.ndim == 2 else np.ascontiguousarray(np.moveaxis(c, 0, -2))
            m2 = (np.swapaxes(ct, -1, -2) @ ct).astype(np.float64) - b * _outer(m1)
        else:
            c *= c
            m2 = c.sum(axis=0, dtype=np.float64) - b * m1**2
        mean = shift + m1
        if self.n_ == 0:
            self.n_, self.mean_, self.m2_ = b, mean, m2
            return self
        n = self.n_ + b
        delta = mean - self.mean_
        w = self.n_ * b / n
        self.m2_ = self.m2_ + m2 + w * (_outer(delta) if self.cross else delta**2)
        self.mean_ = self.mean_ + delta * (b / n)
        self.n_ = n
        return self

    @property
    def var_(self) -> np.ndarray:
        """Population variance (``m2_ / n_``; the covariance matrix with ``cross``)."""
        return self.m2_ / self.n_
