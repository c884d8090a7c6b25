"""Is depth needed to resolve? Toy models of 1, 2 and 4 layers on composition levels 1 and 2.

On the planted-ambiguity language (:class:`trajgeo.toy.ToyLanguage`) a level-1 target is resolved by
one attention hop to its cue; a level-2 target needs two (the cue is itself ambiguous: its sense is the
modifier token right before it, which one layer cannot pair with it). For every depth x level x seed the
script

1. trains a GPT-2-style model (:func:`trajgeo.toy.train`, cached on disk) and records steps and seconds;
2. measures continuation accuracy on fresh sequences (chance = 1 / n_senses);
3. extracts the target's trajectory on held-out sequences and finds where trajgeo says the sense is
   resolved: the probe resolution point (:func:`trajgeo.probes.resolution_point`, first point reaching
   95% of the best layer-wise probe accuracy), the median commitment point of the sense margin
   (:func:`trajgeo.senses.commitment`) and the leave-one-out nearest-centroid accuracy per point
   (:func:`trajgeo.senses.nearest_centroid_accuracy`, within words, pooled);
4. writes ``runs.parquet``/``runs.csv`` (one row per model), ``points.parquet``/``points.csv`` (per-point
   probe and centroid accuracy) to ``--out`` and a figure ``depth.pdf``/``depth.png`` (continuation
   accuracy and resolution point against depth, one line per level), and prints the table.

Usage::

    python analyses/depth.py [--depths 1,2,4] [--levels 1,2] [--seeds 0,1,2] [--steps 1:400,2:800]
                             [--jobs 2] [--threads 1] [--out results/depth]

``--jobs N`` trains N models at once, each process pinned to its own ``--threads`` cores (where the
machine has them), so that per-model times stay those of a ``--threads``-core machine. One thread per
model is the default: these models are too small to gain from two, and on a busy machine two threads
waiting for each other made training up to 30x slower (measured; see :func:`trajgeo.toy.train`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import trajgeo as tg  # noqa: E402
from trajgeo.toy import ToyLanguage, continuation_accuracy, train  # noqa: E402

__all__ = ["language", "run_one", "sweep", "figure", "main"]

# The sweep's language: 4 words x 2 senses, 1 distractor chain (balanced modifiers), default cue window.
LANGUAGE = dict(n_words=4, n_senses=2, distractors=1, vocab=16)
EVAL_SEED = 987_654  # sequences for accuracy and extraction: never the training stream (seed + 10_000)


def language(level: int) -> ToyLanguage:
    """The sweep's language at a composition level."""
    return ToyLanguage(level=level, **LANGUAGE)


def run_one(level: int, n_layers: int, seed: int, n_steps: int, n_eval: int = 2000, n_extract: int = 400,
            threads: int | None = 1) -> tuple[dict[str, Any], pd.DataFrame]:
    """Train (or load) one model and measure it.

    Returns
    -------
    row : dict
        level, n_layers, seed, steps, train_seconds (NaN when loaded from the cache), accuracy, chance,
        probe_max, resolution_point (+ ci_low, ci_high), commitment_point (median over examples),
        centroid_last (LOO centroid accuracy at the last point), seconds (whole run).
    points : DataFrame
        level, n_layers, seed, point, probe_accuracy, centroid_accuracy, margin (mean).
    """
    t0 = time.perf_counter()
    lang = language(level)
    lm = train(lang, n_layers=n_layers, n_steps=n_steps, random_state=seed, n_threads=threads)
    info = getattr(lm.model.config, "trajgeo_toy", {})
    acc = continuation_accuracy(lm, lang, n=n_eval, random_state=EVAL_SEED)
    _, examples = lang.generate(n_extract, random_state=EVAL_SEED + 1)
    # labels word:sense so that a word's senses compete (the word itself is readable at point 0)
    examples["label"] = examples["word"] + ":" + examples["sense"]
    traj = tg.extract(lm, examples, components=True, progress=False, batch_size=128)
    # pooled word:sense labels (word=None): one sweep over all words, as the depth study defines it
    sweep = tg.probes.layerwise(traj, labels="label", word=None, cv=5, control=False, n_boot=1, random_state=0,
                                progress=False, return_result=True)
    lw = sweep.scores
    rp = tg.probes.resolution_point(sweep, fraction=0.95, n_boot=200, random_state=0)
    summary = lw[(lw["fold"] == -1) & (lw["metric"] == "accuracy")].set_index("point")["value"]
    com = tg.senses.commitment(traj)
    margin = tg.senses.curves(traj)
    margin = margin[margin["metric"] == "margin"].groupby("point")["value"].mean()
    # within-word centroids (each word centred on its own mean), pooled over words weighted by examples
    per_word = tg.senses.nearest_centroid_accuracy(traj, normalize="center")
    weighted = (per_word["accuracy"] * per_word["n_examples"]).groupby(per_word["point"]).sum()
    centroid = (weighted / per_word.groupby("point")["n_examples"].sum()).reindex(traj.points).to_numpy()
    row = dict(level=level, n_layers=n_layers, seed=seed, steps=n_steps,
               train_seconds=info.get("seconds", np.nan), train_threads=info.get("threads", np.nan),
               final_loss=info.get("final_loss", np.nan), accuracy=acc, chance=1 / lang.senses_per_word[0],
               probe_max=float(rp["max_value"].iloc[0]), resolution_point=int(rp["resolution_point"].iloc[0]),
               rp_ci_low=float(rp["ci_low"].iloc[0]), rp_ci_high=float(rp["ci_high"].iloc[0]),
               commitment_point=float(com["commitment_point"].median()),
               committed=float(com["commitment_point"].notna().mean()),
               centroid_last=float(centroid[-1]), seconds=time.perf_counter() - t0,
               loss_curve=" ".join(f"{int(st)}:{v:.3g}" for st, v in info.get("loss_curve", [])))
    points = pd.DataFrame({"level": level, "n_layers": n_layers, "seed": seed, "point": traj.points,
                           "probe_accuracy": summary.reindex(traj.points).to_numpy(),
                           "centroid_accuracy": centroid, "margin": margin.reindex(traj.points).to_numpy()})
    return row, points


def _init_worker(threads: int, counter: Any) -> None:
    import torch

    with counter.get_lock():
        slot = counter.value
        counter.value += 1
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if threads and len(cores) >= threads * (slot + 1):  # pin to a private set of cores where there are enough
        os.sched_setaffinity(0, cores[slot * threads:(slot + 1) * threads])
    torch.set_num_threads(threads)


def _task(args: tuple) -> tuple[dict[str, Any], pd.DataFrame]:
    level, n_layers, seed, steps, threads = args
    return run_one(level, n_layers, seed, steps, threads=threads)


def sweep(depths: list[int], levels: list[int], seeds: list[int], steps: dict[int, int], jobs: int = 1,
          threads: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run :func:`run_one` for every level x depth x seed; returns (runs, points)."""
    tasks = [(lv, d, s, steps[lv], threads) for lv in levels for d in depths for s in seeds]
    if jobs > 1:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        counter = ctx.Value("i", 0)
        # longest first, so the pool's tail is short
        order = sorted(tasks, key=lambda t: -t[1] * t[3])
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(threads, counter)) as pool:
            results = dict(zip(order, pool.map(_task, order)))
        out = [results[t] for t in tasks]
    else:
        import torch

        torch.set_num_threads(threads)
        out = []
        for t in tasks:
            out.append(_task(t))
            r = out[-1][0]
            print(f"level {r['level']} layers {r['n_layers']} seed {r['seed']}: accuracy {r['accuracy']:.3f} "
                  f"({r['train_seconds']:.0f} s training)", flush=True)
    runs = pd.DataFrame([r for r, _ in out])
    points = pd.concat([p for _, p in out], ignore_index=True)
    return runs, points


def draw(runs: pd.DataFrame) -> Any:
    """Continuation accuracy and probe resolution point against depth, one line per level; returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8), constrained_layout=True)
    for i, (level, g) in enumerate(runs.groupby("level")):
        # every seed as a dot, so that a seed that fails to learn shows (the mean would hide it)
        axes[0].scatter(g["n_layers"] + (i - 0.5) * 0.08, g["accuracy"], s=10, alpha=0.5, color=f"C{i}", lw=0)
        agg = g.groupby("n_layers").agg(acc=("accuracy", "mean"), lo=("accuracy", "min"), hi=("accuracy", "max"))
        axes[0].errorbar(agg.index, agg["acc"], yerr=[agg["acc"] - agg["lo"], agg["hi"] - agg["acc"]],
                         marker="o", capsize=3, label=f"level {level}", color=f"C{i}")
        # the resolution point means something only where the sense is decodable at all
        ok = g[g["probe_max"] >= 0.9]
        if len(ok):
            rp = ok.groupby("n_layers")["resolution_point"].agg(["mean", "min", "max"])
            axes[1].errorbar(rp.index + (level - 1.5) * 0.08, rp["mean"], yerr=[rp["mean"] - rp["min"],
                             rp["max"] - rp["mean"]], marker="o", capsize=3, label=f"level {level}",
                             color=f"C{i}")
    chance = runs["chance"].iloc[0]
    axes[0].axhline(chance, color="grey", ls=":", lw=1, label="chance")
    axes[0].set(xlabel="layers", ylabel="continuation accuracy", ylim=(0, 1.05), xticks=sorted(runs["n_layers"].unique()))
    depths = sorted(runs["n_layers"].unique())
    axes[1].plot(depths, depths, color="grey", ls=":", lw=1, label="last point")
    axes[1].set(xlabel="layers", ylabel="resolution point (probe)", xticks=depths, yticks=range(0, max(depths) + 1))
    for ax in axes:
        ax.legend(frameon=False, fontsize=8)
    return fig


def figure(runs: pd.DataFrame, out: Path) -> None:
    """Draw the figure and write it as ``<out>/depth.pdf`` and ``.png``."""
    import matplotlib.pyplot as plt

    from trajgeo import plotting

    fig = draw(runs)
    out.mkdir(parents=True, exist_ok=True)
    plotting.savefig(fig, out / "depth")
    plt.close(fig)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python analyses/depth.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", default="1,2,4", type=_ints)
    parser.add_argument("--levels", default="1,2", type=_ints)
    parser.add_argument("--seeds", default="0,1,2", type=_ints)
    # level 1 reaches loss ~0.01 by ~150 steps; level 2 (with train's auxiliary mediator-sense loss) by ~350
    # for every seed measured: both defaults leave > 2x margin, and the whole default sweep (18 models) takes
    # ~10 minutes on 2 cores
    parser.add_argument("--steps", default="1:400,2:800",
                        help="training steps per level, 'level:steps,...' (default 1:400,2:800)")
    parser.add_argument("--jobs", default=2, type=int, help="models trained at once (processes)")
    parser.add_argument("--threads", default=1, type=int, help="torch threads (and pinned cores) per model")
    parser.add_argument("--out", default=ROOT / "results" / "depth", type=Path)
    args = parser.parse_args(argv)
    steps = {int(k): int(v) for k, v in (p.split(":") for p in args.steps.split(","))}
    missing = [lv for lv in args.levels if lv not in steps]
    if missing:
        parser.error(f"--steps gives no step count for levels {missing}")
    t0 = time.time()
    runs, points = sweep(args.depths, args.levels, args.seeds, steps, args.jobs, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, df in (("runs", runs), ("points", points)):
        df.to_parquet(args.out / f"{name}.parquet", index=False)
        df.to_csv(args.out / f"{name}.csv", index=False)
    figure(runs, args.out)
    cols = ["level", "n_layers", "seed", "steps", "train_seconds", "final_loss", "accuracy", "probe_max",
            "resolution_point", "rp_ci_low", "rp_ci_high", "commitment_point", "centroid_last"]
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(runs[cols].round(3).to_string(index=False))
        print("\nmean over seeds:")
        print(runs.groupby(["level", "n_layers"])[["accuracy", "probe_max", "resolution_point", "commitment_point",
                                                   "train_seconds"]].mean().round(3).to_string())
    print(f"\n{len(runs)} models in {time.time() - t0:.0f} s; tables and figure in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
