"""Validation of example sets: every example checked against the contract of :mod:`trajgeo.datasets`.

:func:`validate` runs one named check per rule of the contract, in the order the contract lists
the columns (so the first problem found is the one reported); every check names the example, row
(and file line) it rejects.
"""

from __future__ import annotations

import math
import numbers
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["COLUMNS", "CUE_POSITIONS", "validate"]

#: Contract columns, in the order readers return them (optional ones only when present).
COLUMNS = (
    "example", "text", "char_start", "char_end", "target", "word", "sense", "group",
    "cue_position", "cue_distance", "split", "source", "sense_id",
)
CUE_POSITIONS = ("before", "after")
_MAX_NAMED = 3  # rows named in one error message before "... and N more"
_TOKEN = re.compile(r"\S+")
# Scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Khmer, Myanmar, Tibetan): there
# every character boundary is a word boundary, so a target is found as a plain substring.
_NOSPACE = ("\u0e00-\u0eff"  # Thai, Lao
            "\u0f00-\u0fff"  # Tibetan
            "\u1000-\u109f"  # Myanmar
            "\u1780-\u17ff"  # Khmer
            "\u3005\u3006\u3040-\u30ff\u31f0-\u31ff"  # ideographic iteration marks, kana
            "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
            "\uff66-\uff9f"  # half-width katakana
            "\U00020000-\U0003134f")  # CJK ideograph extensions B-H
_NOSPACE_CHAR = re.compile(f"[{_NOSPACE}]")
_PACKAGE = str(Path(__file__).resolve().parents[1])

Locations = Sequence[str] | None
_NO_EXAMPLES = ("no examples: the examples are empty (an empty list, frame or selection); give at least one "
                "example with a text and a target (see the Data format section of the README)")


# ================================================================ helpers
def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return v is pd.NA or v is pd.NaT


def _where(df: pd.DataFrame, i: int, locations: Sequence[str] | None) -> str:
    """Human-readable location of row ``i``: file line (when known), example id and row."""
    parts = []
    if locations is not None:
        parts.append(str(locations[i]))
    if "example" in df.columns and not _is_missing(df["example"].iat[i]):
        parts.append(f"example {df['example'].iat[i]}")
    parts.append(f"row {i}")
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def _warn(message: str) -> None:
    """A UserWarning attributed to the first caller outside trajgeo (readers and extract call validate)."""
    import sys

    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the caller of _warn
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _named_rows(df: pd.DataFrame, rows: Sequence[int], say: Callable[[int], str],
                locations: Sequence[str] | None) -> str:
    """``"<where>: <say(i)>; ..."`` for the first few rows, then ``"... and N more row(s)"``."""
    msgs = [f"{_where(df, int(i), locations)}: {say(int(i))}" for i in rows[:_MAX_NAMED]]
    more = f" ... and {len(rows) - _MAX_NAMED} more row(s)" if len(rows) > _MAX_NAMED else ""
    return "; ".join(msgs) + more


def _raise_rows(df: pd.DataFrame, bad: np.ndarray, problem: Callable[[int], str],
                locations: Sequence[str] | None) -> None:
    """Raise one ValueError naming the first few offending rows (``bad`` is a boolean mask)."""
    rows = np.flatnonzero(np.asarray(bad, dtype=bool))
    if len(rows) == 0:
        return
    raise ValueError(_named_rows(df, rows, problem, locations))


def _int_column(df: pd.DataFrame, col: str, locations: Sequence[str] | None,
                allow_missing: bool = False) -> pd.Series:
    """The column as integers, raising on anything that is not an integer (named by row)."""
    raw = df[col]
    num = pd.to_numeric(raw, errors="coerce")
    missing = raw.map(_is_missing).to_numpy(dtype=bool) | (raw.astype(str).str.strip() == "").to_numpy()
    not_int = (num.isna().to_numpy() | (num.fillna(0) % 1 != 0).to_numpy()) & ~missing
    _raise_rows(df, not_int, lambda i: f"{col} must be an integer, got {raw.iat[i]!r}", locations)
    if not allow_missing:
        _raise_rows(df, missing, lambda i: f"{col} is missing", locations)
    if missing.any():
        return num.astype("Int64")
    return num.astype(np.int64)


def _resolve_targets(df: pd.DataFrame, locations: Sequence[str] | None) -> pd.DataFrame:
    """Add ``char_start``/``char_end`` from ``span``, ``word_index`` or ``target`` (+ ``occurrence``).

    Rows that already have a char span keep it. Per-row work (string searches) is unavoidable here.
    """
    n = len(df)
    has = lambda c: c in df.columns  # noqa: E731
    if has("char_start") != has("char_end"):
        missing = "char_end" if has("char_start") else "char_start"
        raise KeyError(f"examples have {'char_start' if missing == 'char_end' else 'char_end'} "
                       f"but no {missing} column; give both, or a span / word_index / target column")
    if not any(has(c) for c in ("char_start", "span", "word_index", "target")):
        raise KeyError(
            "examples give no target: need columns char_start and char_end, span ('s:e'), "
            f"word_index, or target (+ occurrence); columns are {list(df.columns)}")
    if "text" not in df.columns:
        raise KeyError(f"examples lack the column 'text'; columns are {list(df.columns)}")

    def col(c: str) -> list:
        return df[c].tolist() if has(c) else [None] * n

    texts, starts, ends = df["text"].tolist(), col("char_start"), col("char_end")
    spans, widx, targets, occ = col("span"), col("word_index"), col("target"), col("occurrence")
    new_start: list[Any] = list(starts)
    new_end: list[Any] = list(ends)
    found: dict[int, str] = {}
    ambiguous: dict[int, int] = {}  # row -> number of matches, where no occurrence chose one
    for i in range(n):
        if not (_is_missing(starts[i]) and _is_missing(ends[i])):
            continue  # a given char span wins; validate() checks it
        text = texts[i]
        if not isinstance(text, str) or not text.strip():
            continue  # validate() reports the empty text
        where = lambda: _where(df, i, locations)  # noqa: E731
        if not _is_missing(spans[i]):
            new_start[i], new_end[i] = _parse_span(spans[i], where)
        elif not _is_missing(widx[i]):
            new_start[i], new_end[i] = _word_index_span(text, widx[i], targets[i], where)
        elif not _is_missing(targets[i]):
            (new_start[i], new_end[i]), n_hits = _find_target(text, str(targets[i]), occ[i], where)
            found[i] = text[new_start[i]:new_end[i]]  # may differ in case (fallback match)
            if n_hits > 1 and _is_missing(occ[i]):
                ambiguous[i] = n_hits
        else:
            raise ValueError(f"{where()}: no target given (char_start/char_end, span, word_index and "
                             "target are all empty)")
    if ambiguous:
        rows = sorted(ambiguous)
        _warn(f"{len(rows)} target(s) occur more than once in their text and no occurrence, span or word_index "
              "says which one is meant; the first occurrence was taken: "
              + _named_rows(df, rows, lambda i: f"{targets[i]!r} occurs {ambiguous[i]} times in "
                                                f"{_short(texts[i])!r}", locations)
              + ". Give occurrence (0-based) or a span to choose another, or occurrence=0 to confirm the first.")
    out = df.copy()
    out["char_start"] = new_start
    out["char_end"] = new_end
    if found:
        out["target"] = [found.get(i, t) for i, t in enumerate(targets)]
    return out


def _parse_span(span: Any, where: Callable[[], str]) -> tuple[int, int]:
    try:
        if isinstance(span, str):
            a, b = span.split(":")
        else:
            a, b = span
        return int(a), int(b)
    except (ValueError, TypeError):
        raise ValueError(f"{where()}: span must be 'start:end' (or a pair of ints), got {span!r}") from None


def _word_index_span(text: str, index: Any, target: Any, where: Callable[[], str]) -> tuple[int, int]:
    try:
        k = int(index)
        if k != float(index):
            raise ValueError
    except (ValueError, TypeError):
        raise ValueError(f"{where()}: word_index must be an integer, got {index!r}") from None
    # `\S+` splits exactly like str.split() (unicode whitespace), keeping character offsets
    tokens = list(_TOKEN.finditer(text))
    if not 0 <= k < len(tokens):
        raise ValueError(f"{where()}: word_index {k} is out of range for a text of {len(tokens)} "
                         "whitespace tokens")
    s, e = tokens[k].span()
    if not _is_missing(target):
        t = str(target)
        tok = tokens[k].group()
        if tok != t and t and t in tok:  # e.g. token "bank," for target "bank"
            s += tok.index(t)
            e = s + len(t)
    return s, e


def _target_pattern(target: str) -> str:
    """Whole-word pattern: no word character of a spaced script right before or after the target (in
    scripts written without spaces, :data:`_NOSPACE`, every character boundary is a word boundary)."""
    before = "" if _NOSPACE_CHAR.match(target[0]) else rf"(?<![^\W{_NOSPACE}])"
    after = "" if _NOSPACE_CHAR.match(target[-1]) else rf"(?![^\W{_NOSPACE}])"
    return before + re.escape(target) + after


def _find_target(text: str, target: str, occurrence: Any,
                 where: Callable[[], str]) -> tuple[tuple[int, int], int]:
    """The span of the chosen whole-word match and the number of matches."""
    if not target:
        raise ValueError(f"{where()}: target is empty")
    if _is_missing(occurrence):
        k = 0
    else:
        try:
            k = int(occurrence)
            if k != float(occurrence) or k < 0:
                raise ValueError
        except (ValueError, TypeError):
            raise ValueError(f"{where()}: occurrence must be an integer >= 0, got {occurrence!r}") from None
    pattern = _target_pattern(target)
    hits = [m.span() for m in re.finditer(pattern, text)]
    if not hits:  # e.g. a sentence-initial "Bank" for target "bank"
        hits = [m.span() for m in re.finditer(pattern, text, flags=re.IGNORECASE)]
    if not hits:
        inside = re.search(re.escape(target), text) or re.search(re.escape(target), text, flags=re.IGNORECASE)
        if inside is None:
            how = ("it does not occur in it at all: give the target as it is written in the text, or its "
                   "character span (span \"start:end\", or char_start and char_end)")
        else:
            a, b = inside.span()
            how = (f"it occurs inside a longer word at characters {a}:{b}; to use that, give the span instead "
                   f"(span \"{a}:{b}\", or char_start={a} and char_end={b})")
        raise ValueError(f"{where()}: target {target!r} does not occur as a whole word in the text "
                         f"{_short(text)!r}; {how}")
    if k >= len(hits):
        raise ValueError(f"{where()}: occurrence {k} of target {target!r} requested, but the text has "
                         f"only {len(hits)}")
    return hits[k], len(hits)


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."



# ================================================================ the named checks
# Each step takes the frame and the row locations and returns the frame (checked, completed); they
# run in the order of _STEPS, so the first problem found is the one reported.
def _check_example_ids(df: pd.DataFrame, locations: Locations) -> pd.DataFrame:
    """``example``: integer ids, unique; ``0..n-1`` when absent."""
    if "example" not in df.columns:
        return df.assign(example=np.arange(len(df), dtype=np.int64))
    ex = _int_column(df, "example", locations)
    dup = ex.duplicated(keep=False).to_numpy()
    _raise_rows(df, dup, lambda i: f"example id {ex.iat[i]} is not unique", locations)
    return df.assign(example=ex)


def _check_texts(df: pd.DataFrame, locations: Locations) -> pd.DataFrame:
    """``text``: a non-empty str."""
    texts = df["text"]
    bad_text = ~texts.map(lambda t: isinstance(t, str) and bool(t.strip())).to_numpy(dtype=bool)
    _raise_rows(df, bad_text, lambda i: f"text is empty or not a string ({texts.iat[i]!r})", locations)
    return df


def _check_spans(df: pd.DataFrame, locations: Locations) -> pd.DataFrame:
    """``char_start``/``char_end``: integers inside the text, covering the given ``target`` (then
    filled in) and not only whitespace."""
    start = _int_column(df, "char_start", locations)
    end = _int_column(df, "char_end", locations)
    texts = df["text"]
    lens = texts.str.len().to_numpy()
    s, e = start.to_numpy(), end.to_numpy()
    out_of_range = (s < 0) | (e <= s) | (e > lens)
    _raise_rows(df, out_of_range,
                lambda i: f"span {s[i]}:{e[i]} is out of range (need 0 <= char_start < char_end <= "
                          f"{lens[i]}, the text's length)", locations)
    df = df.assign(char_start=start, char_end=end)

    covered = [t[a:b] for t, a, b in zip(texts.tolist(), s.tolist(), e.tolist())]
    if "target" in df.columns:
        given = df["target"].tolist()
        mismatch = np.array([not _is_missing(g) and str(g) != c for g, c in zip(given, covered)])
        _raise_rows(df, mismatch,
                    lambda i: f"span {s[i]}:{e[i]} covers {covered[i]!r}, not the given target "
                              f"{given[i]!r}", locations)
    df["target"] = covered
    blank_target = np.array([not c.strip() for c in covered])
    _raise_rows(df, blank_target, lambda i: f"span {s[i]}:{e[i]} covers only whitespace", locations)
    return df


def _fill_words(df: pd.DataFrame, locations: Locations) -> pd.DataFrame:
    """``word``: as given, else the target lower-cased."""
    covered = df["target"]
    if "word" in df.columns:
        words = df["word"]
        missing_word = words.map(_is_missing).to_numpy(dtype=bool)
        df["word"] = [str(c).lower() if m else str(w) for w, c, m in zip(words, covered, missing_word)]
    else:
        df["word"] = [c.lower() for c in covered]
    return df


def _check_senses(df: pd.DataFrame, locations: Locations) -> pd.DataFrame:
    """``sense`` (when there is the column): a non-empty str; integer labels are converted to str with a
    warning (a data set's sense numbers), anything else (floats, booleans, lists) is an error."""
    if "sense" not in df.columns:
        return df
    senses = df["sense"]
    values = senses.tolist()
    missing = np.array([_is_missing(v) or (isinstance(v, str) and not v.strip()) for v in values], dtype=bool)
    _raise_rows(df, missing, lambda i: f"sense is missing ({values[i]!r})", locations)
    is_int = np.array([isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in values],
                      dtype=bool)
    other = np.array([not isinstance(v, str) for v in values], dtype=bool) & ~is_int
    _raise_rows(df, other, lambda i: f"sense must be a string label (integers are converted), got {values[i]!r} "
                                     f"({type(values[i]).__name__})", locations)
    if is_int.any():
        rows = np.flatnonzero(is_int)
        _warn(f"sense labels should be strings: {len(rows)} integer label(s) were converted to str ("
              + _named_rows(df, rows, lambda i: f"{values[i]!r} -> {str(int(values[i]))!r}", locations)
              + "); give strings (e.g. sense names) to silence this")
    df["sense"] = pd.Series([str(int(v)) if k else v for v, k in zip(values, is_int)], index=df.index).astype(str)
    return df


def _fill_groups(df: pd.DataFrame, locations: Locations) -> pd.DataFrame:
    """``group``: as given, else the text (duplicate sentences share a group)."""
    texts = df["text"]
    if "group" in df.columns:
        df["group"] = [t if _is_missing(v) else v for v, t in zip(df["group"].tolist(), texts.tolist())]
    else:
        df["group"] = texts
    return df


def _check_cues(df: pd.DataFrame, locations: Locations) -> pd.DataFrame:
    """``cue_position`` in :data:`CUE_POSITIONS`, ``cue_distance`` an integer >= 0 (both optional)."""
    if "cue_position" in df.columns:
        cp = df["cue_position"]
        bad = cp.map(lambda v: not _is_missing(v) and v not in CUE_POSITIONS).to_numpy(dtype=bool)
        _raise_rows(df, bad, lambda i: f"cue_position must be 'before' or 'after', got {cp.iat[i]!r}",
                    locations)
    if "cue_distance" in df.columns:
        cd = _int_column(df, "cue_distance", locations, allow_missing=True)
        neg = (cd.fillna(0) < 0).to_numpy(dtype=bool)
        _raise_rows(df, neg, lambda i: f"cue_distance must be >= 0, got {cd.iat[i]}", locations)
        df["cue_distance"] = cd
    return df


def _check_optional_ints(df: pd.DataFrame, locations: Locations) -> pd.DataFrame:
    """``sense_id``, ``word_index``, ``occurrence``: integers where given; ``span`` is dropped (now in
    ``char_start``/``char_end``; lists or strings would only trouble storage)."""
    for c in ("sense_id", "word_index", "occurrence"):
        if c in df.columns:
            df[c] = _int_column(df, c, locations, allow_missing=True)
    return df.drop(columns="span") if "span" in df.columns else df


_STEPS: tuple[Callable[[pd.DataFrame, Locations], pd.DataFrame], ...] = (
    _check_example_ids, _check_texts, _resolve_targets, _check_spans, _fill_words, _check_senses,
    _fill_groups, _check_cues, _check_optional_ints,
)


def _as_frame(df: pd.DataFrame | Iterable[Mapping[str, Any]], locations: Locations,
              require_sense: bool) -> pd.DataFrame:
    """A fresh-indexed frame with a ``text`` column (and ``sense`` if required) and at least one row."""
    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame(list(df))
    df = df.reset_index(drop=True)
    if len(df) == 0:
        raise ValueError(_NO_EXAMPLES)
    if locations is not None and len(locations) != len(df):
        raise ValueError(f"got {len(locations)} locations for {len(df)} examples")
    if "text" not in df.columns:
        raise KeyError(f"examples lack the column 'text'; columns are {list(df.columns)}")
    if require_sense and "sense" not in df.columns:
        raise KeyError(f"examples lack the column 'sense'; columns are {list(df.columns)}")
    return df


def validate(df: pd.DataFrame | Iterable[Mapping[str, Any]], *, locations: Sequence[str] | None = None,
             require_sense: bool = False) -> pd.DataFrame:
    """Check every example against the contract and return the cleaned, completed DataFrame.

    Targets given as ``span``, ``word_index`` or ``target`` (+ ``occurrence``) are turned into
    ``char_start``/``char_end``; ``example``, ``target``, ``word`` and ``group`` are filled in
    where absent. The input is not modified.

    Parameters
    ----------
    df : DataFrame or iterable of mappings
        The examples, one row each (see :mod:`trajgeo.datasets` for the columns).
    locations : sequence of str, optional
        One location per row (e.g. ``"data.jsonl:4"``), used in error messages.
    require_sense : bool, default False
        Raise if there is no ``sense`` column. A present ``sense`` column is always checked.

    Returns
    -------
    DataFrame
        A new frame with a fresh 0..n-1 index, the contract columns first (in :data:`COLUMNS`
        order), then any other columns.

    Raises
    ------
    KeyError
        A required column is missing.
    ValueError
        No examples at all; or, naming the example, row (and file line), and what is wrong: empty
        text, a span out of range or not matching the given target, a target not found (with the
        span to give when it sits inside a longer word), a missing or non-string sense, a bad cue
        position, ...

    Warns
    -----
    UserWarning
        Once per call, naming the examples: integer sense labels were converted to str; a target
        found more than once without ``occurrence`` (the first occurrence was taken).
    """
    df = _as_frame(df, locations, require_sense)
    for step in _STEPS:
        df = step(df, locations)
    first = [c for c in COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]].reset_index(drop=True)
