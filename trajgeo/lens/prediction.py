"""The lens measured against what the model must predict: the actual next token of whole texts.

KL to the final distribution falls to 0 at the last point by construction, and the lens's entropy
says nothing about whether a point predicts the *right* token (point 0 predicts the input token
itself through a tied embedding, with near-zero entropy). :func:`next_token_scores` runs the model
over whole texts (the lens's own forward pass: target trajectories are cut after the target and
have no next token) and scores every point at every position against the token that actually
follows: its cross-entropy and top-1 accuracy, through the logit lens and a tuned lens, with
bootstrap intervals over texts. At the last point through the logit lens the cross-entropy is the
model's own language-modelling loss on the texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from trajgeo.lens._readout import _ROW_BUDGET, _forward, _Readout
from trajgeo.models import load_model
from trajgeo.stats import bootstrap_weights, percentile_interval

if TYPE_CHECKING:
    from trajgeo.lens.tuned import TunedLens

__all__ = ["next_token_scores", "NEXT_TOKEN_METRICS"]

NEXT_TOKEN_METRICS = ("cross_entropy", "top1_accuracy", "kl_to_final")


def _default_texts() -> list[str]:
    from trajgeo.datasets import builtin

    return list(pd.unique(builtin()["text"]))


def _eval_texts(texts: Any, max_texts: int | None, random_state: int | None) -> list[str]:
    if texts is None:
        texts = _default_texts()
    elif isinstance(texts, pd.DataFrame):
        if "text" not in texts.columns:
            raise KeyError(f"texts DataFrame has no 'text' column; columns are {list(texts.columns)}")
        texts = list(pd.unique(texts["text"]))  # one row per target: each text once
    elif isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not one string")
    texts = [str(t) for t in texts]
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ValueError(f"texts {empty[:5]} are empty")
    if not texts:
        raise ValueError("no texts to score")
    if max_texts is not None and len(texts) > max_texts:
        keep = np.sort(np.random.default_rng(random_state).choice(len(texts), max_texts, replace=False))
        texts = [texts[i] for i in keep]
    return texts


def next_token_scores(
    model: Any,
    texts: Sequence[str] | pd.DataFrame | None = None,
    *,
    lens: "TunedLens | None" = None,
    max_texts: int | None = None,
    max_length: int = 128,
    batch_size: int = 8,
    n_boot: int = 1000,
    ci: float = 0.95,
    random_state: int | None = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Per point, how well the logit lens (and a tuned lens) predicts the actual next token.

    Every position of every text that has a next token counts once (special tokens the tokenizer
    adds included, padding excluded), so at the last point the logit lens's ``cross_entropy`` is
    the model's own language-modelling loss on the texts (``model(ids, labels=ids).loss``).

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
        A causal LM (an encoder's masked-LM head predicts the token at a position, not the next
        one: ``ValueError``); without an LM head :class:`~trajgeo.lens.LensUnavailable`.
    texts : sequence of str or DataFrame with a ``text`` column, optional
        Whole texts (each once; a DataFrame of examples contributes each distinct text once).
        Default: the texts of the built-in polysemy set (:func:`trajgeo.datasets.builtin`), which
        the built-in corpus a tuned lens trains on does not contain.
    lens : TunedLens, optional
        A fitted tuned lens for this model (e.g. :meth:`TunedLens.cached`): its rows come beside
        the logit lens's, from the same forward pass. Score it on texts it was not trained on.
    max_texts : int, optional
        Score a seeded random subset of this many texts (the cost is the unembedding:
        ``n_positions * (n_layers + 1)`` rows of the vocabulary per lens; SmolLM2 on 2 CPU cores
        does about 1,000 positions a minute per lens).
    max_length : int
        Longest text in tokens (longer ones are truncated).
    batch_size : int
        Texts per forward pass.
    n_boot : int
        Bootstrap replicates over texts (the units: positions of one text are not independent).
    ci : float
        Coverage of the percentile interval.
    random_state : int or None
        Seeds the text subset and the bootstrap.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    DataFrame with columns ``point, lens, metric, value, ci_low, ci_high``: one row per point,
    lens (``"logit"``, and ``"tuned"`` with ``lens=``) and metric:

    - ``cross_entropy``: mean over positions of -log P_lens(actual next token), in nats;
    - ``top1_accuracy``: share of positions whose lens top-1 token is the actual next token;
    - ``kl_to_final``: mean KL(P_final || P_lens), in nats, on the same positions (0 at the last
      point); for the tuned lens this is its held-out KL on these texts.

    ``value`` is the mean over all positions (each text weighs by its number of positions); the
    interval is the percentile interval of that mean over a cluster bootstrap of texts
    (:func:`trajgeo.stats.bootstrap_weights`).
    """
    import torch
    from tqdm.auto import tqdm

    lm = load_model(model)
    logit = _Readout(lm, normalize_final=True)
    if not lm.adapter.causal:
        raise ValueError(f"next_token_scores needs a causal LM; {lm.name!r} is an encoder, whose masked-LM head "
                         "predicts the token at a position, not the next one")
    readouts: list[tuple[str, _Readout, Any]] = [("logit", logit, None)]
    if lens is not None:
        lens._check_fitted(lm)
        readouts.append(("tuned", _Readout(lm, lens.normalize_final), lens))
    texts = _eval_texts(texts, max_texts, random_state)
    n_pts = lm.n_layers + 1
    vocab = logit.vocab_size
    sums = np.zeros((len(readouts), len(texts), n_pts, len(NEXT_TOKEN_METRICS)))
    counts = np.zeros(len(texts))
    rows_per_chunk = max(1, _ROW_BUDGET // (n_pts * vocab))
    bar = tqdm(total=len(texts), disable=not progress, desc="next token", unit="text")
    start = 0
    for h, ids, mask, _ in _forward(lm, texts, max_length, batch_size):
        has_next = mask[:, :-1] & mask[:, 1:]  # (b, T-1): positions followed by a token of the same text
        x = h[:, :-1][has_next]  # (m, points, d)
        target = ids[:, 1:][has_next]  # (m,)
        text = (start + torch.arange(len(ids)))[:, None].expand_as(has_next)[has_next].numpy()
        counts += np.bincount(text, minlength=len(texts))
        for r0 in range(0, len(x), rows_per_chunk):
            xs, ts, tx = x[r0:r0 + rows_per_chunk], target[r0:r0 + rows_per_chunk], text[r0:r0 + rows_per_chunk]
            with torch.inference_mode():
                logp_f = None  # the model's own final distribution: the logit lens's last point (read first)
                for j, (_, readout, tuned) in enumerate(readouts):
                    y = xs if tuned is None else torch.from_numpy(tuned._translate(xs.numpy(), range(n_pts)))
                    logits = readout(y)  # (c, points, vocab)
                    logp = torch.log_softmax(logits, -1)
                    if logp_f is None:
                        logp_f = logp[:, -1]
                    at = ts.to(logp.device)[:, None, None].expand(-1, n_pts, 1)
                    ce = -logp.gather(-1, at)[..., 0]
                    top1 = (logits.argmax(-1) == at[..., 0]).float()
                    kl = (logp_f.exp()[:, None] * (logp_f[:, None] - logp)).sum(-1)
                    per_row = torch.stack([ce, top1, kl], -1).double().cpu().numpy()  # (c, points, 3)
                    np.add.at(sums[j], tx, per_row)
        start += len(ids)
        bar.update(len(ids))
    bar.close()
    return _frame(sums, counts, [name for name, _, _ in readouts], n_boot=n_boot, ci=ci, random_state=random_state)


def _frame(sums: np.ndarray, counts: np.ndarray, lenses: list[str], *, n_boot: int, ci: float,
           random_state: int | None) -> pd.DataFrame:
    """Pooled means and cluster-bootstrap intervals over texts, in the long form."""
    used = counts > 0  # a one-token text has no next token: it is no unit
    if not used.any():
        raise ValueError("no text has two tokens or more: there is no next token to score")
    sums, counts = sums[:, used], counts[used]
    n_lens, n_texts, n_pts, n_met = sums.shape
    flat = np.moveaxis(sums, 1, 0).reshape(n_texts, -1)  # (texts, lens * points * metrics)
    value = flat.sum(0) / counts.sum()
    w = bootstrap_weights(np.arange(n_texts), n_boot, random_state)  # (n_boot, texts)
    low, high = percentile_interval((w @ flat) / (w @ counts)[:, None], ci)
    grid = pd.MultiIndex.from_product([lenses, range(n_pts), NEXT_TOKEN_METRICS], names=["lens", "point", "metric"])
    df = grid.to_frame(index=False)
    df["value"], df["ci_low"], df["ci_high"] = value, low, high
    return df[["point", "lens", "metric", "value", "ci_low", "ci_high"]]
