"""`make demo`: the main job on the built-in default (SmolLM2, the built-in polysemy set).

Extracts every built-in word with SmolLM2 (components and heads included), runs the standard
analyses with their permutation nulls (separability per point against a family-wise threshold is
the headline, for a causal model on the examples whose cue precedes the target), scores the lens
against the next token, runs a light causal trace on a few built-in minimal pairs per word, draws
the standard figures and writes ``report/index.html``; prints the headline, the per-point table
for ``bank`` and the summary per word. Budget: 10 minutes on 2 CPU cores. Run as
``python -m trajgeo.demo [--model smollm2] [--words bank,bass] [--out report] [--permutations 500]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trajgeo._api import changed_signature

__all__ = ["per_point_table", "main"]

#: The demo's budget choices (10 minutes on 2 CPU cores): permutations of every null, texts of the
#: next-token scores, built-in minimal pairs per word and kind of the light causal trace.
PERMUTATIONS = 500
NEXT_TOKEN_TEXTS = 30
CAUSAL_PAIRS = 1


@changed_signature(positional=("labels",))
def per_point_table(traj: Any, *, labels: Any = "sense") -> pd.DataFrame:
    """The demo's per-point summary: mean norm, mean cosine to the final point, LOO centroid accuracy.

    Norm and cosine to the final point come from :func:`trajgeo.geometry.path_metric_arrays`; the
    accuracy is :func:`trajgeo.senses.nearest_centroid_accuracy` after per-point centring on each
    word's own mean, pooled over the words that have two senses or more (weighted by examples).

    Parameters
    ----------
    traj : Trajectories
    labels : str or array-like of shape (n_examples,)
        The sense column (or the senses).

    Returns
    -------
    DataFrame with one row per point and columns point, mean_norm, mean_cos_to_final, loo_centroid_accuracy.
    """
    from trajgeo.geometry import path_metric_arrays
    from trajgeo.senses import nearest_centroid_accuracy

    path = path_metric_arrays(traj)
    acc = nearest_centroid_accuracy(traj, labels=labels, normalize="center").dropna(subset=["accuracy"])
    weighted = (acc["accuracy"] * acc["n_examples"]).groupby(acc["point"]).sum()
    pooled = (weighted / acc.groupby("point")["n_examples"].sum()).reindex(traj.points)
    return pd.DataFrame({"point": traj.points, "mean_norm": path["norm"].mean(0),
                         "mean_cos_to_final": np.nanmean(path["cos_to_final"], axis=0),
                         "loo_centroid_accuracy": pooled.to_numpy()})


def main(argv: list[str] | None = None) -> int:
    import warnings

    from trajgeo.cli import _one_line_warning

    with warnings.catch_warnings():  # restores showwarning on the way out
        warnings.showwarning = _one_line_warning  # one line per warning, not a line of trajgeo's source
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    import trajgeo as tg
    from trajgeo import report

    parser = argparse.ArgumentParser(prog="python -m trajgeo.demo", description=__doc__)
    parser.add_argument("--model", default="smollm2", help="any model trajgeo.load_model accepts (default: smollm2)")
    parser.add_argument("--words", default=None, help="comma-separated built-in words (default: all of them)")
    parser.add_argument("--out", default="report", type=Path, help="report folder (default: report)")
    parser.add_argument("--permutations", type=int, default=PERMUTATIONS,
                        help=f"permutations of every null (default: {PERMUTATIONS})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    t0 = time.time()
    examples = tg.datasets.builtin(args.words.split(",") if args.words else None)
    index = report.build(args.model, examples, args.out, n_permutations=args.permutations,
                         next_token_texts=NEXT_TOKEN_TEXTS, causal_pairs=CAUSAL_PAIRS, progress=not args.quiet)
    traj = tg.load(args.out / "trajectories.zarr")
    focus = "bank" if "bank" in set(traj.meta["word"]) else traj.meta["word"].iloc[0]
    table = per_point_table(traj[(traj.meta["word"] == focus).to_numpy()])
    tables = report.read_tables(args.out / "tables")
    summary = tables["summary"]
    print("\n" + "\n".join(report.headline_text(tables, args.permutations)))
    counts = traj.meta.loc[traj.meta["word"] == focus, "sense"].value_counts()
    senses = ", ".join(f"{sense}: {n}" for sense, n in counts.items())
    with pd.option_context("display.width", 160, "display.max_rows", 100, "display.max_columns", 20):
        print(f"\n{args.model}: {traj.n_examples} examples of {traj.meta['word'].nunique()} words; "
              f"per point for {focus!r} ({senses}):\n")
        print(table.round(3).to_string(index=False))
        print("\nsummary per word:\n")
        cols = ["word", "n_examples", "separability_peak", "separability_peak_point", "separability_null_fwer",
                "separability_p_holm", "separability_first_point_above_null", "surface_balanced_accuracy",
                "peak_kappa", "resolution_point", "superposition_balance", "superposition_p_value"]
        print(summary[[c for c in cols if c in summary]].round(3).to_string(index=False))
    print(f"\nreport written to {index} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
