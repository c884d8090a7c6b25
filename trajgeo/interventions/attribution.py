"""Attribution patching: the first-order (gradient) estimate of every patch of a sweep at once, and its
agreement with exact patching.

For a cell (site, position) the exact effect is ``readout(base with a_source there) - readout(base)``.
Its linear estimate at the base run is ``(a_source - a_base) . d readout / d a`` (Nanda 2023; Syed et al.
2023): one forward pass of the source, one forward and backward pass of the base, for every cell of every
site at once. It is exact where the readout is linear in the site (the last point with a linear
readout) and an approximation elsewhere, good where effects are small and poor across saturating
non-linearities: :func:`agreement` says how good on your pairs.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from trajgeo.engine import Engine, Site
from trajgeo.interventions._pairs import PairInputs, prepare_pairs
from trajgeo.interventions.patching import (_ROLES, PatchResult, _effects_frame, _Plan, _ratio, _seeded_torch,
                                            _tidy)
from trajgeo.interventions.readouts import as_readout

__all__ = ["attribution_patch", "agreement"]


def _sites(plan: _Plan, L: int) -> list[Site]:
    if plan.site == "resid":
        return [Site.resid(p) for p in plan.units if p != L] + [Site.resid(L)]
    layers = sorted({plan.layer(u) for u in plan.units})
    return [Site.z(l) if plan.site == "head" else Site(plan.site, l) for l in layers] + [Site.resid(L)]


def _batch_effects(engine: Engine, plan: _Plan, items: list[PairInputs], fn: Any, base: str,
                   source: str) -> tuple[dict, Any, Any]:
    """Per site: (batch, T) or (batch, T, heads) estimated effects; and the base and source readouts."""
    import torch

    L = engine.n_layers
    sites = _sites(plan, L)
    final = Site.resid(L)
    batch_src = engine.batch([it.ids(source) for it in items])
    batch = engine.batch([it.ids(base) for it in items])
    idx = torch.as_tensor([it.index for it in items])
    weights = torch.zeros(batch.input_ids.shape, device=engine.lm.device)
    for r, it in enumerate(items):
        weights[r, it.pool] = 1.0 / len(it.pool)

    def pooled(h: Any) -> Any:
        return (h * weights[..., None].to(h.dtype)).sum(1)

    src = engine.run(batch_src, read=sites)
    r_src = fn(pooled(src[final]).float(), idx).detach()
    run = engine.run(batch, read=sites, grad=True)
    value = fn(pooled(run[final]).float(), idx)
    if not value.requires_grad:
        raise ValueError("attribution patching needs a differentiable readout (a torch function of its input); "
                         "this one returned no gradient: use exact patching, or write it in torch")
    grads = run.backward(value)
    out = {}
    for s in sites:
        if plan.site == "resid" and s == final and L not in plan.units:
            continue
        delta = src[s] - run[s].detach()
        out[s] = (delta.float() * grads[s].float()).sum(-1)  # (batch, T) or, for z, (batch, T, heads)
    return out, value.detach(), r_src


def attribution_patch(
    model: Any,
    pairs: Any,
    *,
    site: str = "resid",
    readout: Any = "logit",
    positions: Any = "all",
    points: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    direction: Any = "denoise",
    pool: str | None = None,
    batch_size: int = 16,
    on_misaligned: str = "error",
    rtol: float = 1e-5,
    progress: bool = True,
    random_state: int | None = 0,
    return_result: bool = False,
) -> pd.DataFrame | PatchResult:
    """The gradient estimate of :func:`trajgeo.interventions.patch`'s sweep: same arguments, same frame.

    ``effect`` is ``(a_source - a_base) . d readout / d a`` at the base run (for a head, its slice of the
    output projection's input); ``normalized_effect`` divides it by the exact ``readout(source) -
    readout(base)``. ``batch_size`` counts pairs (each needs its forward and backward pass); everything
    else is as in :func:`~trajgeo.interventions.patch`. The readout must be a torch function (the
    built-in ones are). Compare with exact patching with :func:`agreement`.
    """
    import torch
    from tqdm.auto import tqdm

    engine = Engine(model)
    lm = engine.lm
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    plan = _Plan.make(engine, site, positions, points, layers, heads, direction, rtol)
    ro = as_readout(readout)
    if not getattr(ro, "differentiable", True):
        raise ValueError("attribution patching needs a differentiable readout")
    df, items = prepare_pairs(lm, pairs, on_misaligned=on_misaligned, pool=pool)
    fn = ro.bind(lm, df)
    order = sorted(range(len(items)), key=lambda i: items[i].n)
    batches = [[items[i] for i in order[s:s + int(batch_size)]] for s in range(0, len(order), int(batch_size))]
    parts, reads = [], []
    bar = tqdm(total=len(batches) * len(plan.directions), disable=not progress,
               desc=f"attribution {plan.site} ({lm.name})", unit="batch")
    with _seeded_torch(random_state):
        for direction in plan.directions:
            base, source = _ROLES[direction]
            for chunk in batches:
                est, r_base, r_src = _batch_effects(engine, plan, chunk, fn, base, source)
                r_base = r_base.cpu().numpy().astype(np.float64)
                r_src = r_src.cpu().numpy().astype(np.float64)
                diff = r_src - r_base
                flat = np.abs(diff) <= plan.rtol * np.maximum(np.abs(r_src), np.abs(r_base))
                cells = [(r, c) for r, it in enumerate(chunk) for c in it.columns(plan.positions)]
                rows = torch.as_tensor([r for r, _ in cells], dtype=torch.long)
                cols = torch.as_tensor([c for _, c in cells], dtype=torch.long)
                local = rows.numpy()
                pair_rows = np.asarray([chunk[r].index for r in local], dtype=np.int64)
                roles = [chunk[r].role(c) for r, c in cells]
                for unit in plan.units:
                    if plan.site == "resid":
                        e = est[Site.resid(unit)][rows, cols]
                    elif plan.site == "head":
                        e = est[Site.z(unit[0])][rows, cols, unit[1]]
                    else:
                        e = est[Site(plan.site, unit)][rows, cols]
                    e = e.cpu().numpy().astype(np.float64)
                    parts.append(_effects_frame(df, plan, direction, [unit] * len(cells), pair_rows, cols.numpy(),
                                                roles, e, _ratio(e, diff[local], flat[local])))
                for r, it in enumerate(chunk):
                    reads.append({"pair": df["pair"].iloc[it.index], "direction": direction, "base": r_base[r],
                                  "source": r_src[r], "difference": diff[r],
                                  "n_visible_cues": sum(c < it.n for c in it.cue)})
                bar.update(1)
    bar.close()
    effects, rd = _tidy(pd.concat(parts, ignore_index=True), pd.DataFrame(reads), df, plan)  # patch()'s row order
    return PatchResult(effects, rd) if return_result else effects


_CELL = ("pair", "point", "layer", "head", "position", "site", "direction")


def agreement(exact: pd.DataFrame, approx: pd.DataFrame, *, by: Sequence[str] = ("site", "pair"),
              value: str = "effect") -> pd.DataFrame:
    """How well attribution patching's estimates track exact patching, per cell of ``by``.

    Parameters
    ----------
    exact, approx : DataFrame
        Frames of :func:`~trajgeo.interventions.patch` and :func:`attribution_patch` over the same pairs
        and sites (matched on ``pair, point|layer, head, position, site, direction``).
    by : sequence of str
        Columns that define a cell of the summary, as in pandas' groupby (e.g. ``("site",)`` for one row
        per site; ``("site", "point")`` per point).
    value : str
        The column compared (``"effect"`` or ``"normalized_effect"``).

    Returns
    -------
    DataFrame
        Columns ``*by, n_cells, pearson, spearman, mean_abs_difference, mean_abs_exact``: Pearson and
        Spearman correlations of the estimates with the exact values over the matched cells (NaN with
        fewer than 3 cells or a constant side), the mean absolute difference, and the mean absolute
        exact value for scale.
    """
    keys = [c for c in _CELL if c in exact.columns and c in approx.columns]
    missing = [c for c in by if c not in exact.columns]
    if missing:
        raise KeyError(f"by= names columns {missing} that the frames do not have ({list(exact.columns)})")
    m = exact.merge(approx[keys + [value]], on=keys, suffixes=("_exact", "_approx"), validate="one_to_one")
    if len(m) == 0:
        raise ValueError("the frames share no cell: patch and attribution_patch over the same pairs and sites")
    x, y = f"{value}_exact", f"{value}_approx"
    m = m[np.isfinite(m[x]) & np.isfinite(m[y])]

    def summary(g: pd.DataFrame) -> pd.Series:
        enough = len(g) >= 3 and g[x].nunique() > 1 and g[y].nunique() > 1
        return pd.Series({
            "n_cells": len(g),
            "pearson": g[x].corr(g[y]) if enough else np.nan,
            "spearman": g[x].corr(g[y], method="spearman") if enough else np.nan,
            "mean_abs_difference": float((g[x] - g[y]).abs().mean()),
            "mean_abs_exact": float(g[x].abs().mean()),
        })

    out = m.groupby(list(by), sort=True)[[x, y]].apply(summary).reset_index()
    out["n_cells"] = out["n_cells"].astype(int)
    return out
