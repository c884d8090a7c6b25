"""Extraction of target-token trajectories (and sublayer writes) from a transformers model.

The forward engine (:class:`trajgeo.engine.Engine`, shared with the lens and the interventions)
gathers only the target rows on the device during one forward pass of the model body (no LM head,
no final norm, no hidden-state tuples), so extraction costs no more than a bare forward. Causal
models see each text only up to the target (:mod:`trajgeo.alignment`), since later tokens cannot
change its states. :func:`extract` is a short driver over the named steps below.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from trajgeo import datasets, store as _store
from trajgeo.alignment import AlignmentError, _Aligned, _target_positions, _window, align_targets  # noqa: F401
from trajgeo.engine import Engine, Pool, Site
from trajgeo.models import LoadedModel, load_model
from trajgeo.store import StoreLock, StoreWriter
from trajgeo.trajectories import Trajectories, load

__all__ = ["extract", "align_targets", "AlignmentError"]


# ================================================================ the steps of extract
@dataclass(frozen=True)
class _Options:
    """One run's extraction options, resolved against the model and checked once."""

    pool: str  # "last", "first" or "mean": how a target's sub-tokens are pooled
    padding_side: str
    stop_after: int  # the last block run: max_point, or every block
    components: bool  # per-head writes imply the sublayer writes
    heads: bool
    final_norm: bool
    batch_size: int
    max_point: int | None  # as given: recorded in the store's model info and states key
    max_length: int | None
    storage_dtype: str
    truncate: bool = True

    @classmethod
    def resolve(cls, adapter: Any, *, pool: str | None, padding_side: str, max_point: int | None,
                components: bool, heads: bool, final_norm: bool, batch_size: int, max_length: int | None,
                storage_dtype: str, truncate: bool = True) -> "_Options":
        if pool is None:
            pool = "last" if adapter.causal else "mean"
        if pool not in ("last", "first", "mean"):
            raise ValueError(f"pool must be 'last', 'first' or 'mean', got {pool!r}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if storage_dtype not in ("float32", "float16"):
            raise ValueError(f"storage_dtype must be 'float32' or 'float16', got {storage_dtype!r}")
        n_layers = adapter.n_layers
        stop_after = n_layers if max_point is None else max_point
        if not 0 <= stop_after <= n_layers:
            raise ValueError(f"max_point must be in 0..{n_layers}, got {max_point}")
        if heads and (adapter.head_proj is None or not adapter.heads_additive):
            raise ValueError(f"per-head writes are not available for the {adapter.family!r} family "
                             "(a norm after attention, or post-LN, makes them non-additive)")
        if final_norm and (adapter.final_norm is None or stop_after != n_layers):
            raise ValueError("final_norm needs a model with a final norm and all points (max_point=None)")
        return cls(pool, padding_side, stop_after, components or heads, heads, final_norm, batch_size,
                   max_point, max_length, storage_dtype, bool(truncate))

    def record(self) -> dict[str, Any]:
        """The options as the store records them (its model info, its states key)."""
        keep = ("components", "heads", "pool", "max_point", "max_length", "final_norm", "storage_dtype", "truncate")
        return {k: getattr(self, k) for k in keep}

    def shapes(self, n: int, d: int, n_heads: int) -> dict[str, tuple[int, ...]]:
        """The arrays an extraction of n examples writes, by their store name."""
        n_points = self.stop_after + 1
        shapes = {"states": (n, n_points, d), "aux/block_input": (n, d)}
        if self.components and self.stop_after > 0:
            shapes["components/attn"] = (n, self.stop_after, d)
            shapes["components/mlp"] = (n, self.stop_after, d)
            if self.heads:
                shapes["components/heads"] = (n, self.stop_after, n_heads, d)
        if self.final_norm:
            shapes["aux/final_normed"] = (n, d)
        return shapes


def _as_examples(examples: Any) -> pd.DataFrame:
    """The examples checked and completed by :func:`trajgeo.datasets.validate` (which refuses an empty set)."""
    return datasets.validate(examples if isinstance(examples, pd.DataFrame) else pd.DataFrame(list(examples)))


def _align(lm: LoadedModel, df: pd.DataFrame, max_length: int | None, truncate: bool) -> list[_Aligned]:
    """:func:`align_targets` with the model's context as the default window, warning about windowed texts."""
    causal, cfg = lm.adapter.causal, lm.model.config
    if max_length is None:
        max_length = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or None
    aligned, n_windowed = align_targets(lm.tokenizer, df, causal, max_length and int(max_length), truncate)
    if n_windowed:
        warnings.warn(f"{n_windowed} example(s) were longer than the model's context and were windowed "
                      f"({'ending at' if causal else 'centred on'} the target)", stacklevel=4)
    return aligned


def _meta(df: pd.DataFrame, aligned: Sequence[_Aligned], causal: bool) -> pd.DataFrame:
    """The examples plus where their targets sit in the tokens fed to the model."""
    meta = df.copy()
    meta["n_tokens"] = [len(x.ids) for x in aligned]
    meta["token_start"] = [x.positions[0] for x in aligned]
    meta["token_end"] = [x.positions[-1] + 1 for x in aligned]
    meta["n_subtokens"] = [len(x.positions) for x in aligned]
    meta["windowed"] = [x.windowed for x in aligned]
    meta["at_sequence_start"] = meta["token_start"] == 0
    if causal and meta["at_sequence_start"].any():
        # A causal model's first position attends only to itself and is where attention sinks live:
        # its residual has a norm many times the others' (SmolLM2, which adds no BOS token: 25-30x the
        # median) and can dominate a sense prototype. Flag it rather than alter the user's text.
        ids = meta.loc[meta["at_sequence_start"], "example"].tolist()
        warnings.warn(f"{len(ids)} target(s) are the first token of their input (examples {ids[:5]}"
                      f"{' ...' if len(ids) > 5 else ''}): in a causal model without a BOS token that is the "
                      "attention-sink position, whose residual is atypically large; meta['at_sequence_start'] "
                      "marks them (drop them, or prefix the texts)", stacklevel=4)
    return meta


def int_option(name: str, value: Any, *, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (None allowed when ``optional``), or a clear error.

    Nothing is coerced: a float (even ``3.0``), a string or a bool is a TypeError, so that ``2.5`` or
    ``"3"`` never silently becomes 2 or 3.
    """
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        kind = "an int" + (" or None" if optional else "")
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {'positive' if minimum == 1 else f'>= {minimum}'}, got {value}")
    return int(value)


def _states_key(lm: LoadedModel, examples: pd.DataFrame, options: dict) -> tuple[str, dict]:
    """What the stored arrays depend on, hashed: the model's weights and tokenizer, each example's text and
    target span (in order), and the extraction options; and those parts, to say what differs.

    Labels, words, groups and example ids are not in it: they are metadata, always the caller's.
    """
    spans = pd.util.hash_pandas_object(examples[["text", "char_start", "char_end"]], index=False)
    examples_hash = hashlib.blake2b(spans.to_numpy().tobytes(), digest_size=12).hexdigest()
    parts = {"model": lm.name, "model_fingerprint": lm.fingerprint(), "examples": examples_hash,
             "n_examples": len(examples), "options": options}
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=12).hexdigest(), parts


def _legacy_key(lm: LoadedModel, examples: pd.DataFrame, options: dict) -> str:
    """The resume key of trajgeo 0.1 stores (format 1), which also hashed the example ids."""
    old = {k: v for k, v in options.items() if k != "truncate"}
    h = hashlib.blake2b(digest_size=12)
    h.update(lm.fingerprint().encode())
    h.update(pd.util.hash_pandas_object(examples[["example", "text", "char_start", "char_end"]], index=False)
             .to_numpy().tobytes())
    h.update(json.dumps(old, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _say(progress: bool, message: str) -> None:
    """A line about what the run does (resumes, reuses, rewrites), on stderr unless ``progress=False``."""
    if progress:
        print(f"trajgeo: {message}", file=sys.stderr, flush=True)


def _finished_store(path: Path, key: str, parts: dict, legacy: Any, meta: pd.DataFrame, *, overwrite: bool,
                    rank: int, progress: bool) -> bool:
    """Whether ``path`` already holds this very extraction (then its metadata is made the caller's).

    Raises FileExistsError when it holds another one and not ``overwrite``.
    """
    stored = _store.stored_key(path)
    if stored is None or overwrite:
        return False
    if (stored["key"] is not None and stored["key"] == key) or (stored["legacy"] and stored["legacy"] == legacy()):
        if rank == 0 and _store.rewrite_meta(path, meta):
            _say(progress, f"{path} holds these states already; only the metadata changed: meta.parquet rewritten")
        elif rank == 0:
            _say(progress, f"{path} holds this extraction already: read back, the model is not run")
        return True
    raise FileExistsError(f"a store already exists at {path}, holding another extraction (it has "
                          f"{_store._key_difference(stored['parts'], parts)}); pass overwrite=True to replace it")


def _run_chunks(lm: LoadedModel, opts: _Options, aligned: Sequence[_Aligned], shapes: dict,
                writer: StoreWriter | None, rank: int, world_size: int, progress: bool) -> dict[str, np.ndarray]:
    """Run every chunk of examples that is this rank's and not yet done; return the arrays (without a store).

    Batches are sorted by length within a chunk. Without a store one chunk holds everything, so batches are
    sorted over the whole data set (less padding: 300 CoarseWSD-20 sentences ran 14% faster than sorted
    within chunks of 256). With a store each chunk is written (and marked done) as soon as it is complete.
    """
    import torch
    from tqdm.auto import tqdm

    n = len(aligned)
    chunk = writer.chunk_size if writer else max(1, n)
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    done = writer.done_chunks() if writer else np.zeros(len(bounds), bool)
    todo = [i for i in range(len(bounds)) if not done[i] and i % world_size == rank]
    arrays = lambda rows: {k.split("/")[-1]: np.zeros((rows,) + s[1:], np.float32)  # noqa: E731
                           for k, s in shapes.items()}
    results = {} if writer else arrays(n)
    bar = tqdm(total=sum(bounds[i][1] - bounds[i][0] for i in todo), disable=not progress,
               desc=f"extract {lm.name}", unit="ex")
    engine = Engine(lm)
    read = _sites(opts)
    with torch.inference_mode():
        for ci in todo:
            start, stop = bounds[ci]
            out = arrays(stop - start) if writer else results
            order = sorted(range(start, stop), key=lambda j: len(aligned[j].ids))
            for b in range(0, len(order), opts.batch_size):
                rows = order[b:b + opts.batch_size]
                _run_batch(engine, opts, read, [aligned[j] for j in rows], out, [j - start for j in rows])
                bar.update(len(rows))
            if writer:
                writer.write_chunk(ci, {k: out[k.split("/")[-1]] for k in shapes})
    bar.close()
    return results


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

    Long only by this docstring: the body is a short driver over the named steps above.

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
        Stream the results to this Zarr store (memory bounded by a chunk; format in
        :mod:`trajgeo.store`). An interrupted run with the same model, texts, spans and options
        resumes where it stopped (and says so); a complete store of them is read back without
        running the model. The metadata is always this call's: when only labels, words, groups or
        ids changed, ``meta.parquet`` alone is rewritten. One run owns a store (``<store>.lock``
        names its host, process and job); another run fails at once with
        :class:`trajgeo.store.StoreLockedError`, and a lock whose process is gone is taken over.
    pool : {"last", "first", "mean"}, optional
        How a target split into several tokens is pooled; default "last" for causal models
        (the last subtoken has seen the whole word) and "mean" for encoders.
    batch_size : int >= 1
        Examples per forward pass (sorted by length within a chunk to minimise padding).
    max_point : int >= 0, optional
        Stop the forward pass after block ``max_point``; the trajectories then have points
        0..max_point.
    max_length : int >= 1, optional
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
    chunk_size : int >= 1
        Examples per store chunk: the unit of writing, checking, resuming and sharding.
    overwrite : bool
        Replace an existing trajgeo store at ``store`` that holds other work, and discard another
        extraction's unfinished chunks there; never a file or a folder that is not a trajgeo store.
    progress : bool
        Show a tqdm bar with examples per second.
    lazy : bool
        With ``store=``, return trajectories backed by the store (dask arrays, see
        ``tg.load(path, lazy=True)``) instead of reading them into memory: peak memory then stays
        bounded by a chunk however many examples there are.
    rank, world_size : int, optional
        Extract only this process's share of the chunks into a shared store (under
        ``torchrun``/``accelerate launch`` they are read from the environment). Rank 0 holds the
        store's lock for the job (the other ranks check that it names their job) and finalises the
        store once every chunk is done.

    Returns
    -------
    Trajectories
        states of shape (n_examples, n_points, d_model), point 0 = the token embedding (times the
        model's embedding scale; no position embedding), point l = raw residual after block l.
        In a multi-process run, rank 0 returns the finished store's trajectories and the other
        ranks return None.

    Raises
    ------
    TypeError, ValueError
        For an option of the wrong type or value (``batch_size=2.5``, ``"3"`` or ``-1``), before the
        model is loaded.
    FileExistsError
        ``store`` holds another extraction (the message says what differs) and not ``overwrite``;
        or it is a file or a folder that is not a trajgeo store (nothing is deleted).
    trajgeo.store.StoreError
        ``<store>.partial`` holds another extraction's unfinished chunks and not ``overwrite``;
        :class:`~trajgeo.store.StoreLockedError` when another run owns the store.
    """
    batch_size = int_option("batch_size", batch_size)
    chunk_size = int_option("chunk_size", chunk_size)
    max_point = int_option("max_point", max_point, minimum=0, optional=True)
    max_length = int_option("max_length", max_length, optional=True)
    rank, world_size = _distributed(rank, world_size)
    if world_size > 1 and store is None:
        raise ValueError(f"extraction across {world_size} processes needs store=: each process writes its share there")
    lm = load_model(model)
    opts = _Options.resolve(lm.adapter, pool=pool, padding_side=padding_side, max_point=max_point,
                            components=components, heads=heads, final_norm=final_norm, batch_size=batch_size,
                            max_length=max_length, storage_dtype=storage_dtype, truncate=truncate)
    if store is None:
        return _extract(lm, examples, opts, None, progress=progress)
    path = _store.check_target(store)  # a file, a foreign folder or no write access: refused before any work
    if rank != 0:
        _extract(lm, examples, opts, path, overwrite=overwrite, progress=progress, rank=rank, world_size=world_size,
                 chunk_size=chunk_size)
        return None  # type: ignore[return-value]
    with StoreLock(path):  # one run owns the store; rank 0 holds the lock for the whole job
        return _extract(lm, examples, opts, path, overwrite=overwrite, progress=progress, rank=rank,
                        world_size=world_size, chunk_size=chunk_size, lazy=lazy)


def _extract(lm: LoadedModel, examples: Any, opts: _Options, path: Path | None, *, overwrite: bool = False,
             progress: bool = True, rank: int = 0, world_size: int = 1, chunk_size: int = 256,
             lazy: bool = False) -> Trajectories | None:
    """The steps of :func:`extract` once its options are checked (and, with a store, its lock held)."""
    a = lm.adapter
    df = _as_examples(examples)
    aligned = _align(lm, df, opts.max_length, opts.truncate)
    meta = _meta(df, aligned, a.causal)
    shapes = opts.shapes(len(df), lm.d_model, a.n_heads)
    info = {**lm.info(), "extraction": opts.record(),
            "residual": "block outputs (post-LN: no raw residual exists)" if a.post_ln else "raw residual"}
    if path is None:
        results = _run_chunks(lm, opts, aligned, shapes, None, rank, world_size, progress)
        comps = {k: results[k] for k in ("attn", "mlp", "heads") if k in results}
        aux = {k: results[k] for k in ("block_input", "final_normed") if k in results}
        return Trajectories(results["states"], meta, comps, aux, None, info)
    key, parts = _states_key(lm, df, opts.record())
    legacy = lambda: _legacy_key(lm, df, opts.record())  # noqa: E731
    if _finished_store(path, key, parts, legacy, meta, overwrite=overwrite, rank=rank, progress=progress):
        return load(path, lazy=lazy) if rank == 0 else None
    if rank != 0:
        writer = StoreWriter.join(path, key)
    else:
        attrs = {"points": list(range(shapes["states"][1])), "model_info": {**info, "states_key": key}}
        writer = StoreWriter.create(path, shapes, meta, attrs, dtype=opts.storage_dtype, chunk_size=chunk_size,
                                    overwrite=overwrite, resume_key=key, key_parts=parts)
        done = writer.done_chunks()
        if done.any():
            rows = sum(stop - start for (start, stop), d in zip(writer.chunk_bounds(), done) if d)
            _say(progress, f"resuming the unfinished extraction in {writer.partial}: {int(done.sum())} of {len(done)} "
                           f"chunks ({rows} of {writer.n_examples} examples) are done, {int((~done).sum())} to go")
    _run_chunks(lm, opts, aligned, shapes, writer, rank, world_size, progress)
    if rank != 0:
        return None
    writer.wait_until_done()
    return load(writer.finalize(meta), lazy=lazy)


# ================================================================ one batch
def _sites(opts: _Options) -> list[Site]:
    """What the engine reads at each target: points 0..stop_after, block 1's input, sublayer and head writes."""
    layers = range(1, opts.stop_after + 1)
    read = [Site.resid(p) for p in range(opts.stop_after + 1)]
    if opts.stop_after == 0:
        return read
    read.append(Site.block_input(1))
    if opts.components:
        read += [Site.attn(l) for l in layers] + [Site.mlp(l) for l in layers]
    if opts.heads:
        read += [Site.head_write(l) for l in layers]
    return read


def _run_batch(engine: Engine, opts: _Options, read: list[Site], items: Sequence[_Aligned], out: dict,
               out_rows: list[int]) -> None:
    """One forward pass over a batch; write each target's points (and writes) into ``out`` at ``out_rows``.

    Point 0 is the engine's embedding read at the target: the context-free embedding of the target's own
    token(s), times the model's scale. Post-LN writes are the differences of consecutive residuals (see
    :func:`extract`), as the engine defines them.
    """
    import torch

    a, device = engine.adapter, engine.lm.device
    batch = engine.batch([x.ids for x in items], padding_side=opts.padding_side)
    offsets = batch.offsets.tolist()  # column of each row's first token
    picks = [{"last": x.positions[-1:], "first": x.positions[:1], "mean": x.positions}[opts.pool] for x in items]
    pool = Pool.mean([[p + off for p in pick] for pick, off in zip(picks, offsets)])
    pool = Pool(pool.idx.to(device), pool.weight.to(device))
    run = engine.run(batch, read=read, pool=pool, stop_after=opts.stop_after)
    rows = np.asarray(out_rows)
    layers = range(1, opts.stop_after + 1)
    point0 = run[Site.resid(0)]
    out["states"][rows, 0] = _f32(point0)
    if opts.stop_after == 0:  # no block runs: block 1's input is the embedding (plus GPT-2's position embedding)
        block_in = point0
        if a.pos_embed is not None:
            block_in = point0 + a.pos_embed(engine.position_ids(batch).gather(1, pool.idx[:, :1]).squeeze(1))
        out["block_input"][rows] = _f32(block_in)
        return
    out["block_input"][rows] = _f32(run[Site.block_input(1)])
    outs = torch.stack([run[Site.resid(l)] for l in layers], 1)
    out["states"][rows, 1:] = _f32(outs)
    if opts.components:
        out["attn"][rows] = _f32(torch.stack([run[Site.attn(l)] for l in layers], 1))
        out["mlp"][rows] = _f32(torch.stack([run[Site.mlp(l)] for l in layers], 1))
        if opts.heads:
            out["heads"][rows] = _f32(torch.stack([run[Site.head_write(l)] for l in layers], 1))
    if opts.final_norm:
        out["final_normed"][rows] = _f32(a.final_norm(outs[:, -1]))


def _f32(t: Any) -> np.ndarray:
    return t.float().cpu().numpy()


# ================================================================ multi-process
def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    import os

    def env(name: str) -> int:
        try:
            return int(os.environ.get(name, 0 if name == "RANK" else 1))
        except ValueError:
            raise ValueError(f"the environment variable {name}={os.environ[name]!r} is not an integer") from None

    rank = env("RANK") if rank is None else int_option("rank", rank, minimum=0)
    world_size = env("WORLD_SIZE") if world_size is None else int_option("world_size", world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size
