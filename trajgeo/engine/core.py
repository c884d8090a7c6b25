"""The :class:`Engine`: one model's forward passes with reads and edits at any site (see :mod:`trajgeo.engine`)."""

from __future__ import annotations

from typing import Any, Sequence

from trajgeo.engine.batches import Batch, Pool, Run
from trajgeo.engine.hooks import _Hooks, _StopForward
from trajgeo.engine.sites import _READ_ONLY, Edit, HeadsUnavailable, Site
from trajgeo.models import LoadedModel, load_model


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
