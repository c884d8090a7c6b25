"""Analysis cost against the numpy floor, and how it grows with the number of examples.

The data: synthetic trajectories, ``n`` examples x 31 points x ``d`` dimensions (SmolLM2's shape
for d = 576): random walks into which a two-sense signal fades in from the middle points, two
words, sentence groups of two examples.

The floor is one numpy pass over the same array, ``np.linalg.norm(states, axis=-1)`` (best of 3).
Each analysis function is timed on the same array (best of 3 below 2 s, else one run) and reported
as a ratio to the floor. Functions from ``trajgeo.senses``, ``trajgeo.probes`` and
``trajgeo.projections`` are timed when those modules provide them; a function is skipped at a size
where its predicted time (linear in n from the previous size) exceeds ``--budget`` seconds.

Sizes (default): 1k and 10k at d = 576, and 1k, 10k, 100k at d = 64. 100k x 31 x 576 float32 would
be 7.1 GB in memory, too much for a shared machine, hence the smaller d for the growth curve.

Prints a table and writes ``results/bench_metrics.csv``. Usage:
``python benchmarks/metrics.py [--quick] [--budget 120] [--out results/bench_metrics.csv]``.
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
N_POINTS = 31


def synthetic(n: int, d: int, seed: int = 0):
    """Trajectories with a planted two-sense structure; float32 (n, 31, d)."""
    import trajgeo as tg

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.empty((n, N_POINTS, d), dtype=np.float32)
    x[:, 0] = rng.standard_normal(d, dtype=np.float32)  # the shared context-free embedding
    steps = rng.standard_normal((n, N_POINTS - 1, d), dtype=np.float32)
    np.cumsum(steps, axis=1, out=x[:, 1:])
    x[:, 1:] += x[:, :1]
    del steps
    direction = rng.standard_normal(d).astype(np.float32)
    direction /= np.linalg.norm(direction)
    strength = np.clip((np.arange(N_POINTS) - N_POINTS // 3) / (N_POINTS / 3), 0, 1).astype(np.float32)
    x += (2 * y - 1).astype(np.float32)[:, None, None] * (4 * strength)[None, :, None] * direction
    meta = pd.DataFrame({
        "word": np.where(np.arange(n) % 2 == 0, "bank", "spring"),
        "sense": np.where(y == 1, "a", "b"),
        "group": np.arange(n) // 2,
    })
    return tg.Trajectories(x, meta)


def candidates() -> list[tuple[str, Callable[[Any], Any], int]]:
    """(name, function of traj, largest n to try) for every analysis function that is importable."""
    import trajgeo as tg

    out: list[tuple[str, Callable[[Any], Any], int]] = []

    def add(name: str, make: Callable[[], Callable[[Any], Any]], max_n: int = 10**9) -> None:
        try:
            out.append((name, make(), max_n))
        except (ImportError, AttributeError) as exc:  # module or function not there (yet)
            print(f"skip {name}: {exc}")

    geo = tg.geometry
    add("geometry.path_metric_arrays", lambda: (lambda t: geo.path_metric_arrays(t)))
    add("geometry.path_metrics (long table)", lambda: (lambda t: geo.path_metrics(t)))
    add("geometry.path_metrics standardize", lambda: (lambda t: geo.path_metrics(t, normalize="standardize")))
    add("geometry.rogue_dimensions", lambda: (lambda t: geo.rogue_dimensions(t)))
    add("geometry.population_metrics", lambda: (lambda t: geo.population_metrics(t, max_samples=2000)), 10_000)
    add("geometry.cka (1000 examples)", lambda: (lambda t: geo.cka(t, max_examples=1000)))

    def senses(name: str, **kw: Any) -> Callable[[], Callable[[Any], Any]]:
        def make() -> Callable[[Any], Any]:
            fn = getattr(tg.senses, name)
            return lambda t: fn(t, **kw)
        return make

    add("senses.curves", senses("curves"))
    add("senses.commitment", senses("commitment"))
    add("senses.superposition", senses("superposition"))
    add("senses.reinforcement", senses("reinforcement"))

    def probes() -> Callable[[Any], Any]:
        fn = tg.probes.layerwise
        return lambda t: fn(t, probe="prototype", control=False, n_boot=200)

    add("probes.layerwise prototype", probes, 10_000)

    def projections() -> Callable[[Any], Any]:
        fit = tg.projections.fit
        return lambda t: fit(t, method="pca").coords(t)

    add("projections pca fit+coords", projections)
    return out


def best_time(fn: Callable[[], Any], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if times[-1] > 2.0:  # long calls: one run is precise enough
            break
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1k examples only (a smoke run)")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated n:d pairs, e.g. 1000:576,10000:576,100000:64")
    parser.add_argument("--budget", type=float, default=120.0, help="skip calls predicted to take longer (s)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_metrics.csv")
    args = parser.parse_args(argv)
    if args.sizes:
        sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")]
    elif args.quick:
        sizes = [(1000, 576)]
    else:
        sizes = [(1000, 576), (10_000, 576), (1000, 64), (10_000, 64), (100_000, 64)]

    warnings.filterwarnings("ignore", category=UserWarning)
    funcs = candidates()
    rows = []
    last: dict[tuple[str, int], tuple[int, float]] = {}  # (name, d) -> (n, seconds) of the previous size
    for n, d in sizes:
        traj = synthetic(n, d)
        floor = best_time(lambda: np.linalg.norm(traj.states, axis=-1))
        print(f"\nn={n:,} x {N_POINTS} x d={d}: floor (np.linalg.norm over the last axis) {floor:.3f} s", flush=True)
        for name, fn, max_n in funcs:
            row = dict(function=name, n_examples=n, n_points=N_POINTS, d_model=d, floor_s=floor)
            prev = last.get((name, d))
            predicted = prev[1] * n / prev[0] if prev else 0.0
            if n > max_n or predicted > args.budget:
                note = f"skipped (above max n {max_n:,})" if n > max_n else f"skipped (predicted {predicted:.0f} s)"
                row.update(seconds=np.nan, ratio=np.nan, note=note)
            else:
                try:
                    sec = best_time(lambda: fn(traj))
                    row.update(seconds=sec, ratio=sec / floor, note="")
                    last[(name, d)] = (n, sec)
                except Exception as exc:  # a broken function must not hide the others' numbers
                    row.update(seconds=np.nan, ratio=np.nan, note=f"error: {type(exc).__name__}: {exc}"[:120])
            rows.append(row)
            print(f"  {name:38s} {row['seconds']:9.3f} s  {row['ratio']:8.1f}x  {row['note']}", flush=True)
        del traj
        gc.collect()

    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    head = table[(table["function"] == "geometry.path_metric_arrays") & (table["n_examples"] == 10_000)
                 & (table["d_model"] == 576)]
    if len(head):
        print(f"\nall per-example path metrics, 10,000 x 31 x 576: {head['ratio'].item():.1f}x the numpy floor "
              f"(aim < 10x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
