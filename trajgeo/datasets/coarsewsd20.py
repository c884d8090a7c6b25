"""CoarseWSD-20 (Loureiro et al., 2021): one sub-folder per word with ``classes_map.txt`` and
``{train,test}.{data,gold}.txt``; each data line is ``<index>\t<sentence>``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from trajgeo.datasets.validation import validate

__all__ = ["COARSEWSD_SPLITS", "read_coarsewsd20", "coarsewsd20_words", "coarsewsd20_sense_name"]

COARSEWSD_SPLITS = ("train", "test", "all")


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


def _sense_names(folder: Path, word: str) -> dict[int, str]:
    """Sense number -> readable name, from the word's ``classes_map.txt``."""
    cmap_path = folder / "classes_map.txt"
    try:
        classes = {int(k): str(v) for k, v in json.loads(cmap_path.read_text(encoding="utf-8")).items()}
    except (json.JSONDecodeError, ValueError, AttributeError) as err:
        raise ValueError(f"{cmap_path}: expected a JSON object of sense number -> name ({err})") from None
    return {k: coarsewsd20_sense_name(word, v) for k, v in classes.items()}


def _read_split(folder: Path, word: str, sp: str, names: dict[int, str]) -> pd.DataFrame:
    """One split's examples, validated; errors name the data or gold file and line."""
    data_path, gold_path = folder / f"{sp}.data.txt", folder / f"{sp}.gold.txt"
    for p in (data_path, gold_path):
        if not p.is_file():
            raise FileNotFoundError(f"CoarseWSD-20 file {p} is missing")
    data, gold = _lines(data_path), _lines(gold_path)
    if len(data) != len(gold):
        raise ValueError(f"{data_path} has {len(data)} lines but {gold_path} has {len(gold)}; "
                         "each example needs one data line and one gold line")
    if not data:
        raise ValueError(f"{data_path}: no examples (the file is empty)")
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
            raise ValueError(f"{gold_path}:{lineno}: sense number {sid} is not in {folder / 'classes_map.txt'} "
                             f"(known: {sorted(names)})")
        rows.append({"text": sent, "word_index": idx.strip(), "word": word, "sense": names[sid],
                     "sense_id": sid, "split": sp})
        locations.append(f"{data_path}:{lineno}")
    return validate(pd.DataFrame(rows), locations=locations, require_sense=True)


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
    names = _sense_names(folder, word)
    frames = [_read_split(folder, word, sp, names) for sp in (("train", "test") if split == "all" else (split,))]
    df = pd.concat(frames, ignore_index=True).drop(columns=["word_index", "example"])
    df["source"] = "coarsewsd20"
    return validate(df)
