"""Sites and edits: the places of a forward pass that a run reads or changes, and how it changes them
(see :mod:`trajgeo.engine`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

SITE_KINDS = ("resid", "block_input", "attn", "mlp", "z", "head", "pattern", "value")
_READ_ONLY = ("pattern", "value")
_EDIT_OPS = ("replace", "add", "project_out", "apply")


class HeadsUnavailable(ValueError):
    """The model's family has no additive per-head writes (Gemma's post-attention norm, post-LN encoders)."""



# ============================================================== sites
@dataclass(frozen=True)
class Site:
    """A place in the forward pass: ``kind`` (one of :data:`SITE_KINDS`), ``index`` (the point for
    ``"resid"``, the layer 1..L otherwise) and, for ``"z"`` and ``"head"``, an optional ``head``."""

    kind: str
    index: int
    head: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SITE_KINDS:
            raise ValueError(f"site kind must be one of {SITE_KINDS}, got {self.kind!r}")
        if isinstance(self.index, bool) or not isinstance(self.index, (int, np.integer)):
            raise TypeError(f"site index must be an int, got {self.index!r}")
        object.__setattr__(self, "index", int(self.index))
        if self.head is not None:
            if self.kind not in ("z", "head"):
                raise ValueError(f"only 'z' and 'head' sites take a head, not {self.kind!r}")
            object.__setattr__(self, "head", int(self.head))

    @classmethod
    def resid(cls, point: int) -> "Site":
        return cls("resid", point)

    @classmethod
    def block_input(cls, layer: int) -> "Site":
        return cls("block_input", layer)

    @classmethod
    def attn(cls, layer: int) -> "Site":
        return cls("attn", layer)

    @classmethod
    def mlp(cls, layer: int) -> "Site":
        return cls("mlp", layer)

    @classmethod
    def z(cls, layer: int, head: int | None = None) -> "Site":
        return cls("z", layer, head)

    @classmethod
    def head_write(cls, layer: int, head: int | None = None) -> "Site":
        return cls("head", layer, head)

    @classmethod
    def pattern(cls, layer: int) -> "Site":
        return cls("pattern", layer)

    @classmethod
    def value(cls, layer: int) -> "Site":
        return cls("value", layer)

    @property
    def block(self) -> int:
        """The block (1..L) whose pass computes this site; 0 for the embedding."""
        return self.index

    def __repr__(self) -> str:
        name = "point" if self.kind == "resid" else "layer"
        extra = f", head={self.head}" if self.head is not None else ""
        return f"Site({self.kind}, {name}={self.index}{extra})"


# ============================================================== edits
@dataclass(frozen=True, eq=False)
class Edit:
    """A change to one site's value during the pass.

    Build with :meth:`replace`, :meth:`add`, :meth:`project_out` or :meth:`apply`. ``rows`` and
    ``columns`` pick the cells: both given (same length n) is n cells, value shape (n, ...); only
    ``rows``: every column of those rows, (n_rows, n_columns, ...); only ``columns``: those columns of
    every row, (batch, n_columns, ...); neither: everything. Values broadcast.
    """

    site: Site
    op: str
    value: Any = None
    rows: Any = None
    columns: Any = None

    def __post_init__(self) -> None:
        if self.op not in _EDIT_OPS:
            raise ValueError(f"edit op must be one of {_EDIT_OPS}, got {self.op!r}")
        if not isinstance(self.site, Site):
            raise TypeError(f"an edit's site must be a Site, got {self.site!r}")

    @classmethod
    def replace(cls, site: Site, value: Any, *, rows: Any = None, columns: Any = None) -> "Edit":
        """Set the selected cells to ``value``."""
        return cls(site, "replace", value, rows, columns)

    @classmethod
    def add(cls, site: Site, value: Any, *, rows: Any = None, columns: Any = None) -> "Edit":
        """Add ``value`` to the selected cells (steering)."""
        return cls(site, "add", value, rows, columns)

    @classmethod
    def project_out(cls, site: Site, basis: Any, *, rows: Any = None, columns: Any = None) -> "Edit":
        """Remove the span of ``basis`` (shape (k, d) or (d,); orthonormalised here) from the selected cells."""
        return cls(site, "project_out", basis, rows, columns)

    @classmethod
    def apply(cls, site: Site, fn: Callable[[Any], Any], *, rows: Any = None, columns: Any = None) -> "Edit":
        """Replace the selected cells ``x`` by ``fn(x)`` (a torch function; e.g. a fitted eraser)."""
        return cls(site, "apply", fn, rows, columns)

    # -------------------------------------------------------------- application
    def _index(self, device: Any) -> tuple:
        import torch

        def as_long(v: Any) -> Any:
            return torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v, dtype=torch.long, device=device)

        rows = None if self.rows is None else as_long(self.rows)
        cols = None if self.columns is None else as_long(self.columns)
        if rows is not None and cols is not None:
            if rows.shape != cols.shape:
                raise ValueError(f"edit at {self.site}: rows {tuple(rows.shape)} and columns {tuple(cols.shape)} "
                                 "must have one shape (they name cells pairwise)")
            return (rows, cols)
        if rows is not None:
            return (rows,)
        if cols is not None:
            return (slice(None), cols)
        return (slice(None),)

    def _transform(self, x: Any) -> Any:
        import torch

        if self.op == "apply":
            out = self.value(x)
            if not torch.is_tensor(out) or out.shape != x.shape:
                raise ValueError(f"edit at {self.site}: the function must return a tensor of shape {tuple(x.shape)}")
            return out
        v = torch.as_tensor(self.value, device=x.device, dtype=x.dtype) if not torch.is_tensor(self.value) \
            else self.value.to(x.device, x.dtype)
        if self.op == "project_out":
            basis = v.reshape(-1, x.shape[-1]).to(torch.float32)
            q, _ = torch.linalg.qr(basis.T)  # (d, k) orthonormal columns spanning the basis
            xf = x.to(torch.float32)
            return (xf - (xf @ q) @ q.T).to(x.dtype)
        try:
            v = torch.broadcast_to(v, x.shape)
        except RuntimeError:
            raise ValueError(f"edit at {self.site}: value of shape {tuple(v.shape)} does not fit the selected "
                             f"cells of shape {tuple(x.shape)}") from None
        return v if self.op == "replace" else x + v

    def edit(self, h: Any) -> Any:
        """``h`` with this edit applied (a new tensor; ``h`` is left as it is)."""
        sel = self._index(h.device)
        out = h.clone()
        out[sel] = self._transform(h[sel])
        return out


def _edited(h: Any, edits: Sequence[Edit]) -> Any:
    for e in edits:
        h = e.edit(h)
    return h
