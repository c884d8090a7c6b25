"""Attention-source attribution: which context token, through which head and layer, pushed the target
toward its sense.

A head's write into the target is a sum over source positions. With ``A[h, t, s]`` the attention weight of
query ``t`` (the target) on source ``s``, ``v[s, h]`` the source's value vector for head ``h`` and ``W_h``
the head's slice of the attention output projection::

    write_h(t) = W_h z_h(t) = sum_s A[h, t, s] * W_h v[s, h]

so ``part(h, s) = A[h, t, s] * W_h v[s, h]`` adds up exactly to the head's write. Where the pieces go:

* the value projection's bias is part of ``v[s, h]``: it travels with each source, weighted by attention
  (the weights sum to 1, so it adds ``W_h b_v`` to the head's write in total);
* the output projection's bias is added once to the attention write, after the heads: it belongs to no
  head and no source, and is reported apart (``writes.bias``);
* grouped-query and multi-query attention share a value head among several query heads: each query head
  uses its shared value vectors with its own weights and its own ``W_h``;
* rotary position embeddings rotate queries and keys only, never values (they shape ``A``, not ``v``);
* the target's vector is the pooled one (:func:`trajgeo.extract`'s default: the last target token for causal
  models), so with several pooled tokens ``A`` is their mean (linear: the parts still add up).

Each part is projected on a sense direction, giving the number in the frame's ``value`` column. The
heads' writes then add up to the attention write minus the output projection's bias (``writes``). Families
whose heads do not add up into the residual (Gemma's norm after attention, post-LN encoders) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from trajgeo.engine import Engine, HeadsUnavailable, Site
from trajgeo.interventions._directions import explicit_functionals, own_sense_functionals
from trajgeo.interventions._examples import Inputs, batches, column, permuted_labels, prepare, run_rows
from trajgeo.normalization import DEFAULT_NORMALIZE

__all__ = ["source_attribution", "SourceAttribution", "SOURCE_BY"]

SOURCE_BY = ("is_cue", "relative_position")


@dataclass
class SourceAttribution:
    """What :func:`source_attribution` returns with ``return_result=True``.

    ``sources``: the per-source frame (see :func:`source_attribution`). ``writes``: one row per
    ``(example, layer, head)`` with the head's whole write on the direction (``head_write``, read from the
    output projection's input, independent of the decomposition), the block's attention write
    (``attn_write``) and the output projection's bias (``bias``), all projected: ``sum over sources of value
    == head_write`` and ``sum over heads of head_write + bias == attn_write``. ``summary``: per ``(layer, head,
    <by>)`` the mean over examples of each example's summed value in that category (``value``, ``n`` examples),
    with the shuffled-sense null's columns when ``n_permutations > 0``.
    """

    sources: pd.DataFrame
    writes: pd.DataFrame
    summary: pd.DataFrame


def _relative(pos: np.ndarray, start: int, end: int) -> np.ndarray:
    """Source position relative to the target: negative before it, 0 on its tokens, positive after it."""
    return np.where(pos < start, pos - start, np.where(pos >= end, pos - (end - 1), 0))


def _categories(inputs: Inputs, by: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Per example, each source's category code, and the category values."""
    if by == "is_cue":
        codes = []
        for i in range(len(inputs)):
            c = np.ones(len(inputs.ids[i]), dtype=np.int64)  # 1: not the cue
            c[list(inputs.cue[i])] = 0
            codes.append(c)
        return codes, np.array([True, False])
    rel = [_relative(np.arange(len(inputs.ids[i])), int(s), int(e))
           for i, (s, e) in enumerate(zip(inputs.meta["token_start"], inputs.meta["token_end"]))]
    values = np.unique(np.concatenate(rel))
    return [np.searchsorted(values, r) for r in rel], values


def source_attribution(
    model: Any,
    examples: Any,
    *,
    direction: Any = "prototype",
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    reference: int | str = "last",
    normalize: str | None = DEFAULT_NORMALIZE,
    cv: int = 5,
    by: str = "is_cue",
    n_permutations: int = 0,
    pool: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    random_state: int | None = 0,
    return_result: bool = False,
) -> pd.DataFrame | SourceAttribution:
    """Decompose each head's write into the target by source position, projected on a sense direction.

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
        A family with additive per-head writes (not Gemma, not post-LN encoders: a clear error).
    examples : DataFrame
        Examples as :func:`trajgeo.extract` takes them. An optional ``cue`` column (the built-in set's: the
        disambiguating word as it appears) marks the cue's tokens (``is_cue``): its whole-word occurrence
        nearest to the target, on the side ``cue_position`` says when that column is there.
    direction : {"prototype", "lda", "probe"} or array
        A fitted way (default): each example's unit direction toward its own sense at the ``reference``
        point, exactly as :func:`trajgeo.senses.attribution` fits it (``"prototype"``: leave-group-out
        prototype differences; ``"lda"``, ``"probe"``: cross-fitted over folds that keep a group together;
        in ``normalize``'d coordinates, applied to raw writes as the pulled-back functional, so the parts of
        a head add up to that function's head row). Positive values push toward the example's own sense.
        Or an explicit vector of shape (d_model,) (every layer) or (n_points, d_model) (layer l's writes on
        the vector of point l, the residual they enter); then values are plain projections.
    layers, heads : sequence of int, optional
        Layers (1..L) and heads decomposed (default all).
    labels, word, groups, reference, normalize, cv
        As in :func:`trajgeo.senses.attribution` (fitted directions only).
    by : {"is_cue", "relative_position"}
        The source categories of ``summary`` and of the null (``return_result=True``).
    n_permutations : int
        With ``n > 0`` (fitted directions only), the summary is read against the same quantity with the
        senses permuted ``n`` times among groups of each word (:func:`trajgeo.stats.group_permutations`):
        the directions are refitted on each labelling and the same per-category means recomputed; the null
        columns come from :func:`trajgeo.stats.null_table` over all ``(layer, head, category)`` cells
        (``null_fwer``: the family-wise threshold over cells).
    pool : {"last", "first", "mean"}, optional
        How a target of several tokens makes its vector (default as :func:`trajgeo.extract`).
    batch_size : int
    progress : bool
    random_state : int or None
        Seeds the cross-fitting and the permutations.
    return_result : bool
        Return a :class:`SourceAttribution` (sources, writes, summary) instead of the sources frame.

    Returns
    -------
    DataFrame
        One row per ``(example, layer, head, source_position)``: columns ``example, word, sense, layer,
        head, source_position, source_token, relative_position, is_cue, value``. ``relative_position`` is
        the source's offset from the target (negative before it, 0 on its tokens, positive after it);
        ``source_token`` the decoded token. Aggregate with a groupby, e.g. by token:
        ``frame.groupby(["layer", "head", "source_token"])["value"].mean()``; a head's top source per
        example: ``frame.loc[frame.groupby(["example", "layer", "head"])["value"].idxmax()]``.

    Raises
    ------
    HeadsUnavailable
        For families without additive per-head writes.
    """
    import torch
    from tqdm.auto import tqdm

    from trajgeo.extract import extract

    engine = Engine(model)
    lm, a = engine.lm, engine.adapter
    if not engine.heads_available():
        raise HeadsUnavailable(
            f"source attribution needs additive per-head writes, which {lm.name!r} ({a.family!r} family) does not "
            "have: " + ("a norm after attention (Gemma) mixes the heads" if a.head_proj is not None
                        else "post-LN encoders re-normalise after attention"))
    L, H, d = engine.n_layers, a.n_heads, lm.d_model
    layers = list(range(1, L + 1)) if layers is None else sorted({int(x) for x in layers})
    heads = list(range(H)) if heads is None else sorted({int(x) for x in heads})
    for l in layers:
        engine.check_site(Site.head_write(l))
    for h in heads:
        engine.check_site(Site.head_write(layers[0], h))
    if by not in SOURCE_BY:
        raise ValueError(f"by must be one of {SOURCE_BY}, got {by!r}")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) or n_permutations < 0:
        raise ValueError(f"n_permutations must be a non-negative int, got {n_permutations!r}")
    inputs = prepare(lm, examples, pool=pool)
    meta = inputs.meta
    n = len(inputs)

    # ---------------------------------------------------------- directions: (n, len(layers), d) per labelling
    fitted = isinstance(direction, str)
    w_null = None
    if fitted:
        traj = extract(lm, examples, pool=pool, progress=False)
        ref = traj.points[-1] if reference == "last" else int(reference)
        traj_ref = traj.select_points([ref])
        opts = dict(method=direction, word=word, groups=groups, reference="last", normalize=normalize, cv=cv,
                    random_state=random_state)
        w = own_sense_functionals(traj_ref, labels=labels, **opts)
        w_layers = np.broadcast_to(w[:, None], (n, len(layers), d))
        if n_permutations:
            lab = traj_ref.labels(labels)
            words = column(traj_ref.meta, word, "word", "word")
            g = traj_ref.group_codes(groups)
            perms = permuted_labels(lab, words, g, int(n_permutations), random_state)
            bar = tqdm(perms, disable=not progress, desc="source null: refit directions", unit="perm")
            w_null = np.stack([own_sense_functionals(traj_ref, labels=p, **opts) for p in bar]).astype(np.float32)
    else:
        if n_permutations:
            raise ValueError("n_permutations needs a fitted direction ('prototype', 'lda', 'probe'): an explicit "
                             "vector has no sense labels to shuffle")
        w_layers = explicit_functionals(direction, n, layers, L + 1, d)
    senses = column(meta, labels, "labels", "sense")
    words = column(meta, word, "word", "word")
    cats, cat_values = _categories(inputs, by)
    C = len(cat_values)

    # ---------------------------------------------------------- the pass
    dev = lm.device
    W = {l: engine.head_weights(l).detach().float() for l in layers}  # (d, H, hd)
    bias = {l: getattr(a.head_proj[l - 1], "bias", None) for l in layers}
    bias = {l: None if b is None else b.detach().float() for l, b in bias.items()}
    hidx = torch.as_tensor(heads, device=dev)
    sites = [s for l in layers for s in (Site.pattern(l), Site.value(l), Site.head_write(l), Site.attn(l))]
    src_parts, write_parts = [], []
    K = 0 if w_null is None else len(w_null)
    null_sum = np.zeros((K, len(layers), len(heads), C))
    obs_sum = np.zeros((len(layers), len(heads), C))
    present = np.zeros(C)
    bar = tqdm(total=n, disable=not progress, desc=f"source attribution ({lm.name})", unit="example")
    for rows in batches(inputs, batch_size):
        run = run_rows(engine, inputs, rows, read=sites)
        B, T = len(rows), max(len(inputs.ids[i]) for i in rows)
        valid = torch.zeros((B, T), dtype=torch.bool, device=dev)
        onehot = torch.zeros((B, T, C), device=dev)
        for r, i in enumerate(rows):
            valid[r, :len(inputs.ids[i])] = True
            onehot[r, torch.arange(len(cats[i])), torch.as_tensor(cats[i], device=dev)] = 1.0
            present += np.bincount(cats[i], minlength=C) > 0
        vals = np.zeros((B, len(layers), len(heads), T))
        for j, l in enumerate(layers):
            A = run[Site.pattern(l)].float()[:, hidx]  # (B, H', S): the pooled target's weights
            V = run[Site.value(l)].float()[:, :, hidx]  # (B, S, H', hd)
            parts = torch.einsum("bhs,bshk,dhk->bhsd", A, V, W[l][:, hidx])  # (B, H', S, d)
            wl = torch.as_tensor(np.ascontiguousarray(w_layers[rows, j]), dtype=torch.float32, device=dev)
            v = torch.einsum("bhsd,bd->bhs", parts, wl)
            v = torch.where(valid[:, None], v, torch.zeros_like(v))
            vals[:, j] = v.cpu().numpy()
            by_cat = torch.einsum("bhsd,bsc->bhcd", parts, onehot)  # (B, H', C, d)
            obs_sum[j] += torch.einsum("bhcd,bd->hc", by_cat, wl).cpu().numpy()
            if K:
                wk = torch.as_tensor(w_null[:, rows], device=dev)  # (K, B, d)
                null_sum[:, j] += torch.einsum("bhcd,kbd->khc", by_cat, wk).cpu().numpy()
            hw = run[Site.head_write(l)].float()[:, hidx]  # (B, H', d)
            aw = run[Site.attn(l)].float()
            b_proj = torch.zeros(B) if bias[l] is None else wl @ bias[l]  # the output bias: no head, no source
            write_parts.append(pd.DataFrame({
                "example": np.repeat(meta["example"].to_numpy()[rows], len(heads)),
                "layer": l,
                "head": np.tile(heads, B),
                "head_write": torch.einsum("bhd,bd->bh", hw, wl).cpu().numpy().reshape(-1),
                "attn_write": np.repeat((aw * wl).sum(-1).cpu().numpy(), len(heads)),
                "bias": np.repeat(b_proj.cpu().numpy(), len(heads)),
            }))
        src_parts.append(_source_rows(inputs, rows, layers, heads, vals, lm.tokenizer, words, senses))
        bar.update(B)
    bar.close()
    sources = pd.concat(src_parts, ignore_index=True)
    order = pd.Series(np.arange(n), index=meta["example"].to_numpy())
    sources = sources.assign(_o=sources["example"].map(order)).sort_values(
        ["_o", "layer", "head", "source_position"], kind="stable").drop(columns="_o").reset_index(drop=True)
    if not return_result:
        return sources
    writes = pd.concat(write_parts, ignore_index=True)
    writes = writes.assign(_o=writes["example"].map(order)).sort_values(["_o", "layer", "head"], kind="stable") \
        .drop(columns="_o").reset_index(drop=True)
    ex_meta = pd.DataFrame({"example": meta["example"].to_numpy(),
                            "word": words if words is not None else "", "sense": senses})
    writes = writes.merge(ex_meta, on="example", how="left")[
        ["example", "word", "sense", "layer", "head", "head_write", "attn_write", "bias"]]
    summary = _summary(obs_sum, null_sum if K else None, present, layers, heads, by, cat_values)
    return SourceAttribution(sources, writes, summary)


def _source_rows(inputs: Inputs, rows: list[int], layers: list[int], heads: list[int], vals: np.ndarray,
                 tokenizer: Any, words: np.ndarray | None, senses: np.ndarray | None) -> pd.DataFrame:
    parts = []
    nl, nh = len(layers), len(heads)
    for r, i in enumerate(rows):
        S = len(inputs.ids[i])
        s, e = int(inputs.meta["token_start"].iloc[i]), int(inputs.meta["token_end"].iloc[i])
        pos = np.arange(S)
        toks = np.asarray([tokenizer.decode([int(t)]) for t in inputs.ids[i]], dtype=object)
        cue = np.zeros(S, dtype=bool)
        cue[list(inputs.cue[i])] = True
        reps = nl * nh
        parts.append(pd.DataFrame({
            "example": inputs.meta["example"].iloc[i],
            "word": None if words is None else words[i],
            "sense": None if senses is None else senses[i],
            "layer": np.repeat(np.asarray(layers), nh * S),
            "head": np.tile(np.repeat(np.asarray(heads), S), nl),
            "source_position": np.tile(pos, reps),
            "source_token": np.tile(toks, reps),
            "relative_position": np.tile(_relative(pos, s, e), reps),
            "is_cue": np.tile(cue, reps),
            "value": vals[r, :, :, :S].reshape(-1),
        }))
    out = pd.concat(parts, ignore_index=True)
    if words is None:
        out = out.drop(columns="word")
    return out


def _summary(obs_sum: np.ndarray, null_sum: np.ndarray | None, present: np.ndarray, layers: list[int],
             heads: list[int], by: str, cat_values: np.ndarray) -> pd.DataFrame:
    """Per (layer, head, category): the mean over examples (that have the category) of their summed value."""
    from trajgeo.stats import null_table

    C = len(cat_values)
    with np.errstate(divide="ignore", invalid="ignore"):
        obs = obs_sum / present  # (L', H', C)
    cells = pd.DataFrame({
        "layer": np.repeat(layers, len(heads) * C),
        "head": np.tile(np.repeat(heads, C), len(layers)),
        by: np.tile(cat_values, len(layers) * len(heads)),
        "n": np.tile(present.astype(int), len(layers) * len(heads)),
    })
    if null_sum is None:
        return cells.assign(value=obs.reshape(-1))[["layer", "head", by, "value", "n"]]
    with np.errstate(divide="ignore", invalid="ignore"):
        null = (null_sum / present).reshape(len(null_sum), -1)
    table = null_table(obs.reshape(-1), null, alternative="greater").drop(columns="point")
    return pd.concat([cells[["layer", "head", by]], table, cells[["n"]]], axis=1)
