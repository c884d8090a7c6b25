"""What the resumable analyses (coarsewsd20, cue_position, loureiro) share: their per-word records on disk,
their integer options, and the closing lines that say which words were noted, skipped or failed.

Not an analysis: a helper module the scripts import (they put ``analyses/`` on ``sys.path`` first, so it is
found both when they run as scripts and when the tests import them by path).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temporary file beside it, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict | None:
    """The JSON record at ``path``, or None where there is none or it cannot be read (a run killed mid-way
    leaves no record, never half of one)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum``, nothing coerced (``"2.5"`` is refused)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def print_outcomes(per_word: pd.DataFrame) -> None:
    """Print each (model, word) row's note, then one line each for the skipped and the failed ones with their
    reasons. ``per_word`` has columns ``model, word, status, reason, note``."""
    for r in per_word[per_word["note"].notna()].itertuples():
        print(f"note: {r.model} {r.word}: {r.note}")
    for status in ("skipped", "failed"):
        rows = per_word[per_word["status"] == status]
        if len(rows):
            print(f"{status} {len(rows)} of {len(per_word)}: "
                  + "; ".join(f"{r.model} {r.word} ({r.reason})" for r in rows.itertuples()))
