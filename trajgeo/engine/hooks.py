"""The hooks of one run, and the attention interface that hands a run the model's own attention
probabilities and values (see :mod:`trajgeo.engine`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from trajgeo.engine.batches import Batch, Pool, Run
from trajgeo.engine.sites import Edit, Site, _edited

if TYPE_CHECKING:
    from trajgeo.engine.core import Engine

_CAPTURE = "trajgeo_capture"  # the attention implementation registered for runs that read patterns or values


class _StopForward(Exception):
    """Raised by the hook of the last needed block: the rest of the model is not run."""



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
