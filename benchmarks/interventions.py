"""Activation-patching speed on SmolLM2, as ratios to plain forward passes timed in the same run.

(a) ``tg.interventions.patch(site="resid", positions="all")``: the full (point x position) sweep of a
    fixed set of aligned flip pairs with the model's own next-token log-odds readout, against **the same
    batched forward passes run without hooks**: one full forward of ``model.base`` per patched cell, in
    the batches the sweep uses (the pairs' counterfactual token ids, sorted by length, ``batch_size``
    rows, right padding). Goal: ratio <= 1.3. The sweep is cheaper than its baseline because each patch
    at point l starts after block l from the cached residual (L - l blocks, not L; none at point L).
(b) ``tg.interventions.attribution_patch``: the gradient estimate of the same sweep, every cell at once,
    against one forward and backward pass of the same batches (``inputs_embeds`` as the leaf, a scalar
    read at the target, ``torch.autograd.grad``; no hooks). Goal: ratio <= 3.
(c) How well (b) tracks (a): Pearson and Spearman correlation over all cells, per point (median), per
    pair (median).

Pairs: a fixed set of single-token cue swaps written here (aligned on SmolLM2's tokenizer), until the
built-in minimal pairs land. Each method is timed ``--repeats`` times, alternating with its baseline
(best of each), in wall-clock and in CPU seconds of this process; the ratios to read on a shared machine
are the CPU ones (other processes' load stretches wall-clock time, not the work this process does).

Usage: ``python benchmarks/interventions.py [--pairs 8] [--batch-size 64] [--repeats 1] [--threads 1]``;
``--quick`` uses 4 pairs (about 3 minutes on 2 cores). Prints a table and writes
``results/bench_interventions.csv``.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

# word, text, counterfactual, sense, counterfactual sense (one token differs on SmolLM2's tokenizer)
PAIRS = [
    ("bank", "We sat on the river bank.", "We sat on the savings bank.", "river", "finance"),
    ("bat", "A vampire bat flew out.", "A baseball bat flew out.", "animal", "sports"),
    ("crane", "The white crane waded slowly.", "The construction crane waded slowly.", "bird", "machine"),
    ("plant", "The green plant needs water.", "The power plant needs water.", "flora", "factory"),
    ("bank", "She walked along the muddy bank.", "She walked along the savings bank.", "river", "finance"),
    ("seal", "The grey seal swam away.", "The rubber seal swam away.", "animal", "closure"),
    ("star", "The bright star rose above the hills.", "The movie star rose above the hills.", "astronomy",
     "celebrity"),
    ("pitcher", "She poured juice from the glass pitcher.", "She poured juice from the baseball pitcher.", "jug",
     "baseball"),
    ("bank", "He fished from the grassy bank.", "He fished from the investment bank.", "river", "finance"),
    ("bat", "The cave bat slept all day.", "The cricket bat slept all day.", "animal", "sports"),
    ("crane", "A tall crane stood in the marsh.", "A steel crane stood in the marsh.", "bird", "machine"),
    ("match", "She struck a wooden match.", "She watched a football match.", "fire", "game"),
]


def pairs(n: int) -> pd.DataFrame:
    rows = [dict(pair=i, word=w, text=t, counterfactual=c, target=w, sense=s, counterfactual_sense=cs, kind="flip")
            for i, (w, t, c, s, cs) in enumerate(PAIRS[:n])]
    return pd.DataFrame(rows)


def _align_pairs(tokenizer: Any, df: pd.DataFrame) -> pd.DataFrame:
    """Stand-in for tg.datasets.align_pairs while the datasets module lacks it (benchmark only)."""
    rows = []
    for r in df.itertuples():
        enc = [tokenizer(t, return_offsets_mapping=True) for t in (r.text, r.counterfactual)]
        spans = []
        for t, e in zip((r.text, r.counterfactual), enc):
            m = re.search(rf"\b{re.escape(r.target)}\b", t)
            pos = [i for i, (a, b) in enumerate(e["offset_mapping"]) if m and b > a and a < m.end() and b > m.start()]
            spans.append((pos[0], pos[-1] + 1) if pos else None)
        ids = [e["input_ids"] for e in enc]
        ok = len(ids[0]) == len(ids[1]) and spans[0] is not None and spans[0] == spans[1]
        s = spans[0] or (0, 0)
        rows.append({"pair": r.pair, "aligned": ok, "n_tokens": len(ids[0]), "target_start": s[0],
                     "target_end": s[1], "cue_positions": tuple(i for i, (a, b) in enumerate(zip(*ids)) if a != b)
                     if ok else (), "reason": "" if ok else "does not align"})
    return pd.DataFrame(rows)


def _best(fn: Callable[[], Any], other: Callable[[], Any], repeats: int) -> tuple[dict, dict, Any]:
    """Time fn and other alternately: best wall-clock and best CPU seconds of each (and fn's last result).

    CPU seconds (this process, all its threads) are the ones to compare on a shared machine: other
    processes' load stretches wall-clock time but hardly the CPU time this process needs.
    """
    times: dict[str, dict[str, list]] = {"fn": {"wall": [], "cpu": []}, "other": {"wall": [], "cpu": []}}
    out = None
    for _ in range(repeats):
        for name, f in (("fn", fn), ("other", other)):
            w, c = time.perf_counter(), time.process_time()
            res = f()
            times[name]["wall"].append(time.perf_counter() - w)
            times[name]["cpu"].append(time.process_time() - c)
            if name == "fn":
                out = res
    best = {k: {m: min(v) for m, v in t.items()} for k, t in times.items()}
    return best["fn"], best["other"], out


def plain_forwards(lm: Any, items: list, n_units: int, batch_size: int) -> Callable[[], None]:
    """One full forward (no hooks) per cell of the sweep, in the sweep's batches."""
    import torch

    a = lm.adapter
    order = sorted(range(len(items)), key=lambda i: items[i].n)
    cells = [i for i in order for _ in range(items[i].n)]
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else (lm.tokenizer.eos_token_id or 0)

    def batches() -> list:
        out = []
        for b in range(0, len(cells), batch_size):
            rows = [items[i].corrupt for i in cells[b:b + batch_size]]
            ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
            for r, x in enumerate(rows):
                ids[r, :len(x)] = torch.as_tensor(x)
            out.append(ids.to(lm.device))
        return out

    prepared = batches()

    def run() -> None:
        with torch.no_grad():
            for _ in range(n_units):
                for ids in prepared:
                    a.base(input_ids=ids, use_cache=False)
    return run


def forward_backward(lm: Any, items: list, batch_size: int) -> Callable[[], None]:
    """One forward and backward pass per batch of pairs (no hooks): inputs_embeds -> base -> a target scalar."""
    import torch

    a = lm.adapter
    order = sorted(range(len(items)), key=lambda i: items[i].n)
    w = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0)).to(lm.device)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else (lm.tokenizer.eos_token_id or 0)

    def run() -> None:
        for b in range(0, len(order), batch_size):
            rows = [items[i] for i in order[b:b + batch_size]]
            ids = torch.full((len(rows), max(r.n for r in rows)), pad, dtype=torch.long, device=lm.device)
            for r, it in enumerate(rows):
                ids[r, :it.n] = torch.as_tensor(it.corrupt)
            emb = a.embed(ids).detach().requires_grad_(True)
            h = a.base(inputs_embeds=emb, use_cache=False).last_hidden_state
            target = torch.as_tensor([it.pool[-1] for it in rows], device=lm.device)
            value = (h[torch.arange(len(rows), device=lm.device), target] @ w).sum()
            torch.autograd.grad(value, emb)
    return run


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--attr-batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="4 pairs")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_interventions.csv"))
    args = parser.parse_args(argv)
    import torch

    import trajgeo as tg
    from trajgeo import datasets
    from trajgeo import interventions as iv
    from trajgeo.interventions._pairs import prepare_pairs

    torch.set_num_threads(args.threads)
    if not hasattr(datasets, "align_pairs"):
        datasets.align_pairs = _align_pairs
    lm = tg.load_model(args.model)
    df = pairs(4 if args.quick else args.pairs)
    _, items = prepare_pairs(lm, df)
    n_cells = sum(it.n for it in items) * (lm.n_layers + 1)
    print(f"{lm.name}: {len(df)} pairs, {sum(it.n for it in items)} positions, {n_cells} cells "
          f"({lm.n_layers + 1} points), {args.threads} threads", flush=True)

    sweep = lambda: iv.patch(lm, df, site="resid", readout="logit", batch_size=args.batch_size,  # noqa: E731
                             progress=False)
    t_sweep, t_plain, exact = _best(sweep, plain_forwards(lm, items, lm.n_layers + 1, args.batch_size), args.repeats)
    attr = lambda: iv.attribution_patch(lm, df, site="resid", readout="logit",  # noqa: E731
                                        batch_size=args.attr_batch_size, progress=False)
    t_attr, t_fb, approx = _best(attr, forward_backward(lm, items, args.attr_batch_size), args.repeats)

    overall = iv.agreement(exact, approx, by=("site",)).iloc[0]
    per_point = iv.agreement(exact, approx, by=("site", "point"))
    per_pair = iv.agreement(exact, approx, by=("site", "pair"))
    rows = []
    for method, base, (t, b), goal in (
        ("patch (exact, full sweep)", "same batched forwards, no hooks", (t_sweep, t_plain), 1.3),
        ("attribution_patch (full sweep)", "one forward + backward", (t_attr, t_fb), 3.0),
    ):
        rows.append({"method": method, "cpu_seconds": t["cpu"], "wall_seconds": t["wall"], "baseline": base,
                     "baseline_cpu_seconds": b["cpu"], "baseline_wall_seconds": b["wall"],
                     "ratio_cpu": t["cpu"] / b["cpu"], "ratio_wall": t["wall"] / b["wall"], "goal": goal,
                     "cells": n_cells})
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.round(3).to_string(index=False))
    print(f"attribution vs exact over {int(overall['n_cells'])} cells: pearson {overall['pearson']:.3f}, "
          f"spearman {overall['spearman']:.3f}; per point median pearson {per_point['pearson'].median():.3f} "
          f"(min {per_point['pearson'].min():.3f}); per pair median pearson {per_pair['pearson'].median():.3f}")
    table["agreement_pearson"] = [np.nan, overall["pearson"]]
    table["agreement_spearman"] = [np.nan, overall["spearman"]]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return table


if __name__ == "__main__":
    main()
