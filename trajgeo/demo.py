"""`make demo`: the main job on the built-in default (SmolLM2, the built-in polysemy set).

Extracts every built-in word with SmolLM2 (components and heads included), runs the standard
analyses, draws the eight standard figures and writes ``report/index.html``; prints the per-point
table for ``bank`` and the summary per word. Run as
``python -m trajgeo.demo [--model smollm2] [--words bank,bass] [--out report]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["per_point_table", "main"]


def _loo_nearest_centroid(states: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Leave-one-out nearest-centroid accuracy per point (cosine, after per-point centring).

    Parameters
    ----------
    states : ndarray of shape (n_examples, n_points, d_model)
    labels : ndarray of shape (n_examples,)

    Returns
    -------
    ndarray of shape (n_points,); a tie between senses counts as wrong (chance, not credit).
    """
    x = states - states.mean(0, keepdims=True)
    classes, y = np.unique(labels, return_inverse=True)
    sums = np.stack([x[y == c].sum(0) for c in range(len(classes))])  # (C, P, D)
    counts = np.bincount(y, minlength=len(classes)).astype(np.float64)
    cos = np.empty((len(classes),) + x.shape[:2])
    xn = np.linalg.norm(x, axis=-1)
    for c in range(len(classes)):
        own = (y == c)[:, None, None]
        n_c = counts[c] - own[:, :, 0]
        cen = (sums[c][None] - own * x) / np.maximum(n_c, 1)[:, :, None]  # without the example itself
        cos[c] = (x * cen).sum(-1) / (xn * np.linalg.norm(cen, axis=-1) + 1e-12)
    best = cos.max(0)
    winners = np.isclose(cos, best[None], atol=1e-6).sum(0)
    own_cos = cos[y[:, None], np.arange(len(y))[:, None], np.arange(x.shape[1])[None]]
    right = (own_cos >= best - 1e-6) & (winners == 1)
    return right.mean(0)


def per_point_table(traj: "object", labels: str = "sense") -> pd.DataFrame:
    """The demo's per-point summary: mean norm, mean cosine to the final point, LOO centroid accuracy.

    Returns
    -------
    DataFrame with one row per point and columns point, mean_norm, mean_cos_to_final, loo_centroid_accuracy.
    """
    s = np.asarray(traj.states, dtype=np.float64)
    norms = np.linalg.norm(s, axis=-1)
    cos_final = (s * s[:, -1:]).sum(-1) / (norms * norms[:, -1:] + 1e-12)
    acc = np.full(s.shape[1], np.nan)
    for word, rows in traj.meta.groupby("word").groups.items() if "word" in traj.meta else [(None, traj.meta.index)]:
        rows = np.asarray(rows)
        if traj.meta[labels].iloc[rows].nunique() > 1:
            part = _loo_nearest_centroid(s[rows], traj.meta[labels].to_numpy()[rows])
            acc = np.where(np.isnan(acc), 0, acc) + part * len(rows)
    acc = acc / len(s)
    return pd.DataFrame({"point": traj.points, "mean_norm": norms.mean(0), "mean_cos_to_final": cos_final.mean(0),
                         "loo_centroid_accuracy": acc})


def main(argv: list[str] | None = None) -> int:
    import trajgeo as tg
    from trajgeo import report

    parser = argparse.ArgumentParser(prog="python -m trajgeo.demo", description=__doc__)
    parser.add_argument("--model", default="smollm2", help="any model trajgeo.load_model accepts (default: smollm2)")
    parser.add_argument("--words", default=None, help="comma-separated built-in words (default: all of them)")
    parser.add_argument("--out", default="report", type=Path, help="report folder (default: report)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    t0 = time.time()
    examples = tg.datasets.builtin(args.words.split(",") if args.words else None)
    index = report.build(args.model, examples, args.out, progress=not args.quiet)
    traj = tg.load(args.out / "trajectories.zarr")
    focus = "bank" if "bank" in set(traj.meta["word"]) else traj.meta["word"].iloc[0]
    table = per_point_table(traj[(traj.meta["word"] == focus).to_numpy()])
    summary = pd.read_parquet(args.out / "tables" / "summary.parquet")
    with pd.option_context("display.width", 160, "display.max_rows", 100, "display.max_columns", 20):
        print(f"\n{args.model}: {traj.n_examples} examples of {traj.meta['word'].nunique()} words; "
              f"per point for {focus!r} ({dict(traj.meta.loc[traj.meta['word'] == focus, 'sense'].value_counts())}):\n")
        print(table.round(3).to_string(index=False))
        print("\nsummary per word:\n")
        print(summary.drop(columns=["examples_per_sense"], errors="ignore").round(3).to_string(index=False))
    print(f"\nreport written to {index} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
