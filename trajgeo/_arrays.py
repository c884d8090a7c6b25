"""Helpers shared by every analysis for arrays that may live in memory (numpy) or on disk (dask).

One place for "is this lazy?", "bring it into memory", "the states of a Trajectories or of an
array", block sizes of chunked passes, and ``einsum`` over numpy or dask operands.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["is_lazy", "compute", "unwrap", "as_states", "row_step", "einsum", "like", "BLOCK_BYTES"]

BLOCK_BYTES = 64 * 2**20  # bytes of one block of examples in chunked in-memory passes


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
