"""Examples (not pairs) as the interventions feed them: aligned as :func:`trajgeo.extract` aligns them, the
annotated cue located in tokens, and batched forward passes through the engine."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from trajgeo.engine import Edit, Engine, Pool, Site
from trajgeo.models import LoadedModel

POOLS = ("last", "first", "mean")


@dataclass
class Inputs:
    """Examples ready for the engine.

    ``meta``: the examples with extraction's columns (``n_tokens, token_start, token_end, ...``; ``n_tokens``
    counts the tokens fed, a causal model's input ending at the target unless ``full``); ``ids``: the token
    ids fed, one array per example; ``pool``: the columns pooled into the target's vector; ``cue``: the
    token positions of the annotated cue word (empty where there is none or it lies outside the input).
    """

    meta: pd.DataFrame
    ids: list[np.ndarray]
    pool: list[list[int]]
    cue: list[tuple[int, ...]]
    full: bool

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def target_end(self) -> np.ndarray:
        return self.meta["token_end"].to_numpy()


def prepare(lm: LoadedModel, examples: Any, *, pool: str | None = None, full: bool = False,
            max_length: int | None = None) -> Inputs:
    """Align the examples as :func:`trajgeo.extract` does and locate their cues.

    Parameters
    ----------
    full : bool
        Feed a causal model the whole text (for a next-token loss after the target), not only up to the
        target; the target's states are the same either way.
    """
    from trajgeo.extract import _align, _as_examples, _meta

    pool = pool or ("last" if lm.adapter.causal else "mean")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    df = _as_examples(examples)
    truncate = not full
    if full:
        from trajgeo.extract import align_targets

        aligned, _ = align_targets(lm.tokenizer, df, lm.adapter.causal, max_length, truncate=False)
    else:
        aligned = _align(lm, df, max_length, truncate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # extraction's own warnings (attention-sink targets) are its business
        meta = _meta(df, aligned, lm.adapter.causal)
    ids = [np.asarray(a.ids, dtype=np.int64) for a in aligned]
    cols = {"last": lambda p: [p[-1]], "first": lambda p: [p[0]], "mean": lambda p: list(p)}[pool]
    pools = [cols(list(a.positions)) for a in aligned]
    cue = _cue_tokens(lm.tokenizer, meta, aligned)
    return Inputs(meta.reset_index(drop=True), ids, pools, cue, full)


def _cue_tokens(tokenizer: Any, meta: pd.DataFrame, aligned: Sequence[Any]) -> list[tuple[int, ...]]:
    """Token positions (in the ids fed) of each example's annotated cue: the ``cue`` column's word, its
    whole-word occurrence nearest to the target (on the ``cue_position`` side when given)."""
    if "cue" not in meta.columns:
        return [() for _ in aligned]
    out: list[tuple[int, ...]] = []
    missing = []
    for i, row in enumerate(meta.itertuples(index=False)):
        cue = getattr(row, "cue")
        if not isinstance(cue, str) or not cue.strip():
            out.append(())
            continue
        text, cs, ce = row.text, int(row.char_start), int(row.char_end)
        hits = [m.span() for m in re.finditer(rf"(?<!\w){re.escape(cue)}(?!\w)", text)]
        hits = [h for h in hits if h[1] <= cs or h[0] >= ce]  # not the target itself
        side = getattr(row, "cue_position", None)
        if side in ("before", "after"):
            hits = [h for h in hits if (h[1] <= cs if side == "before" else h[0] >= ce)] or hits
        if not hits:
            missing.append(row.example)
            out.append(())
            continue
        a, b = min(hits, key=lambda h: cs - h[1] if h[1] <= cs else h[0] - ce)
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
        pos = [t for t, ((x, y), sp) in enumerate(zip(enc["offset_mapping"], enc["special_tokens_mask"]))
               if not sp and y > x and x < b and y > a]
        al = aligned[i]
        # fed positions: the full encoding's, shifted by a window (the target's shift), cut at the input's end
        full_target = [t for t, ((x, y), sp) in enumerate(zip(enc["offset_mapping"], enc["special_tokens_mask"]))
                       if not sp and y > x and x < ce and y > cs]
        shift = full_target[0] - int(al.positions[0]) if full_target else 0
        out.append(tuple(p - shift for p in pos if 0 <= p - shift < len(al.ids)))
    if missing:
        warnings.warn(f"the cue word of {len(missing)} example(s) is not in their text (examples {missing[:5]}); "
                      "they have no cue position", stacklevel=3)
    return out


def batches(inputs: Inputs, batch_size: int, rows: Sequence[int] | None = None) -> Iterator[list[int]]:
    """Rows in batches of similar length (less padding)."""
    rows = list(range(len(inputs))) if rows is None else list(rows)
    order = sorted(rows, key=lambda i: len(inputs.ids[i]))
    for b in range(0, len(order), int(batch_size)):
        yield order[b:b + int(batch_size)]


def run_rows(engine: Engine, inputs: Inputs, rows: list[int], *, read: Sequence[Site], pooled: bool = True,
             edits: Callable[[Any, list[int]], list[Edit]] | None = None, **kw: Any) -> Any:
    """One engine pass over ``rows``; ``edits(batch, rows)`` gives the edits of this batch."""
    batch = engine.batch([inputs.ids[i] for i in rows])
    pool = Pool.mean([inputs.pool[i] for i in rows]) if pooled else None
    eds = [] if edits is None else edits(batch, rows)
    return engine.run(batch, read=list(read), pool=pool, edits=eds, **kw)


def target_cells(inputs: Inputs, rows: list[int], device: Any) -> tuple[Any, Any]:
    """(row, column) index tensors of every pooled target column of the batch's rows."""
    import torch

    r = [k for k, i in enumerate(rows) for _ in inputs.pool[i]]
    c = [c for i in rows for c in inputs.pool[i]]
    return torch.as_tensor(r, device=device), torch.as_tensor(c, device=device)


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return int(value)


def column(meta: pd.DataFrame, spec: Any, name: str, default: str) -> np.ndarray | None:
    """A per-example array from a meta column name or the values themselves (None: absent)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in meta.columns:
            if spec == default:
                return None
            raise KeyError(f"{name}={spec!r} is not a column of the examples; they have {list(meta.columns)}")
        return meta[spec].to_numpy()
    arr = np.asarray(spec)
    if len(arr) != len(meta):
        raise ValueError(f"{name} has {len(arr)} values for {len(meta)} examples")
    return arr


def example_carrier(lm: LoadedModel, meta: pd.DataFrame, n_layers: int) -> tuple[dict, Any]:
    """The ``model_info`` of the trajectories an intervention builds, and stateless trajectories of the examples
    (zero states) that read labels and group codes as every analysis does, before any pass."""
    from trajgeo.trajectories import Trajectories

    info = {"name": lm.name, "causal": lm.adapter.causal, "n_layers": n_layers, "d_model": lm.d_model}
    return info, Trajectories(np.zeros((len(meta), 1, 1), np.float32), meta, model_info=info)


def words_and_groups(meta: pd.DataFrame, carrier: Any, word: Any, groups: Any
                     ) -> tuple[np.ndarray, bool, np.ndarray]:
    """Per example: the word (zeros where the examples have none: one word), whether there is a word column,
    and the group codes of ``carrier`` (:func:`example_carrier`; each example its own group where none)."""
    words = column(meta, word, "word", "word")
    has_word = words is not None
    words = np.zeros(len(meta), dtype=object) if words is None else words
    g = carrier.group_codes(groups)
    return words, has_word, (np.arange(len(meta)) if g is None else g)


def token_losses(head: Any, resid: Any, inputs: Inputs, rows: list[int], *, after_target: bool) -> np.ndarray:
    """Mean next-token loss (nats) of each row: over the tokens after the target (predicted from the target's
    last token on), or over every next token of the input; NaN where there is none.

    ``head`` is the model's own readout (:class:`trajgeo.lens._readout._Readout`); ``resid`` the last point's
    residual at every column, shape (batch, T, d_model).
    """
    import torch

    out = np.full(len(rows), np.nan)
    with torch.no_grad():
        return _losses(head, resid, inputs, rows, after_target, out)


def _losses(head: Any, resid: Any, inputs: Inputs, rows: list[int], after_target: bool, out: np.ndarray) -> np.ndarray:
    import torch

    for r, i in enumerate(rows):
        ids = inputs.ids[i]
        first = int(inputs.meta["token_end"].iloc[i]) - 1 if after_target else 0
        if first >= len(ids) - 1:
            continue
        logits = head(resid[r, first:len(ids) - 1])
        target = torch.as_tensor(ids[first + 1:], device=logits.device)
        out[r] = float(torch.nn.functional.cross_entropy(logits.float(), target, reduction="mean"))
    return out


def permuted_labels(labels: np.ndarray, words: np.ndarray | None, groups: np.ndarray | None, n: int,
                    random_state: int | None) -> np.ndarray:
    """(n, n_examples) sense labellings, permuted among groups within each word."""
    from trajgeo.stats import group_permutations

    out = np.broadcast_to(labels, (n, len(labels))).copy()
    word_vals = np.zeros(len(labels)) if words is None else words
    for k, w in enumerate(pd.unique(word_vals)):
        rows = np.flatnonzero(word_vals == w)
        g = None if groups is None else groups[rows]
        seed = None if random_state is None else int(random_state) + k
        perm = group_permutations(labels[rows], groups=g, n_permutations=n, random_state=seed)
        out[:, rows] = labels[rows][perm]
    return out


def sense_group_counts(y: np.ndarray, groups: np.ndarray) -> dict[Any, int]:
    """Number of distinct groups holding each sense (in order of first appearance): what grouped, stratified
    folds (:func:`trajgeo.probes.make_splits`) can spread over."""
    return {s: len(np.unique(groups[y == s])) for s in pd.unique(y)}


def check_sense_groups(senses: np.ndarray, words: np.ndarray, groups: np.ndarray, need: int, *, what: str,
                       causal: bool, fix: str | None = None) -> None:
    """Refuse, before any forward pass, a word whose sense has fewer than ``need`` groups.

    ``groups`` are the codes the caller will split on (``Trajectories.group_codes``: on a causal model,
    examples whose texts agree up to the end of the target are one group). Words with one sense are left to
    the caller (they have nothing to split).
    """
    short = []
    for w in pd.unique(words):
        rows = np.flatnonzero(words == w)
        y = senses[rows]
        if len(pd.unique(y)) < 2:
            continue
        for s, k in sense_group_counts(y, groups[rows]).items():
            if k < need:
                short.append(f"word {_plain(w)!r}, sense {_plain(s)!r} has {int((y == s).sum())} examples in {k} "
                             f"group(s)")
    if not short:
        return
    prefix = (" On a causal model, examples whose texts are identical up to the end of the target hand the model "
              "the same input there and are one group." if causal else "")
    more = f" (and {len(short) - 5} more)" if len(short) > 5 else ""
    raise ValueError(f"{what} needs at least {need} groups per sense: " + "; ".join(short[:5]) + more
                     + f".{prefix} Fix: " + (f"{fix}, " if fix else "")
                     + "give the sense more distinct contexts, or drop the word.")


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
