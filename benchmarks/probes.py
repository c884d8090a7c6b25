"""Layer-wise probe sweep against the straightforward loop, on the same synthetic data.

The data: ``n`` examples x ``points`` points x ``dim`` dimensions (default 2,000 x 31 x 576,
SmolLM2's shape), random-walk trajectories (adjacent points are similar, as in a residual
stream) into which a two-class signal fades in from the middle points on, with sentence groups
of two examples each.

Compared, each with 5 folds:

- ``loop``: what users write first, ``cross_val_score(LogisticRegression(), X[:, p], y, cv=5)``
  for every point (one fixed C, unscaled features, no groups, no control task), with the
  machine's default BLAS threading;
- ``loop_1thread``: the same loop with BLAS held to one thread (the setting trajgeo uses);
- ``layerwise``: ``tg.probes.layerwise`` with the tuned logistic probe (5 values of C by 3-fold
  grouped inner CV), grouped splits, control task and bootstrap intervals, ``n_jobs=1``;
- ``layerwise_nocontrol``: the same without the control task.

Prints a table (seconds, ratio to the loop, mean accuracy over points) and writes
``results/bench_probes.csv``. Usage: ``python benchmarks/probes.py [--n 2000] [--points 31]
[--dim 576] [--skip-loop] [--quick]``; ``--quick`` is 400 examples x 8 points without the
default-threading loop (under a minute on a shared machine), the ratios still against the
one-thread loop measured in the same run.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

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


def run_loop(x: np.ndarray, y: np.ndarray, one_thread: bool, n_points: int | None = None) -> tuple[float, float]:
    """Seconds and mean accuracy of the plain loop; on the first ``n_points`` only, time scaled to all."""
    from contextlib import nullcontext

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    accs = []
    with (threadpool_limits(1) if one_thread else nullcontext()), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for p in range(n_points or x.shape[1]):
            accs.append(cross_val_score(LogisticRegression(), x[:, p], y, cv=5).mean())
    return (time.perf_counter() - t0) * x.shape[1] / len(accs), float(np.mean(accs))


def run_layerwise(traj, control: bool) -> tuple[float, float]:
    import trajgeo as tg

    t0 = time.perf_counter()
    df = tg.probes.layerwise(traj, control=control, cv=5, n_jobs=1, random_state=0, progress=False)
    dt = time.perf_counter() - t0
    acc = df[(df.fold == -1) & (df.metric == "accuracy")]["value"].mean()
    return dt, float(acc)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--points", type=int, default=31)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--skip-loop", action="store_true", help="skip the default-threading loop (slow on busy machines)")
    ap.add_argument("--loop-points", type=int, default=None,
                    help="time the default-threading loop on this many points and scale to all (saves minutes)")
    ap.add_argument("--quick", action="store_true",
                    help="400 examples x 8 points, no default-threading loop (overrides --n, --points, --skip-loop)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench_probes.csv")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.points, args.skip_loop = 400, 8, True
    traj, y = synthetic(args.n, args.points, args.dim)
    x = traj.states
    rows = []
    if not args.skip_loop:
        what = "cross_val_score(LogisticRegression()) per point"
        if args.loop_points:
            what += f" (timed on {args.loop_points} points, scaled)"
        rows.append(("loop", what, *run_loop(x, y, False, args.loop_points)))
    rows.append(("loop_1thread", "the same loop, BLAS at 1 thread", *run_loop(x, y, True)))
    rows.append(("layerwise", "tg.probes.layerwise, tuned C, control, groups", *run_layerwise(traj, True)))
    rows.append(("layerwise_nocontrol", "tg.probes.layerwise, control=False", *run_layerwise(traj, False)))
    df = pd.DataFrame(rows, columns=["method", "what", "seconds", "mean_accuracy"])
    ref = df["seconds"].iloc[0]
    df["speedup_vs_" + df["method"].iloc[0]] = ref / df["seconds"]
    df.insert(0, "shape", f"{args.n}x{args.points}x{args.dim}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    with pd.option_context("display.width", 160, "display.max_colwidth", 60):
        print(df.round(3).to_string(index=False))
    print(f"\nwritten to {args.out}")
    return df


if __name__ == "__main__":
    main()
