"""Logit lens and tuned lens on the target token's trajectory, with a sense-word read-out.

The **logit lens** (nostalgebraist 2020) reads every point of a trajectory as if it were the last:
it applies the model's own final norm and unembedding (and any logit soft-capping or scaling the
model applies) to the point and looks at the resulting next-token distribution. The final norm is
recomputed on each point, never borrowed from the last one. Only the target rows are unembedded,
so a 49k-token vocabulary costs ``n_examples * n_points`` rows, not a whole sequence.

The **tuned lens** (Belrose et al. 2023, "Eliciting latent predictions from transformers with the
tuned lens") first maps each point through a learned affine *translator*, trained on a text corpus
to minimise the KL divergence from the model's final distribution; its metrics are the same.

What a lens reads is the model's prediction at the target's position: for a causal model the
*next* token after the target; for an encoder with a masked-LM head, the token at the target.

Metric conventions (all per example and point):

- ``entropy``: entropy of the lens distribution, in nats.
- ``kl_to_final``: KL(P_final || P_lens) in nats, the direction the tuned lens minimises; the final
  distribution is the lens at the last point (point L), so this is 0 there.
- ``final_top1_rank``: rank of the final top-1 token in the lens distribution, 1 = top (one plus
  the number of tokens with a strictly larger logit).
- ``final_top1_prob``: lens probability of the final top-1 token.
- ``sense_prob`` (with ``to_sense``): summed lens probability of a sense's signal tokens.
- ``sense_log_odds``: log P(correct sense's tokens) - log P(all other senses' tokens).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from trajgeo.models import LoadedModel, load_model
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["logit_lens", "top_tokens", "prediction_depth", "sense_token_ids", "TunedLens", "LENS_METRICS"]

LENS_METRICS = ("entropy", "kl_to_final", "final_top1_rank", "final_top1_prob", "sense_log_odds", "sense_prob")
# Lens rows unembedded at once (rows * vocabulary floats per tensor): about 64 MB per tensor.
_ROW_BUDGET = 1 << 24


# ============================================================== the readout
class _Readout:
    """The model's own readout, residual (..., d_model) -> logits (..., vocab), as its forward applies it.

    Decoders: final norm (optional), unembedding, then the model's logit soft-capping
    (``final_logit_softcapping``, Gemma 2/3) or scaling (``logit_scale``, ``logits_scaling``).
    Encoders with a masked-LM head: the whole head (dense, activation, layer norm, decoder), since
    their "final norm" lives inside it; ``normalize_final=False`` keeps only the decoder matrix.
    """

    def __init__(self, lm: LoadedModel, normalize_final: bool = True) -> None:
        a = lm.adapter
        if a.unembed is None:
            raise ValueError(
                f"the lens needs an unembedding (an LM head), but model {lm.name!r} ({a.family}) has none: "
                "it was loaded without one (e.g. a sentence-embedding encoder such as MiniLM). Load a causal LM "
                "or a *ForMaskedLM checkpoint to use the logit or tuned lens."
            )
        self.lm = lm
        model = lm.model
        self.norm: Any = None
        if a.causal:
            self.head = a.unembed
            self.norm = a.final_norm if normalize_final else None
        elif normalize_final:
            # BERT keeps its masked-LM head in model.cls.predictions, RoBERTa in model.lm_head
            cls = getattr(model, "cls", None)
            self.head = getattr(cls, "predictions", None) if cls is not None else getattr(model, "lm_head", None)
            if self.head is None:
                raise ValueError(f"model {lm.name!r}: found an unembedding but no masked-LM head (cls / lm_head)")
        else:
            self.head = a.unembed
        cfg = model.config
        num = (int, float)
        self.softcap = getattr(cfg, "final_logit_softcapping", None) if a.causal else None
        self.scale = getattr(cfg, "logit_scale", None) if a.causal else None  # Cohere multiplies
        self.divide = getattr(cfg, "logits_scaling", None) if a.causal else None  # Granite divides
        self.softcap, self.scale, self.divide = (v if isinstance(v, num) and not isinstance(v, bool) else None
                                                 for v in (self.softcap, self.scale, self.divide))
        self.device, self.dtype = lm.device, lm.dtype

    @property
    def vocab_size(self) -> int:
        w = getattr(self.lm.adapter.unembed, "weight", None)
        return int(w.shape[0])

    def __call__(self, h: Any) -> Any:
        import torch

        h = h.to(self.device, self.dtype)
        if self.norm is not None:
            h = self.norm(h)
        logits = self.head(h)
        if self.scale is not None:
            logits = logits * self.scale
        if self.divide is not None:
            logits = logits / self.divide
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()


class _frozen:
    """Context in which the model's parameters need no gradient (restored afterwards)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self.flags:
            p.requires_grad_(False)

    def __exit__(self, *exc: Any) -> None:
        for p, flag in self.flags:
            p.requires_grad_(flag)


# ============================================================== checks
def _check_model(lm: LoadedModel, traj: Trajectories) -> None:
    """Refuse trajectories of another model (shape or fingerprint and name); warn on a weights-only change."""
    info = traj.model_info
    if traj.d_model != lm.d_model:
        raise ValueError(f"the trajectories have d_model={traj.d_model} but model {lm.name!r} has "
                         f"d_model={lm.d_model}: they come from another model")
    if int(np.max(traj.points)) > lm.n_layers:
        raise ValueError(f"the trajectories have point {int(np.max(traj.points))} but model {lm.name!r} has only "
                         f"{lm.n_layers} layers")
    if "n_layers" in info and int(info["n_layers"]) != lm.n_layers:
        raise ValueError(f"the trajectories come from a {info['n_layers']}-layer model ({info.get('name')!r}), "
                         f"but the lens got {lm.name!r} with {lm.n_layers} layers")
    fp = info.get("weights_fingerprint")
    if fp and fp != lm.fingerprint():
        msg = (f"the trajectories were extracted with model {info.get('name')!r} (weights fingerprint {fp}), "
               f"but the lens got {lm.name!r} (fingerprint {lm.fingerprint()})")
        if info.get("name") != lm.name:
            raise ValueError(msg + ": pass the model the trajectories came from")
        warnings.warn(msg + ": same name, different weights (another dtype or checkpoint?)", stacklevel=3)
    if info.get("post_ln") and lm.adapter.causal:
        raise ValueError(f"the trajectories come from a post-LN encoder but {lm.name!r} is a causal LM")


def _final_column(traj: Trajectories, lm: LoadedModel) -> int:
    points = np.asarray(traj.points)
    if np.any(np.diff(points) <= 0):
        raise ValueError(f"the lens needs points in increasing order; got {list(points)}")
    hit = np.flatnonzero(points == lm.n_layers)
    if len(hit) == 0:
        raise ValueError(
            f"the lens compares every point with the model's final distribution, which needs the last point "
            f"(point {lm.n_layers}); these trajectories have points {list(points)} (extracted with max_point?)"
        )
    return int(hit[0])


# ============================================================== sense tokens
def sense_token_ids(tokenizer: Any, sense_tokens: Mapping[str, Sequence[str]]) -> dict[str, list[int]]:
    """Map each sense's signal words to token ids: the first token of ``" " + word``.

    The leading space picks the word-initial form (``"Ġriver"`` in byte-level BPE, ``"▁river"``
    in SentencePiece), which is how a word is predicted mid-sentence; tokenizers that split on
    whitespace (WordPiece, word-level) ignore it. For a word split into several tokens only the
    first is used, so the read-out is the probability of *starting* that word.

    Parameters
    ----------
    tokenizer : transformers fast tokenizer
    sense_tokens : mapping of str to sequence of str
        Sense -> signal words, e.g. ``{"river": ["river", "water"], "finance": ["money", "loan"]}``.

    Returns
    -------
    dict of str to list of int
        Sense -> distinct token ids. Words that map to the unknown token are dropped, and a token
        shared by several senses is dropped from all of them (a warning names them), so the sets
        are disjoint and the log-odds well defined.

    Raises
    ------
    ValueError
        When a sense is left without any token.
    """
    ids: dict[str, list[int]] = {}
    unk = getattr(tokenizer, "unk_token_id", None)
    dropped = []
    for sense, words in sense_tokens.items():
        if isinstance(words, str):
            raise ValueError(f"sense {sense!r}: give a list of words, not the string {words!r}")
        got: list[int] = []
        for word in words:
            word = str(word).strip()
            enc = tokenizer(" " + word, add_special_tokens=False, return_offsets_mapping=True)
            # the first token covering a character of the word (skips a bare "▁" token for the space)
            tok = next((t for t, (_, end) in zip(enc["input_ids"], enc["offset_mapping"]) if end > 1), None)
            if tok is None or tok == unk:
                dropped.append(word)
                continue
            if tok not in got:
                got.append(tok)
        ids[str(sense)] = got
    if dropped:
        warnings.warn(f"sense words with no known token were dropped: {dropped}", stacklevel=2)
    owners: dict[int, list[str]] = {}
    for sense, toks in ids.items():
        for t in toks:
            owners.setdefault(t, []).append(sense)
    shared = {t: s for t, s in owners.items() if len(s) > 1}
    if shared:
        names = {tokenizer.convert_ids_to_tokens(t): s for t, s in shared.items()}
        warnings.warn(f"tokens shared by several senses were dropped from all of them: {names}", stacklevel=2)
        ids = {s: [t for t in toks if t not in shared] for s, toks in ids.items()}
    empty = [s for s, toks in ids.items() if not toks]
    if empty:
        raise ValueError(f"sense(s) {empty} have no usable signal token left; give more (or other) words")
    return ids


def _sense_sets(lm: LoadedModel, traj: Trajectories, sense_tokens: Any) -> list[tuple[Any, str, list[int]]]:
    """Resolve ``sense_tokens`` into (word or None for all words, sense, token ids) triples."""
    tok = lm.tokenizer
    if sense_tokens is None:
        if "word" not in traj.meta.columns:
            return []
        try:
            from trajgeo.datasets import sense_words
        except ImportError:  # datasets not available: no read-out, the other metrics stand
            return []
        sets = []
        for word in pd.unique(traj.meta["word"]):
            try:
                table = sense_words(str(word))
            except (KeyError, ValueError, FileNotFoundError):
                continue  # no built-in sense words for this word: its examples get no sense rows
            try:
                ids = sense_token_ids(tok, table)
            except ValueError as e:  # e.g. a sense none of whose words this tokenizer knows
                warnings.warn(f"no sense read-out for word {word!r}: {e}", stacklevel=3)
                continue
            sets += [(word, s, i) for s, i in ids.items()]
        return sets
    if not isinstance(sense_tokens, Mapping) or not sense_tokens:
        raise ValueError("sense_tokens must be a non-empty dict sense -> list of words "
                         "(or word -> {sense -> list of words}), or None")
    if all(isinstance(v, Mapping) for v in sense_tokens.values()):  # per word
        if "word" not in traj.meta.columns:
            raise KeyError("sense_tokens is given per word, but the trajectories' meta has no 'word' column")
        return [(w, s, ids) for w, table in sense_tokens.items() for s, ids in sense_token_ids(tok, table).items()]
    return [(None, s, ids) for s, ids in sense_token_ids(tok, sense_tokens).items()]


# ============================================================== the engine
def _lens_arrays(lm: LoadedModel, traj: Trajectories, *, lens: "TunedLens | None", top_k: int,
                 sets: list[tuple[Any, str, list[int]]], batch_size: int | None,
                 normalize_final: bool) -> dict[str, np.ndarray]:
    """Run the lens on every (example, point) and reduce each distribution to its metrics.

    Returns arrays of shape (n_examples, n_points): entropy, kl, rank, prob, top1;
    ``topk_ids``/``topk_prob`` (n_examples, n_points, top_k); ``set_logp`` (n_examples, n_points, n_sets)
    holding log P(set) for every sense-token set.
    """
    import torch

    readout = _Readout(lm, normalize_final)
    last = _final_column(traj, lm)
    n, n_pts = traj.n_examples, traj.n_points
    vocab = readout.vocab_size
    if batch_size is None:
        batch_size = max(1, _ROW_BUDGET // (n_pts * vocab))
    k = min(int(top_k), vocab)
    out = {name: np.zeros((n, n_pts), np.float32) for name in ("entropy", "kl", "rank", "prob")}
    out["top1"] = np.zeros((n, n_pts), np.int64)
    out["topk_ids"] = np.zeros((n, n_pts, k), np.int64)
    out["topk_prob"] = np.zeros((n, n_pts, k), np.float32)
    out["set_logp"] = np.zeros((n, n_pts, len(sets)), np.float32)
    set_ids = [torch.as_tensor(ids, dtype=torch.long, device=readout.device) for _, _, ids in sets]
    cpu = lambda t: t.cpu().numpy()  # noqa: E731
    with torch.inference_mode():
        for i0 in range(0, n, batch_size):
            x = np.asarray(traj.states[i0:i0 + batch_size], dtype=np.float32)
            if lens is not None:
                x = lens._translate(x, traj.points)
            logits = readout(torch.from_numpy(x))  # (b, n_pts, vocab)
            logp = torch.log_softmax(logits, dim=-1)
            p = logp.exp()
            rows = slice(i0, i0 + len(x))
            out["entropy"][rows] = cpu(-(p * logp).sum(-1))
            logp_f, p_f = logp[:, last:last + 1], p[:, last:last + 1]
            out["kl"][rows] = cpu((p_f * (logp_f - logp)).sum(-1))
            top1_final = logits[:, last].argmax(-1)  # (b,)
            at = top1_final[:, None, None].expand(-1, n_pts, 1)
            out["rank"][rows] = cpu((logits > logits.gather(-1, at)).sum(-1) + 1)
            out["prob"][rows] = cpu(p.gather(-1, at)[..., 0])
            out["top1"][rows] = cpu(logits.argmax(-1))
            if k:
                vals, ids = torch.topk(logp, k, dim=-1)
                out["topk_ids"][rows], out["topk_prob"][rows] = cpu(ids), cpu(vals.exp())
            for j, ids in enumerate(set_ids):
                out["set_logp"][rows, :, j] = cpu(torch.logsumexp(logp[..., ids], dim=-1))
    return out


def _prepare(model: Any, traj: Any, lens: "TunedLens | None") -> tuple[LoadedModel, Trajectories]:
    lm = load_model(model)
    traj = as_trajectories(traj)
    _check_model(lm, traj)
    if lens is not None:
        lens._check_fitted(lm)
    return lm, traj


def _decode(tokenizer: Any, ids: np.ndarray) -> np.ndarray:
    """Decode token ids one by one (each unique id once), e.g. ``" bank"`` with its leading space."""
    uniq, inv = np.unique(ids, return_inverse=True)
    words = np.array(tokenizer.batch_decode([[int(t)] for t in uniq]), dtype=object)
    return words[inv.reshape(ids.shape)]


def _top_frame(lm: LoadedModel, traj: Trajectories, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    n, n_pts, k = arrays["topk_ids"].shape
    ids = arrays["topk_ids"].reshape(-1)
    return pd.DataFrame({
        "example": np.repeat(traj.meta["example"].to_numpy(), n_pts * k),
        "point": np.tile(np.repeat(traj.points, k), n),
        "rank": np.tile(np.arange(1, k + 1), n * n_pts),
        "token": _decode(lm.tokenizer, ids),
        "prob": arrays["topk_prob"].reshape(-1),
        "token_id": ids,
    })


# ============================================================== public functions
def logit_lens(
    model: Any,
    traj: Any,
    top_k: int = 5,
    sense_tokens: Mapping[str, Any] | None = None,
    normalize_final: bool = True,
    batch_size: int | None = None,
    lens: "TunedLens | None" = None,
) -> pd.DataFrame:
    """Logit-lens (or tuned-lens) metrics of every point of every target's trajectory.

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
        The model the trajectories were extracted with (checked against ``traj.model_info``:
        another model raises ``ValueError``); it needs an LM head.
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
        Raw residual points; must include the last point (L), which defines the final distribution.
    top_k : int
        Top tokens per point kept in ``result.attrs["top_tokens"]`` (columns example, point, rank,
        token, prob, token_id); 0 skips them.
    sense_tokens : dict, optional
        Signal words per sense, ``{sense: [words]}`` for all examples or ``{word: {sense: [words]}}``
        per target word; each word becomes the first token of ``" " + word`` (see
        :func:`sense_token_ids`). ``None`` uses :func:`trajgeo.datasets.sense_words` for each target
        word that has built-in sense words (others, or no ``word`` column: no sense rows).
    normalize_final : bool
        Apply the model's final norm to each point before unembedding (the logit lens proper).
        ``False`` unembeds the raw residual.
    batch_size : int, optional
        Examples unembedded at once (default: about 64 MB of logits per batch).
    lens : TunedLens, optional
        Translate each point with this fitted tuned lens first.

    Returns
    -------
    DataFrame
        Long form with columns ``example, point, word, sense, metric, to_sense, value`` (``word`` and
        ``sense`` when in meta). ``metric`` is one of ``entropy``, ``kl_to_final``,
        ``final_top1_rank``, ``final_top1_prob`` (every example and point), ``sense_prob`` (one row
        per sense set of the example's word, named in ``to_sense``; None on other rows) and
        ``sense_log_odds`` (examples whose ``sense`` has a token set). See the module docstring
        for definitions.

    Raises
    ------
    ValueError
        The model has no unembedding (e.g. MiniLM), the trajectories come from another model or
        lack the last point.
    KeyError
        An example's sense has no token set (naming the examples).
    """
    lm, traj = _prepare(model, traj, lens)
    sets = _sense_sets(lm, traj, sense_tokens)
    arrays = _lens_arrays(lm, traj, lens=lens, top_k=top_k, sets=sets, batch_size=batch_size,
                          normalize_final=normalize_final)
    base = traj.to_frame({"entropy": arrays["entropy"], "kl_to_final": arrays["kl"],
                          "final_top1_rank": arrays["rank"], "final_top1_prob": arrays["prob"]})
    base["to_sense"] = None
    frames = [base]
    if sets:
        frames += _sense_frames(traj, sets, arrays["set_logp"])
    df = pd.concat(frames, ignore_index=True)
    cols = [c for c in ("example", "point", "word", "sense", "metric", "to_sense", "value") if c in df.columns]
    df = df[cols]
    if top_k:
        df.attrs["top_tokens"] = _top_frame(lm, traj, arrays)
    return df


def _rows(traj: Trajectories, mask: np.ndarray) -> Trajectories:
    """The examples in ``mask`` for :meth:`Trajectories.to_frame`, without copying their states."""
    return Trajectories(np.zeros((int(mask.sum()), traj.n_points, 0), np.float32),
                        traj.meta[mask].reset_index(drop=True), points=traj.points)


def _sense_frames(traj: Trajectories, sets: list[tuple[Any, str, list[int]]], set_logp: np.ndarray) -> list:
    """sense_prob rows for every example's own word's sets, and sense_log_odds where its sense has a set."""
    meta = traj.meta
    n = traj.n_examples
    words = meta["word"].to_numpy() if "word" in meta.columns else np.full(n, None, dtype=object)
    applies = np.stack([np.ones(n, bool) if w is None else (words == w) for w, _, _ in sets], axis=1)  # (n, S)
    frames = []
    for j, (_, sense, _) in enumerate(sets):
        if applies[:, j].any():
            f = _rows(traj, applies[:, j]).to_frame({"sense_prob": np.exp(set_logp[applies[:, j], :, j])})
            f["to_sense"] = sense
            frames.append(f)
    if "sense" not in meta.columns:
        return frames
    set_sense = np.array([s for _, s, _ in sets], dtype=object)
    correct = applies & (meta["sense"].to_numpy()[:, None] == set_sense[None, :])  # (n, S)
    covered = applies.any(1)
    missing = covered & ~correct.any(1)
    if missing.any():
        bad = meta["example"].to_numpy()[missing]
        raise KeyError(f"examples {bad[:5].tolist()}{' ...' if len(bad) > 5 else ''} have senses "
                       f"{sorted(set(meta['sense'].to_numpy()[missing].astype(str)))} with no sense-token set "
                       f"(sets: {sorted(set(set_sense.astype(str)))}); name the senses as in meta['sense']")
    if not covered.any():
        return frames
    other = applies & ~correct
    neg_inf = np.float32(-np.inf)
    lp = set_logp  # (n, P, S)
    lp_correct = np.where(correct[:, None, :], lp, neg_inf).max(-1)
    with np.errstate(divide="ignore"):
        lp_other = np.logaddexp.reduce(np.where(other[:, None, :], lp, neg_inf), axis=-1)
    odds = lp_correct - lp_other  # (n, P); +inf when a word has a single sense set
    f = _rows(traj, covered).to_frame({"sense_log_odds": odds[covered]})
    f["to_sense"] = None
    frames.append(f)
    return frames


def top_tokens(model: Any, traj: Any, example: int | None = None, k: int = 5,
               normalize_final: bool = True, lens: "TunedLens | None" = None) -> pd.DataFrame:
    """The lens's top-k tokens at every point of one example (or all), decoded for display.

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
    example : int, optional
        The example's id (``meta["example"]``); None for every example.
    k : int
        Tokens per point.
    normalize_final : bool
        See :func:`logit_lens`.
    lens : TunedLens, optional
        Read through a fitted tuned lens.

    Returns
    -------
    DataFrame with columns ``example, point, rank, token, prob, token_id`` (rank 1 = most likely;
    ``token`` decoded, e.g. ``" river"`` with its leading space).
    """
    lm, traj = _prepare(model, traj, lens)
    if example is not None:
        hit = np.flatnonzero(traj.meta["example"].to_numpy() == example)
        if len(hit) == 0:
            raise KeyError(f"no example with id {example!r} in these trajectories")
        traj = traj[hit]
    arrays = _lens_arrays(lm, traj, lens=lens, top_k=k, sets=[], batch_size=None, normalize_final=normalize_final)
    return _top_frame(lm, traj, arrays)


def prediction_depth(model: Any, traj: Any, normalize_final: bool = True, batch_size: int | None = None,
                     lens: "TunedLens | None" = None) -> pd.DataFrame:
    """Per example, the first point from which the lens's top-1 token is the final top-1 for good.

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
    normalize_final, batch_size, lens
        See :func:`logit_lens`.

    Returns
    -------
    DataFrame with columns ``example, word, sense, prediction_depth`` (``word``/``sense`` when in
    meta): the smallest point p such that the lens's top-1 token at p and at every later point is
    the final top-1 token. It is at most L (the last point agrees with itself).
    """
    lm, traj = _prepare(model, traj, lens)
    arrays = _lens_arrays(lm, traj, lens=lens, top_k=0, sets=[], batch_size=batch_size,
                          normalize_final=normalize_final)
    top1 = arrays["top1"]
    last = _final_column(traj, lm)
    agree = top1[:, : last + 1] == top1[:, last:last + 1]
    # "agrees here and at every later point" = a reversed cumulative AND
    settled = np.flip(np.logical_and.accumulate(np.flip(agree, 1), axis=1), 1)
    depth = np.asarray(traj.points)[settled.argmax(1)]
    cols = [c for c in ("example", "word", "sense") if c in traj.meta.columns]
    df = traj.meta[cols].copy().reset_index(drop=True)
    df["prediction_depth"] = depth
    return df


# ============================================================== tuned lens
def _residuals(lm: LoadedModel, texts: Sequence[str], max_length: int, batch_size: int,
               progress: bool = False) -> np.ndarray:
    """Every point's residual at every (non-special, non-padding) position of the texts.

    Returns
    -------
    ndarray of shape (n_positions, n_layers + 1, d_model)
        Point 0 is the token embedding times the model's scale (as in :func:`trajgeo.extract`),
        point l the raw block-l output (hooks on the blocks: Hugging Face's last hidden state is
        final-normed, trajgeo's point L is not).
    """
    import torch
    from tqdm.auto import tqdm

    a = lm.adapter
    tok = lm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    outs: dict[int, Any] = {}

    def hook(l: int) -> Callable:
        def fn(module: Any, args: Any, output: Any) -> None:
            outs[l] = output[0] if isinstance(output, tuple) else output
        return fn

    handles = [b.register_forward_hook(hook(l)) for l, b in enumerate(a.blocks)]
    chunks = []
    try:
        with torch.inference_mode():
            for i in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="residuals", unit="batch"):
                enc = tok(list(texts[i:i + batch_size]), add_special_tokens=True, truncation=True,
                          max_length=max_length, return_special_tokens_mask=True)
                longest = max(len(x) for x in enc["input_ids"])
                ids = torch.full((len(enc["input_ids"]), longest), pad_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                keep = torch.zeros_like(ids, dtype=torch.bool)
                for r, (x, sp) in enumerate(zip(enc["input_ids"], enc["special_tokens_mask"])):
                    ids[r, :len(x)] = torch.tensor(x)
                    mask[r, :len(x)] = 1
                    keep[r, :len(x)] = ~torch.tensor(sp, dtype=torch.bool)
                ids, mask = ids.to(lm.device), mask.to(lm.device)
                kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask,
                                          "position_ids": (mask.cumsum(-1) - 1).clamp(min=0) + a.position_offset}
                if a.causal:
                    kwargs["use_cache"] = False
                a.base(**kwargs)
                pts = [a.embed(ids)] + [outs[l] for l in range(a.n_layers)]
                h = torch.stack(pts, 2)[keep.to(lm.device)]  # (positions, points, d)
                chunks.append(h.float().cpu().numpy())
    finally:
        for h in handles:
            h.remove()
    return np.concatenate(chunks) if chunks else np.zeros((0, a.n_layers + 1, lm.d_model), np.float32)


class TunedLens(BaseEstimator):
    """Tuned lens (Belrose et al. 2023): one learned affine translator per point before the logit lens.

    Point p's translator maps a residual h to ``h @ weight_[p].T + bias_[p]``; it starts at the
    identity with zero bias (the logit lens) and is trained with Adam to minimise
    KL(P_final || P_lens(translated point)) averaged over the positions of a text corpus, where
    P_final is the model's own output distribution at that position. The last point keeps the
    identity (it *is* the final distribution).

    Parameters
    ----------
    n_epochs : int
        Passes over the corpus's positions.
    lr : float
        Adam learning rate.
    batch_size : int
        Positions per optimisation step (every point's translator sees them all).
    max_tokens : int, optional
        Train on at most this many positions, to bound the cost (texts are taken in random order
        until they hold that many, then positions sampled); None for all.
        The cost is the unembedding: every step unembeds ``batch_size * n_layers`` rows and
        backpropagates through them. The defaults (2048 positions, one epoch: 64 steps) take
        a few minutes for SmolLM2 (30 layers, 49k vocabulary) on 2 CPU cores.
    max_length : int
        Longest text in tokens (longer ones are truncated).
    weight_decay : float
        Decoupled weight decay towards the identity (on the translators' residual part).
    normalize_final : bool
        Apply the model's final norm after translating (as the logit lens does).
    random_state : int
        Seeds the position sample and the batch order.
    progress : bool
        Show tqdm bars.

    Attributes
    ----------
    weight_ : ndarray of shape (n_layers + 1, d_model, d_model)
    bias_ : ndarray of shape (n_layers + 1, d_model)
    loss_history_ : ndarray of shape (n_steps,)
        Training KL (nats, mean over points and the batch's positions) at every step.
    n_train_positions_ : int
    fit_seconds_ : float
    model_name_, model_fingerprint_ : str
        The model the lens was trained for (using it with another raises ``ValueError``).
    """

    def __init__(self, n_epochs: int = 1, lr: float = 1e-3, batch_size: int = 32, max_tokens: int | None = 2048,
                 max_length: int = 128, weight_decay: float = 0.0, normalize_final: bool = True,
                 random_state: int = 0, progress: bool = True) -> None:
        self.n_epochs = n_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.max_length = max_length
        self.weight_decay = weight_decay
        self.normalize_final = normalize_final
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------ fitting
    def fit(self, model: Any, texts: Sequence[str] | pd.DataFrame | None = None) -> "TunedLens":
        """Train the translators on the residuals at every position of ``texts``.

        Parameters
        ----------
        model : LoadedModel or anything :func:`trajgeo.load_model` accepts
        texts : sequence of str or DataFrame with a ``text`` column, optional
            The corpus; default :func:`trajgeo.datasets.corpus` (the built-in one).

        Returns
        -------
        self
        """
        import torch
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        lm = load_model(model)
        readout = _Readout(lm, self.normalize_final)
        texts = self._texts(texts)
        if self.n_epochs < 1 or self.batch_size < 1:
            raise ValueError(f"n_epochs and batch_size must be >= 1, got {self.n_epochs} and {self.batch_size}")
        rng = np.random.default_rng(self.random_state)
        if self.max_tokens is not None:
            # whole texts in random order until max_tokens positions: the model then runs on
            # those texts only (sampling single positions would touch nearly every text)
            enc = lm.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length,
                               return_special_tokens_mask=True)
            counts = np.array([len(m) - sum(m) for m in enc["special_tokens_mask"]])
            order = rng.permutation(len(texts))
            n_take = int(np.searchsorted(np.cumsum(counts[order]), self.max_tokens) + 1)
            texts = [texts[i] for i in np.sort(order[:n_take])]
        h_all = _residuals(lm, texts, self.max_length, batch_size=16, progress=self.progress)
        if len(h_all) == 0:
            raise ValueError("the texts hold no (non-special) tokens to train on")
        if self.max_tokens is not None and len(h_all) > self.max_tokens:
            h_all = h_all[np.sort(rng.choice(len(h_all), self.max_tokens, replace=False))]
        n_rows, n_pts, d = h_all.shape
        n_tr = n_pts - 1  # the last point keeps the identity
        torch.manual_seed(self.random_state)
        dev = lm.device
        resid = torch.zeros(n_tr, d, d, device=dev, requires_grad=True)  # translator = identity + resid
        bias = torch.zeros(n_tr, d, device=dev, requires_grad=True)
        # The bias is learned in units of each point's RMS norm, so that Adam's steps (about lr per
        # parameter) move small-norm early points and large-norm late points by similar fractions.
        scale = torch.from_numpy(np.sqrt((h_all[:, :n_tr].astype(np.float64) ** 2).mean((0, 2))).astype(np.float32))
        scale = scale.to(dev)
        opt = torch.optim.AdamW([resid, bias], lr=self.lr, weight_decay=self.weight_decay)
        # points per backward pass, so the (batch, points, vocab) logits stay near the row budget
        pt_chunk = max(1, _ROW_BUDGET // (self.batch_size * readout.vocab_size))
        losses = []
        n_steps = self.n_epochs * int(np.ceil(n_rows / self.batch_size))
        bar = tqdm(total=n_steps, disable=not self.progress, desc="tuned lens", unit="step")
        with _frozen(lm.model):
            for _ in range(self.n_epochs):
                order = rng.permutation(n_rows)
                for s in range(0, n_rows, self.batch_size):
                    h = torch.from_numpy(h_all[order[s:s + self.batch_size]]).to(dev)
                    with torch.no_grad():
                        logp_f = torch.log_softmax(readout(h[:, -1]), -1)[:, None]  # (b, 1, vocab)
                    opt.zero_grad()
                    total = 0.0
                    for p0 in range(0, n_tr, pt_chunk):
                        sl = slice(p0, min(n_tr, p0 + pt_chunk))
                        x = h[:, sl]
                        y = x + torch.einsum("bpd,ped->bpe", x, resid[sl]) + bias[sl] * scale[sl, None]
                        logq = torch.log_softmax(readout(y), -1)
                        kl = (logp_f.exp() * (logp_f - logq)).sum(-1)  # (b, chunk)
                        loss = kl.sum() / (kl.shape[0] * n_tr)
                        loss.backward()
                        total += float(loss.detach())
                    opt.step()
                    losses.append(total)
                    bar.update(1)
                    bar.set_postfix(kl=f"{total:.3f}")
        bar.close()
        eye = np.eye(d, dtype=np.float32)
        self.weight_ = np.concatenate([eye + resid.detach().cpu().numpy(), eye[None]], 0)
        self.bias_ = np.concatenate([(bias * scale[:, None]).detach().cpu().numpy(), np.zeros((1, d), np.float32)], 0)
        self.loss_history_ = np.asarray(losses, np.float32)
        self.n_train_positions_ = int(n_rows)
        self.model_name_ = lm.name
        self.model_fingerprint_ = lm.fingerprint()
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    @staticmethod
    def _texts(texts: Any) -> list[str]:
        if texts is None:
            try:
                from trajgeo.datasets import corpus
            except ImportError as e:
                raise ValueError("no texts given and trajgeo.datasets.corpus is not available") from e
            texts = corpus()
        if isinstance(texts, pd.DataFrame):
            if "text" not in texts.columns:
                raise KeyError(f"texts DataFrame has no 'text' column; columns are {list(texts.columns)}")
            texts = texts["text"].tolist()
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not one string")
        texts = [str(t) for t in texts if str(t).strip()]
        if not texts:
            raise ValueError("no non-empty texts to train the tuned lens on")
        return texts

    # ------------------------------------------------------------ using
    def _check_fitted(self, lm: LoadedModel | None = None) -> None:
        if not hasattr(self, "weight_"):
            raise ValueError("this TunedLens is not fitted yet: call fit(model, texts) or TunedLens.load(path)")
        if lm is not None:
            if lm.d_model != self.weight_.shape[1] or lm.n_layers + 1 != self.weight_.shape[0]:
                raise ValueError(f"the tuned lens was trained for {self.model_name_!r} ({self.weight_.shape[0] - 1} "
                                 f"layers, d_model {self.weight_.shape[1]}), not for {lm.name!r}")
            if self.model_fingerprint_ and lm.fingerprint() != self.model_fingerprint_:
                raise ValueError(f"the tuned lens was trained for {self.model_name_!r} (fingerprint "
                                 f"{self.model_fingerprint_}), but got {lm.name!r} (fingerprint {lm.fingerprint()})")

    def _translate(self, states: np.ndarray, points: Sequence[int]) -> np.ndarray:
        pts = np.asarray(points, dtype=int)
        if pts.max() >= len(self.weight_):
            raise ValueError(f"point {pts.max()} is beyond the tuned lens's {len(self.weight_) - 1} layers")
        out = np.einsum("npd,ped->npe", states, self.weight_[pts], optimize=True) + self.bias_[pts]
        return np.ascontiguousarray(out, dtype=np.float32)

    def transform(self, traj: Any) -> Any:
        """Translate every point: states (n_examples, n_points, d_model) -> same shape.

        Returns a :class:`Trajectories` (meta, points and model info kept; components and aux,
        which are no longer consistent with the states, dropped) or an ndarray for an array input.
        """
        self._check_fitted()
        if isinstance(traj, Trajectories):
            out = self._translate(np.asarray(traj.states, dtype=np.float32), traj.points)
            return Trajectories(out, traj.meta, None, None, traj.points, {**traj.model_info, "tuned_lens": True})
        x = np.asarray(traj, dtype=np.float32)
        if x.ndim != 3:
            raise ValueError(f"states must have shape (n_examples, n_points, d_model); got {x.shape}")
        return self._translate(x, np.arange(x.shape[1]))

    def lens(self, model: Any, traj: Any, **kwargs: Any) -> pd.DataFrame:
        """:func:`logit_lens` read through this tuned lens (same arguments, same output)."""
        kwargs.setdefault("normalize_final", self.normalize_final)  # read out as it was trained
        return logit_lens(model, traj, lens=self, **kwargs)

    # ------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted lens to ``path`` (an ``.npz`` file), atomically (temporary file, then rename)."""
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"params": self.get_params(), "model_name": self.model_name_,
                "model_fingerprint": self.model_fingerprint_, "n_train_positions": self.n_train_positions_,
                "fit_seconds": self.fit_seconds_}
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, weight=self.weight_, bias=self.bias_, loss_history=self.loss_history_,
                         meta=np.array(json.dumps(meta)))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TunedLens":
        """Read a lens written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            lens = cls(**meta["params"])
            lens.weight_ = z["weight"].astype(np.float32)
            lens.bias_ = z["bias"].astype(np.float32)
            lens.loss_history_ = z["loss_history"]
        lens.model_name_ = meta["model_name"]
        lens.model_fingerprint_ = meta["model_fingerprint"]
        lens.n_train_positions_ = meta["n_train_positions"]
        lens.fit_seconds_ = meta["fit_seconds"]
        return lens
