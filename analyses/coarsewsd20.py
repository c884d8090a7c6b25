"""Every word of a CoarseWSD-20 folder, for several models: when does each model resolve each word?

For each model and word: examples per sense, majority baseline, probe accuracy at point 0, and, read
against the group-respecting label-permutation null of the word (``--permutations`` labellings, the
family-wise threshold over points ``null_fwer``; :func:`trajgeo.probes.layerwise`):

- the peak of the chance-corrected score (``balanced_accuracy``: 1/K at chance however unbalanced the
  senses; ``kappa_at_peak``: Cohen's kappa there, 0 at chance), its point, ``null_fwer``, the margin
  ``peak_minus_null`` and the family-wise p-value ``p_fwer`` (Holm-adjusted across the words of a model
  in ``p_holm``, :func:`trajgeo.stats.holm`);
- the resolution point (the first point reaching 95% of the peak *and* exceeding ``null_fwer``; NaN when
  the peak does not: ``resolved`` False) with a bootstrap interval over sentences
  (:func:`trajgeo.probes.resolution_point`);
- the surface-cue baseline (:func:`trajgeo.probes.surface_baseline`: the same probe, splits and null on a
  bag of the context words the model could see) with its interval and p-value, and ``peak_minus_surface``;
- the median commitment point of the sense margin.

Points are also given as relative depth (point / n_layers) so models of different depth compare.

What a word cannot support is skipped and said, never fatal to the study:

- the stratified sample per word (``--max-per-word``) keeps at least ``--folds`` examples of every sense
  (all of them if it has fewer), so a rare sense (31 of 9,238 examples) is not cut to one example;
- a sense with fewer than 2 sentences cannot be cross-validated: it is dropped, with a note;
- a sense with fewer sentences than ``--folds`` lowers the word's folds to that number, with a note;
- a word left with fewer than 2 senses is skipped, with the reason;
- a word that fails (unreadable files, an analysis error) is recorded as failed with the error, and the
  study goes on with the next word.

Every word's tables are written as soon as it finishes, under ``<out>/words/<model>/<word>/``
(``summary.parquet``, ``probes.parquet``, ``curves.parquet``, then ``status.json``; each file atomically),
and the combined tables are rewritten after every word: an interrupted run loses at most the word it was
on. A rerun with the same options skips the words already done or skipped (and says so) and retries the
failed ones; other options recompute. Extraction is cached per model and word under
``<out>/<model>/<word>.zarr``. Writes ``<out>/summary.parquet`` (+ .csv; one row per model and word with
``status`` done/skipped/failed, ``reason`` and ``note``), ``<out>/probes.parquet`` and
``<out>/curves.parquet``, and names what it skipped at the end. Exit status 1 when a word failed.

Usage::

    python analyses/coarsewsd20.py --data ../shared/data/coarsewsd20 --models smollm2,minilm,gemma3-270m

Measured on 2 busy CPU cores (15 words, 1,000 permutations): MiniLM at 300 examples per word 15 minutes;
SmolLM2 at ``--max-per-word 60`` 25 minutes (extraction dominates: at 300 per word one SmolLM2 word took
over 8 minutes to extract).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

import trajgeo as tg
from trajgeo import report

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # for _analysis_common, also when a test imports this by path
    sys.path.insert(0, str(_HERE))
from _analysis_common import int_at_least, print_outcomes, read_record, write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: A sense needs two sentences: one to leave out (a fold, a leave-one-out prototype) and one to learn from.
MIN_SENSE_GROUPS = 2
TABLES = ("summary", "probes", "curves")
#: The chance-corrected score the resolution point and the null are read on.
METRIC = "balanced_accuracy"
SUMMARY_FIRST = ["model", "word", "status", "n_examples", "examples_per_sense", "majority_baseline",
                 "accuracy_point0", "peak_accuracy", "peak_point", "peak_balanced_accuracy", "peak_balanced_point", "kappa_at_peak",
                 "null_fwer", "peak_minus_null", "p_fwer", "p_holm", "resolved", "resolution_point",
                 "resolution_ci_low", "resolution_ci_high", "surface_balanced_accuracy", "surface_ci_low",
                 "surface_ci_high", "surface_p", "peak_minus_surface", "commitment_median", "folds", "note", "reason"]

#: The columns printed at the end (the tables hold them all).
PRINTED = ["model", "word", "n_examples", "majority_baseline", "peak_balanced_point", "peak_balanced_accuracy", "null_fwer",
           "p_fwer", "p_holm", "resolution_point", "resolution_ci_low", "resolution_ci_high",
           "surface_balanced_accuracy", "peak_minus_surface", "commitment_median", "folds"]

__all__ = ["SkipWord", "prepare_word", "analyse_word", "run", "main", "MIN_SENSE_GROUPS"]


class SkipWord(Exception):
    """The word cannot support the analysis (the message says why); it is skipped, not failed."""


def prepare_word(df: pd.DataFrame, folds: int, max_per_word: int | None,
                 random_state: int = 0) -> tuple[pd.DataFrame, int, list[str]]:
    """The examples to analyse, the folds they support, and notes on what was changed.

    Senses with fewer than :data:`MIN_SENSE_GROUPS` sentences (groups) are dropped; the sample of
    ``max_per_word`` keeps ``folds`` examples of every sense (or all); the folds are lowered to the
    smallest number of sentences of a sense.

    Raises
    ------
    SkipWord
        Fewer than 2 senses are left, or ``max_per_word`` is too small to keep 2 examples of each.
    """
    notes = []
    groups = df.groupby("sense")["group"].nunique()
    rare = groups[groups < MIN_SENSE_GROUPS]
    if len(rare):
        df = df[~df["sense"].isin(rare.index)]
        notes.append("dropped sense(s) " + ", ".join(f"{s!r} ({k} sentence{'s' * (k != 1)})" for s, k in rare.items())
                     + f": fewer than {MIN_SENSE_GROUPS} sentences cannot be cross-validated")
    if df["sense"].nunique() < 2:
        kept = sorted(df["sense"].unique())
        raise SkipWord(f"fewer than 2 senses with at least {MIN_SENSE_GROUPS} sentences (senses: "
                       f"{', '.join(map(repr, kept)) or 'none'}" + (f"; {notes[0]}" if notes else "") + ")")
    if max_per_word and len(df) > max_per_word:
        need = int(np.minimum(df["sense"].value_counts(), MIN_SENSE_GROUPS).sum())
        if max_per_word < need:
            raise SkipWord(f"--max-per-word {max_per_word} cannot keep {MIN_SENSE_GROUPS} examples of each of its "
                           f"{df['sense'].nunique()} senses (needs {need})")
        sizes = df["sense"].value_counts()
        keep = folds if int(np.minimum(sizes, folds).sum()) <= max_per_word else MIN_SENSE_GROUPS
        df = tg.datasets.stratified_sample(df, max_per_word, strata="sense", min_per_cell=keep,
                                           random_state=random_state)
    smallest = df.groupby("sense")["group"].nunique()
    if smallest.min() < MIN_SENSE_GROUPS:  # the sample kept repeats of one sentence
        raise SkipWord(f"sense {smallest.idxmin()!r} has {int(smallest.min())} sentence in the sample of "
                       f"{max_per_word}; cross-validation needs {MIN_SENSE_GROUPS}")
    if smallest.min() < folds:
        notes.append(f"folds {folds} -> {int(smallest.min())}: sense {smallest.idxmin()!r} has "
                     f"{int(smallest.min())} sentences")
        folds = int(smallest.min())
    return df.reset_index(drop=True), int(folds), notes


def analyse_word(traj: tg.Trajectories, folds: int, random_state: int, *,
                 n_permutations: int = 1000) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """The summary row, the layer-wise probe table and the margin curve of one word.

    The probe sweep, the resolution point and the surface-cue baseline share the splits (same ``folds``,
    groups and ``random_state``) and the permutation null (``n_permutations`` group-respecting labellings).
    """
    sweep = tg.probes.layerwise(traj, cv=folds, random_state=random_state, n_permutations=n_permutations,
                                progress=False, return_result=True)
    pr = sweep.scores
    curves = tg.senses.curves(traj)
    com = tg.senses.commitment(traj)
    # the resolution point and its interval come from the same out-of-fold predictions (no refit)
    res = tg.probes.resolution_point(sweep, metric=METRIC, random_state=random_state)
    row = report.summarize({"probes": pr, "commitment": com}, traj.meta).iloc[0].to_dict()
    row.pop("selectivity_at_peak", None)  # the control task is off: NaN; the null replaces it
    sig = tg.probes.word_significance(pr, metric=METRIC).iloc[0]
    summary = pr[pr["fold"] == -1]
    kappa = summary[summary["metric"] == "cohen_kappa"].set_index("point")["value"]
    r = res.iloc[0]
    row.update({"peak_balanced_accuracy": sig["peak_value"], "peak_balanced_point": int(sig["peak_point"]),
                "kappa_at_peak": float(kappa.loc[sig["peak_point"]]), "null_fwer": sig["null_fwer"],
                "peak_minus_null": sig["peak_value"] - sig["null_fwer"], "p_fwer": sig["p_fwer"],
                "resolved": bool(sig["resolved"]), "resolution_point": r["resolution_point"],
                "resolution_ci_low": r["ci_low"], "resolution_ci_high": r["ci_high"]})
    surface = tg.probes.surface_baseline(traj, cv=folds, random_state=random_state, n_permutations=n_permutations,
                                         progress=False)
    s = surface[(surface["fold"] == -1) & (surface["metric"] == METRIC)].iloc[0]
    row.update({"surface_balanced_accuracy": s["value"], "surface_ci_low": s["ci_low"],
                "surface_ci_high": s["ci_high"], "surface_p": s["p_value"],
                "peak_minus_surface": sig["peak_value"] - s["value"]})
    margin = curves.query("metric == 'margin'").groupby("point")["value"].mean()
    row["margin_point0"] = margin.iloc[0]
    row["margin_last"] = margin.iloc[-1]
    return row, pr, margin.reset_index().rename(columns={"value": "margin"})


# ====================================================================== per-word records on disk
def _save_word(folder: Path, options: dict, status: str, tables: Mapping[str, pd.DataFrame] | None = None,
               reason: str | None = None, notes: Sequence[str] = ()) -> None:
    """The word's tables first, its status last: a status.json names only complete tables."""
    (folder / "status.json").unlink(missing_ok=True)
    if tables:
        report.write_tables(tables, folder)
    for name in TABLES:
        if not tables or name not in tables:
            (folder / f"{name}.parquet").unlink(missing_ok=True)
    write_text(folder / "status.json", json.dumps({"options": options, "status": status, "reason": reason,
                                                   "notes": list(notes)}, indent=1))


def _collect(out: Path, pairs: Sequence[tuple[str, str]], options: Mapping[tuple[str, str], dict]) -> dict:
    """The combined tables of the (model, word) pairs recorded with this run's options."""
    rows, probes, curves = [], [], []
    for name, word in pairs:
        folder = out / "words" / name / word
        rec = read_record(folder / "status.json")
        if rec is None or rec["options"] != options[name, word]:
            continue
        note = "; ".join(rec.get("notes") or []) or None
        if rec["status"] == "done":
            summary = pd.read_parquet(folder / "summary.parquet")
            rows.append(summary.iloc[0].to_dict() | {"status": "done", "note": note, "reason": None})
            probes.append(pd.read_parquet(folder / "probes.parquet"))
            curves.append(pd.read_parquet(folder / "curves.parquet"))
        else:
            rows.append({"model": name, "word": word, "status": rec["status"], "note": note, "reason": rec["reason"]})
    summary = pd.DataFrame(rows)
    if "p_fwer" in summary:
        # Holm across the words of each model: "some point of this word beats chance" at family-wise
        # level p_holm over all words and points of the model
        summary["p_holm"] = np.nan
        for _, idx in summary[summary["p_fwer"].notna()].groupby("model").groups.items():
            summary.loc[idx, "p_holm"] = tg.stats.holm(summary.loc[idx, "p_fwer"].to_numpy())
    if len(summary):
        summary = summary[[c for c in SUMMARY_FIRST if c in summary] + [c for c in summary if c not in SUMMARY_FIRST]]
    return {"summary": summary, "probes": pd.concat(probes, ignore_index=True) if probes else pd.DataFrame(),
            "curves": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()}


def _write_combined(out: Path, tables: Mapping[str, pd.DataFrame]) -> None:
    report.write_tables(tables, out)
    write_text(out / "summary.csv", tables["summary"].to_csv(index=False))


def _extract(model: Any, df: pd.DataFrame, store: Path, progress: bool, log: Callable[[str], None]) -> tg.Trajectories:
    try:
        return tg.extract(model, df, store=store, progress=progress)
    except FileExistsError:  # a store of other examples (another sample size or seed)
        log(f"  {store} holds other examples: extracting again")
        return tg.extract(model, df, store=store, overwrite=True, progress=progress)


# ====================================================================== the study
def run(models: Mapping[str, Any], data: str | Path, out: str | Path, words: Sequence[str] | None = None,
        split: str = "all", max_per_word: int | None = 300, folds: int = 5, random_state: int = 0,
        n_permutations: int = 1000, progress: bool = False, log: Callable[[str], None] = print) -> dict[str, pd.DataFrame]:
    """Every model and word; each word's tables written as it finishes; returns the combined tables.

    Parameters
    ----------
    models : mapping of name -> model
        Anything :func:`trajgeo.load_model` accepts; a model is loaded only when a word needs it.
    data : path
        CoarseWSD-20 folder.
    out : path
        Results, per-word records and extraction stores go here.
    words : sequence of str, optional
        Default: every word in ``data``.
    split : {"train", "test", "all"}
    max_per_word : int or None
        Stratified sample per word (None or 0: all), keeping ``folds`` examples of every sense.
    folds : int >= 2
        Cross-validation folds (lowered per word where a sense has fewer sentences).
    random_state : int
    n_permutations : int >= 1
        Group-respecting label permutations of the null (probe sweep and surface baseline).

    Returns
    -------
    dict with ``"summary"`` (one row per model and word: ``status`` done/skipped/failed, ``reason``,
    ``note``), ``"probes"`` and ``"curves"`` (the words done).
    """
    data, out = Path(data), Path(out)
    words = list(words) if words else tg.datasets.coarsewsd20_words(data)
    if not words:
        raise ValueError(f"no CoarseWSD-20 words in {data}")
    if int(folds) < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if int(n_permutations) < 1:
        raise ValueError(f"n_permutations must be >= 1 (the study reads every word against its null), "
                         f"got {n_permutations}")
    pairs = [(name, word) for name in models for word in words]
    options = {(name, word): {"model": name, "word": word, "data": str(data), "split": split,
                              "max_per_word": int(max_per_word or 0), "folds": int(folds),
                              "random_state": int(random_state), "n_permutations": int(n_permutations)} for name, word in pairs}
    tables = _collect(out, pairs, options)
    for name, spec in models.items():
        lm, load_error = None, None
        for word in words:
            folder = out / "words" / name / word
            rec = read_record(folder / "status.json")
            if rec is not None and rec["options"] == options[name, word] and rec["status"] in ("done", "skipped"):
                log(f"{name:12s} {word:10s} {rec['status']} in an earlier run with these options: kept ({folder})")
                continue
            t0 = time.perf_counter()
            try:
                if load_error is not None:
                    raise load_error
                df = tg.datasets.read_coarsewsd20(data, word, split=split)
                df, k, notes = prepare_word(df, int(folds), max_per_word, random_state)
                if lm is None:
                    try:
                        lm = tg.load_model(spec)
                    except Exception as err:  # every word of this model fails the same way: load once
                        load_error = err
                        raise
                traj = _extract(lm, df, out / name / f"{word}.zarr", progress, log)
                row, pr, margin = analyse_word(traj, k, random_state, n_permutations=int(n_permutations))
                n_layers = traj.n_layers
                row.update({"model": name, "word": word, "n_layers": n_layers, "folds": k,
                            "seconds": time.perf_counter() - t0})
                for key in ("peak_point", "resolution_point"):
                    if key in row:
                        row[f"{key}_relative"] = row[key] / n_layers
                word_tables = {"summary": pd.DataFrame([row]), "probes": pr.assign(model=name, word=word),
                               "curves": margin.assign(model=name, word=word, n_layers=n_layers)}
                _save_word(folder, options[name, word], "done", word_tables, notes=notes)
                log(f"{name:12s} {word:10s} n={len(df):4d} peak {row.get('peak_accuracy', np.nan):.3f} "
                    f"at {row.get('peak_point')}; balanced {row['peak_balanced_accuracy']:.3f} vs null_fwer "
                    f"{row['null_fwer']:.3f} (p_fwer {row['p_fwer']:.3g}), surface {row['surface_balanced_accuracy']:.3f}; "
                    f"resolved at {row['resolution_point']} ({row['seconds']:.0f} s)" + "".join(f"; {n}" for n in notes))
            except SkipWord as why:
                _save_word(folder, options[name, word], "skipped", reason=str(why))
                log(f"{name:12s} {word:10s} skipped: {why}")
            except Exception as err:  # noqa: BLE001 - one word's failure must not lose the others
                _save_word(folder, options[name, word], "failed", reason=f"{type(err).__name__}: {err}")
                log(f"{name:12s} {word:10s} FAILED: {type(err).__name__}: {err}")
            tables = _collect(out, pairs, options)
            _write_combined(out, tables)
        del lm  # one model in memory at a time
    _write_combined(out, tables)
    return tables


def main(argv: Sequence[str] | None = None, models: Mapping[str, Any] | None = None) -> int:
    """Command line entry point; ``models`` (name -> model) replaces ``--models`` (for tests)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "coarsewsd20")
    parser.add_argument("--models", default="smollm2,minilm")
    parser.add_argument("--words", default=None, help="comma-separated words (default: every word in --data)")
    parser.add_argument("--split", default="all", choices=["train", "test", "all"])
    parser.add_argument("--max-per-word", type=int_at_least(0), default=300,
                        help="stratified sample per word, to bound the time on 2 CPU cores (0: all)")
    parser.add_argument("--folds", type=int_at_least(2), default=5)
    parser.add_argument("--permutations", type=int_at_least(1), default=1000,
                        help="group-respecting label permutations of the null (default 1000)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "coarsewsd20")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if models is None:
        models = {name: name for name in args.models.split(",") if name}
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    tables = run(models, args.data, args.out, words=args.words.split(",") if args.words else None,
                 split=args.split, max_per_word=args.max_per_word or None, folds=args.folds,
                 random_state=args.random_state, n_permutations=args.permutations, progress=not args.quiet, log=log)
    summary = tables["summary"]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 200):
        done = summary[summary["status"] == "done"]
        shown = [c for c in PRINTED if c in done]
        print(done[shown].round(3).to_string(index=False))
    print_outcomes(summary)
    print(f"tables in {args.out}")
    return 1 if (summary["status"] == "failed").any() else 0


if __name__ == "__main__":
    sys.exit(main())
