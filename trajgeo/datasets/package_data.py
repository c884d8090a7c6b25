"""Package data: the built-in polysemy set, the sense words of the lens read-out, a plain corpus."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Sequence

import numpy as np
import pandas as pd

from trajgeo.datasets.validation import validate

__all__ = ["builtin", "builtin_words", "sense_words", "corpus"]


def _data_file(name: str):
    return resources.files("trajgeo").joinpath("data", name)


def _builtin_records(name: str) -> tuple[pd.DataFrame, list[str]]:
    """The objects of the packaged JSON-lines file ``trajgeo/data/<name>`` (``source="builtin"``) and each
    row's ``trajgeo/data/<name>:line`` for error messages."""
    f = _data_file(name)
    records, locations = [], []
    for lineno, line in enumerate(f.read_text(encoding="utf-8").split("\n"), start=1):
        if line.strip():
            records.append(json.loads(line))
            locations.append(f"trajgeo/data/{name}:{lineno}")
    df = pd.DataFrame.from_records(records)
    df["source"] = "builtin"
    return df, locations


@functools.lru_cache(maxsize=1)
def _builtin_frame() -> pd.DataFrame:
    df, locations = _builtin_records("polysemy.jsonl")
    return validate(df, locations=locations, require_sense=True)


def builtin_words() -> list[str]:
    """The words of the built-in polysemy set, sorted."""
    return sorted(_builtin_frame()["word"].unique())


def _word_list(words: str | Sequence[str] | None, known: list[str], what: str) -> list[str]:
    if words is None:
        return list(known)
    if isinstance(words, str):
        words = [w.strip() for w in words.split(",") if w.strip()]
    words = list(words)
    unknown = [w for w in words if w not in known]
    if unknown:
        raise ValueError(f"unknown {what} word(s) {', '.join(map(repr, unknown))}; "
                         f"known words: {', '.join(known)}")
    if not words:
        raise ValueError(f"no words given; known {what} words: {', '.join(known)}")
    return words


def builtin(words: str | Sequence[str] | None = None) -> pd.DataFrame:
    """The built-in polysemy set (written for trajgeo; shipped as package data).

    Parameters
    ----------
    words : str or sequence of str, optional
        A word, comma-separated words, or a list of words; default all (:func:`builtin_words`).

    Returns
    -------
    DataFrame
        One row per sentence, ids ``0..n-1`` in the selection: the contract columns plus ``cue``
        (the disambiguating word as it appears), ``cue_position`` and ``cue_distance`` (words
        strictly between cue and target, punctuation-only tokens not counted), ``source="builtin"``.
    """
    df = _builtin_frame()
    chosen = _word_list(words, builtin_words(), "built-in")
    out = df[df["word"].isin(chosen)].copy()
    # keep the order the words were asked for; sentences within a word keep file order
    out["_order"] = out["word"].map({w: i for i, w in enumerate(chosen)})
    out = out.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)
    out["example"] = np.arange(len(out), dtype=np.int64)
    return out


@functools.lru_cache(maxsize=1)
def _senses_json() -> dict[str, dict[str, list[str]]]:
    return json.loads(_data_file("senses.json").read_text(encoding="utf-8"))


def sense_words(word: str) -> dict[str, list[str]]:
    """Signal words per sense of a built-in word, for the logit-lens sense read-out.

    Words a language model would predict near each sense, e.g. for ``"bank"``:
    ``{"river": ["river", "water", ...], "finance": ["money", "loan", ...]}``.
    Multi-token words are the lens's business (it may use their first token).
    """
    table = _senses_json()
    if word not in table:
        raise ValueError(f"no sense words for {word!r}; known words: {', '.join(sorted(table))}")
    return {s: list(ws) for s, ws in table[word].items()}


@functools.lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    lines = _data_file("corpus.txt").read_text(encoding="utf-8").split("\n")
    return tuple(ln.strip() for ln in lines if ln.strip())


def corpus() -> list[str]:
    """The built-in plain-English corpus (one sentence per item), e.g. for training a tuned lens.

    Everyday, news, science and story sentences written for trajgeo; none is from the polysemy set.
    """
    return list(_corpus())
