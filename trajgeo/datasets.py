"""Example sets: readers, validation, and the built-in polysemy set.

Every reader returns a pandas DataFrame with one row per **example** (one occurrence of a
target word in one text). The example contract, checked by :func:`validate`:

==================  ==========================================================================
column              meaning
==================  ==========================================================================
``example``         int id, ``0..n-1`` (added if absent; must be unique when given)
``text``            the text, a non-empty str
``char_start``      int, first character of the target in ``text``
``char_end``        int, one past its last character: ``0 <= char_start < char_end <= len(text)``
``target``          ``text[char_start:char_end]`` (filled in; checked when given)
``word``            the target's lemma (default: the target, lower-cased)
``sense``           the sense label, a non-empty str (required by the labelled readers)
``group``           what must not be split across cross-validation folds (default: the text,
                    so duplicate sentences share a group)
``cue_position``    optional, ``"before"`` or ``"after"``: where the disambiguating cue is
``cue_distance``    optional, int >= 0: words strictly between the cue and the target
``split``           optional, e.g. ``"train"`` / ``"test"``
``source``          optional, where the example came from (``"builtin"``, ``"coarsewsd20"``, a path)
``sense_id``        optional, the data set's own sense number
==================  ==========================================================================

The target can be given in three forms; all are turned into ``char_start``/``char_end``:

* a character span: ``char_start`` and ``char_end`` columns, or ``span`` as ``"s:e"`` (or a pair);
* a ``target`` string plus an optional 0-based ``occurrence``: the occurrence-th whole-word
  match (case-sensitive first, case-insensitive if that finds nothing);
* a ``word_index`` into the whitespace-tokenised text (the CoarseWSD-20 format); the span is that
  token (narrowed to ``target`` when a target is also given and the token only contains it).

Readers: :func:`from_dataframe`, :func:`from_records`, :func:`read_jsonl`, :func:`read_csv`,
:func:`read_coarsewsd20`, and :func:`load_dataset` for string specs (as used by the CLI).
Package data: :func:`builtin` (the built-in polysemy set), :func:`sense_words` (signal words per
sense for the logit-lens read-out) and :func:`corpus` (plain sentences for training a tuned lens).

Every error is a ``ValueError`` (``KeyError`` for a missing column) that names the example and row,
and the file and line where the examples were read from a file.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "COLUMNS",
    "validate",
    "from_dataframe",
    "from_records",
    "read_jsonl",
    "read_csv",
    "read_coarsewsd20",
    "coarsewsd20_words",
    "coarsewsd20_sense_name",
    "builtin",
    "builtin_words",
    "sense_words",
    "corpus",
    "load_dataset",
]

#: Contract columns, in the order readers return them (optional ones only when present).
COLUMNS = (
    "example", "text", "char_start", "char_end", "target", "word", "sense", "group",
    "cue_position", "cue_distance", "split", "source", "sense_id",
)
CUE_POSITIONS = ("before", "after")
COARSEWSD_SPLITS = ("train", "test", "all")
_MAX_NAMED = 3  # rows named in one error message before "... and N more"
_TOKEN = re.compile(r"\S+")


# ================================================================ validation
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


def validate(df: pd.DataFrame | Iterable[Mapping[str, Any]], *, locations: Sequence[str] | None = None,
             require_sense: bool = False) -> pd.DataFrame:
    """Check every example against the contract and return the cleaned, completed DataFrame.

    Targets given as ``span``, ``word_index`` or ``target`` (+ ``occurrence``) are turned into
    ``char_start``/``char_end``; ``example``, ``target``, ``word`` and ``group`` are filled in
    where absent. The input is not modified.

    Parameters
    ----------
    df : DataFrame or iterable of mappings
        The examples, one row each (see the module docstring for the columns).
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

    if "example" in df.columns:
        ex = _int_column(df, "example", locations)
        dup = ex.duplicated(keep=False).to_numpy()
        _raise_rows(df, dup, lambda i: f"example id {ex.iat[i]} is not unique", locations)
        df = df.assign(example=ex)
    else:
        df = df.assign(example=np.arange(len(df), dtype=np.int64))

    # text: a non-empty str
    texts = df["text"]
    bad_text = ~texts.map(lambda t: isinstance(t, str) and bool(t.strip())).to_numpy(dtype=bool)
    _raise_rows(df, bad_text, lambda i: f"text is empty or not a string ({texts.iat[i]!r})", locations)

    df = _resolve_targets(df, locations)
    start = _int_column(df, "char_start", locations)
    end = _int_column(df, "char_end", locations)
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

    if "word" in df.columns:
        words = df["word"]
        missing_word = words.map(_is_missing).to_numpy(dtype=bool)
        df["word"] = [str(c).lower() if m else str(w) for w, c, m in zip(words, covered, missing_word)]
    else:
        df["word"] = [c.lower() for c in covered]

    if "sense" in df.columns:
        senses = df["sense"]
        bad_sense = senses.map(lambda v: _is_missing(v) or not str(v).strip()).to_numpy(dtype=bool)
        _raise_rows(df, bad_sense, lambda i: f"sense is missing ({senses.iat[i]!r})", locations)
        df["sense"] = senses.astype(str)

    if "group" in df.columns:
        g = df["group"]
        df["group"] = [t if _is_missing(v) else v for v, t in zip(g.tolist(), texts.tolist())]
    else:
        df["group"] = texts

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
    for c in ("sense_id", "word_index", "occurrence"):
        if c in df.columns:
            df[c] = _int_column(df, c, locations, allow_missing=True)
    if "span" in df.columns:  # now in char_start/char_end; lists/strings would only trouble storage
        df = df.drop(columns="span")

    first = [c for c in COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]].reset_index(drop=True)


# ================================================================ generic readers
def from_dataframe(df: pd.DataFrame, text: str = "text", sense: str | None = "sense",
                   word: str | None = None, *, target: str = "target", span: str = "span",
                   char_start: str = "char_start", char_end: str = "char_end",
                   occurrence: str = "occurrence", word_index: str = "word_index",
                   group: str | None = None, locations: Sequence[str] | None = None) -> pd.DataFrame:
    """Examples from a DataFrame whose columns may have other names.

    Parameters
    ----------
    df : DataFrame
        One row per example.
    text, sense : str
        Column names of the text and of the sense label. ``sense=None`` for unlabelled examples.
    word : str, optional
        Column of the target's lemma; default: ``"word"`` if present, else the target lower-cased.
    target, span, char_start, char_end, occurrence, word_index : str
        Column names of the target forms (see the module docstring); absent columns are skipped.
    group : str, optional
        Column that must not be split across folds; default: ``"group"`` if present, else the text.
    locations : sequence of str, optional
        One location per row (e.g. ``"file.csv:3"``) for error messages.

    Returns
    -------
    DataFrame
        The validated examples (see :func:`validate`).
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    names = {text: "text", target: "target", span: "span", char_start: "char_start",
             char_end: "char_end", occurrence: "occurrence", word_index: "word_index"}
    for given, std in ((sense, "sense"), (word, "word"), (group, "group")):
        if given is not None:
            names[given] = std
    for given, std in ((text, "text"), (sense, "sense"), (word, "word"), (group, "group")):
        if given is not None and given not in df.columns:
            hint = " (pass sense=None for unlabelled examples)" if std == "sense" else ""
            raise KeyError(f"examples lack the {std} column {given!r}{hint}; "
                           f"columns are {list(df.columns)}")
    renamed = {c: names[c] for c in df.columns if c in names and names[c] != c}
    clash = [names[c] for c in renamed if names[c] in df.columns and names[c] not in renamed]
    out = df.drop(columns=clash).rename(columns=renamed)
    return validate(out, locations=locations, require_sense=sense is not None)


def from_records(records: Iterable[Mapping[str, Any]], **kwargs: Any) -> pd.DataFrame:
    """Examples from a list of dicts (keys as DataFrame columns); see :func:`from_dataframe`."""
    records = list(records)
    bad = [i for i, r in enumerate(records) if not isinstance(r, Mapping)]
    if bad:
        raise ValueError(f"record {bad[0]} is a {type(records[bad[0]]).__name__}, not a mapping")
    return from_dataframe(pd.DataFrame.from_records(records), **kwargs)


def read_jsonl(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    """Examples from a JSON-lines file (one object per line; blank lines are skipped).

    Errors name ``path:line``. Keyword arguments go to :func:`from_dataframe`; ``source`` is
    set to the path unless the file has its own.
    """
    path = Path(path)
    records, locations = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            records.append(rec)
            locations.append(f"{path}:{lineno}")
    if not records:
        raise ValueError(f"{path}: no examples")
    df = pd.DataFrame.from_records(records)
    if "source" not in df.columns:
        df["source"] = str(path)
    return from_dataframe(df, locations=locations, **kwargs)


def read_csv(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    """Examples from a CSV file with a header row; empty cells are missing values.

    Errors name ``path:line`` (the line a record starts on, so quoted multi-line texts count right).
    Keyword arguments go to :func:`from_dataframe`.
    """
    path = Path(path)
    rows, locations = [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise ValueError(f"{path}: empty file (expected a header row)")
        line = reader.line_num
        for row in reader:
            if None in row:  # more cells than header fields
                raise ValueError(f"{path}:{line + 1}: {len(row) - 1 + len(row[None])} cells for "
                                 f"{len(reader.fieldnames)} header fields")
            locations.append(f"{path}:{line + 1}")
            line = reader.line_num
            rows.append({k: (None if v is None or v == "" else v) for k, v in row.items()})
    if not rows:
        raise ValueError(f"{path}: no examples")
    df = pd.DataFrame(rows, columns=reader.fieldnames)
    if "source" not in df.columns:
        df["source"] = str(path)
    return from_dataframe(df, locations=locations, **kwargs)


# ================================================================ CoarseWSD-20
def coarsewsd20_sense_name(word: str, name: str) -> str:
    """Readable sense name from a CoarseWSD-20 class name.

    Strips the leading ``"<word>_"``, then keeps the parenthesised part if there is one:
    ``bank_bank`` -> ``"bank"``, ``bank_bank_(geography)`` -> ``"geography"``,
    ``apple_apple_inc.`` -> ``"apple_inc."``.
    """
    if name.startswith(word + "_"):
        name = name[len(word) + 1:]
    m = re.search(r"\(([^()]*)\)\s*$", name)
    return m.group(1) if m else name


def _coarsewsd_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CoarseWSD-20 folder {root} does not exist (expected one sub-folder per "
                                "word, each with classes_map.txt and {train,test}.{data,gold}.txt)")
    return root


def coarsewsd20_words(root: str | Path) -> list[str]:
    """The words (sub-folders with a ``classes_map.txt``) in a CoarseWSD-20 folder, sorted."""
    root = _coarsewsd_root(root)
    return sorted(p.name for p in root.iterdir() if (p / "classes_map.txt").is_file())


def _lines(path: Path) -> list[str]:
    # split on "\n" only: str.splitlines would also break at U+2028 etc. inside a sentence
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.rstrip("\r") for ln in lines]


def read_coarsewsd20(root: str | Path, word: str, split: str = "train") -> pd.DataFrame:
    """Examples of one word from a CoarseWSD-20 folder.

    Parameters
    ----------
    root : str or Path
        The folder with one sub-folder per word (``classes_map.txt``, ``train.data.txt``,
        ``train.gold.txt``, ``test.data.txt``, ``test.gold.txt``). Each data line is
        ``<index>\\t<sentence>``; ``index`` is the target's position among the whitespace tokens.
    word : str
        The word (sub-folder name).
    split : {"train", "test", "all"}
        Which split; ``"all"`` concatenates train then test.

    Returns
    -------
    DataFrame
        The contract columns plus ``split``, ``sense_id`` (the data set's sense number),
        ``source="coarsewsd20"``; ``sense`` is the readable name (:func:`coarsewsd20_sense_name`).
    """
    if split not in COARSEWSD_SPLITS:
        raise ValueError(f"split must be one of {COARSEWSD_SPLITS}, got {split!r}")
    root = _coarsewsd_root(root)
    folder = root / word
    if not (folder / "classes_map.txt").is_file():
        raise ValueError(f"no CoarseWSD-20 word {word!r} in {root}; available words: "
                         f"{', '.join(coarsewsd20_words(root)) or '(none)'}")
    cmap_path = folder / "classes_map.txt"
    try:
        classes = {int(k): str(v) for k, v in json.loads(cmap_path.read_text(encoding="utf-8")).items()}
    except (json.JSONDecodeError, ValueError, AttributeError) as err:
        raise ValueError(f"{cmap_path}: expected a JSON object of sense number -> name ({err})") from None
    names = {k: coarsewsd20_sense_name(word, v) for k, v in classes.items()}

    frames = []
    for sp in (("train", "test") if split == "all" else (split,)):
        data_path, gold_path = folder / f"{sp}.data.txt", folder / f"{sp}.gold.txt"
        for p in (data_path, gold_path):
            if not p.is_file():
                raise FileNotFoundError(f"CoarseWSD-20 file {p} is missing")
        data, gold = _lines(data_path), _lines(gold_path)
        if len(data) != len(gold):
            raise ValueError(f"{data_path} has {len(data)} lines but {gold_path} has {len(gold)}; "
                             "each example needs one data line and one gold line")
        rows, locations = [], []
        for lineno, (line, g) in enumerate(zip(data, gold), start=1):
            idx, tab, sent = line.partition("\t")
            if not tab:
                raise ValueError(f"{data_path}:{lineno}: expected '<index>\\t<sentence>'")
            try:
                sid = int(g.strip())
            except ValueError:
                raise ValueError(f"{gold_path}:{lineno}: gold label must be a sense number, got {g!r}") from None
            if sid not in names:
                raise ValueError(f"{gold_path}:{lineno}: sense number {sid} is not in {cmap_path} "
                                 f"(known: {sorted(names)})")
            rows.append({"text": sent, "word_index": idx.strip(), "word": word, "sense": names[sid],
                         "sense_id": sid, "split": sp})
            locations.append(f"{data_path}:{lineno}")
        frames.append(validate(pd.DataFrame(rows), locations=locations, require_sense=True))
    df = pd.concat(frames, ignore_index=True).drop(columns=["word_index", "example"])
    df["source"] = "coarsewsd20"
    return validate(df)


# ================================================================ package data
def _data_file(name: str):
    return resources.files("trajgeo").joinpath("data", name)


@functools.lru_cache(maxsize=1)
def _builtin_frame() -> pd.DataFrame:
    f = _data_file("polysemy.jsonl")
    records, locations = [], []
    for lineno, line in enumerate(f.read_text(encoding="utf-8").split("\n"), start=1):
        if line.strip():
            records.append(json.loads(line))
            locations.append(f"trajgeo/data/polysemy.jsonl:{lineno}")
    df = pd.DataFrame.from_records(records)
    df["source"] = "builtin"
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


# ================================================================ specs
def load_dataset(spec: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Examples from a string spec (as the CLI's ``--dataset`` takes), a path, or a DataFrame.

    Specs: ``"builtin"`` (all words), ``"builtin:bank"``, ``"builtin:bank,bass"``,
    ``"coarsewsd20:DIR:WORD"`` or ``"coarsewsd20:DIR:WORD:SPLIT"`` (split train|test|all, default
    train), or a path ending in ``.jsonl`` or ``.csv``.
    """
    if isinstance(spec, pd.DataFrame):
        return from_dataframe(spec, sense=None)
    s = str(spec)
    if s == "builtin":
        return builtin()
    if s.startswith("builtin:"):
        return builtin(s[len("builtin:"):])
    if s.startswith("coarsewsd20:"):
        rest = s[len("coarsewsd20:"):]
        parts = rest.rsplit(":", 2)  # DIR may itself contain ':'
        split = "train"
        if len(parts) == 3 and parts[2] in COARSEWSD_SPLITS:
            root, word, split = parts
        else:
            root, _, word = rest.rpartition(":")
        if not root or not word:
            raise ValueError(f"bad dataset spec {s!r}; expected coarsewsd20:DIR:WORD[:SPLIT]")
        return read_coarsewsd20(root, word, split)
    low = s.lower()
    if low.endswith(".jsonl") or low.endswith(".csv"):
        if not Path(s).is_file():
            raise FileNotFoundError(f"dataset file {s} does not exist")
        reader = read_jsonl if low.endswith(".jsonl") else read_csv
        # sense=None: unlabelled files are fine for extraction; a sense column is still checked
        return reader(s, sense=None)
    raise ValueError(f"unknown dataset spec {s!r}; expected 'builtin', 'builtin:WORD[,WORD...]', "
                     "'coarsewsd20:DIR:WORD[:SPLIT]', or a path ending in .jsonl or .csv")
