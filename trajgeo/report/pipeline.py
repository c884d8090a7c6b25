"""The whole pipeline into one folder: extraction (cached), the analysis suite, figures, ``index.html``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from trajgeo.report.drawing import figures
from trajgeo.report.page import write_index
from trajgeo.report.suite import analyze
from trajgeo.report.tables import check_writable

__all__ = ["build", "check_out", "light_pairs"]


def check_out(out: str | os.PathLike) -> Path:
    """Refuse, before any work, a report folder that cannot be written: a file, a folder without write
    access, or a ``trajectories.zarr`` inside it that is not a trajgeo store. Returns the path."""
    from trajgeo import store

    out = check_writable(out, what="a report folder")
    store.check_target(out / "trajectories.zarr")
    return out


def light_pairs(words: Any, *, per_kind: int = 2) -> pd.DataFrame:
    """A few built-in minimal pairs per word, cue before the target: ``per_kind`` flip pairs (the cue swap
    flips the sense) and ``per_kind`` same-sense pairs (the null), the first in file order; words without
    built-in pairs contribute none.

    Parameters
    ----------
    words : sequence of str
    per_kind : int

    Returns
    -------
    DataFrame in the :func:`trajgeo.datasets.minimal_pairs` format (empty when no word has pairs).
    """
    from trajgeo import datasets

    known = set(datasets.minimal_pairs()["word"])
    chosen = [str(w) for w in words if str(w) in known]
    if not chosen:
        return datasets.minimal_pairs().iloc[:0]
    pairs = datasets.minimal_pairs(chosen, cue_position="before")
    return pairs.groupby(["word", "kind"], sort=False, group_keys=False).head(per_kind).reset_index(drop=True)


def build(model: Any, examples: pd.DataFrame, out: str | os.PathLike, *, components: bool = True,
          heads: bool | None = None, dtype: str = "float32", device: str = "cpu", batch_size: int = 16,
          max_point: int | None = None, storage_dtype: str = "float32", overwrite: bool = False,
          random_state: int = 0, n_permutations: int = 200, sense_words: Mapping[str, Any] | None = None,
          next_token_texts: int = 40, causal_pairs: int | None = None, progress: bool = True) -> Path:
    """The whole pipeline into one folder: ``trajectories.zarr``, ``tables/``, ``figures/``, ``index.html``.

    The folder is checked (writable, no foreign ``trajectories.zarr``) before the model loads, and the
    cached store is checked against this extraction (model, texts, options) before the model runs.
    Extraction is cached in the folder (and resumes if interrupted): re-running rebuilds tables and
    figures without re-running the model. What the data or the model cannot support is skipped and
    listed on the page.

    Parameters
    ----------
    model : anything :func:`trajgeo.load_model` accepts
    examples : DataFrame in the :mod:`trajgeo.datasets` contract
    out : path
    components : bool
        Extract the sublayer writes for the attribution figure.
    heads : bool, optional
        Also the per-head writes; default where the model family has them (not BERT-style encoders
        such as MiniLM). ``True`` for a family without them is the extraction's error.
    dtype, device : str
        Passed to :func:`trajgeo.load_model`.
    batch_size, max_point, storage_dtype, overwrite
        Passed to :func:`trajgeo.extract` (``overwrite`` replaces a cached store of another extraction).
    random_state : int
        Seeds the analyses (:func:`~trajgeo.report.analyze`).
    n_permutations : int
        Permutations of every null (0: none).
    sense_words : dict, optional
        ``{word: {sense: [words]}}`` for the lens's sense-word read-out.
    next_token_texts : int
        Texts on which the lens is scored against the next token (causal LMs; 0: none).
    causal_pairs : int, optional
        Built-in minimal pairs per word and kind for the light causal trace (causal LMs, words of the
        built-in set only); default 1 when the examples are the built-in set, else none. 0: none.
    progress : bool
        Show tqdm bars and loading bars; ``False`` silences them.

    Returns
    -------
    Path of ``index.html``.
    """
    import trajgeo as tg

    out = check_out(out)
    t0 = time.perf_counter()
    lm = tg.load_model(model, dtype=dtype, device=device, progress=progress)
    if heads is None:
        heads = bool(components) and _has_heads(lm)
    traj = tg.extract(lm, examples, components=components or bool(heads), heads=heads,
                      store=out / "trajectories.zarr", batch_size=batch_size, max_point=max_point,
                      storage_dtype=storage_dtype, overwrite=overwrite, progress=progress)
    t_extract = time.perf_counter() - t0
    builtin = "source" in examples and (examples["source"] == "builtin").all()
    per_kind = (1 if builtin else 0) if causal_pairs is None else int(causal_pairs)
    pairs, causal_note = None, None
    if not lm.adapter.causal:
        causal_note = f"model {lm.name!r} is not a causal LM: the light causal trace reads the next token"
    elif per_kind <= 0:
        causal_note = ("the examples are not the built-in set: the light causal trace uses the built-in minimal "
                       "pairs" if not builtin else "no causal pairs asked for (causal_pairs=0)")
    else:
        pairs = light_pairs(pd.unique(traj.meta["word"]) if "word" in traj.meta else [], per_kind=per_kind)
        if not len(pairs):
            causal_note, pairs = "no built-in minimal pairs for these words", None
    tables = analyze(traj, model=lm, out=None, random_state=random_state, progress=progress,
                     n_permutations=n_permutations, sense_words=sense_words, next_token_texts=next_token_texts,
                     pairs=pairs)
    if causal_note:
        extra = pd.DataFrame([{"analysis": "causal trace", "word": None, "reason": causal_note}])
        tables["skipped"] = pd.concat([tables["skipped"], extra], ignore_index=True)
    from trajgeo.report.tables import write_tables

    write_tables(tables, out / "tables")
    paths = figures(tables, out / "figures")
    return write_index(out, tables, paths, traj, seconds={"extract": t_extract, "total": time.perf_counter() - t0},
                       n_permutations=n_permutations)


def _has_heads(lm: Any) -> bool:
    """Whether per-head writes can be extracted for this model's family (additive head writes: not post-LN
    encoders such as BERT and MiniLM, nor families with a norm after attention)."""
    return lm.adapter.head_proj is not None and bool(lm.adapter.heads_additive)
