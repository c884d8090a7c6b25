"""Batches, pooled reads and the results of a run (see :mod:`trajgeo.engine`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from trajgeo.engine.sites import Site


# ============================================================== batches
@dataclass
class Pool:
    """Which columns of each row make one pooled vector, and their weights: ``idx``, ``weight`` of shape
    (batch, k) (weight 0 on unused slots). ``Pool.mean(columns)`` averages each row's columns."""

    idx: Any
    weight: Any

    @classmethod
    def mean(cls, columns: Sequence[Sequence[int]]) -> "Pool":
        import torch

        k = max(len(c) for c in columns)
        idx = torch.zeros((len(columns), k), dtype=torch.long)
        weight = torch.zeros((len(columns), k), dtype=torch.float32)
        for r, c in enumerate(columns):
            if len(c) == 0:
                raise ValueError(f"row {r} pools no column")
            idx[r, :len(c)] = torch.as_tensor(list(c))
            weight[r, :len(c)] = 1.0 / len(c)
        return cls(idx, weight)

    def gather(self, h: Any) -> Any:
        """(batch, T, *rest) -> (batch, *rest): the weighted sum of each row's pooled columns."""
        idx = self.idx.to(h.device)
        shape = idx.shape + h.shape[2:]
        rows = h.gather(1, idx.reshape(idx.shape + (1,) * (h.dim() - 2)).expand(shape))
        w = self.weight.to(h.device, h.dtype).reshape(idx.shape + (1,) * (h.dim() - 2))
        return (rows * w).sum(1)


@dataclass
class Batch:
    """Padded token ids: ``input_ids`` and ``mask`` of shape (batch, T) on the model's device."""

    input_ids: Any
    mask: Any
    padding_side: str = "right"

    @classmethod
    def from_ids(cls, ids: Sequence[Sequence[int]], *, pad_id: int, padding_side: str = "right",
                 device: Any = None) -> "Batch":
        import torch

        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if len(ids) == 0:
            raise ValueError("a batch needs at least one row")
        lengths = [len(x) for x in ids]
        if min(lengths) == 0:
            raise ValueError(f"row {lengths.index(0)} of the batch has no tokens")
        longest = max(lengths)
        input_ids = torch.full((len(ids), longest), int(pad_id), dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for r, x in enumerate(ids):
            off = longest - len(x) if padding_side == "left" else 0
            input_ids[r, off:off + len(x)] = torch.as_tensor(np.asarray(x, dtype=np.int64))
            mask[r, off:off + len(x)] = 1
        return cls(input_ids.to(device), mask.to(device), padding_side)

    @property
    def lengths(self) -> Any:
        return self.mask.sum(1)

    @property
    def offsets(self) -> Any:
        """Column of each row's first token (0 everywhere with right padding)."""
        return self.mask.shape[1] - self.lengths if self.padding_side == "left" else self.lengths * 0

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


# ============================================================== results
@dataclass
class Run:
    """What one :meth:`Engine.run` read: ``reads[site]``, and after :meth:`backward`, ``grads[site]``.

    Reads have shape (batch, T, ...) or, with a pool, (batch, ...); in a run with ``grad=True`` they
    are live tensors of the graph. Gradients always have the full shape (batch, T, ...): the
    derivative of the objective with respect to the site's value at every column (for ``"head"``
    sites, the derivative with respect to each head's write: that of the output projection's output,
    the same for every head).
    """

    reads: dict = field(default_factory=dict)
    grads: dict = field(default_factory=dict)
    _leaf: Any = None
    _grad_shapes: dict = field(default_factory=dict)
    _grad_store: dict = field(default_factory=dict)

    def __getitem__(self, site: Site) -> Any:
        return self.reads[site]

    def backward(self, objective: Any) -> dict:
        """Fill :attr:`grads` with d objective / d site for every site read (objective: a tensor, summed)."""
        import torch

        if self._leaf is None:
            raise RuntimeError("this run kept no graph: run it with grad=True")
        torch.autograd.grad(objective.sum(), self._leaf, allow_unused=True)
        for site, shape in self._grad_shapes.items():
            g = self._grad_store.get(site)
            self.grads[site] = torch.zeros(shape, device=self._leaf.device) if g is None else g
        self._leaf = None  # the graph is freed
        return self.grads
