"""What every sense analysis shares: per-example word and sense keys, the reference point, the
normaliser of a comparison, the margin rule, the suffix rule, and the meta columns of result frames."""

from __future__ import annotations

from typing import Any

import warnings

import numpy as np
import pandas as pd

from trajgeo.normalization import PointNormalizer
from trajgeo.trajectories import Trajectories

DIRECTIONS = ("prototype", "lda", "probe")

# A word's vectors at a point are a tie when their within-word variance (trace of the covariance) is at
# most this share of their mean squared norm: the same vector up to ~1e-4 of its length (point 0 is an
# exact tie: every context of a word shares the context-free embedding).
TIE_RTOL = 1e-8


def reference_position(traj: Trajectories, reference: int | str) -> int | None:
    """Position along axis 1 of the reference point; ``None`` for ``"same"``.

    Raises
    ------
    ValueError
        For anything but ``"last"``, ``"same"`` or a point index these trajectories hold.
    """
    if isinstance(reference, str):
        if reference == "last":
            return traj.n_points - 1
        if reference == "same":
            return None
        raise ValueError(f"reference must be 'last', 'same' or a point index, got {reference!r}")
    if isinstance(reference, (bool, np.bool_)) or not isinstance(reference, (int, np.integer)):
        raise ValueError(f"reference must be 'last', 'same' or a point index, got {reference!r}")
    hits = np.flatnonzero(traj.points == int(reference))
    if not len(hits):
        raise ValueError(f"reference point {reference} is not in these trajectories (points {list(traj.points)})")
    return int(hits[0])


def normalizer_for(method: str | None, ref_pos: int | None) -> PointNormalizer:
    """The normaliser of a comparison: per-point statistics, except ``"whiten"`` with a fixed
    reference, which fits one whitening at the reference point and applies it at every point
    (per-point whitenings would rotate each point into its own basis)."""
    shared = ref_pos if (ref_pos is not None and method == "whiten") else None
    return PointNormalizer(method, shared_at=shared)


def keys(traj: Trajectories, labels: Any, word: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-example word and sense keys, each of shape (n_examples,), and whether there is a word.

    ``labels`` and ``word`` are ``meta`` column names or per-example arrays. ``word=None``, or the
    default ``"word"`` absent from ``meta``, makes all examples one word.

    Raises
    ------
    KeyError
        For a missing column other than the default word column (naming the columns there are).
    ValueError
        For missing values (naming the examples) or arrays of the wrong length.
    """
    senses = traj.labels(labels)
    ids = traj.meta["example"].to_numpy()
    bad = pd.isna(senses)
    if bad.any():
        raise ValueError(f"sense labels are missing for examples {ids[bad][:10].tolist()}")
    if word is None or (isinstance(word, str) and word == "word" and "word" not in traj.meta.columns):
        return np.zeros(len(senses), dtype=object), senses, False
    if isinstance(word, str) and word not in traj.meta.columns:
        raise KeyError(f"meta has no column {word!r} to group senses by; columns are {list(traj.meta.columns)}")
    words = traj.labels(word)
    if pd.isna(words).any():
        raise ValueError(f"{word if isinstance(word, str) else 'word'!r} is missing for examples "
                         f"{ids[pd.isna(words)][:10].tolist()}")
    return words, senses, True


def fixed_reference(reference: Any, what: str) -> None:
    """Raise unless ``reference`` is a fixed point (directions live at one point)."""
    if isinstance(reference, str) and reference == "same":
        raise ValueError(
            f"{what} needs one sense direction per example: reference must be 'last' or an int, not 'same'"
        )


def suffix_onset(ok: np.ndarray, points: np.ndarray) -> np.ndarray:
    """First point from which ``ok`` holds through the last point; NaN if it does not hold at the end.

    ``ok`` has shape (n_examples, n_points); returns float original point indices, shape (n_examples,).
    """
    holds_after = np.flip(np.logical_and.accumulate(np.flip(ok, 1), axis=1), 1)
    first = holds_after.argmax(1)
    return np.where(holds_after[:, -1], points[first].astype(float), np.nan)


def local_index(gk: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each ``group`` in the sorted word groups ``gk``, and whether it is there at all."""
    local = np.minimum(np.searchsorted(gk, group), len(gk) - 1)
    return local, gk[local] == group


def margin_of(cos: np.ndarray, own: np.ndarray, same_word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Margin and nearest-prototype correctness, each (n, P), from cosines (n, P, K).

    ``own`` (n,) is each example's own group as a position along K (-1 if unseen); ``same_word``
    (n, K) masks the groups of its word. The margin is the cosine to the own group minus the largest
    cosine to another group of the word; correct means margin > 0 (a tie is not right).
    """
    n, p, K = cos.shape
    has_own = own >= 0
    own_cos = np.where(has_own[:, None], cos[np.arange(n), :, np.maximum(own, 0)], np.nan)
    other = same_word & (np.arange(K)[None] != own[:, None])
    masked = np.where(other[:, None, :], cos, -np.inf)
    masked = np.where(np.isnan(masked), -np.inf, masked)
    best_other = masked.max(-1)
    best_other = np.where(np.isinf(best_other), np.nan, best_other)
    margin = own_cos - best_other
    with np.errstate(invalid="ignore"):
        correct = margin > 0  # NaN (unseen sense, one-sense word) and ties are not right
    return margin, correct


def meta_cols(traj: Trajectories, idx: np.ndarray, fitted: Any, y: Any = None) -> dict[str, np.ndarray]:
    """``example`` (and ``word`` when the fit had one) and ``sense`` of the examples at ``idx``."""
    words, senses, _ = keys(traj, fitted.labels if y is None else y, fitted.word if fitted.has_word_ else None)
    cols = {"example": traj.meta["example"].to_numpy()[idx]}
    if fitted.has_word_:
        cols["word"] = words[idx]
    cols["sense"] = senses[idx]
    return cols


def frame_meta(traj: Trajectories, fitted: Any) -> pd.DataFrame:
    """:func:`meta_cols` of every example, as a frame."""
    return pd.DataFrame(meta_cols(traj, np.arange(traj.n_examples), fitted))


def one_sense_words(words: np.ndarray, senses: np.ndarray) -> list[Any]:
    """The words (in order of first appearance) whose examples carry a single sense."""
    n = pd.DataFrame({"w": words, "s": senses}).groupby("w", sort=False)["s"].nunique()
    return n.index[n.to_numpy() < 2].tolist()


def warn_one_sense(traj: Trajectories, labels: Any, word: Any, what: str) -> list[Any]:
    """Warn once, naming them, about the words with one sense (nothing to compare: ``what`` skips
    them); return them."""
    words, senses, has_word = keys(traj, labels, word)
    skipped = one_sense_words(words, senses)
    if skipped:
        names = ", ".join(repr(w) for w in skipped[:20]) + (" ..." if len(skipped) > 20 else "")
        subject = (f"{len(skipped)} word(s) have a single sense ({names})" if has_word
                   else "the data have a single sense")
        warnings.warn(f"{what}: {subject}: nothing to compare, skipped", UserWarning, stacklevel=4)
    return skipped
