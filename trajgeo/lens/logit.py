"""The logit lens on the target token's trajectory, with a sense-word read-out.

The **logit lens** (nostalgebraist 2020) reads every point of a trajectory as if it were the last:
it applies the model's own final norm and unembedding (and any logit soft-capping or scaling the
model applies) to the point and looks at the resulting next-token distribution. The final norm is
recomputed on each point, never borrowed from the last one. Only the target rows are unembedded,
so a 49k-token vocabulary costs ``n_examples * n_points`` rows, not a whole sequence. With a fitted
:class:`~trajgeo.lens.TunedLens` (``lens=``) each point is first translated by it.

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

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from trajgeo._api import changed_signature
from trajgeo.datasets import sense_words
from trajgeo.lens._readout import _ROW_BUDGET, _final_column, _prepare, _Readout
from trajgeo.models import LoadedModel
from trajgeo.trajectories import Trajectories

if TYPE_CHECKING:
    from trajgeo.lens.tuned import TunedLens

__all__ = ["logit_lens", "top_tokens", "top1_saturation_point", "prediction_depth", "sense_token_ids", "LensResult", "LENS_METRICS"]

LENS_METRICS = ("entropy", "kl_to_final", "final_top1_rank", "final_top1_prob", "sense_log_odds", "sense_prob")


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
        sets = []
        for word in pd.unique(traj.meta["word"]):
            try:
                table = sense_words(str(word))
            except (KeyError, ValueError, FileNotFoundError):
                continue  # no built-in sense words for this word: its examples get no sense rows
            try:
                ids = sense_token_ids(tok, table)
            except ValueError as e:  # e.g. a sense none of whose words this tokenizer knows
                warnings.warn(f"no sense read-out for word {word!r}: {e}", stacklevel=4)
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
                 normalize_final: bool, token_ids: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """Run the lens on every (example, point) and reduce each distribution to its metrics.

    Returns arrays of shape (n_examples, n_points): entropy, kl, rank, prob, top1;
    ``topk_ids``/``topk_prob`` (n_examples, n_points, top_k); ``set_logp`` (n_examples, n_points, n_sets)
    holding log P(set) for every sense-token set; ``token_logp`` (n_examples, n_points, len(token_ids))
    holding log P(token) for every token of ``token_ids``.
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
    out["token_logp"] = np.zeros((n, n_pts, len(token_ids)), np.float32)
    tok_ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=readout.device)
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
            if len(tok_ids):
                out["token_logp"][rows] = cpu(logp[..., tok_ids])
    return out


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
class LensResult(NamedTuple):
    """What :func:`logit_lens` returns with ``return_top_tokens=True`` (unpacks as ``metrics, top``)."""

    metrics: pd.DataFrame
    """The long-form metrics, as :func:`logit_lens` returns them by default."""
    top_tokens: pd.DataFrame
    """The top ``top_k`` tokens at every point, as :func:`top_tokens` returns them."""


@changed_signature(positional=("top_k", "sense_tokens", "normalize_final", "batch_size", "lens"), n_leading=2)
def logit_lens(
    model: Any,
    traj: Any,
    *,
    sense_tokens: Mapping[str, Any] | None = None,
    normalize_final: bool = True,
    batch_size: int | None = None,
    lens: "TunedLens | None" = None,
    return_top_tokens: bool = False,
    top_k: int = 5,
) -> pd.DataFrame | LensResult:
    """Logit-lens (or tuned-lens) metrics of every point of every target's trajectory.

    Long only by this docstring: the body chains the steps above (readout, sense sets, frames).

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
        The model the trajectories were extracted with (checked against ``traj.model_info``:
        another model raises ``ValueError``); it needs an LM head.
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
        Raw residual points; must include the last point (L), which defines the final distribution.
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
    return_top_tokens : bool
        Also return the lens's top ``top_k`` tokens at every point of every example, from the same
        pass over the vocabulary (what :func:`top_tokens` gives): the result is then a
        :class:`LensResult` ``(metrics, top_tokens)``.
    top_k : int
        Tokens per point in ``top_tokens`` (with ``return_top_tokens=True`` only).

    Returns
    -------
    DataFrame, or LensResult with ``return_top_tokens=True``
        Long form with columns ``example, point, word, sense, metric, to_sense, value`` (``word`` and
        ``sense`` when in meta). ``metric`` is one of ``entropy``, ``kl_to_final``,
        ``final_top1_rank``, ``final_top1_prob`` (every example and point), ``sense_prob`` (one row
        per sense set of the example's word, named in ``to_sense``; None on other rows) and
        ``sense_log_odds`` (examples whose ``sense`` has a token set). See the module docstring
        for definitions. The top tokens (``LensResult.top_tokens``) have columns ``example, point,
        rank, token, prob, token_id``.

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
    arrays = _lens_arrays(lm, traj, lens=lens, top_k=top_k if return_top_tokens else 0, sets=sets,
                          batch_size=batch_size, normalize_final=normalize_final)
    base = traj.to_frame({"entropy": arrays["entropy"], "kl_to_final": arrays["kl"],
                          "final_top1_rank": arrays["rank"], "final_top1_prob": arrays["prob"]})
    base["to_sense"] = None
    frames = [base]
    if sets:
        frames += _sense_frames(traj, sets, arrays["set_logp"])
    df = pd.concat(frames, ignore_index=True)
    cols = [c for c in ("example", "point", "word", "sense", "metric", "to_sense", "value") if c in df.columns]
    df = df[cols]
    if return_top_tokens:
        return LensResult(df, _top_frame(lm, traj, arrays))
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


@changed_signature(renamed={"k": "top_k"}, positional=("example", "top_k", "normalize_final", "lens"), n_leading=2)
def top_tokens(model: Any, traj: Any, *, example: int | None = None, top_k: int = 5, normalize_final: bool = True,
               lens: "TunedLens | None" = None, batch_size: int | None = None) -> pd.DataFrame:
    """The lens's top-k tokens at every point of one example (or all), decoded for display.

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
    example : int, optional
        The example's id (``meta["example"]``); None for every example.
    top_k : int
        Tokens per point (formerly ``k``).
    normalize_final : bool
        See :func:`logit_lens`.
    lens : TunedLens, optional
        Read through a fitted tuned lens.
    batch_size : int, optional
        See :func:`logit_lens`.

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
    arrays = _lens_arrays(lm, traj, lens=lens, top_k=top_k, sets=[], batch_size=batch_size,
                          normalize_final=normalize_final)
    return _top_frame(lm, traj, arrays)


@changed_signature(positional=("normalize_final", "batch_size", "lens"), n_leading=2)
def top1_saturation_point(model: Any, traj: Any, *, normalize_final: bool = True, batch_size: int | None = None,
                          lens: "TunedLens | None" = None) -> pd.DataFrame:
    """Per example, the first point from which the lens's top-1 token is the final top-1 for good.

    This is the logit-lens (or tuned-lens) saturation point of the top-1 prediction (as in Geva et
    al. 2022's "saturation event"), not Baldock et al. (2021)'s prediction depth, which is the
    first layer from which a k-nearest-neighbour probe on the training set's representations
    agrees with the final prediction. Formerly (wrongly) named ``prediction_depth``.

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
    traj : Trajectories or ndarray of shape (n_examples, n_points, d_model)
    normalize_final, batch_size, lens
        See :func:`logit_lens`.

    Returns
    -------
    DataFrame with columns ``example, word, sense, top1_saturation_point`` (``word``/``sense`` when
    in meta): the smallest point p such that the lens's top-1 token at p and at every later point
    is the final top-1 token. It is at most L (the last point agrees with itself).
    """
    lm, traj = _prepare(model, traj, lens)
    arrays = _lens_arrays(lm, traj, lens=lens, top_k=0, sets=[], batch_size=batch_size,
                          normalize_final=normalize_final)
    top1 = arrays["top1"]
    last = _final_column(traj, lm)
    agree = top1[:, : last + 1] == top1[:, last:last + 1]
    # "agrees here and at every later point" = a reversed cumulative AND
    settled = np.flip(np.logical_and.accumulate(np.flip(agree, 1), axis=1), 1)
    point = np.asarray(traj.points)[settled.argmax(1)]
    cols = [c for c in ("example", "word", "sense") if c in traj.meta.columns]
    df = traj.meta[cols].copy().reset_index(drop=True)
    df["top1_saturation_point"] = point
    return df


def prediction_depth(model: Any, traj: Any, *args: Any, **kwargs: Any) -> pd.DataFrame:
    """Deprecated alias of :func:`top1_saturation_point` (removed after 0.2).

    The name belongs to Baldock et al.'s k-NN prediction depth, which this is not. Returns the
    same frame with the column still named ``prediction_depth``.
    """
    warnings.warn("lens.prediction_depth is deprecated since trajgeo 0.2: it computes the logit-lens top-1 "
                  "saturation point, not Baldock et al.'s k-NN prediction depth; use "
                  "lens.top1_saturation_point (column 'top1_saturation_point')", DeprecationWarning, stacklevel=2)
    df = top1_saturation_point(model, traj, *args, **kwargs)  # options by position warn there
    return df.rename(columns={"top1_saturation_point": "prediction_depth"})
