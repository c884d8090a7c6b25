"""Alignment of examples' character spans onto the tokens a model is fed: which tokens make the target,
checked to decode back to it; causal texts cut after the target; long texts windowed around it.

Used by :func:`trajgeo.extract` (which re-exports :func:`align_targets` and :class:`AlignmentError`),
the minimal pairs and the interventions.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["align_targets", "AlignmentError"]


class AlignmentError(ValueError):
    """A target's characters do not map onto tokens that decode back to it."""


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
    ids_col = examples["example"].tolist()
    block = 1024  # tokenise in blocks: the encodings (offsets, masks) of a whole data set would dominate memory
    for i, (ex, cs, ce) in enumerate(zip(ids_col, examples["char_start"], examples["char_end"])):
        if i % block == 0:
            enc = tokenizer(texts[i:i + block], add_special_tokens=True, return_offsets_mapping=True,
                            return_special_tokens_mask=True, truncation=False)
        ids = list(enc["input_ids"][i % block])
        special = enc["special_tokens_mask"][i % block]
        pos = _target_positions(tokenizer, ex, texts[i], cs, ce, ids, enc["offset_mapping"][i % block], special,
                                strip_accents)
        target_ids = [ids[t] for t in pos]
        if causal and truncate:  # later tokens cannot change a causal model's states at the target
            ids = ids[: pos[-1] + 1]
            special = special[: pos[-1] + 1]
        windowed = max_length is not None and len(ids) > max_length
        if windowed:
            ids, pos = _window(ex, ids, special, pos, max_length, causal, truncate)
        out.append(_Aligned(np.asarray(ids, dtype=np.int32), pos, target_ids, windowed))
    return out, sum(x.windowed for x in out)


def _target_positions(tokenizer: Any, ex: Any, text: str, cs: int, ce: int, ids: list[int], offs: Sequence,
                      special: Sequence[int], strip_accents: bool) -> list[int]:
    """The contiguous token positions covering characters cs:ce, checked to decode back to the target."""
    pos = [t for t, ((a, b), sp) in enumerate(zip(offs, special)) if not sp and b > a and a < ce and b > cs]
    target = text[cs:ce]
    if not pos:
        raise AlignmentError(f"example {ex}: target {target!r} at characters {cs}:{ce} covers no token")
    if pos != list(range(pos[0], pos[-1] + 1)):
        raise AlignmentError(f"example {ex}: target {target!r} maps to non-contiguous tokens {pos}")
    decoded = tokenizer.decode([ids[t] for t in pos])
    if _norm_text(decoded, strip_accents) != _norm_text(target, strip_accents):
        covered = text[offs[pos[0]][0]:offs[pos[-1]][1]]
        raise AlignmentError(
            f"example {ex}: target {target!r} is covered by tokens that decode to {decoded!r} "
            f"(text {covered!r}); the target must be whole tokens, and the tokenizer's offsets must be right"
        )
    return pos


def _window(ex: Any, ids: list[int], special: Sequence[int], pos: list[int], max_length: int, causal: bool,
            truncate: bool) -> tuple[list[int], list[int]]:
    """Cut ids to max_length tokens around the target, keeping the leading and trailing special tokens.

    Causal models keep a window that ends at the target (or, untruncated, one centred on it);
    encoders one centred on it. Returns the new ids and the target's positions in them.
    """
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
    return new_ids, [p - start + n_pre for p in pos]
