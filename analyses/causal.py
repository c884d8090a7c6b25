"""Causal tests of the story on SmolLM2 and MiniLM: which context word, through which layer, moves the target.

For each model, on the built-in minimal pairs (:func:`trajgeo.datasets.minimal_pairs`, flip pairs and
same-sense pairs, the null) and the built-in examples (:func:`trajgeo.datasets.builtin`), the script runs
five steps, each written as soon as it is done and skipped on a rerun when its table exists:

1. ``patch``: activation patching of the residual at every (point, position), denoising (the clean
   residual patched into the counterfactual run), read out at the target's final point
   (:func:`trajgeo.interventions.patch`). SmolLM2: the model's own next-token log-odds of the senses'
   words (:class:`~trajgeo.interventions.LogitReadout`); MiniLM has no LM head, so it is read by a
   :class:`~trajgeo.interventions.SenseReadout` fitted on the built-in examples' final points (texts
   other than the pairs'). Flip pairs against same-sense pairs per (point, role) with a family-wise
   permutation threshold (:func:`trajgeo.interventions.kind_contrast`). Tables ``patch`` (the frame, with
   the position relative to the target added), ``patch_contrast``, ``patch_readouts``.
2. ``sources``: each head's write into the target split by source token, on each example's own-sense
   direction (:func:`trajgeo.interventions.source_attribution`, ``by="is_cue"``) against the same
   quantity with senses shuffled among groups. Tables ``sources_summary`` (per layer, head, is_cue, with
   the null), ``sources_relative`` (per layer, head, relative position: the same mean, from the per-source
   rows), ``sources_top`` (per example, the source position with the largest summed push and whether it
   is the cue). MiniLM is a post-LN encoder: its heads do not add up (refused; recorded as a note).
3. ``erase``: LEACE at a middle point inside the pass on held-out groups, against LEACE on permuted senses
   and a matched random subspace (:func:`trajgeo.interventions.erase`). The LM loss only for SmolLM2.
4. ``steer``: the class-mean difference added at the same point, dose-response of the final sense against
   random directions (:func:`trajgeo.interventions.steer`).
5. ``skip``: blocks skipped, final separability and (SmolLM2) loss (:func:`trajgeo.interventions.skip_layers`).

Tables are parquet files under ``<out>/<model>/`` (default ``results/causal/full`` or, with ``--quick``,
``results/causal/quick``: a light run with fewer pairs, examples, points and permutations, and erase, steer
and skip on four words), each written
atomically; ``<out>/summary.csv`` collects the key numbers and ``<out>/notes.csv`` what was skipped and why.
Every random step takes ``--random-state``. ``figures/causal_*.py`` draw from these tables.

Usage::

    python analyses/causal.py [--models smollm2,minilm] [--quick] [--steps patch,sources,erase,steer,skip]
                              [--out DIR] [--random-state 0] [--no-progress]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("patch", "sources", "erase", "steer", "skip")
MODELS = ("smollm2", "minilm")

# the light and the full run: pairs per (word, kind), examples per sense, points patched, permutations ...
SIZES = {
    "quick": dict(pairs_per_kind=1, examples_per_sense=6, point_step=1, n_permutations=20, contrast_perms=200,
                  n_random=2, alphas=(0.0, 1.0, 2.0, 4.0, 8.0), n_boot=200, cv=3, skip_parts=6,
                  # erase, steer and skip on four words whose light sample keeps >= 5 distinct inputs per sense
                  # on a causal model (identical prefixes up to the target are one group)
                  words=("bank", "bass", "bat", "pitcher")),
    "full": dict(pairs_per_kind=None, examples_per_sense=None, point_step=1, n_permutations=100,
                 contrast_perms=1000, n_random=4, alphas=(0.0, 0.5, 1.0, 2.0, 4.0, 8.0), n_boot=1000, cv=5,
                 skip_parts=None, words=None),
}


# ------------------------------------------------------------------ data
def select_pairs(pairs: pd.DataFrame, per_kind: int | None, random_state: int) -> pd.DataFrame:
    """The first ``per_kind`` flip and same-sense pairs of every word (all when None), in the built-in order."""
    if per_kind is None:
        return pairs.reset_index(drop=True)
    return pairs.groupby(["word", "kind"], sort=False, group_keys=False).head(int(per_kind)).reset_index(drop=True)


def select_examples(examples: pd.DataFrame, per_sense: int | None, random_state: int) -> pd.DataFrame:
    """``per_sense`` examples of every (word, sense), drawn with ``random_state`` (all when None)."""
    if per_sense is None:
        return examples.reset_index(drop=True)
    shuffled = examples.sample(frac=1.0, random_state=random_state)
    picked = shuffled.groupby(["word", "sense"], sort=False).head(int(per_sense))
    return examples.loc[examples.index.isin(picked.index)].reset_index(drop=True)  # the built-in order


def middle_point(lm: Any) -> int:
    """The point erased and steered: a third of the way up (after the early blocks that read the context)."""
    return max(1, round(lm.n_layers / 3))


# ------------------------------------------------------------------ steps
def step_patch(lm: Any, pairs: pd.DataFrame, examples: pd.DataFrame, size: dict, random_state: int,
               progress: bool, store: Path) -> dict[str, pd.DataFrame]:
    import trajgeo as tg
    from trajgeo import interventions as iv

    has_head = lm.adapter.causal and lm.adapter.unembed is not None
    if has_head:
        readout: Any = "logit"
    else:  # no LM head: the representation's own sense margin, fitted on other texts
        traj = tg.extract(lm, examples, progress=progress)
        readout = iv.SenseReadout().fit(traj)
    points = list(range(0, lm.n_layers + 1, size["point_step"]))
    if points[-1] != lm.n_layers:
        points.append(lm.n_layers)
    # the store resumes an interrupted sweep of these options and replaces one of other options
    res = iv.patch(lm, pairs, site="resid", readout=readout, points=points, direction="denoise",
                   on_misaligned="skip", progress=progress, random_state=random_state, store=store,
                   overwrite=True, return_result=True)
    effects = res.effects
    aligned = tg.datasets.align_pairs(lm.tokenizer, pairs)[["pair", "target_start", "target_end"]]
    effects = effects.merge(aligned, on="pair", how="left")
    pos, s, e = (effects[c].to_numpy(dtype=np.int64) for c in ("position", "target_start", "target_end"))
    effects["relative_position"] = np.where(pos < s, pos - s, np.where(pos >= e, pos - (e - 1), 0))
    effects = effects.drop(columns=["target_start", "target_end"])
    # pairs permuted one by one: a sentence frame (``group``) holds both flip and same-sense pairs, so
    # moving whole groups' kind vectors would leave the labelling (nearly) unchanged
    contrast = iv.kind_contrast(effects, by=["direction", "point", "role"], groups=None,
                                n_permutations=size["contrast_perms"], alternative="greater",
                                random_state=random_state)
    return {"patch": effects, "patch_contrast": contrast, "patch_readouts": res.readouts}


def step_sources(lm: Any, pairs: pd.DataFrame, examples: pd.DataFrame, size: dict, random_state: int,
                 progress: bool, store: Path) -> dict[str, pd.DataFrame]:
    from trajgeo import interventions as iv

    res = iv.source_attribution(lm, examples, direction="prototype", by="is_cue", cv=size["cv"],
                                n_permutations=size["n_permutations"], progress=progress,
                                random_state=random_state, return_result=True)
    src = res.sources
    # per layer, head, relative position: the mean over examples of each example's summed value there
    # (the summary's definition, from the per-source rows)
    per_ex = src.groupby(["example", "layer", "head", "relative_position"], as_index=False)["value"].sum()
    relative = per_ex.groupby(["layer", "head", "relative_position"], as_index=False).agg(
        value=("value", "mean"), n=("example", "nunique"))
    # each example's top source: summed over layers and heads, the target's own tokens excluded
    total = src[src["relative_position"] != 0].groupby(
        ["example", "word", "source_position", "relative_position", "source_token", "is_cue"],
        as_index=False)["value"].sum()
    top = total.loc[total.groupby("example")["value"].idxmax()].reset_index(drop=True)
    has_cue = src.groupby("example")["is_cue"].any().rename("has_cue").reset_index()
    top = top.merge(has_cue, on="example", how="left")
    return {"sources_summary": res.summary, "sources_relative": relative, "sources_top": top,
            "sources_writes": res.writes}


def _words(examples: pd.DataFrame, size: dict) -> pd.DataFrame:
    """The examples of the light run's words (all in the full run)."""
    return examples if size["words"] is None else examples[examples["word"].isin(size["words"])]


def step_erase(lm: Any, pairs: pd.DataFrame, examples: pd.DataFrame, size: dict, random_state: int,
               progress: bool, store: Path) -> dict[str, pd.DataFrame]:
    from trajgeo import interventions as iv

    examples = _words(examples, size)
    frame = iv.erase(lm, examples, layer=middle_point(lm), cv=size["cv"], n_boot=size["n_boot"],
                     progress=progress, random_state=random_state)
    return {"erase": frame}


def step_steer(lm: Any, pairs: pd.DataFrame, examples: pd.DataFrame, size: dict, random_state: int,
               progress: bool, store: Path) -> dict[str, pd.DataFrame]:
    from trajgeo import interventions as iv

    examples = _words(examples, size)
    frame = iv.steer(lm, examples, layer=middle_point(lm), alphas=size["alphas"], cv=size["cv"],
                     n_random=size["n_random"], n_boot=size["n_boot"], progress=progress, random_state=random_state)
    return {"steer": frame}


def step_skip(lm: Any, pairs: pd.DataFrame, examples: pd.DataFrame, size: dict, random_state: int,
              progress: bool, store: Path) -> dict[str, pd.DataFrame]:
    from trajgeo import interventions as iv

    examples = _words(examples, size)
    # the light run skips ~skip_parts equal ranges of blocks; the full run every single block
    L = lm.n_layers
    w = 1 if size["skip_parts"] is None else max(1, -(-L // int(size["skip_parts"])))
    ranges = [(a, min(a + w, L + 1)) for a in range(1, L + 1, w)]
    frame = iv.skip_layers(lm, examples, ranges=ranges, cv=size["cv"], n_boot=size["n_boot"], progress=progress,
                           random_state=random_state)
    return {"skip": frame}


STEP_FUNCTIONS: dict[str, Callable[..., dict[str, pd.DataFrame]]] = {
    "patch": step_patch, "sources": step_sources, "erase": step_erase, "steer": step_steer, "skip": step_skip}
STEP_TABLES = {"patch": "patch", "sources": "sources_summary", "erase": "erase", "steer": "steer", "skip": "skip"}


# ------------------------------------------------------------------ writing
def _replace_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Run ``write(tmp)`` on a temporary file in the same folder, then rename it to ``path``: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write a parquet file through a temporary file in the same folder: never half-written."""
    _replace_atomically(path, lambda tmp: df.to_parquet(tmp, index=False))


def write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write a CSV file through a temporary file in the same folder: never half-written."""
    _replace_atomically(path, lambda tmp: df.to_csv(tmp, index=False))


# ------------------------------------------------------------------ key numbers
def summarize(model: str, folder: Path) -> list[dict]:
    """The key numbers of one model's tables (whatever steps exist)."""
    rows: list[dict] = []

    def add(step: str, quantity: str, value: Any, detail: str = "") -> None:
        rows.append({"model": model, "step": step, "quantity": quantity, "value": value, "detail": detail})

    p = folder / "patch_contrast.parquet"
    if p.exists():
        c = pd.read_parquet(p)
        e = pd.read_parquet(folder / "patch.parquet")
        best = c.sort_values("flip_mean", ascending=False).iloc[0]
        add("patch", "largest flip effect (point, role)", float(best["flip_mean"]),
            f"point {int(best['point'])}, {best['role']}; same-sense {best['same_mean']:.3f}, "
            f"p_fwer {best['p_fwer']:.3f}")
        sig = c[c["p_fwer"] < 0.05]
        add("patch", "cells flip > same (p_fwer < 0.05)", len(sig),
            "; ".join(f"{r.role}@{int(r.point)}" for r in sig.itertuples()) or "none")
        cue = c[c["role"] == "cue"].sort_values("point")
        tgt = c[c["role"] == "target"].sort_values("point")
        if len(cue) and len(tgt):
            cross = tgt[tgt["flip_mean"] > cue.set_index("point").reindex(tgt["point"])["flip_mean"].to_numpy()]
            add("patch", "first point where the target carries more than the cue",
                int(cross["point"].iloc[0]) if len(cross) else np.nan, "flip pairs, denoising")
        add("patch", "pairs patched (flip / same)", int(e[e["kind"] == "flip"]["pair"].nunique()),
            f"same {int(e[e['kind'] == 'same']['pair'].nunique())}")
    p = folder / "sources_top.parquet"
    if p.exists():
        top = pd.read_parquet(p)
        top = top[top["has_cue"]]
        add("sources", "top source is the cue (share of examples)", float(top["is_cue"].mean()),
            f"{len(top)} examples with an annotated cue")
        s = pd.read_parquet(folder / "sources_summary.parquet")
        if "p_fwer" in s.columns:
            cue = s[s["is_cue"]].sort_values("value", ascending=False).iloc[0]
            add("sources", "strongest cue head (value)", float(cue["value"]),
                f"layer {int(cue['layer'])} head {int(cue['head'])}; null_fwer {cue['null_fwer']:.3f}, "
                f"p_fwer {cue['p_fwer']:.3f}")
            add("sources", "cue cells above the shuffled-sense FWER threshold",
                int((s[s["is_cue"]]["p_fwer"] < 0.05).sum()), f"of {int(s['is_cue'].sum())}")
    p = folder / "erase.parquet"
    if p.exists():
        f = pd.read_parquet(p)
        layer = int(f["layer"].iloc[0])
        rank = f[f["condition"] == "leace"]["rank_erased"].mean()
        add("erase", "mean LEACE rank erased", float(rank), f"point {layer}")
        sep = f[f["metric"] == "separability"]
        for point in (layer, int(sep["point"].max())):
            m = sep[sep["point"] == point].groupby("condition")["value"].mean()
            add("erase", f"separability at point {point}", float(m.get("leace", np.nan)),
                ", ".join(f"{k} {v:.3f}" for k, v in m.items()))
        loss = f[f["metric"] == "lm_loss"]
        if len(loss):
            m = loss.groupby("condition")["value"].mean()
            add("erase", "LM loss after the target (nats)", float(m.get("leace", np.nan)),
                ", ".join(f"{k} {v:.3f}" for k, v in m.items()))
    p = folder / "steer.parquet"
    if p.exists():
        f = pd.read_parquet(p)
        fr = f[f["metric"] == "flip_rate"]
        for alpha in sorted(fr["alpha"].unique())[-2:]:
            m = fr[fr["alpha"] == alpha].groupby("condition")["value"].mean()
            add("steer", f"flip rate at alpha {alpha:g}", float(m.get("steer", np.nan)),
                f"random {m.get('random', np.nan):.3f}; point {int(f['layer'].iloc[0])}")
    p = folder / "skip.parquet"
    if p.exists():
        f = pd.read_parquet(p)
        sep = f[f["metric"] == "final_separability"].groupby(["start", "stop"])["value"].mean()
        base = sep.get((0, 0), np.nan)
        worst = sep.drop(index=(0, 0), errors="ignore").idxmin()
        add("skip", "final separability unskipped", float(base), "")
        add("skip", "most needed blocks (lowest separability when skipped)", float(sep[worst]),
            f"blocks {worst[0]}..{worst[1] - 1}")
    return rows


# ------------------------------------------------------------------ the run
def run(models: list[str], steps: list[str], out: Path, *, quick: bool, random_state: int, progress: bool,
        threads: int | None = None) -> pd.DataFrame:
    import torch

    import trajgeo as tg

    if threads:
        torch.set_num_threads(int(threads))
    size = SIZES["quick" if quick else "full"]
    pairs_all = tg.datasets.minimal_pairs()
    examples_all = tg.datasets.builtin()
    pairs = select_pairs(pairs_all, size["pairs_per_kind"], random_state)
    examples = select_examples(examples_all, size["examples_per_sense"], random_state)
    notes: list[dict] = []
    summary: list[dict] = []
    for name in models:
        folder = out / name
        todo = [s for s in steps if not (folder / f"{STEP_TABLES[s]}.parquet").exists()]
        for s in steps:
            if s not in todo:
                print(f"{name}: {s} done ({folder / STEP_TABLES[s]}.parquet exists), skipped", flush=True)
        lm = tg.load_model(name) if todo else None
        for s in todo:
            t0 = time.time()
            print(f"{name}: {s} ...", flush=True)
            try:
                tables = STEP_FUNCTIONS[s](lm, pairs, examples, size, random_state, progress,
                                           folder / "patch_store")
            except Exception as err:  # a refused step (no heads, no head) is a note, the others go on
                notes.append({"model": name, "step": s, "note": f"{type(err).__name__}: {err}"})
                print(f"{name}: {s} skipped: {type(err).__name__}: {err}", flush=True)
                continue
            # the step's marker table last: a step is done only when every table of it is on disk
            for key in sorted(tables, key=lambda k: k == STEP_TABLES[s]):
                write_atomic(tables[key], folder / f"{key}.parquet")
            print(f"{name}: {s} done in {time.time() - t0:.0f} s", flush=True)
        if name == "minilm" or (lm is not None and not (lm.adapter.causal and lm.adapter.unembed is not None)):
            notes.append({"model": name, "step": "patch/erase/skip",
                          "note": "no LM head: patching read by a SenseReadout (representation margin), "
                                  "LM-loss metrics skipped"})
    # the key numbers of every model with tables here (also those an earlier run did)
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and any(p.glob("*.parquet"))):
        summary += summarize(folder.name, folder)
    table = pd.DataFrame(summary)
    write_csv_atomic(table, out / "summary.csv")
    # this run's notes, and earlier notes of models or steps this run did not try (a refused step is tried
    # again on every run that names it, so its note comes back)
    table_notes = pd.DataFrame(notes, columns=["model", "step", "note"])
    if (out / "notes.csv").exists():
        prev = pd.read_csv(out / "notes.csv")
        tried = prev["model"].isin(models) & prev["step"].isin(steps + ["patch/erase/skip"])
        table_notes = pd.concat([prev[~tried], table_notes], ignore_index=True)
    write_csv_atomic(table_notes, out / "notes.csv")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--quick", action="store_true", help="a light run (fewer pairs, examples, points)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default results/causal/full, or results/causal/quick with --quick")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        parser.error(f"unknown steps {bad}; choose among {STEPS}")
    out = args.out or ROOT / "results" / "causal" / ("quick" if args.quick else "full")
    table = run([m for m in args.models.split(",") if m], steps, out, quick=args.quick,
                random_state=args.random_state, progress=not args.no_progress, threads=args.threads)
    with pd.option_context("display.width", 200, "display.max_colwidth", 120):
        print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
