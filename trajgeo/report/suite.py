"""The analysis suite: every standard table from one set of trajectories, and the summary per word.

:func:`analyze` runs the metrics of geometry, senses, probes, projections and (given a model with an
LM head) the lens; :func:`summarize` reads those tables back into one row per word. Neither draws
nor writes anything but the tables (:func:`~trajgeo.report.write_tables`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd

from trajgeo._api import changed_signature
from trajgeo.report.tables import write_tables

__all__ = ["analyze", "summarize"]

# a step returns one table (stored under its name) or several (name -> table)
Step = tuple[str, Callable[[], "pd.DataFrame | dict[str, pd.DataFrame]"]]


# ------------------------------------------------------------------ per word
def _word_subsets(traj: Any, min_senses: int) -> Iterator[tuple[Any, Any]]:
    """``(word, its examples)`` for every word with at least ``min_senses`` senses (senses compete only
    within a word); one ``(None, traj)`` when ``meta`` has no word column."""
    meta = traj.meta
    words = meta["word"].unique() if "word" in meta else [None]
    for w in words:
        sub = traj if w is None else traj[(meta["word"] == w).to_numpy()]
        if sub.meta["sense"].nunique() >= min_senses:
            yield w, sub


def _with_word(df: pd.DataFrame, word: Any) -> pd.DataFrame:
    """``df`` with a leading ``word`` column (unless it has one, or there are no words)."""
    if word is not None and "word" not in df.columns:
        df = df.copy()
        df.insert(0, "word", word)
    return df


def _stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _per_word(traj: Any, fn: Callable[[Any], pd.DataFrame], min_senses: int = 2) -> pd.DataFrame:
    """Run ``fn`` on each word's examples and stack the results with a word column."""
    return _stack([_with_word(fn(sub), w) for w, sub in _word_subsets(traj, min_senses)])


def _probe_tables(traj: Any, folds: int, random_state: int) -> dict[str, pd.DataFrame]:
    """Layer-wise probes per word (``probes``) and each word's resolution point with its bootstrap
    interval (``resolution``), both read from the same cross-validated sweep (no refit)."""
    from trajgeo import probes

    scores, resolution = [], []
    for w, sub in _word_subsets(traj, min_senses=2):
        sweep = probes.layerwise(sub, cv=folds, random_state=random_state, progress=False, return_result=True)
        scores.append(_with_word(sweep.scores, w))
        resolution.append(_with_word(probes.resolution_point(sweep, random_state=random_state), w))
    return {"probes": _stack(scores), "resolution": _stack(resolution)}


# ------------------------------------------------------------------ analyze
def _focus(traj: Any, focus_word: str | None) -> tuple[Any, Any]:
    """The word of the per-example displays (default ``bank`` where present, else the most frequent
    word) and its examples."""
    words = traj.meta["word"].value_counts() if "word" in traj.meta else pd.Series({None: traj.n_examples})
    if focus_word is None:
        focus_word = "bank" if "bank" in words.index else words.index[0]
    elif focus_word not in words.index:
        raise KeyError(f"unknown word {focus_word!r}; the trajectories hold {sorted(map(str, words.index))}")
    return focus_word, traj if focus_word is None else traj[(traj.meta["word"] == focus_word).to_numpy()]


def _steps(traj: Any, model: Any, focus_word: Any, focus: Any, probe_folds: int, random_state: int) -> list[Step]:
    """The suite, in order: geometry, senses, probes, projections, then attribution and the lens where
    the trajectories (components) and the model (an LM head) allow them."""
    from trajgeo import geometry, probes, projections, senses

    steps: list[Step] = [
        ("path_metrics", lambda: geometry.path_metrics(traj)),
        ("population", lambda: geometry.population_metrics(traj, random_state=random_state)),
        ("cka", lambda: geometry.cka(traj)),
        ("rogue_dimensions", lambda: geometry.rogue_dimensions(traj)),
        ("curves", lambda: senses.curves(traj)),
        ("commitment", lambda: senses.commitment(traj)),
        ("superposition", lambda: senses.superposition(traj)),
        ("reinforcement", lambda: senses.reinforcement(traj)),
        ("probes", lambda: _probe_tables(traj, probe_folds, random_state)),
        ("transfer", lambda: probes.transfer(focus, random_state=random_state, progress=False).assign(word=focus_word)),
        # one PCA plane per word: a word's paths spread in its own plane, not in one shared by all words
        ("coords", lambda: _per_word(traj, lambda t: projections.fit(
            t, method="pca", random_state=random_state).coords(t), min_senses=1)),
    ]
    if traj.components:
        steps.append(("attribution", lambda: senses.attribution(traj)))
    if model is not None and getattr(getattr(model, "adapter", None), "unembed", None) is not None:
        from trajgeo import lens

        steps.append(("lens", lambda: lens.logit_lens(model, traj)))
        first = int(focus.meta["example"].iloc[0])
        steps.append(("top_tokens", lambda: lens.top_tokens(model, traj, example=first).assign(example=first)))
    return steps


def _run(steps: list[Step], progress: bool) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Run every step under one tqdm bar; the tables and one timing row per step."""
    from tqdm.auto import tqdm

    tables: dict[str, pd.DataFrame] = {}
    timings = []
    bar = tqdm(steps, desc="analyses", disable=not progress)
    for name, fn in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        result = fn()
        tables.update(result if isinstance(result, Mapping) else {name: result})
        timings.append({"analysis": name, "seconds": time.perf_counter() - t0, "rows": len(tables[name])})
    return tables, pd.DataFrame(timings)


@changed_signature(positional=("model", "out"))  # 0.1: analyze(traj, model=None, out=None, *, ...)
def analyze(traj: Any, *, model: Any = None, out: str | os.PathLike | None = None, focus_word: str | None = None,
            probe_folds: int = 5, random_state: int = 0, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Run the standard metric suite on trajectories.

    Parameters
    ----------
    traj : Trajectories
        With ``meta`` columns ``word`` and ``sense``; components (from ``extract(components=True)``)
        enable the attribution tables.
    model : LoadedModel, optional
        The model the trajectories came from; enables the logit-lens tables when it has an LM head.
    out : path, optional
        Folder to write the tables to (one parquet file each).
    focus_word : str, optional
        The word of the per-example displays (lens table, cross-layer transfer); default the word with
        the most examples, ``bank`` where present.
    probe_folds : int
        Folds of the layer-wise probes.
    random_state : int
    progress : bool

    Returns
    -------
    dict of name -> DataFrame: ``path_metrics, population, cka, rogue_dimensions, curves, commitment,
    superposition, reinforcement, attribution, probes, resolution, transfer, coords, lens, top_tokens,
    summary, timings`` (those that apply). ``resolution`` holds each word's
    :func:`trajgeo.probes.resolution_point` (with its bootstrap interval), read from the same
    cross-validated sweep as the word's rows of ``probes``.
    """
    traj = traj.compute() if getattr(traj, "is_lazy", False) else traj
    if "sense" not in traj.meta:
        raise KeyError("the trajectories' meta has no 'sense' column: the sense analyses need labelled examples")
    focus_word, focus = _focus(traj, focus_word)
    tables, timings = _run(_steps(traj, model, focus_word, focus, probe_folds, random_state), progress)
    tables["summary"] = summarize(tables, traj.meta)
    tables["timings"] = timings
    if out is not None:
        write_tables(tables, out)
    return tables


# ------------------------------------------------------------------ summarize
def _rows_of(df: pd.DataFrame | None, word: Any) -> pd.DataFrame | None:
    """The rows of ``word`` in a per-word table (all rows of a table without a word column)."""
    if df is None or not len(df):
        return None
    return df[df["word"] == word] if "word" in df else df


def _probe_summary(tables: Mapping[str, pd.DataFrame], word: Any) -> dict[str, Any]:
    s = _rows_of(tables.get("probes"), word)
    if s is None:
        return {}
    s = s[s["fold"] == -1]
    acc = s[s["metric"] == "accuracy"].set_index("point")["value"]
    if not len(acc):
        return {}
    row: dict[str, Any] = {"accuracy_point0": acc.get(0, np.nan), "peak_accuracy": acc.max(),
                           "peak_point": int(acc.idxmax())}
    res = _rows_of(tables.get("resolution"), word)
    if res is not None and len(res):
        r = res.iloc[0]
        row["resolution_point"] = r["resolution_point"]
        row["resolution_ci_low"], row["resolution_ci_high"] = r["ci_low"], r["ci_high"]
    sel = s[s["metric"] == "selectivity"].set_index("point")["value"]
    row["selectivity_at_peak"] = sel.get(row["peak_point"], np.nan)
    return row


def _commitment_summary(tables: Mapping[str, pd.DataFrame], word: Any) -> dict[str, Any]:
    c = _rows_of(tables.get("commitment"), word)
    if c is None:
        return {}
    return {"commitment_median": c["commitment_point"].median(),
            "committed_share": c["commitment_point"].notna().mean(),
            "stable_point_median": c["stable_point"].median()}


def _superposition_summary(tables: Mapping[str, pd.DataFrame], word: Any) -> dict[str, Any]:
    sup = tables.get("superposition")
    if sup is None or not len(sup) or "word" not in sup:
        return {}
    b = sup.loc[sup["word"] == word, "balance"]
    return {"superposition_balance": b.iloc[0] if len(b) else np.nan}


def summarize(tables: Mapping[str, pd.DataFrame], meta: pd.DataFrame) -> pd.DataFrame:
    """One row per word, from the tables of :func:`analyze`.

    Columns: examples per sense, majority baseline; from ``probes``: accuracy at point 0, peak accuracy
    and its point, selectivity at the peak; from ``resolution`` (:func:`trajgeo.probes.resolution_point`,
    absent without that table): the resolution point and its bootstrap interval; from ``commitment``:
    the median commitment point (the margin stays > 0 from there on), the share of committed examples,
    the median stable point (the leave-one-out nearest prototype is right from there on); from
    ``superposition``: the balance at the embedding.

    Parameters
    ----------
    tables : mapping of name -> DataFrame
        Any of ``probes``, ``resolution``, ``commitment``, ``superposition``; per-word tables have a
        ``word`` column (a table without one describes a single word).
    meta : DataFrame
        The examples (``sense``, and ``word`` when there are several words).

    Returns
    -------
    DataFrame with one row per word (sorted), the columns of the tables that are there.
    """
    rows = []
    for word, m in meta.groupby("word", sort=True) if "word" in meta else [(None, meta)]:
        counts = m["sense"].value_counts()
        row: dict[str, Any] = {"word": word, "n_examples": len(m),
                               "examples_per_sense": ", ".join(f"{k}: {v}" for k, v in counts.items()),
                               "majority_baseline": counts.max() / len(m)}
        for part in (_probe_summary, _commitment_summary, _superposition_summary):
            row.update(part(tables, word))
        rows.append(row)
    return pd.DataFrame(rows)
