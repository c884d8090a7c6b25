"""Activation-patching speed on SmolLM2, as ratios to plain forward passes timed in the same run.

(a) ``tg.interventions.patch(site="resid", positions="all")``: the full (point x position) sweep of a
    fixed set of built-in flip pairs (:func:`trajgeo.datasets.minimal_pairs`: the first ``--pairs`` flip
    pairs that align on the model's tokenizer, one word after another) with the model's own next-token
    log-odds readout, against **the same batched forward passes run without hooks**: one full forward of
    ``model.base`` per patched cell, in the batches the sweep uses (the pairs' counterfactual token ids,
    sorted by length, ``batch_size`` rows, right padding). Goal: ratio <= 1.3. The sweep is cheaper than
    its baseline because each patch at point l starts after block l from the cached residual (L - l
    blocks, not L; none at point L).
(b) ``tg.interventions.attribution_patch``: the gradient estimate of the same sweep, every cell at once,
    against one forward and backward pass of the same batches (``inputs_embeds`` as the leaf, a scalar
    read at the target, ``torch.autograd.grad``; no hooks). Goal: ratio <= 3.
(c) The same sweep as (a) written in nnsight (``NNsight(model.base)``: one trace per batch caching the
    clean run at every point, one trace per (point, batch of cells) replacing the residual in place and
    saving the target's final vector; the same readout; point L without a pass, as in (a)), timed the
    same way (best of ``--repeats``) and set against (a)'s time, with its largest difference from (a)'s
    effects. Goal: (a) faster than (c). Skipped, with
    "skipped: nnsight not installed", when nnsight is not importable (it is in the ``bench`` extra).
(d) How well (b) tracks (a): Pearson and Spearman correlation over all cells, per point (median), per
    pair (median).

Each method is timed ``--repeats`` times, alternating with its baseline (best of each), in wall-clock
and in CPU seconds of this process; the ratios to read on a shared machine are the CPU ones (other
processes' load stretches wall-clock time, not the work this process does).

Usage: ``python benchmarks/interventions.py [--pairs 8] [--batch-size 64] [--repeats 1] [--threads 1]
[--no-nnsight]``; ``--quick`` uses 3 pairs. Prints a table and writes ``results/bench_interventions.csv``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def pairs(lm: Any, n: int) -> pd.DataFrame:
    """The first ``n`` built-in flip pairs that align on ``lm``'s tokenizer, taking words in turn (fixed)."""
    import trajgeo as tg

    df = tg.datasets.minimal_pairs(kind="flip")
    ok = tg.datasets.align_pairs(lm.tokenizer, df)["aligned"].to_numpy()
    df = df[ok]
    df = df.assign(_k=df.groupby("word", sort=False).cumcount()).sort_values(["_k", "pair"], kind="stable")
    return df.drop(columns="_k").head(int(n)).reset_index(drop=True)


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


def nnsight_sweep(lm: Any, items: list, fn: Any, batch_size: int) -> Callable[[], Any] | None:
    """The exact denoising sweep of (a) written in nnsight; None when nnsight is not importable.

    Returns a function giving the effects as an array of shape (n_points, n_cells) in the cell order of
    ``cells`` (pairs by length, then position), comparable to the trajgeo frame.
    """
    try:
        import nnsight
    except ImportError:
        return None
    import torch

    save = getattr(nnsight, "save", None)
    net = nnsight.NNsight(lm.adapter.base)
    layers, embed = net.layers, net.embed_tokens
    L = lm.n_layers
    dev = lm.device
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else (lm.tokenizer.eos_token_id or 0)
    order = sorted(range(len(items)), key=lambda i: items[i].n)
    cells = [(i, c) for i in order for c in range(items[i].n)]

    def keep(x: Any) -> Any:
        return save(x) if save is not None else x.save()

    def hidden(out: Any) -> Any:
        return out[0] if isinstance(out, tuple) else out

    def padded(rows: list, role: str = "corrupt") -> tuple[Any, Any, Any]:
        T = max(items[i].n for i in rows)
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        pool = torch.zeros((len(rows), T))
        for r, i in enumerate(rows):
            ids[r, :items[i].n] = torch.as_tensor(items[i].ids(role))
            mask[r, :items[i].n] = 1
            pool[r, items[i].pool] = 1.0 / len(items[i].pool)
        return ids.to(dev), mask.to(dev), pool.to(dev)

    def run() -> np.ndarray:
        with torch.no_grad():
            # the clean run at every point, and the corrupt run's final target vector (one trace per batch)
            clean: list = [None] * len(items)
            base_final = torch.zeros((len(items), lm.d_model), device=dev)
            corrupt_final: list = [None] * len(items)
            for b in range(0, len(order), batch_size):
                rows = order[b:b + batch_size]
                ids, mask, _ = padded(rows, "clean")
                saved: list = []  # filled inside the trace (nnsight runs its body on its own frame)
                with net.trace(input_ids=ids, attention_mask=mask, use_cache=False):
                    saved.append(keep(embed.output))
                    for l in range(L):
                        saved.append(keep(hidden(layers[l].output)))
                for r, i in enumerate(rows):
                    clean[i] = [h[r, :items[i].n] for h in saved]
                ids, mask, pool = padded(rows, "corrupt")
                last: list = []
                with net.trace(input_ids=ids, attention_mask=mask, use_cache=False):
                    last.append(keep(hidden(layers[L - 1].output)))
                base_final[rows] = torch.einsum("bt,btd->bd", pool, last[0])
                for r, i in enumerate(rows):
                    corrupt_final[i] = last[0][r, :items[i].n]
            idx_all = torch.as_tensor([it.index for it in items])
            r_base = fn(base_final.float(), idx_all).double().cpu().numpy()
            out = np.zeros((L + 1, len(cells)))
            for point in range(L + 1):
                vals = []
                for b in range(0, len(cells), batch_size):
                    chunk = cells[b:b + batch_size]
                    rows = [i for i, _ in chunk]
                    ar = torch.arange(len(chunk), device=dev)
                    cols = torch.as_tensor([c for _, c in chunk], device=dev)
                    idx = torch.as_tensor([items[i].index for i in rows])
                    if point == L:  # no pass: the corrupt final vectors with one position replaced
                        finals = []
                        for i, c in chunk:
                            h = corrupt_final[i].clone()
                            h[c] = clean[i][L][c]
                            finals.append(h[items[i].pool].mean(0))
                        final = torch.stack(finals)
                    else:
                        value = torch.stack([clean[i][point][c] for i, c in chunk])
                        ids, mask, pool = padded(rows)
                        last = []
                        site = embed if point == 0 else layers[point - 1]
                        with net.trace(input_ids=ids, attention_mask=mask, use_cache=False):
                            hidden(site.output)[ar, cols] = value
                            last.append(keep(hidden(layers[L - 1].output)))
                        final = torch.einsum("bt,btd->bd", pool, last[0])
                    vals.append(fn(final.float(), idx).double().cpu().numpy())
                local = np.asarray([i for i, _ in cells])
                out[point] = np.concatenate(vals) - r_base[local]
        return out
    run.cells = cells  # type: ignore[attr-defined]
    return run


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--attr-batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 pairs")
    parser.add_argument("--no-nnsight", action="store_true", help="skip the nnsight side-by-side")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_interventions.csv"))
    args = parser.parse_args(argv)
    import torch

    import trajgeo as tg
    from trajgeo import interventions as iv
    from trajgeo.interventions._pairs import prepare_pairs
    from trajgeo.interventions.readouts import as_readout

    torch.set_num_threads(args.threads)
    lm = tg.load_model(args.model)
    df = pairs(lm, 3 if args.quick else args.pairs)
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

    nn_run = None if args.no_nnsight else nnsight_sweep(lm, items, as_readout("logit").bind(lm, df),
                                                        args.batch_size)
    nn_row = None
    if nn_run is None:
        print("nnsight side-by-side: skipped: " + ("--no-nnsight" if args.no_nnsight else "nnsight not installed"))
    else:
        t_nn, _, nn_effects = _best(nn_run, lambda: None, args.repeats)
        t_tg = t_sweep  # (a), timed in this run
        # the same cells in trajgeo's frame: (point, pair, position) -> effect
        pair_of = {it.index: df["pair"].iloc[it.index] for it in items}
        ref = exact.set_index(["point", "pair", "position"])["effect"]
        want = np.array([[ref[(p, pair_of[items[i].index], c)] for i, c in nn_run.cells]
                         for p in range(lm.n_layers + 1)])
        max_diff = float(np.max(np.abs(want - nn_effects)))
        print(f"nnsight sweep: {t_nn['cpu']:.1f} cpu s ({t_nn['wall']:.1f} wall), trajgeo {t_tg['cpu']:.1f} cpu s "
              f"({t_tg['wall']:.1f} wall): trajgeo/nnsight {t_tg['cpu'] / t_nn['cpu']:.3f}; "
              f"largest effect difference {max_diff:.2e}")
        nn_row = {"method": "patch (exact, full sweep)", "cpu_seconds": t_tg["cpu"], "wall_seconds": t_tg["wall"],
                  "baseline": "same sweep in nnsight", "baseline_cpu_seconds": t_nn["cpu"],
                  "baseline_wall_seconds": t_nn["wall"], "ratio_cpu": t_tg["cpu"] / t_nn["cpu"],
                  "ratio_wall": t_tg["wall"] / t_nn["wall"], "goal": 1.0, "cells": n_cells,
                  "max_abs_difference": max_diff}

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
    if nn_row is not None:
        rows.append(nn_row)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.round(3).to_string(index=False))
    print(f"attribution vs exact over {int(overall['n_cells'])} cells: pearson {overall['pearson']:.3f}, "
          f"spearman {overall['spearman']:.3f}; per point median pearson {per_point['pearson'].median():.3f} "
          f"(min {per_point['pearson'].min():.3f}); per pair median pearson {per_pair['pearson'].median():.3f}")
    is_attr = table["method"].str.startswith("attribution")
    table["agreement_pearson"] = np.where(is_attr, overall["pearson"], np.nan)
    table["agreement_spearman"] = np.where(is_attr, overall["spearman"], np.nan)
    table["nnsight"] = "measured" if nn_row is not None else (
        "skipped: --no-nnsight" if args.no_nnsight else "skipped: nnsight not installed")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return table


if __name__ == "__main__":
    main()
