"""A sense read-out that asks the model: the target's residual at point l patched into an inspection prompt
(patchscope-style), read as the next-token log-odds of each sense's words at the prompt's end."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from trajgeo.engine import Edit, Engine, Pool, Site
from trajgeo.interventions._examples import batches, column, example_carrier, permuted_labels, prepare, run_rows

__all__ = ["patchscope", "DEFAULT_PROMPT"]

DEFAULT_PROMPT = 'In this sentence, the word "X" refers to'


def _placeholder_column(tokenizer: Any, prompt: str, placeholder: str) -> tuple[np.ndarray, int]:
    """The prompt's token ids and the one token that is the placeholder."""
    hits = [m.span() for m in re.finditer(rf"(?<!\w){re.escape(placeholder)}(?!\w)", prompt)]
    if len(hits) != 1:
        raise ValueError(f"the prompt must hold the placeholder {placeholder!r} once as a whole word; found "
                         f"{len(hits)} in {prompt!r}")
    a, b = hits[0]
    enc = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    cols = [t for t, ((x, y), sp) in enumerate(zip(enc["offset_mapping"], enc["special_tokens_mask"]))
            if not sp and y > x and x < b and y > a]
    if len(cols) != 1:
        raise ValueError(f"the placeholder {placeholder!r} is {len(cols)} tokens in this tokenizer; choose one that "
                         "is a single token")
    return np.asarray(enc["input_ids"], dtype=np.int64), cols[0]


def patchscope(
    model: Any,
    examples: Any,
    *,
    prompt: str = DEFAULT_PROMPT,
    placeholder: str = "X",
    points: Sequence[int] | None = None,
    sense_words: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    n_permutations: int = 0,
    pool: str | None = None,
    batch_size: int = 32,
    progress: bool = True,
    random_state: int | None = 0,
) -> pd.DataFrame:
    """Read each point's sense through the model's own computation on an inspection prompt.

    For every example and point ``l``, the target's residual at point ``l`` (extraction's pooled vector)
    replaces the residual of the prompt's ``placeholder`` token at point ``l`` (the same point of the
    prompt's pass), the prompt's pass runs on, and the next-token logits at the prompt's last token
    (through the model's final norm and unembedding) give ``log P(own sense's words) - log P(the word's
    other senses' words)`` (each word counted by its first token, :func:`trajgeo.lens.sense_token_ids`;
    the sets are disjoint). A point where the prompt's answer tracks the example's sense carries the sense
    in a form later layers can read out, with no probe fitted.

    Points: 0 (the token embedding patched at the placeholder) to L; at ``l == L`` only a placeholder that
    ends the prompt is read (no later block reads the placeholder's last point otherwise: the value is the
    unpatched prompt's).

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
        A causal LM with its head (an encoder's masked-LM head does not predict a next token).
    examples : DataFrame
        As :func:`trajgeo.extract` takes them, with ``sense`` and ``word``.
    prompt : str
        The inspection prompt; it must hold ``placeholder`` once as a single token. The default asks what
        the word refers to, so that sense words are plausible next tokens.
    placeholder : str
    points : sequence of int, optional
        Points read (default 0..L-1, and L too when the placeholder ends the prompt).
    sense_words : mapping, optional
        ``{word: {sense: [words]}}``; default :func:`trajgeo.datasets.sense_words` of each word.
    labels, word, groups : str or array
    n_permutations : int
        With ``n > 0``, the senses are permuted ``n`` times among groups within each word
        (:func:`trajgeo.stats.group_permutations`; each example's read-out is then scored against a sense
        set it does not belong to as often as chance says) and each (word, point) mean is read against them:
        null columns ``null_mean, null_q95, null_fwer, p_value, p_fwer`` (:func:`trajgeo.stats.null_table`
        per word over its points; the same on every example row of that word and point).
    pool : {"last", "first", "mean"}, optional
    batch_size : int
    progress : bool
    random_state : int or None
        Seeds the permutations.

    Returns
    -------
    DataFrame
        One row per (example, point): ``example, point, word, sense, metric, value`` with ``metric ==
        "sense_log_odds"``, plus the null columns with ``n_permutations > 0``. The word's mean at a point:
        ``frame.groupby(["word", "point"])["value"].mean()``.
    """
    import torch
    from tqdm.auto import tqdm

    from trajgeo.datasets import sense_words as builtin_sense_words
    from trajgeo.lens import sense_token_ids
    from trajgeo.lens._readout import _Readout

    engine = Engine(model)
    lm, a = engine.lm, engine.adapter
    if not a.causal or a.unembed is None:
        why = "has no unembedding (loaded without an LM head)" if a.unembed is None else \
            "is an encoder, whose masked-LM head does not predict the next token"
        raise ValueError(f"patchscope reads a causal LM's next token, but {lm.name!r} ({a.family}) {why}")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) or n_permutations < 0:
        raise ValueError(f"n_permutations must be a non-negative int, got {n_permutations!r}")
    L = engine.n_layers
    p_ids, ph = _placeholder_column(lm.tokenizer, prompt, placeholder)
    last = len(p_ids) - 1
    if points is None:
        points = list(range(L)) + ([L] if ph == last else [])
    points = sorted({int(p) for p in points})
    for p in points:
        engine.check_site(Site.resid(p))
    inputs = prepare(lm, examples, pool=pool)
    meta = inputs.meta
    n = len(inputs)
    _, labelled = example_carrier(lm, meta, L)  # a causal model: refused otherwise above
    senses = labelled.labels(labels).astype(str)
    words = column(meta, word, "word", "word")
    if words is None:
        raise KeyError("patchscope needs a word column (its sense words are per word)")
    words = words.astype(str)
    tables = {}
    for w in pd.unique(words):
        if sense_words is not None:
            if w not in sense_words:
                raise ValueError(f"sense_words has no entry for word {w!r} (it has {sorted(sense_words)})")
            tables[w] = {str(s): list(v) for s, v in sense_words[w].items()}
        else:
            tables[w] = builtin_sense_words(w)
        missing = sorted(set(senses[words == w]) - set(tables[w]))
        if missing:
            raise ValueError(f"word {w!r}: no sense words for senses {missing} (known: {sorted(tables[w])})")
    ids = {w: sense_token_ids(lm.tokenizer, t) for w, t in tables.items()}
    sense_names = {w: sorted(ids[w]) for w in ids}
    K = max(len(v) for v in sense_names.values())

    # the targets' vectors at every point read
    vec = np.zeros((n, len(points), lm.d_model), np.float32)
    for rows in batches(inputs, batch_size):
        run = run_rows(engine, inputs, rows, read=[Site.resid(p) for p in points])
        vec[rows] = torch.stack([run[Site.resid(p)] for p in points], 1).float().cpu().numpy()
    # the prompt's own residuals (to start each patched pass after the patched point)
    p_batch = engine.batch([p_ids])
    p_run = engine.run(p_batch, read=sorted({Site.resid(p) for p in points if p >= 1} | {Site.resid(L)},
                                            key=lambda s: s.index))
    head = _Readout(lm)
    lse = np.full((n, len(points), K), np.nan)  # log-sum-exp of each sense's token logits
    bar = tqdm(total=n * len(points), disable=not progress, desc=f"patchscope ({lm.name})", unit="run")
    dev = lm.device
    for j, p in enumerate(points):
        for b in range(0, n, int(batch_size)):
            rows = list(range(b, min(n, b + int(batch_size))))
            B = len(rows)
            batch = engine.batch([p_ids] * B)
            value = torch.as_tensor(vec[rows, j], device=dev, dtype=lm.dtype)
            cols = torch.full((B,), ph, device=dev, dtype=torch.long)
            ar = torch.arange(B, device=dev)
            final = Site.resid(L)
            if p == L:  # no pass: the placeholder's last point is the value itself, and no block reads it later
                h_last = value if ph == last else p_run[final][:, last].expand(B, -1)
            elif p == 0:
                run = engine.run(batch, read=[final], pool=Pool.mean([[last]] * B),
                                 edits=[Edit.replace(Site.resid(0), value, rows=ar, columns=cols)])
                h_last = run[final]
            else:
                hidden = p_run[Site.resid(p)].expand(B, -1, -1).clone()
                hidden[ar, cols] = value
                run = engine.run(batch, read=[final], pool=Pool.mean([[last]] * B), start_after=(p, hidden))
                h_last = run[final]
            with torch.no_grad():
                logits = head(h_last)
            for r, i in enumerate(rows):
                for k, s in enumerate(sense_names[words[i]]):
                    lse[i, j, k] = float(torch.logsumexp(logits[r, ids[words[i]][s]], 0))
            bar.update(B)
    bar.close()

    def log_odds(lab: np.ndarray) -> np.ndarray:
        """(n, n_points) log-odds of each example's sense in ``lab`` against the word's other senses."""
        out = np.empty((n, len(points)))
        for i in range(n):
            names = sense_names[words[i]]
            k = names.index(lab[i])
            others = np.delete(lse[i, :, :len(names)], k, axis=1)
            out[i] = lse[i, :, k] - np.logaddexp.reduce(others, axis=1)
        return out

    value = log_odds(senses)
    frame = pd.DataFrame({
        "example": np.repeat(meta["example"].to_numpy(), len(points)),
        "point": np.tile(points, n),
        "word": np.repeat(words, len(points)),
        "sense": np.repeat(senses, len(points)),
        "metric": "sense_log_odds",
        "value": value.reshape(-1),
    })
    if not n_permutations:
        return frame
    from trajgeo.stats import null_table

    g = labelled.group_codes(groups)
    perms = permuted_labels(senses, words, g, int(n_permutations), random_state)
    null_vals = np.stack([log_odds(pl) for pl in perms])  # (K, n, P)
    tables_ = []
    for w in pd.unique(words):
        rows = words == w
        t = null_table(value[rows].mean(0), null_vals[:, rows].mean(1), points=points, alternative="greater")
        tables_.append(t.drop(columns="value").assign(word=w))
    nulls = pd.concat(tables_, ignore_index=True)
    return frame.merge(nulls, on=["word", "point"], how="left")
