"""Every word of a CoarseWSD-20 folder, for several models: when does each model resolve each word?

For each model and word: examples per sense, majority baseline, probe accuracy at point 0, peak accuracy
and its point, the resolution point (first point reaching 95% of the peak) with a bootstrap interval over
examples, the median commitment point of the sense margin, and selectivity (task minus control accuracy)
at the peak. Points are also given as relative depth (point / n_layers) so models of different depth
compare.

Extraction is cached per model and word under ``<out>/<model>/<word>.zarr``; a re-run only recomputes the
tables. Writes ``<out>/summary.parquet`` (+ .csv), ``<out>/probes.parquet`` and ``<out>/curves.parquet``.

Usage::

    python analyses/coarsewsd20.py --data ../shared/data/coarsewsd20 --models smollm2,minilm,gemma3-270m
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import trajgeo as tg
from trajgeo import report

ROOT = Path(__file__).resolve().parents[1]


def analyse_word(traj: tg.Trajectories, folds: int, random_state: int) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """The summary row, the layer-wise probe table and the margin curve of one word."""
    sweep = tg.probes.layerwise(traj, cv=folds, random_state=random_state, progress=False, return_result=True)
    pr = sweep.scores
    curves = tg.senses.curves(traj)
    com = tg.senses.commitment(traj)
    # the resolution point and its interval come from the same out-of-fold predictions (no refit)
    res = tg.probes.resolution_point(sweep, random_state=random_state)
    row = report.summarize({"probes": pr, "commitment": com, "resolution": res}, traj.meta).iloc[0].to_dict()
    margin = curves.query("metric == 'margin'").groupby("point")["value"].mean()
    row["margin_point0"] = margin.iloc[0]
    row["margin_last"] = margin.iloc[-1]
    return row, pr, margin.reset_index().rename(columns={"value": "margin"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "coarsewsd20")
    parser.add_argument("--models", default="smollm2,minilm")
    parser.add_argument("--words", default=None, help="comma-separated words (default: every word in --data)")
    parser.add_argument("--split", default="all", choices=["train", "test", "all"])
    parser.add_argument("--max-per-word", type=int, default=300,
                        help="stratified sample per word, to bound the time on 2 CPU cores (0: all)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "coarsewsd20")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    words = args.words.split(",") if args.words else tg.datasets.coarsewsd20_words(args.data)
    rows, probe_tables, curve_tables = [], [], []
    for name in args.models.split(","):
        lm = tg.load_model(name)
        for word in words:
            t0 = time.perf_counter()
            df = tg.datasets.read_coarsewsd20(args.data, word, split=args.split)
            if args.max_per_word:
                df = tg.datasets.stratified_sample(df, args.max_per_word, random_state=args.random_state)
            traj = tg.extract(lm, df, store=args.out / name / f"{word}.zarr", progress=not args.quiet)
            row, pr, margin = analyse_word(traj, args.folds, args.random_state)
            n_layers = traj.n_layers
            row.update({"model": name, "n_layers": n_layers, "seconds": time.perf_counter() - t0})
            for k in ("peak_point", "resolution_point"):
                if k in row:
                    row[f"{k}_relative"] = row[k] / n_layers
            rows.append(row)
            probe_tables.append(pr.assign(model=name, word=word))
            curve_tables.append(margin.assign(model=name, word=word, n_layers=n_layers))
            if not args.quiet:
                print(f"{name:12s} {word:8s} n={len(df):4d} peak {row.get('peak_accuracy', np.nan):.3f} "
                      f"at {row.get('peak_point')} ({row['seconds']:.0f} s)", flush=True)
    summary = pd.DataFrame(rows)
    first = ["model", "word", "n_examples", "examples_per_sense", "majority_baseline", "accuracy_point0",
             "peak_accuracy", "peak_point", "resolution_point", "resolution_ci_low", "resolution_ci_high",
             "commitment_median", "selectivity_at_peak"]
    summary = summary[[c for c in first if c in summary] + [c for c in summary if c not in first]]
    report.write_tables({"summary": summary, "probes": pd.concat(probe_tables, ignore_index=True),
                         "curves": pd.concat(curve_tables, ignore_index=True)}, args.out)
    summary.to_csv(args.out / "summary.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 200):
        print(summary.drop(columns=["examples_per_sense", "seconds"], errors="ignore").round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
