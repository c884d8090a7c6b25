"""Validation of example sets: every example checked against the contract of :mod:`trajgeo.datasets`.

:func:`validate` runs one named check per rule of the contract, in the order the contract lists
the columns (so the first problem found is the one reported); every check names the example, row
(and file line) it rejects.
"""

from __future__ import annotations

import math
import re
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

Locations = Sequence[str] | None


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


def _raise_rows(df: pd.DataFrame, bad: np.ndarray, problem: Callable[[int], str],
                locations: Sequence[str] | None) -> None:
    """Raise one ValueError naming the first few offending rows (``bad`` is a boolean mask)."""
    rows = np.flatnonzero(np.asarray(bad, dtype=bool))
    if len(rows) == 0:
        return
    msgs = [f"{_where(df, int(i), locations)}: {problem(int(i))}" for i in rows[:_MAX_NAMED]]
    more = f" ... and {len(rows) - _MAX_NAMED} more row(s)" if len(rows) > _MAX_NAMED else ""
    raise ValueError("; ".join(msgs) + more)


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
            new_start[i], new_end[i] = _find_target(text, str(targets[i]), occ[i], where)
            found[i] = text[new_start[i]:new_end[i]]  # may differ in case (fallback match)
        else:
            raise ValueError(f"{where()}: no target given (char_start/char_end, span, word_index and "
                             "target are all empty)")
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


def _find_target(text: str, target: str, occurrence: Any, where: Callable[[], str]) -> tuple[int, int]:
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
    pattern = rf"(?<!\w){re.escape(target)}(?!\w)"
    hits = [m.span() for m in re.finditer(pattern, text)]
    if not hits:  # e.g. a sentence-initial "Bank" for target "bank"
        hits = [m.span() for m in re.finditer(pattern, text, flags=re.IGNORECASE)]
    if not hits:
        raise ValueError(f"{where()}: target {target!r} does not occur as a whole word in the text "
                         f"{_short(text)!r}")
    if k >= len(hits):
        raise ValueError(f"{where()}: occurrence {k} of target {target!r} requested, but the text has "
                         f"only {len(hits)}")
    return hits[k]


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
    """``sense`` (when there is the column): a non-empty label, stored as str."""
    if "sense" in df.columns:
        senses = df["sense"]
        bad_sense = senses.map(lambda v: _is_missing(v) or not str(v).strip()).to_numpy(dtype=bool)
        _raise_rows(df, bad_sense, lambda i: f"sense is missing ({senses.iat[i]!r})", locations)
        df["sense"] = senses.astype(str)
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
    if locations is not None and len(locations) != len(df):
        raise ValueError(f"got {len(locations)} locations for {len(df)} examples")
    if "text" not in df.columns:
        raise KeyError(f"examples lack the column 'text'; columns are {list(df.columns)}")
    if require_sense and "sense" not in df.columns:
        raise KeyError(f"examples lack the column 'sense'; columns are {list(df.columns)}")
    if len(df) == 0:
        raise ValueError("no examples")
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
        Naming the example, row (and file line), and what is wrong: empty text, a span out of
        range or not matching the given target, a missing sense, a bad cue position, ...
    """
    df = _as_frame(df, locations, require_sense)
    for step in _STEPS:
        df = step(df, locations)
    first = [c for c in COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]].reset_index(drop=True)
