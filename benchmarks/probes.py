"""Layer-wise probe sweep against the straightforward loop, and the permutation null against one sweep.

The data: ``n`` examples x ``points`` points x ``dim`` dimensions (default 2,000 x 31 x 576,
SmolLM2's shape), random-walk trajectories (adjacent points are similar, as in a residual
stream) into which a two-class signal fades in from the middle points on, with sentence groups
of two examples each.

Part 1, the sweep (5 folds each; ratios against ``loop_1thread`` measured in the same run, the two
timed alternately, best of ``--repeat``, since on a shared machine the load changes within seconds):

- ``loop``: what users write first, ``cross_val_score(LogisticRegression(), X[:, p], y, cv=5)``
  for every point (one fixed C, unscaled features, no groups), with the machine's default BLAS
  threading (``--skip-loop`` leaves it out);
- ``loop_1thread``: the same loop with BLAS held to one thread (the setting trajgeo uses);
- ``layerwise``: ``tg.probes.layerwise`` as users call it: the default ridge probe, grouped
  stratified splits, per-fold standardisation, bootstrap intervals (1,000 replicates), ``n_jobs=1``;
- ``layerwise_logistic``: the same with ``probe="logistic"`` (the tuned logistic probe: 5 values of
  C by 3-fold grouped inner CV; the default before 0.3; ``--skip-logistic`` leaves it out).

Part 2, the null: for each size in ``--null-sizes`` (``n:points``), ``layerwise`` with the ridge
probe and ``n_boot=0``, plain and with ``--n-permutations`` (default 1,000) group-respecting label
permutations, timed alternately (best of 2; one run each when a run takes over a minute). The
ratio null / plain is the cost of the null in sweeps; the goal is < 3 for words up to ~600
examples. Both costs are linear in the number of points, so the largest sizes are timed on a few
points (the ratio is per point). CoarseWSD-20's largest word (bank, ~9,000 examples in the full
data set) is ``9000:3``.

Measured on the development machine (2 shared cores, load 8-10 from other jobs, so absolute
times are noisy; ratios come from alternating runs): see the module docstring of
:mod:`trajgeo.probes` (Speed) for the table.

Prints the tables and writes ``results/bench_probes.csv`` and ``results/bench_probes_null.csv``.
Usage: ``python benchmarks/probes.py [--n 2000] [--points 31] [--dim 576] [--skip-loop]
[--skip-logistic] [--null-sizes 600:31,3000:31,9000:3] [--n-permutations 1000] [--quick]``;
``--quick`` is 400 examples x 8 points without the default-threading loop and a null at 400 x 8
(a minute on a shared machine). With ``--n`` below 1,000 or ``--points`` below 31 and no
``--null-sizes``, the null is timed at ``n:points``.
"""

from __future__ import annotations

import argparse
import gc
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def synthetic(n: int, points: int, dim: int, seed: int = 0):
    import trajgeo as tg

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    steps = rng.normal(size=(n, points, dim)).astype(np.float32)
    x = np.cumsum(steps, axis=1) / np.sqrt(np.arange(1, points + 1))[None, :, None]
    strength = np.clip((np.arange(points) - points // 3) / (points / 3), 0, 1)  # fades in mid-way
    direction = rng.normal(size=dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    x += (2 * y - 1)[:, None, None] * strength[None, :, None] * 0.8 * direction[None, None, :] * 3
    meta = pd.DataFrame({"sense": np.where(y == 1, "river", "finance"), "group": np.arange(n) // 2})
    return tg.Trajectories(x.astype(np.float32), meta), y


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def alternate(fns: dict[str, Callable[[], Any]], repeat: int, long: float = 60.0) -> dict[str, tuple[float, Any]]:
    """Best time (and last result) of each function, run in turn ``repeat`` times (once when slow)."""
    best: dict[str, tuple[float, Any]] = {}
    for r in range(repeat):
        for name, fn in fns.items():
            dt, out = _timed(fn)
            if name not in best or dt < best[name][0]:
                best[name] = (dt, out)
        if max(t for t, _ in best.values()) > long:
            break
    return best


def loop(x: np.ndarray, y: np.ndarray, one_thread: bool) -> float:
    """The plain loop; returns its mean accuracy over points."""
    from contextlib import nullcontext

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from threadpoolctl import threadpool_limits

    accs = []
    with (threadpool_limits(1) if one_thread else nullcontext()), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for p in range(x.shape[1]):
            accs.append(cross_val_score(LogisticRegression(), x[:, p], y, cv=5).mean())
    return float(np.mean(accs))


def sweep(traj, **kw) -> float:
    """tg.probes.layerwise; returns its mean balanced accuracy over points."""
    import trajgeo as tg

    df = tg.probes.layerwise(traj, cv=5, n_jobs=1, random_state=0, progress=False, **kw)
    return float(df[(df.fold == -1) & (df.metric == "balanced_accuracy")]["value"].mean())


def part_sweep(args: argparse.Namespace) -> pd.DataFrame:
    traj, y = synthetic(args.n, args.points, args.dim)
    x = traj.states
    sweep(traj.select_points([0]), n_boot=5)  # imports and first-call costs out of the timings
    timed = alternate({"loop_1thread": lambda: loop(x, y, True), "layerwise": lambda: sweep(traj)}, args.repeat)
    rows = [("loop_1thread", "cross_val_score(LogisticRegression()) per point, BLAS at 1 thread",
             *timed["loop_1thread"]),
            ("layerwise", "tg.probes.layerwise: ridge probe, groups, standardise, 1,000 bootstrap replicates",
             *timed["layerwise"])]
    if not args.skip_loop:
        rows.insert(0, ("loop", "the same loop, default BLAS threading", *_timed(lambda: loop(x, y, False))))
    if not args.skip_logistic:
        rows.append(("layerwise_logistic", "tg.probes.layerwise(probe='logistic'): tuned C (5 x 3 inner folds)",
                     *_timed(lambda: sweep(traj, probe="logistic"))))
    df = pd.DataFrame(rows, columns=["method", "what", "seconds", "score"])
    df["score"] = [f"accuracy {s:.3f}" if m.startswith("loop") else f"balanced accuracy {s:.3f}"
                   for m, s in zip(df.method, df.score)]
    df["vs_loop_1thread"] = df["seconds"] / float(df.loc[df.method == "loop_1thread", "seconds"].iloc[0])
    df.insert(0, "shape", f"{args.n}x{args.points}x{args.dim}")
    return df


def part_null(args: argparse.Namespace, sizes: list[tuple[int, int]]) -> pd.DataFrame:
    rows = []
    for n, points in sizes:
        traj, _ = synthetic(n, points, args.dim, seed=1)
        kw = dict(probe="ridge", n_boot=0)
        timed = alternate({"plain": lambda: sweep(traj, **kw),
                           "null": lambda: sweep(traj, n_permutations=args.n_permutations, **kw)}, 2)
        rows.append({"shape": f"{n}x{points}x{args.dim}", "n_permutations": args.n_permutations,
                     "sweep_seconds": timed["plain"][0], "with_null_seconds": timed["null"][0],
                     "ratio": timed["null"][0] / timed["plain"][0]})
        print(f"  null at {n} x {points}: ratio {rows[-1]['ratio']:.2f}", flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--points", type=int, default=31)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs of the loop and the sweep (best of)")
    ap.add_argument("--skip-loop", action="store_true", help="skip the default-threading loop (slow on busy machines)")
    ap.add_argument("--skip-logistic", action="store_true", help="skip the tuned logistic sweep")
    ap.add_argument("--null-sizes", default=None, help="n:points,... for the null (default 600:31,3000:31,9000:3)")
    ap.add_argument("--n-permutations", type=int, default=1000)
    ap.add_argument("--quick", action="store_true",
                    help="400 examples x 8 points, no default-threading loop, the null at 400 x 8")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench_probes.csv")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.points, args.skip_loop = 400, 8, True
    if args.null_sizes:
        sizes = [tuple(int(v) for v in s.split(":")) for s in args.null_sizes.split(",")]
    elif args.n < 1000 or args.points < 31:
        sizes = [(args.n, args.points)]
    else:
        sizes = [(600, 31), (3000, 31), (9000, 3)]
    table = part_sweep(args)
    with pd.option_context("display.width", 200, "display.max_colwidth", 90):
        print(table.round(3).to_string(index=False), flush=True)
    null = part_null(args, sizes)
    with pd.option_context("display.width", 200):
        print(null.round(3).to_string(index=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    null_out = args.out.with_name(args.out.stem + "_null.csv")
    null.to_csv(null_out, index=False)
    print(f"\nwritten to {args.out} and {null_out}")
    return table, null


if __name__ == "__main__":
    main()
