"""Minimal pairs: a clean text and its counterfactual, same target, only the cue changed.

A **pair** is one row: ``text`` and ``counterfactual`` hold the same ``target`` word, and differ only
in a cue word (``cue`` in the text, ``counterfactual_cue`` in the counterfactual) that sets its sense
(``sense``, ``counterfactual_sense``). ``kind="flip"`` pairs change the sense; ``kind="same"`` pairs
swap the cue for another word of the same sense, the null of every causal effect read from pairs.

==========================  ====================================================================
column                      meaning
==========================  ====================================================================
``pair``                    int id, stable (the built-in set keeps its ids in every selection)
``word``                    the target's lemma (default: the target, lower-cased)
``text``                    the clean text
``counterfactual``          the text with the cue swapped
``target``                  the target as it appears in both texts
``sense``                   the target's sense in ``text``
``counterfactual_sense``    its sense in ``counterfactual`` (for ``kind="same"`` pairs it may be
                            left out: it is ``sense``)
``cue``                     the word(s) of ``text`` that differ (filled in from the texts if absent)
``counterfactual_cue``      the word(s) of ``counterfactual`` that differ (likewise)
``kind``                    ``"flip"`` (default) or ``"same"``
``cue_position``            ``"before"`` or ``"after"`` the target (found from the texts; checked
                            when given). Causal models read only the prefix: their pairs need
                            ``"before"``.
``char_start, char_end``    the target's characters in ``text``
``cf_char_start,            the target's characters in ``counterfactual`` (they differ from the
cf_char_end``               text's when a cue before the target changes length)
``group``                   pairs that must not be split across folds (built-in: one sentence
                            frame; default: the text)
``source``                  where the pair came from (``"builtin"``, a path)
==========================  ====================================================================

The target is given as for examples (:mod:`trajgeo.datasets`): a char span (``char_start``,
``char_end`` or ``span``), a ``target`` string plus an optional ``occurrence``, or a ``word_index``;
the counterfactual's span is ``cf_char_start``/``cf_char_end`` when given, else the same target string
(and occurrence) found in the counterfactual.

:func:`align_pairs` checks a pair against a tokenizer: same number of tokens, the target at the
same positions, and which positions differ.
"""

from __future__ import annotations

import functools
import os
import re
import string
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from trajgeo.datasets.package_data import _builtin_records, _word_list
from trajgeo.datasets.readers import _jsonl_frame
from trajgeo.datasets.validation import (
    CUE_POSITIONS,
    _TOKEN,
    _int_column,
    _is_missing,
    _raise_rows,
    validate,
)

__all__ = ["PAIR_COLUMNS", "ALIGN_COLUMNS", "PAIR_KINDS", "minimal_pairs", "read_pairs", "align_pairs"]

#: Columns of a pair frame, in order (any other columns of a user's file follow them).
PAIR_COLUMNS = (
    "pair", "word", "text", "counterfactual", "target", "sense", "counterfactual_sense", "cue",
    "counterfactual_cue", "kind", "cue_position", "char_start", "char_end", "cf_char_start",
    "cf_char_end", "group", "source",
)
#: Columns of :func:`align_pairs`' frame.
ALIGN_COLUMNS = ("pair", "aligned", "n_tokens", "target_start", "target_end", "cue_positions", "reason")
PAIR_KINDS = ("flip", "same")


# ================================================================ validation
def _pair_ids(df: pd.DataFrame, locations: Sequence[str] | None) -> pd.Series:
    if "pair" not in df.columns:
        return pd.Series(np.arange(len(df), dtype=np.int64))
    ids = _int_column(df, "pair", locations)
    dup = ids.duplicated(keep=False).to_numpy()
    _raise_rows(df, dup, lambda i: f"pair id {ids.iat[i]} is not unique", locations)
    return ids


def _word_diff(text: str, other: str) -> tuple[int, int, str]:
    """The characters ``[a, b)`` of ``text`` whose whitespace words differ from ``other``'s, and those
    words of ``other`` (common leading and trailing words removed)."""
    t = list(_TOKEN.finditer(text))
    o = list(_TOKEN.finditer(other))
    k = 0
    while k < min(len(t), len(o)) and t[k].group() == o[k].group():
        k += 1
    m = 0
    while m < min(len(t), len(o)) - k and t[-1 - m].group() == o[-1 - m].group():
        m += 1
    mid_t, mid_o = t[k:len(t) - m], o[k:len(o) - m]
    if not mid_t:  # a word only inserted in `other`: an empty run where it went
        a = t[k - 1].end() if k else 0
        return a, a, " ".join(w.group() for w in mid_o)
    return mid_t[0].start(), mid_t[-1].end(), " ".join(w.group() for w in mid_o)


def _cue_word(run: str, other: str) -> str:
    """The cue in ``run`` (the differing words of one text; ``other``: the other text's): without an
    affix both share that starts or ends at a non-word character ("tree's" / "car's" -> "tree"), and
    without surrounding punctuation."""
    n = len(os.path.commonprefix([run[::-1], other[::-1]]))
    suffix = run[len(run) - n:]
    cut = re.search(r"\W", suffix)
    if cut:
        run = run[:len(run) - n + cut.start()]
    n = len(os.path.commonprefix([run, other]))
    marks = [m.end() for m in re.finditer(r"\W", run[:n])]
    if marks:
        run = run[marks[-1]:]
    return run.strip(string.punctuation + " ")


def _holds_word(text: str, a: int, b: int, word: str) -> bool:
    """Whether ``word`` occurs as a whole word inside ``text[a:b]``."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text[a:b]) is not None


def _validate_pairs(df: pd.DataFrame | Iterable[Mapping[str, Any]],
                    locations: Sequence[str] | None = None) -> pd.DataFrame:
    """Check pairs against the contract of this module; return the completed frame (:data:`PAIR_COLUMNS`
    first). Errors name the file line (``locations``), the pair, and what is wrong."""
    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame(list(df))
    df = df.reset_index(drop=True)
    if len(df) == 0:
        raise ValueError("no pairs")
    if locations is not None and len(locations) != len(df):
        raise ValueError(f"got {len(locations)} locations for {len(df)} pairs")
    for col in ("text", "counterfactual", "sense"):
        if col not in df.columns:
            raise KeyError(f"pairs lack the column {col!r}; columns are {list(df.columns)}")
    if ("cf_char_start" in df.columns) != ("cf_char_end" in df.columns):
        have, lack = (("cf_char_start", "cf_char_end") if "cf_char_start" in df.columns
                      else ("cf_char_end", "cf_char_start"))
        raise KeyError(f"pairs have {have} but no {lack} column; give both, or neither (the target is "
                       "then found in the counterfactual)")
    ids = _pair_ids(df, locations)
    # every message names the file line (when known) and the pair; validate adds the row
    where = [f"{locations[i]}, pair {p}" if locations is not None else f"pair {p}"
             for i, p in enumerate(ids.tolist())]
    df = df.drop(columns=["example"], errors="ignore").assign(pair=ids)

    # the clean side is an example set: the examples' contract and its named checks
    clean = validate(df.assign(example=ids), locations=where, require_sense=True).drop(columns="example")
    texts, cfs = clean["text"].tolist(), clean["counterfactual"].tolist()
    bad_cf = np.array([not isinstance(c, str) or not c.strip() for c in cfs])
    _raise_rows(clean, bad_cf, lambda i: f"counterfactual is empty or not a string ({cfs[i]!r})", where)

    # the counterfactual side: its own span, else the clean target string (and occurrence) found in it
    side = {"example": ids, "text": clean["counterfactual"], "target": clean["target"]}
    if "cf_char_start" in df.columns:
        side.update(char_start=df["cf_char_start"], char_end=df["cf_char_end"])
    if "occurrence" in df.columns:
        side["occurrence"] = df["occurrence"]
    cf_where = [f"{w}, counterfactual" for w in where]
    cf = validate(pd.DataFrame(side), locations=cf_where)
    moved = np.array([a != b for a, b in zip(cf["target"], clean["target"])])
    _raise_rows(clean, moved, lambda i: f"the counterfactual's target {cf['target'].iat[i]!r} differs from "
                                        f"the text's {clean['target'].iat[i]!r}", where)
    same_text = np.array([a == b for a, b in zip(texts, cfs)])
    _raise_rows(clean, same_text, lambda i: "text and counterfactual are identical", where)

    out = clean
    out["cf_char_start"] = cf["char_start"].to_numpy()
    out["cf_char_end"] = cf["char_end"].to_numpy()
    _check_kinds_and_senses(out, where)
    _fill_cues(out, where)
    first = [c for c in PAIR_COLUMNS if c in out.columns]
    return out[first + [c for c in out.columns if c not in first]].reset_index(drop=True)


def _check_kinds_and_senses(out: pd.DataFrame, where: Sequence[str]) -> None:
    """``kind`` in :data:`PAIR_KINDS` (default ``"flip"``); flips change the sense, nulls keep it."""
    kinds = out["kind"] if "kind" in out.columns else pd.Series(["flip"] * len(out))
    kinds = pd.Series(["flip" if _is_missing(k) else k for k in kinds])
    bad = ~kinds.isin(PAIR_KINDS).to_numpy()
    _raise_rows(out, bad, lambda i: f"kind must be 'flip' or 'same', got {kinds.iat[i]!r}", where)
    out["kind"] = kinds.to_numpy()
    senses = out["sense"].tolist()
    cf_senses = (out["counterfactual_sense"].tolist() if "counterfactual_sense" in out.columns
                 else [None] * len(out))
    missing = np.array([_is_missing(c) or not str(c).strip() for c in cf_senses])
    is_flip = (kinds == "flip").to_numpy()
    _raise_rows(out, missing & is_flip,
                lambda i: "counterfactual_sense is missing (a 'flip' pair needs it; a 'same' pair may "
                          "leave it out)", where)
    cf_senses = [s if m else str(c) for s, c, m in zip(senses, cf_senses, missing)]
    out["counterfactual_sense"] = cf_senses
    equal = np.array([a == b for a, b in zip(senses, cf_senses)])
    _raise_rows(out, is_flip & equal,
                lambda i: f"kind 'flip' but sense and counterfactual_sense are both {senses[i]!r} "
                          "(a pair that keeps the sense is kind 'same')", where)
    _raise_rows(out, ~is_flip & ~equal,
                lambda i: f"kind 'same' but the sense changes ({senses[i]!r} -> {cf_senses[i]!r})", where)


def _fill_cues(out: pd.DataFrame, where: Sequence[str]) -> None:
    """``cue``/``counterfactual_cue`` from the words that differ (checked to lie in them when given);
    ``cue_position`` from where they are (checked when given)."""
    texts, cfs = out["text"].tolist(), out["counterfactual"].tolist()
    cs, ce = out["char_start"].to_numpy(), out["char_end"].to_numpy()
    fs, fe = out["cf_char_start"].to_numpy(), out["cf_char_end"].to_numpy()
    runs = [_word_diff(t, c) for t, c in zip(texts, cfs)]
    cf_runs = [_word_diff(c, t) for t, c in zip(texts, cfs)]
    no_words = np.array([a == b and not w for a, b, w in runs])
    _raise_rows(out, no_words, lambda i: "text and counterfactual differ only in whitespace", where)

    def position(a: int, b: int, s: int, e: int) -> str | None:
        return "before" if b <= s else "after" if a >= e else None

    found = [position(a, b, s, e) for (a, b, _), s, e in zip(runs, cs, ce)]
    cf_found = [position(a, b, s, e) for (a, b, _), s, e in zip(cf_runs, fs, fe)]
    at_target = np.array([p is None or q is None or p != q for p, q in zip(found, cf_found)])
    _raise_rows(out, at_target,
                lambda i: f"the words that differ ({texts[i][runs[i][0]:runs[i][1]]!r} / "
                          f"{runs[i][2]!r}) are not all on one side of the target {out['target'].iat[i]!r}",
                where)
    if "cue_position" in out.columns:
        given = out["cue_position"].tolist()
        bad = np.array([not _is_missing(g) and g not in CUE_POSITIONS for g in given])
        _raise_rows(out, bad, lambda i: f"cue_position must be 'before' or 'after', got {given[i]!r}", where)
        wrong = np.array([not _is_missing(g) and g != f for g, f in zip(given, found)])
        _raise_rows(out, wrong, lambda i: f"cue_position is {given[i]!r}, but the texts differ "
                                          f"{found[i]} the target", where)
    out["cue_position"] = found

    for col, side, side_runs, name in (("cue", texts, runs, "text"),
                                       ("counterfactual_cue", cfs, cf_runs, "counterfactual")):
        derived = [_cue_word(s[a:b], o) for s, (a, b, o) in zip(side, side_runs)]
        if col not in out.columns:
            out[col] = derived
            continue
        given = out[col].tolist()
        outside = np.array([not _is_missing(g) and not _holds_word(s, a, b, str(g))
                            for g, s, (a, b, _) in zip(given, side, side_runs)])
        _raise_rows(out, outside,
                    lambda i: f"{col} {given[i]!r} is not among the words of the {name} that differ "
                              f"({derived[i]!r})", where)
        out[col] = [d if _is_missing(g) else str(g) for g, d in zip(given, derived)]


# ================================================================ built-in set and reader
@functools.lru_cache(maxsize=1)
def _builtin_pairs() -> pd.DataFrame:
    df, locations = _builtin_records("pairs.jsonl")
    return _validate_pairs(df, locations)


def _choice(value: str | None, allowed: Sequence[str], name: str) -> str | None:
    if value is not None and value not in allowed:
        raise ValueError(f"{name} must be None or one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def minimal_pairs(words: str | Sequence[str] | None = None, *, kind: str | None = None,
                  cue_position: str | None = None) -> pd.DataFrame:
    """The built-in minimal pairs (written for trajgeo; shipped as package data).

    For every built-in word (:func:`~trajgeo.datasets.builtin_words`), natural sentences in which
    one cue word is swapped: ``kind="flip"`` pairs flip the target's sense ("They walked to the
    river bank" / "They walked to the savings bank"), in both directions between its senses;
    ``kind="same"`` pairs swap the cue for another word of the same sense, the null. Most cues
    come before the target (``cue_position="before"``, what a causal model can read); a smaller
    set has the cue after it (for encoders).

    Every cue is one token with its leading space, so that every pair tokenises to the same
    length with the target at the same positions and differs in exactly the cue's token, on each
    shipped tokenizer (SmolLM2, MiniLM, Gemma 3); the tests check this. On another tokenizer
    check with :func:`align_pairs`.

    Parameters
    ----------
    words : str or sequence of str, optional
        A word, comma-separated words, or a list of words; default all.
    kind : {"flip", "same"}, optional
        Only pairs of this kind; default both.
    cue_position : {"before", "after"}, optional
        Only pairs whose cue is on this side of the target; default both.

    Returns
    -------
    DataFrame
        One row per pair, the columns of :data:`PAIR_COLUMNS` (see the module docstring);
        ``pair`` ids are those of the whole set in every selection, ``source="builtin"``.
    """
    df = _builtin_pairs()
    chosen = _word_list(words, sorted(df["word"].unique()), "minimal-pair")
    keep = df["word"].isin(chosen).to_numpy().copy()
    if _choice(kind, PAIR_KINDS, "kind") is not None:
        keep &= (df["kind"] == kind).to_numpy()
    if _choice(cue_position, CUE_POSITIONS, "cue_position") is not None:
        keep &= (df["cue_position"] == cue_position).to_numpy()
    out = df[keep].copy()
    # the words in the order asked for; pairs within a word keep file order
    out["_order"] = out["word"].map({w: i for i, w in enumerate(chosen)})
    return out.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def read_pairs(path: str | Path) -> pd.DataFrame:
    """Minimal pairs from a JSON-lines file (one object per line; blank lines are skipped).

    Each object needs ``text``, ``counterfactual``, ``sense``, a target (see the module docstring)
    and, for a flip, ``counterfactual_sense``; ``pair`` (default ``0..n-1``), ``kind`` (default
    ``"flip"``), ``word``, ``cue``, ``counterfactual_cue``, ``cue_position`` and ``group`` are
    optional. Other keys are kept as columns.

    Returns
    -------
    DataFrame
        One row per pair, the columns of :data:`PAIR_COLUMNS` first; ``source`` is the path unless
        the file has its own.

    Raises
    ------
    KeyError
        A required column is missing.
    ValueError
        Naming ``path:line``, the pair and what is wrong: not JSON, a target missing from one of the
        texts, identical texts, a flip that keeps the sense, a cue that is not what differs, ...
    """
    df, locations = _jsonl_frame(path, what="pairs")
    return _validate_pairs(df, locations)


# ================================================================ alignment on a tokenizer
def align_pairs(tokenizer: Any, pairs: pd.DataFrame, *, add_special_tokens: bool = True) -> pd.DataFrame:
    """Check each pair against a tokenizer: equal lengths, the target at the same tokens, what differs.

    A pair is **aligned** when both texts have the same number of tokens, the target covers the
    same token positions in both (located through the tokenizer's character offsets, and checked
    to decode back to the target), the target's own tokens are equal, and at least one token
    differs. Activation patching needs aligned pairs: position ``i`` of one run is patched into
    position ``i`` of the other.

    Parameters
    ----------
    tokenizer : transformers fast tokenizer (or a ``LoadedModel``, whose tokenizer is used)
        It must give character offsets.
    pairs : DataFrame
        Pairs (see the module docstring), e.g. from :func:`minimal_pairs` or :func:`read_pairs`;
        checked as :func:`read_pairs` checks a file.
    add_special_tokens : bool, default True
        Tokenise as the model is run (BOS, CLS/SEP), so that positions are the model's.

    Returns
    -------
    DataFrame
        One row per pair, in the order of ``pairs``, columns :data:`ALIGN_COLUMNS`: ``pair``,
        ``aligned`` (bool), ``n_tokens`` (the text's), ``target_start``, ``target_end`` (the
        text's target tokens, half-open; the same in the counterfactual when aligned; ``<NA>`` when
        the target is not whole tokens), ``cue_positions`` (tuple of the positions whose ids differ;
        empty when not aligned) and ``reason`` (``""`` when aligned, else what is wrong:
        ``"lengths differ (n vs m tokens)"`` and/or ``"target moved (tokens a:b in the text, c:d in
        the counterfactual)"`` (a cue before the target that tokenises longer gives both),
        ``"target tokens differ ..."``, ``"no difference ..."``, or the text (``"text: ..."``) or
        counterfactual (``"counterfactual: ..."``) whose target is not whole tokens).
    """
    from trajgeo.extract import AlignmentError, _target_positions  # extract imports datasets

    tok = getattr(tokenizer, "tokenizer", tokenizer)
    if not getattr(tok, "is_fast", False):
        raise ValueError("align_pairs needs a fast tokenizer: the target is located by character offsets")
    pairs = _validate_pairs(pairs)
    strip_accents = bool(getattr(tok, "do_lower_case", False)) or "uncased" in str(
        getattr(tok, "name_or_path", ""))

    def encode(texts: list[str]) -> Any:
        return tok(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                   return_special_tokens_mask=True, truncation=False)

    enc_t, enc_c = encode(pairs["text"].tolist()), encode(pairs["counterfactual"].tolist())
    rows = []
    for i, p in enumerate(pairs["pair"].tolist()):
        ids_t, ids_c = list(enc_t["input_ids"][i]), list(enc_c["input_ids"][i])
        spans = []
        for side, enc, ids, (s, e), text in (
                ("text", enc_t, ids_t, (pairs["char_start"].iat[i], pairs["char_end"].iat[i]),
                 pairs["text"].iat[i]),
                ("counterfactual", enc_c, ids_c, (pairs["cf_char_start"].iat[i], pairs["cf_char_end"].iat[i]),
                 pairs["counterfactual"].iat[i])):
            try:
                pos = _target_positions(tok, p, text, int(s), int(e), ids, enc["offset_mapping"][i],
                                        enc["special_tokens_mask"][i], strip_accents)
                spans.append((pos[0], pos[-1] + 1))
            except AlignmentError as err:
                spans.append(f"{side}: {str(err).split(': ', 1)[-1]}")
        row = {"pair": p, "aligned": False, "n_tokens": len(ids_t), "target_start": pd.NA,
               "target_end": pd.NA, "cue_positions": (), "reason": ""}
        if isinstance(spans[0], tuple):
            row["target_start"], row["target_end"] = spans[0]
        bad_target = [s for s in spans if isinstance(s, str)]
        if bad_target:
            row["reason"] = "; ".join(bad_target)
        elif len(ids_t) != len(ids_c) or spans[0] != spans[1]:
            reasons = []
            if len(ids_t) != len(ids_c):
                reasons.append(f"lengths differ ({len(ids_t)} vs {len(ids_c)} tokens)")
            if spans[0] != spans[1]:
                reasons.append(f"target moved (tokens {spans[0][0]}:{spans[0][1]} in the text, "
                               f"{spans[1][0]}:{spans[1][1]} in the counterfactual)")
            row["reason"] = "; ".join(reasons)
        else:
            a, b = spans[0]
            diff = tuple(int(k) for k in np.flatnonzero(np.asarray(ids_t) != np.asarray(ids_c)))
            if not diff:
                row["reason"] = "no difference (both texts give the same tokens)"
            elif any(a <= k < b for k in diff):
                row["reason"] = f"target tokens differ (positions {[k for k in diff if a <= k < b]})"
            else:
                row.update(aligned=True, cue_positions=diff)
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(ALIGN_COLUMNS))
    out["pair"] = out["pair"].astype(np.int64)
    out["aligned"] = out["aligned"].astype(bool)
    out["n_tokens"] = out["n_tokens"].astype(np.int64)
    for c in ("target_start", "target_end"):
        out[c] = out[c].astype("Int64")
    return out
