"""The sense-word read-out read against its null: the same log-odds with shuffled sense-word sets.

"The lens reads the sense" rests on the log-odds of the correct sense's signal words over the other
senses' (``sense_log_odds`` of :func:`~trajgeo.lens.logit_lens`). Those log-odds can be positive for
reasons that have nothing to do with the sense: one sense's words are more frequent, its set is
larger, or the lens favours any word related to the *target word* whatever the sense. The null keeps
everything but the link between words and senses: the same tokens, dealt into sets of the same
sizes at random, give the log-odds a lens would show if its sense words were arbitrary.
:func:`sense_readout` reads the per-word mean log-odds at every point against that null, with the
family-wise threshold over points of :func:`trajgeo.stats.null_table`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from trajgeo.lens._readout import _prepare
from trajgeo.lens.logit import _lens_arrays, _sense_sets
from trajgeo.stats import NULL_COLUMNS, null_table

if TYPE_CHECKING:
    from trajgeo.lens.tuned import TunedLens

__all__ = ["sense_readout", "SHUFFLES"]

SHUFFLES = ("senses", "words")
_PERM_CHUNK = 64  # permutations scored at once: (chunk, examples, points, senses) float64


def _mean_log_odds(e: np.ndarray, member: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Mean over examples of log P(correct set) - log P(other sets), for each assignment of tokens to sets.

    Parameters
    ----------
    e : ndarray of shape (n, n_points, n_tokens)
        exp(log P(token) - shift), float64, shifted by each row's maximum (the shift cancels in the
        log-odds; it keeps the largest probabilities away from underflow).
    member : ndarray of shape (n_assignments, n_tokens, n_sets)
        1 where a token belongs to a set (each token in at most one set).
    correct : ndarray of shape (n, n_sets), bool
        Each example's own sense's set.

    Returns
    -------
    ndarray of shape (n_assignments, n_points)
    """
    out = np.empty((len(member), e.shape[1]))
    for k0 in range(0, len(member), _PERM_CHUNK):
        setp = np.einsum("npt,kts->knps", e, member[k0:k0 + _PERM_CHUNK], optimize=True)  # (k, n, P, S)
        own = np.einsum("knps,ns->knp", setp, correct.astype(np.float64))
        other = np.einsum("knps,ns->knp", setp, (~correct).astype(np.float64))  # summed, never own subtracted
        with np.errstate(divide="ignore"):
            odds = np.log(own) - np.log(other)  # the shift cancels
        out[k0:k0 + _PERM_CHUNK] = odds.mean(1)
    return out


def sense_readout(
    model: Any,
    traj: Any,
    *,
    sense_tokens: Mapping[str, Any] | None = None,
    n_permutations: int = 1000,
    shuffle: str = "senses",
    lens: "TunedLens | None" = None,
    normalize_final: bool = True,
    batch_size: int | None = None,
    random_state: int | None = 0,
) -> pd.DataFrame:
    """Per word and point, the mean sense log-odds of the lens, read against shuffled sense-word sets.

    The statistic is the mean over a word's examples of ``sense_log_odds`` (log P(own sense's
    tokens) - log P(other senses' tokens), as :func:`~trajgeo.lens.logit_lens` defines it). Its
    null: the word's sense-word tokens permuted across its senses (``shuffle="senses"``: the same
    tokens dealt into sets of the same sizes), or drawn from the tokens of every word's senses
    (``shuffle="words"``: also breaks the link to the target word), ``n_permutations`` times,
    seeded. The permutations only re-deal tokens, so the model runs once (no re-unembedding per
    permutation). A positive value above ``null_fwer`` says the lens favours the correct sense's
    words more than it favours arbitrary sets of the same words, at a family-wise 5% over points.

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
        The model the trajectories came from, with an LM head.
    traj : Trajectories
        With ``word`` (optional) and ``sense`` meta columns; must include the last point.
    sense_tokens : dict, optional
        As in :func:`~trajgeo.lens.logit_lens` (``{sense: [words]}`` or ``{word: {sense: [words]}}``;
        None: the built-in sense words of each word that has them).
    n_permutations : int
        Shuffles (0: the observed means only, no null columns). Cheap: only sums of token
        probabilities are recomputed.
    shuffle : {"senses", "words"}
        Permute the word's own sense tokens across its senses, or draw from all words' sense tokens.
    lens : TunedLens, optional
        Read through this fitted tuned lens.
    normalize_final, batch_size
        See :func:`~trajgeo.lens.logit_lens`.
    random_state : int or None
        Seeds the shuffles (each word from its own stream).

    Returns
    -------
    DataFrame with columns ``word, point, metric, value`` (``metric`` is ``"sense_log_odds"``) and,
    with ``n_permutations > 0``, ``null_mean, null_q95, null_fwer, p_value, p_fwer`` (see
    :func:`trajgeo.stats.null_table`).
    Words whose examples all come from one sense set, or with fewer than two sense sets, are left
    out with a warning. With several words, rows with ``word`` NaN hold the unweighted mean over
    words, read against the mean of the words' shuffles.

    Raises
    ------
    ValueError
        No sense-word sets (no ``sense_tokens`` and no built-in sense words for these words), or a
        bad ``shuffle`` / ``n_permutations``.
    KeyError
        No ``sense`` column, or an example's sense has no token set (naming the examples).
    """
    if shuffle not in SHUFFLES:
        raise ValueError(f"shuffle must be one of {SHUFFLES}, got {shuffle!r}")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) or n_permutations < 0:
        raise ValueError(f"n_permutations must be an int >= 0, got {n_permutations!r}")
    lm, traj = _prepare(model, traj, lens)
    meta = traj.meta
    if "sense" not in meta.columns:
        raise KeyError(f"sense_readout needs a 'sense' meta column; columns are {list(meta.columns)}")
    sets = _sense_sets(lm, traj, sense_tokens)
    if not sets:
        raise ValueError("no sense-word sets: pass sense_tokens (no built-in sense words for these words)")
    pool = np.unique(np.concatenate([np.asarray(ids, dtype=np.int64) for _, _, ids in sets]))
    arrays = _lens_arrays(lm, traj, lens=lens, top_k=0, sets=[], batch_size=batch_size,
                          normalize_final=normalize_final, token_ids=pool.tolist())
    lp = arrays["token_logp"].astype(np.float64)  # (n, P, T)
    words = meta["word"].to_numpy() if "word" in meta.columns else np.full(len(meta), None, dtype=object)
    senses = meta["sense"].to_numpy()

    # (word, its examples, its sets): per word where there is a word column (rule 7), even when the
    # sets were given once for all words
    keys = pd.unique(np.array([w for w, _, _ in sets], dtype=object))
    if len(keys) == 1 and keys[0] is None and "word" in meta.columns:
        keys = pd.unique(words)
        by_word = {w: [(s, ids) for _, s, ids in sets] for w in keys}
    else:
        by_word = {w: [(s, ids) for k, s, ids in sets if k is w or k == w] for w in keys}
    frames, nulls = [], []
    for w_i, key in enumerate(keys):
        word_sets = [(s, np.searchsorted(pool, ids)) for s, ids in by_word[key]]
        rows = np.ones(len(meta), bool) if key is None else (words == key)
        name = "all examples" if key is None else repr(key)
        set_names = np.array([s for s, _ in word_sets], dtype=object)
        correct = senses[rows][:, None] == set_names[None, :]  # (n_w, S)
        missing = ~correct.any(1)
        if missing.any():
            bad = meta["example"].to_numpy()[rows][missing]
            raise KeyError(f"examples {bad[:5].tolist()}{' ...' if len(bad) > 5 else ''} have senses "
                           f"{sorted(set(senses[rows][missing].astype(str)))} with no sense-token set (sets of "
                           f"{name}: {sorted(set_names.astype(str))}); name the senses as in meta['sense']")
        if len(word_sets) < 2 or correct.any(0).sum() < 2:
            warnings.warn(f"sense_readout: {name} has {len(word_sets)} sense set(s) and examples of "
                          f"{int(correct.any(0).sum())} of them; the read-out needs two: left out", stacklevel=2)
            continue
        tokens = np.concatenate([t for _, t in word_sets])  # indices into pool
        # the candidates the shuffles deal from: the word's own tokens, or every word's
        cand = tokens if shuffle == "senses" else np.arange(len(pool))
        set_of = np.repeat(np.arange(len(word_sets)), [len(t) for _, t in word_sets])

        def members(assigned: np.ndarray) -> np.ndarray:
            """(k, n_candidates, S) membership from (k, n_tokens) candidate indices dealt in set order."""
            m = np.zeros((len(assigned), len(cand), len(word_sets)))
            m[np.arange(len(assigned))[:, None], assigned, set_of[None, :]] = 1.0
            return m

        x = lp[rows][..., cand]
        e = np.exp(x - x.max(-1, keepdims=True))
        real = np.arange(len(tokens)) if shuffle == "senses" else tokens
        observed = _mean_log_odds(e, members(real[None]), correct)[0]
        if n_permutations == 0:
            frames.append(pd.DataFrame({"word": key, "point": traj.points, "value": observed}))
            continue
        rng = np.random.default_rng([0 if random_state is None else random_state, w_i])
        dealt = np.stack([rng.permutation(len(cand))[:len(tokens)] for _ in range(n_permutations)])
        null = _mean_log_odds(e, members(dealt), correct)
        table = null_table(observed, null, points=traj.points)
        table.insert(0, "word", key)
        frames.append(table)
        nulls.append((observed, null))
    if not frames:
        raise ValueError("no word has examples of two senses with sense-word sets: nothing to read out")
    df = pd.concat(frames, ignore_index=True)
    if n_permutations and len(nulls) > 1:
        # the pooled curve: the unweighted mean over words, against the mean of the words' k-th shuffles
        pooled = null_table(np.mean([o for o, _ in nulls], 0), np.mean([n for _, n in nulls], 0), points=traj.points)
        pooled.insert(0, "word", np.nan)
        df = pd.concat([df, pooled], ignore_index=True)
    elif not n_permutations and len(frames) > 1:
        pooled = df.groupby("point", sort=True)["value"].mean().reset_index().assign(word=np.nan)
        df = pd.concat([df, pooled], ignore_index=True)
    df["metric"] = "sense_log_odds"
    cols = ["word", "point", "metric", "value"]
    if n_permutations:
        cols += list(NULL_COLUMNS)
    if "word" not in meta.columns:
        df = df.drop(columns="word")
        cols.remove("word")
    return df[cols].reset_index(drop=True)
