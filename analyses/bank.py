"""The walk-through of trajgeo's idea on one word: how SmolLM2 resolves "bank".

1. Superposition: the context-free embedding of "bank" (point 0, the same for every context) is about
   equally close to the final prototype of each sense.
2. Convergence: the sense margin (cosine to the correct sense's final prototype minus the other's,
   leave-one-out) rises from about 0 at point 0 to clearly positive near the top.
3. Commitment: the distribution of the point after which the margin stays positive.
4. Attribution: which layers' attention and MLP writes, and which heads, push toward each sense.
5. The logit lens read-out: the log-odds of river words against money words, per point.

Writes the tables (parquet) to ``results/bank/tables`` (the figure scripts ``figures/bank_*.py`` read
them) and prints the findings. Extraction is cached in ``results/bank/trajectories.zarr``.

Usage: ``python analyses/bank.py [--model smollm2] [--data builtin | ../shared/data/coarsewsd20] [--out results/bank]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

import trajgeo as tg
from trajgeo import report

ROOT = Path(__file__).resolve().parents[1]


def examples(data: str, word: str, max_examples: int | None) -> pd.DataFrame:
    if data == "builtin":
        df = tg.datasets.builtin([word])
    else:
        df = tg.datasets.read_coarsewsd20(data, word, split="all")
    if max_examples:
        df = tg.datasets.stratified_sample(df, max_examples, random_state=0)
    return df


def findings(tables: dict[str, pd.DataFrame]) -> str:
    """The walk-through's numbers as readable lines."""
    lines = []
    sup = tables["superposition"]
    lines.append("superposition at the embedding (cosine of point 0 with each sense's final prototype): "
                 + ", ".join(f"{r.sense} {r.cosine:+.3f}" for r in sup.itertuples())
                 + f"; balance {sup['balance'].iloc[0]:.2f}")
    margin = tables["curves"].query("metric == 'margin'")
    ci = tg.stats.bootstrap_ci(margin, by=("point",), random_state=0)
    pts = sorted(set([0, 1, 5, 10, 15, 20, 25, int(ci['point'].max())]) & set(ci["point"]))
    lines.append("margin by point (mean [95% CI]): " + "; ".join(
        f"{r.point}: {r.mean:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
        for r in ci.set_index("point").loc[pts].reset_index().itertuples()))
    com = tables["commitment"]["commitment_point"]
    lines.append(f"commitment point: median {com.median():.0f}, quartiles {com.quantile(.25):.0f}-"
                 f"{com.quantile(.75):.0f}, never committed {com.isna().mean():.0%}")
    if "attribution" in tables:
        a = tables["attribution"]
        comp = (a[a["component"] != "head"].groupby(["component", "layer"])["attribution"].mean()
                .sort_values(ascending=False))
        lines.append("largest mean pushes toward the correct sense: "
                     + ", ".join(f"{c} L{l} {v:+.2f}" for (c, l), v in comp.head(5).items()))
        heads = a[a["component"] == "head"]
        if len(heads):
            h = heads.groupby(["layer", "head"])["attribution"].mean().sort_values(ascending=False)
            lines.append("top heads: " + ", ".join(f"L{l}.H{k} {v:+.2f}" for (l, k), v in h.head(5).items()))
            for sense, g in heads.groupby("sense"):
                hs = g.groupby(["layer", "head"])["attribution"].mean().sort_values(ascending=False)
                lines.append(f"  toward {sense}: " + ", ".join(f"L{l}.H{k} {v:+.2f}" for (l, k), v in hs.head(3).items()))
    if "lens" in tables:
        lo = tables["lens"].query("metric == 'sense_log_odds'")
        by = lo.groupby("point")["value"].mean()
        last = int(by.index.max())
        lines.append("lens sense-word log-odds (correct vs other senses' words), mean: "
                     + ", ".join(f"point {p} {by.loc[p]:+.2f}" for p in [0, last // 3, 2 * last // 3, last]
                                 if p in by.index))
    return "\n".join(lines)


def _count(text: str) -> int:
    """A number of examples: an integer >= 0 (0: all), nothing coerced."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: all), got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--word", default="bank")
    parser.add_argument("--data", default="builtin", help="'builtin' or a CoarseWSD-20 folder")
    parser.add_argument("--max-examples", type=_count, default=400,
                        help="stratified sample, at least one example per sense (0: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bank")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        df = examples(args.data, args.word, args.max_examples)
    except ValueError as err:  # a bad word, data folder or sample size: one line, before any model loads
        parser.error(str(err))
    lm = tg.load_model(args.model)
    traj = tg.extract(lm, df, components=True, heads=True, store=args.out / "trajectories.zarr",
                      progress=not args.quiet)
    tables = report.analyze(traj, model=lm if lm.adapter.unembed is not None else None,
                            out=args.out / "tables", progress=not args.quiet)
    text = findings(tables)
    (args.out / "findings.txt").write_text(text + "\n")
    print(f"{args.model}, {traj.n_examples} examples of {args.word!r} ({args.data}):\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
