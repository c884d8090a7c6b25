"""One forward engine: run a model over a batch of token ids, read any residual or component at any
(point, position), and replace, add to, project out of, or transform any of them at any (layer, position).

Everything runs on the model's own modules through PyTorch hooks placed by the family's
:class:`trajgeo.models.Adapter`, for every architecture extraction supports. The hooks live only for one
:meth:`Engine.run` and are removed (and any skipped block restored) on exit, even after an exception.

Sites
-----
A :class:`Site` names a place in the forward pass, indexed as in the rest of trajgeo:

============================  ==========================================================================
site                          value at each (row, column)
============================  ==========================================================================
``Site.resid(point)``         point 0: the token embedding times the model's scale (no position
                              embedding): the output of ``adapter.embed``; point l (1..L): the raw
                              residual after block l (the block's output).
``Site.block_input(layer)``   the input of block ``layer`` (for layer 1: the embedding plus GPT-2's
                              position embedding, or BERT's normed embeddings; else point layer-1).
``Site.attn(layer)``          the attention write of block ``layer`` (for Gemma the post-attention
                              norm's output; for post-LN encoders the difference of the residuals after
                              and before the attention sublayer, as in :func:`trajgeo.extract`).
``Site.mlp(layer)``           the MLP write (post-LN encoders: residual after the block minus residual
                              after attention).
``Site.z(layer, head=None)``  the attention output projection's input split into heads, shape
                              (..., n_heads, head_dim) (one head: (..., head_dim)).
``Site.head(layer, head=None)``  each head's write, its slice of z through its slice of the output
                              projection, shape (..., n_heads, d_model) (one head: (..., d_model)); they
                              add up to the attention write minus the projection's bias. Only where
                              heads are additive (not Gemma, not post-LN encoders).
``Site.pattern(layer)``       the attention probabilities of block ``layer``, shape (..., n_heads, T):
                              column t holds each head's weights of query t over the source columns.
``Site.value(layer)``         the value vectors of block ``layer``, shape (batch, T, n_heads, head_dim):
                              column s holds source s's value per head (grouped-query and multi-query
                              value heads repeated to the query heads that share them). Never pooled:
                              a value belongs to a source, not to the pooled target.
============================  ==========================================================================

``pattern`` and ``value`` are read-only and need the family's attention to go through transformers'
attention interface (every decoder family: not post-LN encoders). A run that reads them computes every
layer's attention the eager way (the model's own ``eager_attention_forward``: softmax(q k^T) v), which
differs from the fused kernels by float rounding only; in that run, per head and query column,
``sum_s pattern[..., h, s] * value[:, s, h]`` is the head's slice of z exactly (values carry their
projection bias; rotary embeddings touch only queries and keys).

Edits on a post-LN sublayer write act on that difference: replacing the attention write by ``w`` makes
the residual after attention ``block input + w``. Edits on a head's write are added to the output
projection's output (``out + w_new - w_old``); replacing a head's ``z`` is the exact form of the same
patch, through the projection.

Columns
-------
Reads and edits address batch columns. With right padding (the default) a row's column t is its token
t; with left padding it is token ``t - batch.offsets[row]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from trajgeo.models import LoadedModel, load_model

__all__ = ["Engine", "Site", "Edit", "Batch", "Pool", "Run", "SITE_KINDS", "HeadsUnavailable"]

SITE_KINDS = ("resid", "block_input", "attn", "mlp", "z", "head", "pattern", "value")
_READ_ONLY = ("pattern", "value")
_CAPTURE = "trajgeo_capture"  # the attention implementation registered for runs that read patterns or values
_EDIT_OPS = ("replace", "add", "project_out", "apply")


class HeadsUnavailable(ValueError):
    """The model's family has no additive per-head writes (Gemma's post-attention norm, post-LN encoders)."""


class _StopForward(Exception):
    """Raised by the hook of the last needed block: the rest of the model is not run."""


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


# ============================================================== the engine
class Engine:
    """Runs one model's forward passes with reads and edits at any site.

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts

    Examples
    --------
    >>> eng = Engine(lm)                                                     # doctest: +SKIP
    >>> batch = eng.batch([ids_a, ids_b])                                    # doctest: +SKIP
    >>> run = eng.run(batch, read=[Site.resid(p) for p in range(lm.n_layers + 1)])  # doctest: +SKIP
    >>> run[Site.resid(3)].shape      # (batch, T, d_model)                 # doctest: +SKIP
    """

    def __init__(self, model: Any) -> None:
        self.lm: LoadedModel = load_model(model)
        self.adapter = self.lm.adapter
        self._tuple_blocks: bool | None = None

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers

    @property
    def pad_id(self) -> int:
        tok = self.lm.tokenizer
        return int((tok.eos_token_id or 0) if tok.pad_token_id is None else tok.pad_token_id)

    def batch(self, ids: Sequence[Sequence[int]], *, padding_side: str = "right") -> Batch:
        """Pad token-id sequences into a :class:`Batch` on the model's device."""
        return Batch.from_ids(ids, pad_id=self.pad_id, padding_side=padding_side, device=self.lm.device)

    # -------------------------------------------------------------- checks
    def heads_available(self) -> bool:
        a = self.adapter
        return a.head_proj is not None and a.heads_additive

    def check_site(self, site: Site) -> None:
        """Raise a ValueError (:class:`HeadsUnavailable` for heads) if the model has no such site."""
        a, L = self.adapter, self.n_layers
        if site.kind == "resid":
            if not 0 <= site.index <= L:
                raise ValueError(f"{site}: points run 0..{L} for {self.lm.name!r}")
            return
        if not 1 <= site.index <= L:
            raise ValueError(f"{site}: layers run 1..{L} for {self.lm.name!r}")
        if site.kind in _READ_ONLY and a.head_proj is None:
            raise HeadsUnavailable(f"{site}: attention patterns and values are read for decoder families only; the "
                                   f"{a.family!r} family (post-LN encoders) is not hooked there by trajgeo")
        if site.kind == "z" and a.head_proj is None:
            raise HeadsUnavailable(f"{site}: the {a.family!r} family has no attention output projection hooked "
                                   "by trajgeo (post-LN encoders)")
        if site.kind == "head" and not self.heads_available():
            why = ("a norm after attention (Gemma) makes single heads' writes non-additive" if a.head_proj is not None
                   else "post-LN encoders re-normalise after attention, so heads have no additive write")
            raise HeadsUnavailable(f"per-head writes are not available for {self.lm.name!r} ({a.family!r} family): "
                                   f"{why}; use site 'attn' (the whole attention write) instead")
        if site.head is not None and not 0 <= site.head < a.n_heads:
            raise ValueError(f"{site}: heads run 0..{a.n_heads - 1}")

    def head_weights(self, layer: int) -> Any:
        """The attention output projection of block ``layer`` as a tensor of shape (d_model, n_heads, head_dim):
        head h writes ``weights[:, h] @ z_h`` (its bias, if any, is added once after the heads)."""
        self.check_site(Site.z(layer))
        proj = self.adapter.head_proj[layer - 1]
        w = proj.weight
        if type(proj).__name__ == "Conv1D":  # GPT-2 stores (in, out)
            w = w.t()
        return w.reshape(w.shape[0], self.adapter.n_heads, self.adapter.head_dim)

    # -------------------------------------------------------------- inputs
    def position_ids(self, batch: Batch) -> Any:
        """The position of every column, (batch, T): each row counts its own tokens from the family's offset,
        so that left and right padding give the same states."""
        return (batch.mask.cumsum(-1) - 1).clamp(min=0) + self.adapter.position_offset

    def _inputs(self, batch: Batch) -> dict[str, Any]:
        a = self.adapter
        kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.mask,
                                  "position_ids": self.position_ids(batch)}
        if a.causal:
            kwargs["use_cache"] = False
            if batch.padding_side == "right":
                # Right padding comes after every real token, and a causal model's real tokens never attend
                # forward: the mask changes nothing they compute, and without it attention takes the plain
                # causal path.
                kwargs["attention_mask"] = None
        return kwargs

    def _blocks_return_tuple(self) -> bool:
        """Whether this transformers version's blocks return a tuple (h, ...) rather than h (probed once)."""
        if self._tuple_blocks is None:
            import torch

            seen: dict[str, bool] = {}

            def hook(module: Any, args: Any, output: Any) -> None:
                seen["tuple"] = isinstance(output, tuple)
                raise _StopForward

            handle = self.adapter.blocks[0].register_forward_hook(hook)
            try:
                with torch.no_grad():
                    self.adapter.base(**self._inputs(self.batch([[self.pad_id]])))
            except _StopForward:
                pass
            finally:
                handle.remove()
            self._tuple_blocks = bool(seen.get("tuple", False))
        return self._tuple_blocks

    # -------------------------------------------------------------- the run
    def run(
        self,
        batch: Batch,
        *,
        read: Sequence[Site] = (),
        pool: Pool | None = None,
        edits: Sequence[Edit] = (),
        start_after: tuple[int, Any] | None = None,
        stop_after: int | None = None,
        grad: bool = False,
        skip: Sequence[int] = (),
    ) -> Run:
        """One forward pass with reads and edits.

        Parameters
        ----------
        batch : Batch
        read : sequence of Site
            Sites to read (after the edits at the same site).
        pool : Pool, optional
            Read every site pooled over each row's columns, (batch, ...), instead of at every column,
            (batch, T, ...).
        edits : sequence of Edit
            Applied in order at their sites.
        start_after : (int, tensor of shape (batch, T, d_model)), optional
            ``(l, h)``: skip blocks 1..l and run on from block l+1 with input ``h`` (for l >= 1 the
            residual at point l, which reads and edits at ``Site.resid(l)`` then see; for l = 0 the
            input of block 1). Exact: each block reads only its input, the positions and the mask.
        stop_after : int, optional
            The last block to run (default: the last block any read or edit needs). The final norm and
            the head are never run.
        grad : bool
            Keep the graph: reads are live, and :meth:`Run.backward` gives the gradients at every site
            read. Off: the pass runs under ``torch.no_grad``.
        skip : sequence of int
            Blocks (1..L) that do nothing: each returns its input (the residual after it equals the
            residual before it). Sites inside a skipped block (its sublayers and heads) cannot be read
            or edited; its output (``Site.resid(l)``) can.

        Returns
        -------
        Run
        """
        import torch

        read, edits = list(read), list(edits)
        fixed = [e.site for e in edits if e.site.kind in _READ_ONLY]
        if fixed:
            raise ValueError(f"{fixed[0]} is read-only: edit 'z' (a head's output) or the residual instead")
        sites = read + [e.site for e in edits]
        for s in sites:
            self.check_site(s)
        need = max([s.block for s in sites] + [0])
        # the deepest site is a block's input: stop as that block starts
        need_inside = max([s.block for s in sites if s.kind != "block_input"] + [0])
        if start_after is not None:
            start = int(start_after[0])
            if not 0 <= start <= self.n_layers:
                raise ValueError(f"start_after must be in 0..{self.n_layers}, got {start}")
            # sites computed in a skipped block, or (start 0) the embedding the given input replaces
            early = [s for s in sites if s.block < start or (s.block == start and (s.kind != "resid" or start == 0))]
            if early:
                raise ValueError(f"start_after={start} skips blocks 1..{start}; these sites lie there: {early}")
            need = max(need, start)
            need_inside = max(need_inside, start)
        stop = need if stop_after is None else int(stop_after)
        if not need <= stop <= self.n_layers:
            raise ValueError(f"stop_after must be in {need}..{self.n_layers} (the sites need block {need}), got {stop}")
        stop_at_input = stop_after is None and need > need_inside
        skip = sorted({int(b) for b in skip})
        if skip:
            if not 1 <= skip[0] <= skip[-1] <= self.n_layers:
                raise ValueError(f"skip names blocks 1..{self.n_layers}, got {skip}")
            inside = [s for s in sites if s.kind not in ("resid", "block_input") and s.block in skip]
            if inside:
                raise ValueError(f"these sites lie inside skipped blocks, which do not run: {inside}")
            if start_after is not None and skip[0] <= int(start_after[0]):
                raise ValueError(f"start_after={int(start_after[0])} already skips blocks 1..{int(start_after[0])}; "
                                 f"skip names {skip}")
        hooks = _Hooks(self, batch, read, pool, edits, start_after, stop, grad, stop_at_input, skip)
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx, hooks:
            if stop == 0:  # only the embedding: no block runs
                self.adapter.embed(batch.input_ids)
            else:
                try:
                    self.adapter.base(**self._inputs(batch))
                except _StopForward:
                    pass
                else:
                    raise RuntimeError("the forward pass did not reach the last needed block (a model whose "
                                       "blocks are not run in adapter order?)")
        return hooks.result()


# ============================================================== attention capture
_CAPTURES: dict[int, Callable] = {}  # id(attention module) -> what to do with its weights and values


def _attention_module(adapter: Any, l: int) -> Any:
    """The module of block l that owns the attention output projection (the one transformers' attention
    interface is called with)."""
    proj = adapter.head_proj[l - 1]
    for m in adapter.blocks[l - 1].modules():
        if any(c is proj for c in m.children()):
            return m
    raise RuntimeError(f"block {l}: no module holds the attention output projection")


def _capture_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
    """The model's own eager attention, handing the probabilities and values to the run that asked for them."""
    import sys

    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        raise RuntimeError(f"{type(module).__name__}: its modeling module has no eager_attention_forward; trajgeo "
                           "cannot read attention patterns of this model")
    out, weights = eager(module, query, key, value, attention_mask, **kwargs)
    keep = _CAPTURES.get(id(module))
    if keep is not None:
        if weights is None or weights.dim() != 4:
            raise RuntimeError(f"{type(module).__name__}: its eager attention returned no (batch, heads, T, S) "
                               "probabilities")
        keep(weights, value)
    return out, weights


def _register_capture() -> None:
    """Register :func:`_capture_attention` (with the eager mask) under the name ``trajgeo_capture``, once."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if _CAPTURE not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(_CAPTURE, _capture_attention)
    if _CAPTURE not in ALL_MASK_ATTENTION_FUNCTIONS:
        ALL_MASK_ATTENTION_FUNCTIONS.register(_CAPTURE, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


class _Hooks:
    """The hooks of one run: installed on entry, removed (and skipped blocks restored) on exit."""

    def __init__(self, engine: Engine, batch: Batch, read: list[Site], pool: Pool | None, edits: list[Edit],
                 start_after: tuple[int, Any] | None, stop: int, grad: bool, stop_at_input: bool = False,
                 skip: Sequence[int] = ()) -> None:
        self.e, self.a = engine, engine.adapter
        self.batch, self.pool, self.stop, self.grad = batch, pool, stop, grad
        self.stop_at_input = stop_at_input  # stop as block `stop` starts (its input was the last site)
        self.read = read
        self._read_set = set(read)
        self.edits: dict[Site, list[Edit]] = {}
        for ed in edits:
            self.edits.setdefault(ed.site, []).append(ed)
        # (kind, block) -> its sites, read and edited: looked up once per block and kind when installing
        self._by_place: dict[tuple[str, int], tuple[list[Site], list[Site]]] = {}
        for i, sites in enumerate((read, list(self.edits))):
            for s in sites:
                self._by_place.setdefault((s.kind, s.block), ([], []))[i].append(s)
        self.start_after = start_after
        self.skip = list(skip)
        self.handles: list[Any] = []
        self.skipped: list[tuple[Any, Any]] = []
        self.configs: list[tuple[Any, Any]] = []  # (config, its attention implementation before the run)
        self.captures: list[int] = []
        self.run = Run()

    # -------------------------------------------------------------- install / remove
    def __enter__(self) -> "_Hooks":
        try:
            self._install()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        for key in self.captures:
            _CAPTURES.pop(key, None)
        self.captures = []
        for cfg, old in reversed(self.configs):
            cfg._attn_implementation = old
        self.configs = []
        for block, old in self.skipped:
            if old is None:
                del block.forward  # back to the class's forward
            else:
                block.forward = old
        self.skipped = []

    def _sites(self, kind: str, block: int) -> tuple[list[Site], list[Site]]:
        """The sites of this kind in this block: (read, edited)."""
        reads, edited = self._by_place.get((kind, block), ([], []))
        return list(reads), list(edited)

    def _install(self) -> None:
        a = self.a
        if self.skip:
            self.e._blocks_return_tuple()  # probed (one tiny pass) before any hook of this run is in place
        start = None if self.start_after is None else int(self.start_after[0])
        r0, e0 = self._sites("resid", 0)
        if start is None and (r0 or e0 or self.grad):
            self.handles.append(a.embed.register_forward_hook(self._embed_hook(r0)))
        if start is not None:
            self._skip_blocks(start)
        if self.skip:
            self._identity_blocks([l for l in self.skip if l <= self.stop])
        for l in range(1, self.stop + 1):
            block = a.blocks[l - 1]
            rb, eb = self._sites("block_input", l)
            if rb or eb or (start == 0 and l == 1):
                self.handles.append(block.register_forward_pre_hook(self._block_in_hook(l, rb), with_kwargs=True))
            for kind, module in (("attn", a.attn_out[l - 1]), ("mlp", a.mlp_out[l - 1])):
                rs, es = self._sites(kind, l)
                if rs or es:
                    self.handles.append(module.register_forward_hook(self._sublayer_hook(kind, l, rs),
                                                                     with_kwargs=True))
            rz, ez = self._sites("z", l)
            if rz or ez:
                self.handles.append(a.head_proj[l - 1].register_forward_pre_hook(self._z_hook(l, rz)))
            rp, _ = self._sites("pattern", l)
            rv, _ = self._sites("value", l)
            if rp or rv:
                self._capture(l, bool(rp), bool(rv))
            rh, eh = self._sites("head", l)
            if rh or eh:
                if rh and eh:
                    raise ValueError(f"layer {l}: reading head writes and editing them in the same run is not "
                                     "supported (the reads come from z); edit 'z' instead, or read 'attn'")
                self.handles.append(a.head_proj[l - 1].register_forward_hook(self._head_hook(l, rh)))
            self.handles.append(block.register_forward_hook(self._block_out_hook(l)))

    def _capture(self, l: int, pattern: bool, value: bool) -> None:
        """Read block l's attention probabilities and values from inside its attention function."""
        attn = _attention_module(self.a, l)
        if not self.configs:  # every layer runs eagerly in this pass (so the captured weights are the ones used)
            _register_capture()
            seen: list[Any] = []
            attns = [_attention_module(self.a, k) for k in range(1, self.a.n_layers + 1)]
            for cfg in [self.e.lm.model.config] + [getattr(m, "config", None) for m in attns]:
                if cfg is not None and not any(cfg is c for c in seen):
                    seen.append(cfg)
                    self.configs.append((cfg, cfg._attn_implementation))
                    cfg._attn_implementation = _CAPTURE
        H = self.a.n_heads

        def keep(weights: Any, values: Any) -> None:
            if pattern:  # (B, H, T, S) -> (B, T, H, S): columns index the query
                self._keep(Site.pattern(l), weights.transpose(1, 2))
            if value:  # (B, H_kv, S, hd) -> (B, S, H, hd): every query head with the value head it shares
                v = values.repeat_interleave(H // values.shape[1], dim=1).transpose(1, 2)
                self.run.reads[Site.value(l)] = v  # never pooled
        _CAPTURES[id(attn)] = keep
        self.captures.append(id(attn))

    def _skip_blocks(self, start: int) -> None:
        """Blocks 1..start do nothing: block ``start`` returns the given residual, earlier ones their input."""
        import torch

        hidden = self.start_after[1]
        if not torch.is_tensor(hidden) or hidden.dim() != 3 or tuple(hidden.shape[:2]) != tuple(self.batch.mask.shape):
            raise ValueError(f"start_after needs a tensor of shape (batch, T, d_model) = "
                             f"{tuple(self.batch.mask.shape)} + (d,), got "
                             f"{tuple(hidden.shape) if torch.is_tensor(hidden) else type(hidden).__name__}")
        hidden = hidden.to(self.e.lm.device, self.e.lm.dtype)
        if self.grad:
            hidden = hidden.detach().requires_grad_(True)
            self.run._leaf = hidden
        self.hidden = hidden
        tuple_out = self.e._blocks_return_tuple() if start >= 1 else False
        for l in range(1, start + 1):
            block = self.a.blocks[l - 1]

            def skip(*args: Any, _last: bool = l == start, **kwargs: Any) -> Any:
                h = hidden if _last else (args[0] if args else kwargs["hidden_states"])
                return (h,) if tuple_out else h

            self.skipped.append((block, block.__dict__.get("forward")))
            block.forward = skip

    def _identity_blocks(self, blocks: list[int]) -> None:
        """Blocks that return their input unchanged (restored on exit)."""
        tuple_out = self.e._blocks_return_tuple()
        for l in blocks:
            block = self.a.blocks[l - 1]

            def identity(*args: Any, **kwargs: Any) -> Any:
                h = args[0] if args else kwargs["hidden_states"]
                return (h,) if tuple_out else h

            self.skipped.append((block, block.__dict__.get("forward")))
            block.forward = identity

    # -------------------------------------------------------------- reading
    def _keep(self, site: Site, value: Any, graph_tensor: Any = None, grad_view: Callable | None = None) -> None:
        """Store a read (pooled if asked); in grad mode, catch the gradient flowing into ``graph_tensor``."""
        self.run.reads[site] = value if self.pool is None else self.pool.gather(value)
        if self.grad:
            t = value if graph_tensor is None else graph_tensor
            self.run._grad_shapes[site] = tuple(value.shape) if grad_view is None else tuple(grad_view(t).shape)
            store = self.run._grad_store

            def catch(g: Any, _site: Site = site) -> None:
                store[_site] = g if grad_view is None else grad_view(g)

            if t.requires_grad:
                t.register_hook(catch)

    def _read_resid(self, site_index: int, h: Any) -> None:
        site = Site.resid(site_index)
        if site in self._read_set:
            self._keep(site, h)

    # -------------------------------------------------------------- hooks
    def _embed_hook(self, reads: list[Site]) -> Callable:
        def hook(module: Any, args: Any, output: Any) -> Any:
            h = output
            if self.grad:
                h = h.detach().requires_grad_(True)
                self.run._leaf = h
            h = _edited(h, self.edits.get(Site.resid(0), []))
            self._read_resid(0, h)
            return h
        return hook

    def _block_in_hook(self, l: int, reads: list[Site]) -> Callable:
        site = Site.block_input(l)
        start = None if self.start_after is None else int(self.start_after[0])

        def hook(module: Any, args: tuple, kwargs: dict) -> Any:
            h = args[0] if args else kwargs["hidden_states"]
            if start == 0 and l == 1:
                h = self.hidden
            h = _edited(h, self.edits.get(site, []))
            if reads:
                self._keep(site, h)
            if self.stop_at_input and l == self.stop:
                raise _StopForward
            if args:
                return (h,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}
        return hook

    def _block_out_hook(self, l: int) -> Callable:
        site = Site.resid(l)

        def hook(module: Any, args: Any, output: Any) -> Any:
            is_tuple = isinstance(output, tuple)
            h = output[0] if is_tuple else output
            h2 = _edited(h, self.edits.get(site, []))
            self._read_resid(l, h2)
            if l == self.stop:  # (never reached when stopping at this block's input)
                raise _StopForward
            if h2 is h:
                return None
            return (h2,) + tuple(output[1:]) if is_tuple else h2
        return hook

    def _sublayer_hook(self, kind: str, l: int, reads: list[Site]) -> Callable:
        site = Site(kind, l)
        post_ln = self.a.post_ln

        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
            is_tuple = isinstance(output, tuple)
            out = output[0] if is_tuple else output
            if post_ln:  # the write is the difference of the residuals after and before the sublayer
                if kind == "attn":
                    before = args[0] if args else kwargs["hidden_states"]
                else:
                    before = args[1] if len(args) > 1 else kwargs["input_tensor"]
                w = out - before
                w2 = _edited(w, self.edits.get(site, []))
                new = out if w2 is w else before + w2
                if reads:
                    self._keep(site, w2, graph_tensor=new)
            else:
                new = _edited(out, self.edits.get(site, []))
                if reads:
                    self._keep(site, new)
            if new is out:
                return None
            return (new,) + tuple(output[1:]) if is_tuple else new
        return hook

    def _z_hook(self, l: int, reads: list[Site]) -> Callable:
        H, hd = self.a.n_heads, self.a.head_dim

        def split(t: Any) -> Any:
            return t.reshape(t.shape[:-1] + (H, hd))

        def hook(module: Any, args: tuple) -> Any:
            z = args[0]
            zs = split(z)
            changed = False
            for site, eds in self.edits.items():
                if site.kind != "z" or site.block != l:
                    continue
                changed = True
                if site.head is None:
                    zs = _edited(zs, eds)
                else:  # edit one head's slice: (..., head_dim)
                    part = _edited(zs[..., site.head, :], eds)
                    zs = zs.clone()
                    zs[..., site.head, :] = part
            new = zs.reshape(z.shape) if changed else z
            for site in reads:
                value = split(new) if site.head is None else split(new)[..., site.head, :]
                if site.head is None:
                    self._keep(site, value, graph_tensor=new, grad_view=split)
                else:
                    self._keep(site, value, graph_tensor=new, grad_view=lambda g, h=site.head: split(g)[..., h, :])
            return (new,) + tuple(args[1:]) if changed else None
        return hook

    def _head_weight(self, l: int) -> Any:
        return self.e.head_weights(l)

    def _head_hook(self, l: int, reads: list[Site]) -> Callable:
        H, hd = self.a.n_heads, self.a.head_dim

        def writes(z: Any) -> Any:  # (..., H*hd) -> (..., H, d)
            import torch

            w = self._head_weight(l)
            return torch.einsum("...hk,dhk->...hd", z.reshape(z.shape[:-1] + (H, hd)).to(w.dtype), w)

        def hook(module: Any, args: tuple, output: Any) -> Any:
            z = args[0]
            if reads:
                # pool z first (linear): the writes of the pooled rows only
                zp = z if self.pool is None else self.pool.gather(z)
                w_all = writes(zp)
                store = self.run._grad_store
                for site in reads:
                    value = w_all if site.head is None else w_all[..., site.head, :]
                    # a head's write enters the residual through the projection's output: its gradient
                    self.run.reads[site] = value
                    if self.grad:
                        self.run._grad_shapes[site] = tuple(z.shape[:-1]) + ((H,) if site.head is None else ()) \
                            + (output.shape[-1],)

                        def catch(g: Any, _site: Site = site) -> None:
                            store[_site] = g.unsqueeze(-2).expand(g.shape[:-1] + (H, g.shape[-1])) \
                                if _site.head is None else g

                        if output.requires_grad:
                            output.register_hook(catch)
                return None
            out = output
            for site, eds in self.edits.items():
                if site.kind != "head" or site.block != l:
                    continue
                if site.head is None:
                    raise ValueError(f"{site}: edit one head at a time (Site.head_write(layer, head))")
                for ed in eds:  # out + w_new - w_old at the edited cells (heads add up in the projection)
                    sel = ed._index(z.device)
                    w_old = writes(z[sel])[..., site.head, :]
                    w_new = ed._transform(w_old)
                    out = out.clone()
                    out[sel] = out[sel] + (w_new - w_old).to(out.dtype)
            return out
        return hook

    def result(self) -> Run:
        return self.run
