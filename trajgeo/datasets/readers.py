"""Generic readers: examples from a DataFrame, records, JSON lines or CSV, and from string specs.

Every reader ends in :func:`~trajgeo.datasets.validate`; errors name the file and line where the
examples were read from a file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from trajgeo._api import changed_signature
from trajgeo.datasets.coarsewsd20 import COARSEWSD_SPLITS, read_coarsewsd20
from trajgeo.datasets.package_data import builtin
from trajgeo.datasets.validation import _NO_EXAMPLES, validate

__all__ = ["from_dataframe", "from_records", "read_jsonl", "read_csv", "load_dataset"]


# text, sense and word were the positional options of 0.1
@changed_signature(positional=("text", "sense", "word"))
def from_dataframe(df: pd.DataFrame, *, text: str = "text", sense: str | None = "sense",
                   word: str | None = None, target: str = "target", span: str = "span",
                   char_start: str = "char_start", char_end: str = "char_end",
                   occurrence: str = "occurrence", word_index: str = "word_index",
                   group: str | None = None, locations: Sequence[str] | None = None) -> pd.DataFrame:
    """Examples from a DataFrame whose columns may have other names.

    Every column name is a keyword option (``text``, ``sense`` and ``word`` by position still work
    in 0.2, with a DeprecationWarning).

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
    if len(df) == 0:  # before the column checks: an empty list has no columns at all
        raise ValueError(_NO_EXAMPLES)
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


def _jsonl_frame(path: str | Path, *, what: str) -> tuple[pd.DataFrame, list[str]]:
    """The objects of a JSON-lines file (blank lines skipped) as a frame, ``source`` set to the path unless
    the file has its own, and each row's ``path:line`` for error messages.

    Raises ValueError naming ``path:line`` for a line that is not a JSON object, and ``path: no <what>``
    for a file without any.
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
        raise ValueError(f"{path}: no {what}")
    df = pd.DataFrame.from_records(records)
    if "source" not in df.columns:
        df["source"] = str(path)
    return df, locations


def read_jsonl(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    """Examples from a JSON-lines file (one object per line; blank lines are skipped).

    Errors name ``path:line``. Keyword arguments go to :func:`from_dataframe`; ``source`` is
    set to the path unless the file has its own.
    """
    df, locations = _jsonl_frame(path, what="examples")
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
