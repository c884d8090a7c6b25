"""Extraction of target-token trajectories (and sublayer writes) from a transformers model.

Hooks on the blocks gather only the target rows on the device during one forward pass of the
model body (no LM head, no final norm, no hidden-state tuples), so extraction costs no more than a
bare forward. Causal models see each text only up to the target, since later tokens cannot change
its states.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from trajgeo.models import LoadedModel, load_model
from trajgeo.trajectories import StoreWriter, Trajectories, load

__all__ = ["extract", "align_targets", "AlignmentError"]


class AlignmentError(ValueError):
    """A target's characters do not map onto tokens that decode back to it."""


class _StopForward(Exception):
    """Raised by the hook of the last needed block: the rest of the model is not run."""


# ================================================================ alignment
@dataclass
class _Aligned:
    ids: np.ndarray  # int32 input ids to feed (after truncation / windowing): compact for 10^5 examples
    positions: list[int]  # positions of the target's tokens in ``ids``
    target_ids: list[int]  # the target's token ids (for point 0)
    windowed: bool


def _norm_text(s: str, strip_accents: bool) -> str:
    s = unicodedata.normalize("NFKC", s).casefold()
    if strip_accents:
        s = "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")
    return "".join(s.split())


def align_targets(
    tokenizer: Any,
    examples: pd.DataFrame,
    causal: bool,
    max_length: int | None = None,
    truncate: bool = True,
) -> tuple[list[_Aligned], int]:
    """Map each example's character span onto tokens, truncate and window.

    Returns the aligned inputs and the number of examples whose text was windowed.

    Raises
    ------
    AlignmentError
        Naming the example, when its span covers no token, or its tokens do not decode back to
        the target text (a tokenizer offset bug would otherwise silently misalign).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("extraction needs a fast tokenizer: character offsets come from it")
    texts = examples["text"].tolist()
    strip_accents = bool(getattr(tokenizer, "do_lower_case", False)) or "uncased" in str(
        getattr(tokenizer, "name_or_path", ""))
    out: list[_Aligned] = []
    n_windowed = 0
    ids_col = examples["example"].tolist()
    block = 1024  # tokenise in blocks: the encodings (offsets, masks) of a whole data set would dominate memory
    for i, (ex, cs, ce) in enumerate(zip(ids_col, examples["char_start"], examples["char_end"])):
        if i % block == 0:
            enc = tokenizer(texts[i:i + block], add_special_tokens=True, return_offsets_mapping=True,
                            return_special_tokens_mask=True, truncation=False)
        ids = list(enc["input_ids"][i % block])
        offs = enc["offset_mapping"][i % block]
        special = enc["special_tokens_mask"][i % block]
        pos = [t for t, ((a, b), sp) in enumerate(zip(offs, special)) if not sp and b > a and a < ce and b > cs]
        target = texts[i][cs:ce]
        if not pos:
            raise AlignmentError(f"example {ex}: target {target!r} at characters {cs}:{ce} covers no token")
        if pos != list(range(pos[0], pos[-1] + 1)):
            raise AlignmentError(f"example {ex}: target {target!r} maps to non-contiguous tokens {pos}")
        decoded = tokenizer.decode([ids[t] for t in pos])
        if _norm_text(decoded, strip_accents) != _norm_text(target, strip_accents):
            covered = texts[i][offs[pos[0]][0]:offs[pos[-1]][1]]
            raise AlignmentError(
                f"example {ex}: target {target!r} is covered by tokens that decode to {decoded!r} "
                f"(text {covered!r}); the target must be whole tokens, and the tokenizer's offsets must be right"
            )
        target_ids = [ids[t] for t in pos]
        if causal and truncate:  # later tokens cannot change a causal model's states at the target
            ids = ids[: pos[-1] + 1]
            special = special[: pos[-1] + 1]
        windowed = False
        if max_length is not None and len(ids) > max_length:
            windowed = True
            n_windowed += 1
            n_pre = 0
            while n_pre < len(special) and special[n_pre]:
                n_pre += 1
            n_post = 0
            while n_post < len(special) - n_pre and special[len(special) - 1 - n_post]:
                n_post += 1
            body = max_length - n_pre - n_post
            if body < len(pos):
                raise AlignmentError(f"example {ex}: the target alone is longer than max_length={max_length}")
            if causal:  # keep a window that ends at the target
                start = pos[-1] + 1 - body if truncate else pos[0] - body // 2
            else:  # centre the window on the target
                centre = (pos[0] + pos[-1]) // 2
                start = centre - body // 2
            start = max(n_pre, min(start, len(ids) - n_post - body))
            new_ids = ids[:n_pre] + ids[start:start + body] + ids[len(ids) - n_post:]
            pos = [p - start + n_pre for p in pos]
            ids = new_ids
        out.append(_Aligned(np.asarray(ids, dtype=np.int32), pos, target_ids, windowed))
    return out, n_windowed


# ================================================================ capture
class _Capture:
    """Forward hooks that gather (and pool) the target rows of every block on the device."""

    def __init__(self, adapter: Any, stop_after: int, components: bool, heads: bool) -> None:
        self.adapter = adapter
        self.stop_after = stop_after  # 1-based index of the last block needed
        self.components = components
        self.heads = heads
        self.handles: list[Any] = []
        self.reset(None, None)

    def reset(self, idx: Any, weight: Any) -> None:
        self.idx, self.weight = idx, weight
        self.block_in: dict[int, Any] = {}
        self.block_out: dict[int, Any] = {}
        self.attn: dict[int, Any] = {}
        self.mlp: dict[int, Any] = {}
        self.head_in: dict[int, Any] = {}

    def gather(self, h: Any) -> Any:
        if isinstance(h, tuple):
            h = h[0]
        d = h.shape[-1]
        rows = h.gather(1, self.idx.unsqueeze(-1).expand(-1, -1, d))  # (batch, k, d)
        return (rows * self.weight.unsqueeze(-1).to(rows.dtype)).sum(1)

    def __enter__(self) -> "_Capture":
        a = self.adapter
        for l, block in enumerate(a.blocks[: self.stop_after]):
            self.handles.append(block.register_forward_pre_hook(self._pre(l), with_kwargs=True))
            self.handles.append(block.register_forward_hook(self._post(l)))
            if self.components:
                self.handles.append(a.attn_out[l].register_forward_hook(self._store("attn", l)))
                if not a.post_ln:
                    self.handles.append(a.mlp_out[l].register_forward_hook(self._store("mlp", l)))
            if self.heads:
                self.handles.append(a.head_proj[l].register_forward_pre_hook(self._head(l)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _pre(self, l: int) -> Any:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            if l == 0 or self.adapter.post_ln:
                h = args[0] if args else kwargs["hidden_states"]
                self.block_in[l] = self.gather(h)
        return hook

    def _post(self, l: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            self.block_out[l] = self.gather(output)
            if l + 1 == self.stop_after:
                raise _StopForward
        return hook

    def _store(self, table: str, l: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            getattr(self, table)[l] = self.gather(output)
        return hook

    def _head(self, l: int) -> Any:
        def hook(module: Any, args: tuple) -> None:
            self.head_in[l] = self.gather(args[0])
        return hook


def _head_writes(adapter: Any, l: int, z: Any) -> Any:
    """Per-head writes of block l from the pooled input z (batch, n_heads*head_dim) of its output projection."""
    proj = adapter.head_proj[l]
    w = proj.weight
    if type(proj).__name__ == "Conv1D":  # GPT-2 stores (in, out)
        w = w.t()
    n_heads, head_dim = adapter.n_heads, adapter.head_dim
    w = w.reshape(w.shape[0], n_heads, head_dim)  # (d_model, heads, head_dim)
    return np.asarray(
        __import__("torch").einsum("bhk,dhk->bhd", z.reshape(z.shape[0], n_heads, head_dim).to(w.dtype), w)
        .float().cpu().numpy()
    )


# ================================================================ helpers
def _as_examples(examples: Any) -> pd.DataFrame:
    if isinstance(examples, pd.DataFrame):
        df = examples
    else:
        df = pd.DataFrame(list(examples))
    try:
        from trajgeo import datasets

        return datasets.validate(df)
    except (ImportError, AttributeError):
        required = {"text", "char_start", "char_end"}
        missing = required - set(df.columns)
        if missing:
            raise ValueError(f"examples lack columns {sorted(missing)}")
        df = df.reset_index(drop=True).copy()
        if "example" not in df.columns:
            df.insert(0, "example", np.arange(len(df)))
        return df


def _resume_key(lm: LoadedModel, examples: pd.DataFrame, options: dict) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(lm.fingerprint().encode())
    h.update(pd.util.hash_pandas_object(examples[["example", "text", "char_start", "char_end"]], index=False)
             .to_numpy().tobytes())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _max_length(lm: LoadedModel, max_length: int | None) -> int | None:
    if max_length is not None:
        return int(max_length)
    cfg = lm.model.config
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return int(n) if n else None


# ================================================================ extract
def extract(
    model: Any,
    examples: Any,
    *,
    components: bool = False,
    heads: bool = False,
    store: Any = None,
    pool: str | None = None,
    batch_size: int = 16,
    max_point: int | None = None,
    max_length: int | None = None,
    final_norm: bool = False,
    storage_dtype: str = "float32",
    padding_side: str = "right",
    truncate: bool = True,
    chunk_size: int = 256,
    overwrite: bool = False,
    progress: bool = True,
    lazy: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> Trajectories:
    """Extract the residual-stream trajectory of every example's target token.

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
    examples : DataFrame or list of dict
        Examples with ``text`` and the target's ``char_start``/``char_end`` (see
        :mod:`trajgeo.datasets` for readers and other ways to give the target).
    components : bool
        Also extract each block's attention and MLP write at the target, shape
        (n_examples, n_layers, d_model). For pre-LN models ``states[:, l] = states_in +
        sum_{k<=l} (attn + mlp)`` holds exactly (``aux["block_input"]`` is the block-1 input).
        Post-LN encoders (BERT) have no such additive stream; there the writes are defined as
        the differences of consecutive residuals (after attention's and the MLP's norms), so the
        identity holds by construction.
    heads : bool
        Also extract per-head attention writes, (n_examples, n_layers, n_heads, d_model), where the
        family allows (not Gemma, whose post-attention norm is not linear, nor post-LN encoders).
        Heads add up to the attention write minus the output projection's bias, if any.
    store : path, optional
        Stream the results to this Zarr store (memory bounded by a chunk); an interrupted run
        with the same model, examples and options resumes where it stopped.
    pool : {"last", "first", "mean"}, optional
        How a target split into several tokens is pooled; default "last" for causal models
        (the last subtoken has seen the whole word) and "mean" for encoders.
    batch_size : int
        Examples per forward pass (sorted by length within a chunk to minimise padding).
    max_point : int, optional
        Stop the forward pass after block ``max_point``; the trajectories then have points
        0..max_point.
    max_length : int, optional
        Longest input in tokens (default: the model's context). Longer texts keep a window that
        ends at the target (causal) or is centred on it (encoders); a warning counts them.
    final_norm : bool
        Also store the final-normed last point (what Hugging Face's ``hidden_states[-1]`` holds for
        pre-LN decoders) as ``aux["final_normed"]``.
    storage_dtype : {"float32", "float16"}
        Type of the arrays in the store (loaded back as float32).
    padding_side : {"right", "left"}
        Padding side of the batches; results do not depend on it (positions are set explicitly).
    truncate : bool
        Causal models only: feed each text only up to its target (default). Switching it off gives
        the same states at a higher cost; it exists to show exactly that.
    chunk_size : int
        Examples per store chunk: the unit of writing, resuming and sharding.
    overwrite : bool
        Replace an existing complete store.
    progress : bool
        Show a tqdm bar with examples per second.
    lazy : bool
        With ``store=``, return trajectories backed by the store (dask arrays, see
        ``tg.load(path, lazy=True)``) instead of reading them into memory: peak memory then stays
        bounded by a chunk however many examples there are.
    rank, world_size : int, optional
        Extract only this process's share of the chunks into a shared store (under
        ``torchrun``/``accelerate launch`` they are read from the environment). Rank 0 finalises
        the store once every chunk is done.

    Returns
    -------
    Trajectories
        states of shape (n_examples, n_points, d_model), point 0 = the token embedding (times the
        model's embedding scale; no position embedding), point l = raw residual after block l.
        In a multi-process run, rank 0 returns the finished store's trajectories and the other
        ranks return None.
    """
    import torch
    from tqdm.auto import tqdm

    lm = load_model(model)
    a = lm.adapter
    df = _as_examples(examples)
    if len(df) == 0:
        raise ValueError("no examples to extract")
    if pool is None:
        pool = "last" if a.causal else "mean"
    if pool not in ("last", "first", "mean"):
        raise ValueError(f"pool must be 'last', 'first' or 'mean', got {pool!r}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    n_layers = a.n_layers
    stop_after = n_layers if max_point is None else int(max_point)
    if not 0 <= stop_after <= n_layers:
        raise ValueError(f"max_point must be in 0..{n_layers}, got {max_point}")
    if heads and (a.head_proj is None or not a.heads_additive):
        raise ValueError(f"per-head writes are not available for the {a.family!r} family "
                         "(a norm after attention, or post-LN, makes them non-additive)")
    components = components or heads
    if final_norm and (a.final_norm is None or stop_after != n_layers):
        raise ValueError("final_norm needs a model with a final norm and all points (max_point=None)")

    aligned, n_windowed = align_targets(lm.tokenizer, df, a.causal, _max_length(lm, max_length), truncate)
    if n_windowed:
        warnings.warn(f"{n_windowed} example(s) were longer than the model's context and were windowed "
                      f"({'ending at' if a.causal else 'centred on'} the target)", stacklevel=2)

    options = {"components": components, "heads": heads, "pool": pool, "max_point": max_point,
               "max_length": max_length, "final_norm": final_norm, "storage_dtype": storage_dtype}
    info = {**lm.info(), "extraction": options,
            "residual": "block outputs (post-LN: no raw residual exists)" if a.post_ln else "raw residual"}
    n, d = len(df), lm.d_model
    n_points = stop_after + 1
    shapes = {"states": (n, n_points, d), "aux/block_input": (n, d)}
    if components and stop_after > 0:
        shapes["components/attn"] = (n, stop_after, d)
        shapes["components/mlp"] = (n, stop_after, d)
        if heads:
            shapes["components/heads"] = (n, stop_after, a.n_heads, d)
    if final_norm:
        shapes["aux/final_normed"] = (n, d)
    meta = df.copy()
    meta["n_tokens"] = [len(x.ids) for x in aligned]
    meta["token_start"] = [x.positions[0] for x in aligned]
    meta["token_end"] = [x.positions[-1] + 1 for x in aligned]
    meta["n_subtokens"] = [len(x.positions) for x in aligned]
    meta["windowed"] = [x.windowed for x in aligned]
    meta["at_sequence_start"] = meta["token_start"] == 0
    if a.causal and meta["at_sequence_start"].any():
        # A causal model's first position attends only to itself and is where attention sinks live:
        # its residual has a norm many times the others' (SmolLM2, which adds no BOS token: 25-30x the
        # median) and can dominate a sense prototype. Flag it rather than alter the user's text.
        ids = meta.loc[meta["at_sequence_start"], "example"].tolist()
        warnings.warn(f"{len(ids)} target(s) are the first token of their input (examples {ids[:5]}"
                      f"{' ...' if len(ids) > 5 else ''}): in a causal model without a BOS token that is the "
                      "attention-sink position, whose residual is atypically large; meta['at_sequence_start'] "
                      "marks them (drop them, or prefix the texts)", stacklevel=2)

    rank, world_size = _distributed(rank, world_size)
    if world_size > 1 and store is None:
        raise ValueError(f"extraction across {world_size} processes needs store=: each process writes its share there")
    writer = None
    if store is not None:
        resume_key = _resume_key(lm, df, options)
        from pathlib import Path

        if Path(store).exists() and not overwrite:
            done = load(store, lazy=True)
            if done.model_info.get("resume_key") == resume_key:
                return done if lazy else done.compute()
        writer = StoreWriter.create(
            store, shapes, meta, {"points": list(range(n_points)), "model_info": {**info, "resume_key": resume_key}},
            dtype=storage_dtype, chunk_size=chunk_size, overwrite=overwrite, resume_key=resume_key,
        ) if rank == 0 else _wait_for_store(store, resume_key)
    # Without a store one chunk holds everything: batches are then sorted by length over the whole data
    # set (less padding: 300 CoarseWSD-20 sentences ran 14% faster than sorted within chunks of 256).
    chunk = writer.chunk_size if writer else max(1, n)
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    done = writer.done_chunks() if writer else np.zeros(len(bounds), bool)
    todo = [i for i in range(len(bounds)) if not done[i] and i % world_size == rank]

    results: dict[str, np.ndarray] = {} if writer else {k.split("/")[-1]: np.zeros(s, np.float32) for k, s in shapes.items()}
    device = lm.device
    pad_id = lm.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = lm.tokenizer.eos_token_id or 0
    bar = tqdm(total=sum(bounds[i][1] - bounds[i][0] for i in todo), disable=not progress,
               desc=f"extract {lm.name}", unit="ex")
    capture = _Capture(a, stop_after, components and stop_after > 0, heads and stop_after > 0)
    with torch.inference_mode(), capture:
        for ci in todo:
            start, stop = bounds[ci]
            out = results if not writer else {
                k.split("/")[-1]: np.zeros((stop - start,) + s[1:], np.float32) for k, s in shapes.items()}
            order = sorted(range(start, stop), key=lambda j: len(aligned[j].ids))
            for b in range(0, len(order), batch_size):
                rows = order[b:b + batch_size]
                _run_batch(lm, capture, [aligned[j] for j in rows], pool, pad_id, padding_side, device, out,
                           [j - start for j in rows], stop_after, components, heads, final_norm)
                bar.update(len(rows))
            if writer:
                writer.write_chunk(ci, {k: out[k.split("/")[-1]] for k in shapes})
    bar.close()
    if writer:
        if rank != 0:
            return None  # type: ignore[return-value]
        _wait_all_done(writer)
        path = writer.finalize()
        return load(path, lazy=lazy)
    comps = {k: results[k] for k in ("attn", "mlp", "heads") if k in results}
    aux = {k: results[k] for k in ("block_input", "final_normed") if k in results}
    return Trajectories(results["states"], meta, comps, aux, None, info)


def _run_batch(lm: LoadedModel, capture: _Capture, items: Sequence[_Aligned], pool: str, pad_id: int,
               padding_side: str, device: Any, out: dict, out_rows: list[int], stop_after: int,
               components: bool, heads: bool, final_norm: bool) -> None:
    import torch

    a = lm.adapter
    bsz = len(items)
    longest = max(len(x.ids) for x in items)
    k = max(len(x.positions) for x in items) if pool == "mean" else 1
    input_ids = torch.full((bsz, longest), pad_id, dtype=torch.long)
    mask = torch.zeros((bsz, longest), dtype=torch.long)
    idx = torch.zeros((bsz, k), dtype=torch.long)
    weight = torch.zeros((bsz, k), dtype=torch.float32)
    emb_idx = torch.zeros((bsz, k), dtype=torch.long)
    for r, x in enumerate(items):
        off = longest - len(x.ids) if padding_side == "left" else 0
        input_ids[r, off:off + len(x.ids)] = torch.from_numpy(x.ids)
        mask[r, off:off + len(x.ids)] = 1
        pos = {"last": x.positions[-1:], "first": x.positions[:1], "mean": x.positions}[pool]
        tid = {"last": x.target_ids[-1:], "first": x.target_ids[:1], "mean": x.target_ids}[pool]
        idx[r, :len(pos)] = torch.tensor(pos) + off
        weight[r, :len(pos)] = 1.0 / len(pos)
        emb_idx[r, :len(tid)] = torch.tensor(tid)
    input_ids, mask, idx, weight = (t.to(device) for t in (input_ids, mask, idx, weight))
    capture.reset(idx, weight)
    # explicit positions make left and right padding give the same states
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask,
                              "position_ids": (mask.cumsum(-1) - 1).clamp(min=0) + a.position_offset}
    if a.causal:
        kwargs["use_cache"] = False
        if padding_side == "right":
            # Right padding comes after every real token, and a causal model's real tokens never attend
            # forward: the mask changes nothing they compute. Without it attention takes the plain causal
            # path instead of materialising a (batch, 1, seq, seq) mask.
            kwargs["attention_mask"] = None
    if stop_after > 0:
        try:
            a.base(**kwargs)
        except _StopForward:
            pass
    # point 0: the context-free embedding of the target's own token(s), times the model's scale
    emb = a.embed(emb_idx.to(device))  # (batch, k, d)
    point0 = (emb * weight.unsqueeze(-1).to(emb.dtype)).sum(1)
    f32 = lambda t: t.float().cpu().numpy()  # noqa: E731
    rows = np.asarray(out_rows)
    out["states"][rows, 0] = f32(point0)
    if stop_after == 0:
        block_in = point0
        if a.pos_embed is not None:
            block_in = point0 + a.pos_embed(kwargs["position_ids"].gather(1, idx[:, :1]).squeeze(1))
        out["block_input"][rows] = f32(block_in)
        return
    out["block_input"][rows] = f32(capture.block_in[0])
    outs = torch.stack([capture.block_out[l] for l in range(stop_after)], 1)
    out["states"][rows, 1:] = f32(outs)
    if components:
        attn = torch.stack([capture.attn[l] for l in range(stop_after)], 1)
        if a.post_ln:  # writes = differences of consecutive residuals (see extract's docstring)
            ins = torch.stack([capture.block_in[l] for l in range(stop_after)], 1)
            mlp = outs - attn
            attn = attn - ins
        else:
            mlp = torch.stack([capture.mlp[l] for l in range(stop_after)], 1)
        out["attn"][rows] = f32(attn)
        out["mlp"][rows] = f32(mlp)
        if heads:
            out["heads"][rows] = np.stack([_head_writes(a, l, capture.head_in[l]) for l in range(stop_after)], 1)
    if final_norm:
        out["final_normed"][rows] = f32(a.final_norm(outs[:, -1]))


# ================================================================ multi-process
def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    import os

    if rank is None:
        rank = int(os.environ.get("RANK", 0))
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size


def _wait_for_store(store: Any, resume_key: str, timeout: float = 600.0) -> StoreWriter:
    """Non-zero ranks open the partial store that rank 0 creates."""
    import time
    from pathlib import Path

    import zarr

    partial = Path(str(store) + ".partial")
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            group = zarr.open_group(str(partial), mode="r+")
            if group.attrs.get("resume_key") == resume_key and "done" in group:
                meta_rows = group["states"].shape[0]
                return StoreWriter(Path(store), group, int(group.attrs["chunk_size"]), meta_rows)
        except Exception:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"rank could not open {partial}: rank 0 did not create it within {timeout:.0f} s")


def _wait_all_done(writer: StoreWriter, timeout: float = 3600.0) -> None:
    import time

    t0 = time.time()
    while not writer.done_chunks().all():
        if time.time() - t0 > timeout:
            raise TimeoutError("other ranks did not finish their chunks in time")
        time.sleep(0.5)
