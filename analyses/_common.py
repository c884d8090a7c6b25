"""What the resumable analyses (coarsewsd20, cue_position, loureiro) share: their per-word records on disk.

Not an analysis: a helper module the scripts import (they put ``analyses/`` on ``sys.path`` first, so it is
found both when they run as scripts and when the tests import them by path).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


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
