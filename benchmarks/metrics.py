"""Analysis cost against the numpy floor, and how it grows with the number of examples.

The data: synthetic trajectories, ``n`` examples x 31 points x ``d`` dimensions (SmolLM2's shape
for d = 576): random walks into which a two-sense signal fades in from the middle points, two
words, sentence groups of two examples.

The floor is one numpy pass over the same array, ``np.linalg.norm(states, axis=-1)`` (best of 3).
Each analysis function is timed on the same array (best of 3 below 2 s, else one run) and reported
as a ratio to the floor. Functions from ``trajgeo.senses``, ``trajgeo.probes`` and
``trajgeo.projections`` are timed when those modules provide them; a function is skipped at a size
where its predicted time (linear in n from the previous size) exceeds ``--budget`` seconds.

Three functions also have a *reference*: plain numpy that computes the same numbers the direct way,
timed in the same run, alternating with the library (best of 3 each; column ``vs_reference`` =
library / reference; the aim is < 2).
``tests/test_benchmark_references.py`` checks on small data that each reference gives the library's
numbers, so the comparison is honest.

- :func:`population_reference` (``geometry.population_metrics``): all vectors in memory, unit
  vectors, per-word sums for the self-similarity, a loop over sentence groups, per-word Gram
  matrices with their top eigenvalue (ARPACK) for the maximum explainable variance, one
  nearest-neighbour search per point (scikit-learn) for TwoNN after ``np.unique`` over the rows'
  bytes, per-sense means for the scatter ratio. It takes its random draws (pairs, capped subsets,
  baseline draws, TwoNN order) from the library's ``_Plan``: the reference is about the
  computation, not the sampling.
- :func:`pca_reference` (``projections pca fit+coords``): standardise every point with numpy, one
  SVD of the covariance of all normalised vectors, one product for the coordinates, the tidy frame.
- :func:`commitment_reference` (``senses.commitment``): standardise, per word the prototype sums,
  leave-one-out cosines to the last point's prototypes and to each point's own prototypes by matrix
  products, then the suffix rule.

Sizes (default): 1k and 10k at d = 576, and 1k, 10k, 100k at d = 64. 100k x 31 x 576 float32 would
be 7.1 GB in memory, too much for a shared machine, hence the smaller d for the growth curve.

Prints a table and writes ``results/bench_metrics.csv``. Usage:
``python benchmarks/metrics.py [--quick] [--sizes 10000:576] [--only population,pca] [--budget 120]
[--out results/bench_metrics.csv]``.
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


# ====================================================================== references
def _word_codes(traj) -> tuple[np.ndarray, np.ndarray]:
    col = traj.meta["word"].to_numpy() if "word" in traj.meta.columns else np.zeros(traj.n_examples)
    names, codes = np.unique(col.astype(str), return_inverse=True)
    return names, codes.reshape(-1)


def _standardized(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Every point centred and scaled per dimension, statistics of all examples, float32."""
    mean = x.mean(axis=0, dtype=np.float64)
    std = np.maximum(x.std(axis=0, dtype=np.float64), eps)
    return ((x - mean) / std).astype(np.float32)


def population_reference(traj, *, max_samples: int | None = 5000, random_state: int = 0, n_pairs: int = 2000,
                         n_baseline_draws: int = 5, max_examples: int | None = 500) -> dict[str, np.ndarray]:
    """``population_metrics(traj, normalize=None, ...)`` the direct way, top to bottom (one long
    function on purpose: it is the obvious program, not a design).

    Returns a dict: ``anisotropy``, ``intra_sentence_similarity``, ``intrinsic_dimension`` of shape
    (n_points,); ``self_similarity``, ``max_explainable_variance``,
    ``adjusted_max_explainable_variance``, ``max_explainable_variance_baseline_sd``,
    ``between_within_ratio`` of shape (n_words, n_points), words in sorted order.
    """
    from trajgeo.geometry.cloud import TWONN_MIN_DISTINCT  # a policy, not a computation: the same cut-off
    from scipy.sparse.linalg import eigsh
    from sklearn.neighbors import NearestNeighbors

    from trajgeo.geometry.population import _Plan

    x = np.asarray(traj.states, dtype=np.float32)
    n, p, d = x.shape
    names, words = _word_codes(traj)
    W = len(names)
    plan = _Plan.draw(words, W, n_pairs=n_pairs, n_baseline_draws=n_baseline_draws,
                      max_examples=max_examples, random_state=random_state)
    nrm = np.linalg.norm(x, axis=-1, keepdims=True)
    u = x / np.where(nrm > 0, nrm, 1)
    out: dict[str, np.ndarray] = {}
    i, j = plan.pairs
    out["anisotropy"] = np.einsum("kpd,kpd->p", u[i], u[j], dtype=np.float64) / len(i)
    ss = np.full((W, p), np.nan)
    for w in range(W):
        m = int((words == w).sum())
        if m >= 2:
            s = u[words == w].sum(axis=0, dtype=np.float64)
            ss[w] = ((s * s).sum(-1) - (nrm[words == w, :, 0] > 0).sum(0)) / (m * (m - 1))
    out["self_similarity"] = ss
    groups = traj.meta["group"].to_numpy()
    scores = []
    for g in np.unique(groups):
        js = np.flatnonzero(groups == g)
        if len(js) >= 2:
            mean = x[js].mean(axis=0, dtype=np.float64)
            mn = np.linalg.norm(mean, axis=-1)
            scores.append(np.where(mn > 0, np.einsum("npd,pd->np", u[js], mean).mean(0) / np.where(mn > 0, mn, 1), 0.0))
    out["intra_sentence_similarity"] = np.mean(scores, axis=0) if scores else np.full(p, np.nan)

    def mev(rows: np.ndarray) -> np.ndarray:  # per point: top eigenvalue of the Gram matrix over its trace
        xt = np.ascontiguousarray(x[rows].transpose(1, 0, 2))
        gram = xt @ xt.transpose(0, 2, 1)
        v0 = np.random.default_rng(0).uniform(0.5, 1.5, size=len(rows))
        top = np.array([eigsh(g.astype(np.float64), k=1, which="LA", v0=v0, tol=1e-10, return_eigenvectors=False)[0]
                        for g in gram])
        return top / np.einsum("pmm->p", gram.astype(np.float64))

    mv, adj, sd = (np.full((W, p), np.nan) for _ in range(3))
    for w, idx, draws in plan.mev:
        mv[w] = mev(idx)
        if draws:
            base = np.stack([mev(r) for r in draws])
            adj[w] = mv[w] - base.mean(0)
            if len(draws) > 1:
                sd[w] = base.std(0, ddof=1)
    out.update(max_explainable_variance=mv, adjusted_max_explainable_variance=adj,
               max_explainable_variance_baseline_sd=sd)
    idim = np.full(p, np.nan)
    for k in range(p):
        xp = np.ascontiguousarray(x[:, k])
        first = np.sort(np.unique(xp.view(np.dtype((np.void, 4 * d))).ravel(), return_index=True)[1])
        if max_samples is not None and len(first) > max_samples:
            first = np.sort(first[np.argsort(plan.rank[first], kind="stable")[:max_samples]])
        if len(first) >= TWONN_MIN_DISTINCT:  # below it the library reports NaN (the estimate is mostly noise)
            dist = NearestNeighbors(n_neighbors=3).fit(xp[first]).kneighbors(xp[first])[0].astype(np.float64)
            keep = dist[:, 1] > 0
            idim[k] = (keep.sum() - 1) / np.log(dist[keep, 2] / dist[keep, 1]).sum()
    out["intrinsic_dimension"] = idim
    senses = traj.meta["sense"].to_numpy()
    bw = np.full((W, p), np.nan)
    for w in range(W):
        rows = np.flatnonzero(words == w)
        mu = x[rows].mean(axis=0, dtype=np.float64)
        between = within = 0.0
        for s in np.unique(senses[rows]):
            js = rows[senses[rows] == s]
            ms = x[js].mean(axis=0, dtype=np.float64)
            between = between + len(js) * ((ms - mu) ** 2).sum(-1)
            within = within + ((x[js] - ms) ** 2).sum(axis=(0, 2))
        if len(np.unique(senses[rows])) >= 2:
            with np.errstate(invalid="ignore", divide="ignore"):
                bw[w] = between / within
    out["between_within_ratio"] = bw
    return out


def pca_reference(traj, n_components: int = 2) -> tuple[pd.DataFrame, np.ndarray]:
    """``projections.fit(traj, method="pca").coords(traj)`` the direct way: standardise every point,
    one SVD of the covariance of all normalised vectors, one product. Returns the tidy frame and
    the explained variance ratio."""
    x = np.asarray(traj.states, dtype=np.float32)
    n, p, d = x.shape
    flat = _standardized(x).reshape(n * p, d)
    centred = flat - flat.mean(axis=0, dtype=np.float64).astype(np.float32)
    _, s, vt = np.linalg.svd(centred.T @ centred)
    comps = vt[:n_components] * np.sign(vt[:n_components][np.arange(n_components), np.abs(vt[:n_components]).argmax(1)])[:, None]
    y = (centred @ comps.T.astype(np.float32)).reshape(n, p, n_components)
    df = pd.DataFrame({"example": np.repeat(traj.meta["example"].to_numpy(), p), "point": np.tile(traj.points, n)})
    for k, name in enumerate("xyz"[:n_components]):
        df[name] = y[..., k].reshape(-1)
    for c in ("word", "sense"):
        if c in traj.meta.columns:
            df[c] = np.repeat(traj.meta[c].to_numpy(), p)
    return df, s[:n_components] / s.sum()


def _suffix_onset(ok: np.ndarray, points: np.ndarray) -> np.ndarray:
    """First point from which ``ok`` (n, P) holds through the last; NaN where it fails at the end."""
    out = np.full(len(ok), np.nan)
    for i, row in enumerate(ok):
        if row[-1]:
            out[i] = points[len(row) - np.argmin(row[::-1])] if not row.all() else points[0]
    return out


def commitment_reference(traj, threshold: float = 0.0) -> pd.DataFrame:
    """``senses.commitment(traj)`` the direct way (standardised, leave-one-out): per word, cosines of
    every point with every sense prototype of the last point and of the point itself by matrix
    products, the leave-one-out correction for the example's own sense, then the suffix rule."""
    z = _standardized(np.asarray(traj.states, dtype=np.float32)).astype(np.float64)
    n, p, d = z.shape
    _, words = _word_codes(traj)
    senses = traj.meta["sense"].to_numpy()
    zz = np.einsum("npd,npd->np", z, z)
    at_mean = zz <= 1e-12 * zz.max()  # a vector at the mean prefers no sense: cosine 0
    margin, margin_same = np.full((n, p), np.nan), np.full((n, p), np.nan)
    for w in np.unique(words):
        rows = np.flatnonzero(words == w)
        labels, own = np.unique(senses[rows], return_inverse=True)
        e = np.eye(len(labels))[own]  # (m, K): 1 where the example sits in the sum
        zr, m = z[rows], len(rows)
        sums = np.matmul(e.T, zr.transpose(1, 0, 2)).transpose(1, 0, 2)  # (K, P, d)
        last = sums[:, -1]  # (K, d)
        # against the last point's prototypes: z_i(l) . (S_k - e_ik x_i) with x_i = z_i(L)
        dot = (zr.reshape(m * p, d) @ last.T).reshape(m, p, -1) - e[:, None] * np.einsum("mpd,md->mp", zr, zr[:, -1])[..., None]
        xs = zr[:, -1] @ last.T  # (m, K)
        sq = (last * last).sum(1)[None] - 2 * e * xs + e * (zr[:, -1] ** 2).sum(1)[:, None]  # |S_k - e x_i|^2
        margin[rows] = _loo_margin(dot, sq[:, None, :], zz[rows], at_mean[rows], e, own)
        # against each point's own prototypes: the example is in the sum at the point it is scored at
        dot = np.matmul(zr.transpose(1, 0, 2), sums.transpose(1, 2, 0)).transpose(1, 0, 2)  # (m, P, K)
        sq = np.einsum("kpd,kpd->pk", sums, sums)[None] - 2 * e[:, None] * dot + e[:, None] * zz[rows][..., None]
        margin_same[rows] = _loo_margin(dot - e[:, None] * zz[rows][..., None], sq, zz[rows], at_mean[rows], e, own)
    with np.errstate(invalid="ignore"):
        above, correct = margin > threshold, margin_same > 0
    df = traj.meta[["example"] + [c for c in ("word", "sense") if c in traj.meta.columns]].copy()
    df["commitment_point"] = _suffix_onset(above, traj.points)
    df["stable_point"] = _suffix_onset(correct, traj.points)
    return df.reset_index(drop=True)


def _loo_margin(dot: np.ndarray, sq: np.ndarray, zz: np.ndarray, at_mean: np.ndarray, e: np.ndarray,
                own: np.ndarray) -> np.ndarray:
    """Cosine to the own sense minus the best other sense, (m, P), from the leave-one-out dot
    products (m, P, K) and squared prototype norms; an emptied prototype gives NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / np.sqrt(zz[..., None] * np.maximum(sq, 0.0))
    cos = np.where(at_mean[..., None], 0.0, cos)
    cos = np.where((e.sum(0) - e > 0)[:, None, :], cos, np.nan)
    own_cos = cos[np.arange(len(own)), :, own]
    other = np.where(e[:, None, :] > 0, -np.inf, np.nan_to_num(cos, nan=-np.inf)).max(-1)
    return own_cos - np.where(np.isinf(other), np.nan, other)


REFERENCES: dict[str, Callable[[Any], Any]] = {
    "geometry.population_metrics": lambda t: population_reference(t, max_samples=2000),
    "projections pca fit+coords": pca_reference,
    "senses.commitment": commitment_reference,
}


# ====================================================================== the run
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


def paired_best_time(fn: Callable[[], Any], ref: Callable[[], Any], repeat: int = 3) -> tuple[float, float]:
    """Best of ``repeat`` alternating runs of ``fn`` and ``ref`` (on a shared machine the load
    changes within seconds; alternating exposes both to it alike)."""
    a, b = [], []
    for _ in range(repeat):
        a.append(best_time(fn, repeat=1))
        b.append(best_time(ref, repeat=1))
    return min(a), min(b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1k examples only (a smoke run)")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated n:d pairs, e.g. 1000:576,10000:576,100000:64")
    parser.add_argument("--budget", type=float, default=120.0, help="skip calls predicted to take longer (s)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_metrics.csv")
    parser.add_argument("--only", default=None,
                        help="comma-separated parts of function names to time, e.g. population,pca,commitment")
    args = parser.parse_args(argv)
    if args.sizes:
        sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")]
    elif args.quick:
        sizes = [(1000, 576)]
    else:
        sizes = [(1000, 576), (10_000, 576), (1000, 64), (10_000, 64), (100_000, 64)]

    warnings.filterwarnings("ignore", category=UserWarning)
    funcs = candidates()
    if args.only:
        funcs = [f for f in funcs if any(part in f[0] for part in args.only.split(","))]
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
                    if name in REFERENCES:  # alternate the two, so that a busy spell hits both alike
                        sec, ref = paired_best_time(lambda: fn(traj), lambda: REFERENCES[name](traj))
                        row.update(reference_s=ref, vs_reference=sec / ref)
                    else:
                        sec = best_time(lambda: fn(traj))
                    row.update(seconds=sec, ratio=sec / floor, note="")
                    last[(name, d)] = (n, sec)
                except Exception as exc:  # a broken function must not hide the others' numbers
                    row.update(seconds=np.nan, ratio=np.nan, note=f"error: {type(exc).__name__}: {exc}"[:120])
            rows.append(row)
            vs = f"  reference {row['reference_s']:7.3f} s = {row['vs_reference']:.2f}x" if "vs_reference" in row else ""
            print(f"  {name:38s} {row['seconds']:9.3f} s  {row['ratio']:8.1f}x{vs}  {row['note']}", flush=True)
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
    if "vs_reference" in table.columns:
        refs = table.dropna(subset=["vs_reference"])
        for _, r in refs.iterrows():
            print(f"{r['function']} at {r['n_examples']:,} x {N_POINTS} x {r['d_model']}: {r['vs_reference']:.2f}x its "
                  f"plain-numpy reference ({r['seconds']:.2f} s vs {r['reference_s']:.2f} s; aim < 2x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
