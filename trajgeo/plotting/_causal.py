"""Causal figures: the frames of ``trajgeo.interventions`` (patching, source attribution, erasure, steering,
skipped blocks) drawn as they come.

Each function reads the columns its interventions function writes (named in its docstring), computes nothing
but the means a cell or a line shows, and draws the intervals the frame gives (``ci_low``, ``ci_high``) or the
null the frame carries (``null_fwer``, ``p_fwer``, or the same-sense pairs of a patching sweep).
"""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from trajgeo.plotting._common import _levels, _new_axes, _palette, _require
from trajgeo.plotting._heatmaps import _heatmap, _heatmap_ticks, _int_values

__all__ = ["causal_trace", "trace_matrix", "source_map", "source_top_heads", "condition_curves", "erasure_curves",
           "steering_curves", "skip_table"]

_ROLE_ORDER = ("cue", "other", "target")
_KINDS = ("flip", "same", "difference")
_PRETTY_METRIC = {
    "separability": "held-out balanced accuracy",
    "mlp_write_projection": "MLP write on own-sense direction",
    "lm_loss": "next-token loss (nats)",
    "final_margin": "final sense margin",
    "flip_rate": "flip rate",
    "final_separability": "final balanced accuracy",
    "effect": "patching effect",
    "normalized_effect": "normalised patching effect",
}


def _only(df: pd.DataFrame, column: str, value: Any, what: str) -> pd.DataFrame:
    """Rows with ``column == value`` when the frame has the column; an error naming the levels when none match."""
    if column not in df.columns or value is None:
        return df
    sub = df[df[column] == value]
    if sub.empty:
        raise ValueError(f"{what}: no rows with {column} == {value!r}; available: {_levels(df[column])}")
    return sub


def _unit_column(df: pd.DataFrame, what: str) -> str:
    """``point`` for residual sites, ``layer`` for sublayer and head sites (a head site's rows: ``layer.head``)."""
    for c in ("point", "layer"):
        if c in df.columns:
            return c
    raise ValueError(f"{what}: DataFrame is missing column(s) ['point' or 'layer']; it has {list(df.columns)}")


def _order(values: Sequence) -> list:
    """Role levels in story order (cue, other, target), anything else sorted."""
    levels = list(values)
    if set(levels) <= set(_ROLE_ORDER):
        return [r for r in _ROLE_ORDER if r in levels]
    return _levels(pd.Series(levels))


def trace_matrix(patch_df: pd.DataFrame, *, value: str = "effect", by: str = "role", direction: str | None = "denoise",
                 kind: str = "flip") -> pd.DataFrame:
    """The matrix :func:`causal_trace` draws: rows point (or layer, or ``layer.head``), columns ``by``.

    Each pair's rows are first averaged within a cell (a pair counts once however many positions it has in
    it), then the pairs are averaged; ``kind="difference"`` is the flip pairs' matrix minus the same-sense
    pairs' (the null).
    """
    what = "causal_trace"
    _require(patch_df, ["pair", value, by], what)
    unit = _unit_column(patch_df, what)
    if kind not in _KINDS:
        raise ValueError(f"{what}: kind must be one of {_KINDS}, got {kind!r}")
    df = _only(patch_df, "direction", direction, what)
    if "head" in df.columns:
        df = df.assign(_unit=df["layer"].astype(int).astype(str) + "." + df["head"].astype(int).astype(str))
        keys = ["layer", "head"]
    else:
        df = df.assign(_unit=df[unit])
        keys = [unit]

    def matrix(k: str) -> pd.DataFrame:
        sub = _only(df, "kind", k, what) if "kind" in df.columns else df
        per_pair = sub.groupby(["pair", *keys, "_unit", by], sort=True)[value].mean().reset_index()
        cells = per_pair.groupby([*keys, "_unit", by], sort=True)[value].mean().reset_index()
        mat = cells.pivot_table(index="_unit", columns=by, values=value, aggfunc="first", sort=False)
        rows = cells.drop_duplicates("_unit").sort_values(keys)["_unit"].tolist()
        return mat.reindex(index=rows, columns=_order(mat.columns))

    if kind == "difference":
        if "kind" not in df.columns:
            raise ValueError(f"{what}: kind='difference' needs a 'kind' column with 'flip' and 'same' pairs")
        flip, same = matrix("flip"), matrix("same")
        mat = flip - same.reindex(index=flip.index, columns=flip.columns)
    else:
        if kind == "same" and "kind" not in df.columns:
            raise ValueError(f"{what}: kind='same' needs a 'kind' column (same-sense pairs are the null)")
        mat = matrix(kind)
    mat.index.name = "layer.head" if "head" in df.columns else unit
    return mat


def causal_trace(patch_df: pd.DataFrame, *, value: str = "effect", by: str = "role", direction: str | None = "denoise",
                 kind: str = "flip", contrast: pd.DataFrame | None = None, alpha: float = 0.05,
                 annot: bool = False, cmap: str = "RdBu_r", vmax: float | None = None,
                 ax: Axes | None = None) -> Axes:
    """Patching effect by point (or layer) x position: the causal trace.

    Parameters
    ----------
    patch_df : DataFrame
        From :func:`trajgeo.interventions.patch` (or ``attribution_patch``): ``pair``, ``point`` (residual
        sites) or ``layer`` (and ``head``), the ``by`` column, ``value``; optionally ``direction`` and
        ``kind`` (``"flip"`` pairs, and ``"same"``-sense pairs: the null).
    value : str
        ``"effect"`` or ``"normalized_effect"``.
    by : str
        The position axis: ``"role"`` (cue, other, target; pairs differ in length, roles align them),
        ``"position"``, or any per-row column such as a relative position the caller adds.
    direction : str or None
        The patching direction shown (``None``: the patch_df holds one).
    kind : {"flip", "same", "difference"}
        The flip pairs, the same-sense pairs (the null), or flip minus same.
    contrast : DataFrame, optional
        From :func:`trajgeo.interventions.kind_contrast` with ``by`` among its cell columns (``point`` or
        ``layer``, ``by``, ``p_fwer``): cells with ``p_fwer < alpha`` get a star (gid ``"significant"``).
    alpha : float
        The family-wise level of the stars.
    annot : bool
        Write the cell values.
    cmap : str
        A diverging colour map centred at 0.
    vmax : float, optional
        The colour limit (default the largest absolute cell).
    ax : Axes, optional
        Where to draw; a new figure when omitted.

    Returns
    -------
    Axes
        A heatmap: rows points (0 = embedding) or layers, columns the ``by`` levels; cell = mean over pairs of
        each pair's mean ``value`` in the cell (:func:`trace_matrix`).
    """
    what = "causal_trace"
    mat = trace_matrix(patch_df, value=value, by=by, direction=direction, kind=kind)
    ax = _new_axes(ax, (mpl.rcParams["figure.figsize"][0] * 0.6, max(2.0, 0.12 * len(mat) + 1.0)))
    finite = mat.to_numpy(float)
    top = vmax if vmax is not None else (float(np.nanmax(np.abs(finite))) if np.isfinite(finite).any() else 1.0)
    top = top or 1.0
    label = {"flip": "", "same": " (same-sense null)", "difference": " (flip \N{MINUS SIGN} same)"}[kind]
    _heatmap(mat, ax=ax, cmap=cmap, center=0.0, vmin=-top, vmax=top, annot=annot, fmt=".2f",
             cbar_kws={"label": _PRETTY_METRIC.get(value, value) + label}, yticklabels=True, xticklabels=True)
    ax.invert_yaxis()  # the embedding at the bottom, depth going up
    rows_in = ax.bbox.height / ax.figure.dpi
    _heatmap_ticks(ax, "y", _int_values(mat.index), rows_in, emb=mat.index.name == "point")
    ax.set_xlabel(by.replace("_", " "))
    ax.set_ylabel(mat.index.name.replace("layer.head", "layer.head"))
    ax.tick_params(axis="y", rotation=0)
    ax.tick_params(axis="x", rotation=0)
    if contrast is not None:
        unit = mat.index.name if mat.index.name in ("point", "layer") else None
        _require(contrast, [by, "p_fwer"] + ([unit] if unit else []), what + " contrast")
        c = _only(contrast, "direction", direction, what + " contrast")
        rows, cols = list(mat.index), list(mat.columns)
        for r in c.itertuples(index=False):
            rec = r._asdict()
            key = rec[unit] if unit else f"{int(rec['layer'])}.{int(rec['head'])}"
            if rec["p_fwer"] < alpha and key in rows and rec[by] in cols:
                ax.text(cols.index(rec[by]) + 0.5, rows.index(key) + 0.5, "*", ha="center", va="center",
                        gid="significant", fontsize=mpl.rcParams["font.size"])
    return ax


def _category_order(values: pd.Series) -> list:
    levels = _levels(values)
    if set(levels) <= {True, False}:
        return [v for v in (True, False) if v in levels]
    return levels


def source_map(source_df: pd.DataFrame, *, by: str = "relative_position", value: str = "value", alpha: float = 0.05,
               annot: bool = False, cmap: str = "RdBu_r", ax: Axes | None = None) -> Axes:
    """Layer x source category: what the context pushed into the target along the sense direction.

    Parameters
    ----------
    source_df : DataFrame
        ``SourceAttribution.source_df`` from :func:`trajgeo.interventions.source_attribution`
        (``return_result=True``): ``layer, head, <by>, value`` and, with ``n_permutations > 0``, the
        shuffled-sense null's ``p_fwer``.
    by : str
        The category column (``"relative_position"`` or ``"is_cue"``).
    value : str
    alpha : float
        A cell gets a star (gid ``"significant"``) when one of its heads has ``p_fwer < alpha``.
    annot, cmap
        As in :func:`causal_trace`.
    ax : Axes, optional

    Returns
    -------
    Axes
        A heatmap: rows layers (1 at the bottom), columns categories; cell = the sum over heads of ``value``
        (the mean over examples of the layer's attention write from that category, bias excluded).
    """
    what = "source_map"
    df = _require(source_df, ["layer", "head", by, value], what)
    mat = df.pivot_table(index="layer", columns=by, values=value, aggfunc="sum").sort_index()
    mat = mat.reindex(columns=_category_order(df[by]))
    if by == "is_cue":
        mat.columns = ["cue" if c else "other" for c in mat.columns]
    ax = _new_axes(ax, (mpl.rcParams["figure.figsize"][0] * 0.6, max(2.0, 0.12 * len(mat) + 1.0)))
    vals = mat.to_numpy(float)
    top = float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() else 1.0
    _heatmap(mat, ax=ax, cmap=cmap, center=0.0, vmin=-(top or 1.0), vmax=top or 1.0, annot=annot, fmt=".2f",
             cbar_kws={"label": "push toward own sense\n(sum over heads)"}, yticklabels=True, xticklabels=True)
    ax.invert_yaxis()
    _heatmap_ticks(ax, "y", _int_values(mat.index), ax.bbox.height / ax.figure.dpi)
    ax.set_xlabel("source position relative to target" if by == "relative_position" else "source")
    ax.set_ylabel("layer")
    ax.tick_params(axis="both", rotation=0)
    if "p_fwer" in df.columns:
        hit = df[df["p_fwer"] < alpha]
        rows = list(mat.index)
        cats = _category_order(df[by])
        for (layer, cat) in sorted(set(zip(hit["layer"], hit[by])), key=str):
            ax.text(cats.index(cat) + 0.5, rows.index(layer) + 0.5, "*", ha="center", va="center",
                    gid="significant", fontsize=mpl.rcParams["font.size"])
    return ax


def source_top_heads(source_df: pd.DataFrame, *, by: str = "is_cue", n: int = 10, ax: Axes | None = None) -> Axes:
    """The ``n`` largest (layer, head, category) pushes, each against its shuffled-sense threshold.

    Parameters
    ----------
    source_df : DataFrame
        ``SourceAttribution.source_df`` with the null: ``layer, head, <by>, value, null_fwer`` (``null_q95``
        drawn too when present).
    by : str
    n : int
        Bars shown, largest ``value`` first (top bar).
    ax : Axes, optional

    Returns
    -------
    Axes
        One horizontal bar per cell (gid ``"source_bar"``, width = ``value``), one marker per bar at the
        family-wise threshold ``null_fwer`` (gid ``"null_fwer"``, x-data = the thresholds in bar order).
    """
    what = "source_top_heads"
    df = _require(source_df, ["layer", "head", by, "value", "null_fwer"], what)
    top = df.dropna(subset=["value"]).sort_values("value", ascending=False, kind="stable").head(int(n))
    ax = _new_axes(ax, (mpl.rcParams["figure.figsize"][0] * 0.6, max(1.8, 0.22 * len(top) + 0.8)))
    ys = np.arange(len(top))[::-1]
    colours = _palette(_category_order(df[by]))
    bars = ax.barh(ys, top["value"].to_numpy(float), color=[colours[c] for c in top[by]], height=0.7)
    for bar in bars:
        bar.set_gid("source_bar")
    ax.plot(top["null_fwer"].to_numpy(float), ys, linestyle="none", marker="|", markersize=10, color="0.1",
            gid="null_fwer", label="shuffled-sense threshold (FWER)")
    if "null_q95" in top.columns:
        ax.plot(top["null_q95"].to_numpy(float), ys, linestyle="none", marker="|", markersize=6, color="0.55",
                gid="null_q95", label="shuffled-sense 95%")
    label = (lambda c: "cue" if c else "other") if by == "is_cue" else (lambda c: f"{c:+d}" if isinstance(
        c, (int, np.integer)) else str(c))
    ax.set_yticks(ys, [f"L{int(r.layer)} H{int(r.head)} \N{LEFTWARDS ARROW} {label(getattr(r, by))}"
                       for r in top.itertuples(index=False)])
    ax.axvline(0.0, color="0.6", linewidth=0.6, zorder=0)
    ax.set_xlabel("push toward own sense")
    ax.legend(loc="lower right", frameon=False)
    return ax


def condition_curves(curves_df: pd.DataFrame, *, x: str, metric: str, word: Any = None,
                     conditions: Sequence[str] | None = None, ax: Axes | None = None) -> Axes:
    """One line per ``condition`` of ``value`` against ``x``, with the curves_df's intervals.

    With one word (or ``word=`` given) the bands are the curves_df's ``ci_low``..``ci_high``; with several words the
    line is the mean over words and no band is drawn (intervals do not average).

    Returns
    -------
    Axes
        Lines with gid ``"condition:<name>"`` (x-data the sorted ``x`` values, y-data the values), bands
        with the same gid on the PolyCollection.
    """
    what = "condition_curves"
    df = _require(curves_df, [x, "condition", "metric", "value", "ci_low", "ci_high"], what)
    df = _only(df, "metric", metric, what)
    if word is not None:
        _require(df, ["word"], what)
        df = _only(df, "word", word, what)
    n_words = df["word"].nunique(dropna=False) if "word" in df.columns else 1
    present = list(pd.unique(df["condition"]))
    order = [c for c in (conditions or present) if c in present]
    if conditions is not None and not order:
        raise ValueError(f"{what}: none of conditions {list(conditions)} in the curves_df ({present})")
    ax = _new_axes(ax)
    colours = dict(zip(order, sns.color_palette()[:len(order)] if len(order) <= len(sns.color_palette())
                       else sns.color_palette("husl", len(order))))
    for cond in order:
        g = df[df["condition"] == cond]
        line = g.groupby(x, sort=True)["value"].mean()
        label = str(cond)
        if "rank_erased" in g.columns and cond != "none" and g["rank_erased"].notna().any():
            label += f" (rank {g['rank_erased'].mean():.3g})"
        (ln,) = ax.plot(line.index.to_numpy(float), line.to_numpy(float), marker="o", markersize=3,
                        color=colours[cond], label=label, linestyle="--" if cond in ("none",) else "-")
        ln.set_gid(f"condition:{cond}")
        if n_words == 1:
            g = g.sort_values(x)
            band = ax.fill_between(g[x].to_numpy(float), g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float),
                                   color=colours[cond], alpha=0.2, linewidth=0)
            band.set_gid(f"condition:{cond}")
    ax.set_ylabel(_PRETTY_METRIC.get(metric, metric))
    ax.legend(frameon=False, fontsize=mpl.rcParams["legend.fontsize"])
    return ax


def erasure_curves(erase_df: pd.DataFrame, *, metric: str = "separability", word: Any = None,
                   ax: Axes | None = None) -> Axes:
    """After erasing the sense at one point: a metric at every later point, per condition.

    Parameters
    ----------
    erase_df : DataFrame
        From :func:`trajgeo.interventions.erase`: ``word, layer, point, condition, metric, value, ci_low,
        ci_high, rank_erased`` (conditions ``none, leace, leace_permuted, random``).
    metric : str
        ``"separability"``, ``"mlp_write_projection"`` or ``"lm_loss"``.
    word : optional
        One word (then with its intervals); default every word, the mean over words without bands.
    ax : Axes, optional

    Returns
    -------
    Axes
        As :func:`condition_curves` (x = point); a vertical line (gid ``"erased_point"``) at the erased point;
        the legend gives each condition's mean ``rank_erased``.
    """
    _require(erase_df, ["point", "layer"], "erasure_curves")
    ax = condition_curves(erase_df, x="point", metric=metric, word=word,
                          conditions=("none", "leace", "leace_permuted", "random"), ax=ax)
    for layer in pd.unique(erase_df["layer"]):
        ax.axvline(float(layer), color="0.5", linewidth=0.8, linestyle=":", gid="erased_point")
    ax.set_xlabel("point")
    return ax


def steering_curves(steer_df: pd.DataFrame, *, metric: str = "flip_rate", word: Any = None,
                    ax: Axes | None = None) -> Axes:
    """Dose-response of steering: the final sense against alpha, steered and random directions.

    Parameters
    ----------
    steer_df : DataFrame
        From :func:`trajgeo.interventions.steer`: ``word, layer, alpha, condition, metric, value, ci_low,
        ci_high, n`` (conditions ``steer, random``).
    metric : {"flip_rate", "final_margin"}
    word : optional
        One word; default all (mean over words, no bands).
    ax : Axes, optional

    Returns
    -------
    Axes
        As :func:`condition_curves` (x = alpha).
    """
    ax = condition_curves(steer_df, x="alpha", metric=metric, word=word, conditions=("steer", "random"), ax=ax)
    ax.set_xlabel("alpha (SD of the residual along the direction)")
    if metric == "final_margin":
        ax.axhline(0.0, color="0.6", linewidth=0.6, zorder=0, gid="zero")
    return ax


def _range_label(start: int, stop: int) -> str:
    if start == stop == 0:
        return "none"
    return str(start) if stop == start + 1 else f"{start}\N{EN DASH}{stop - 1}"


def skip_table(skip_df: pd.DataFrame, *, metric: str = "final_separability", annot: bool = True,
               cmap: str = "viridis", ax: Axes | None = None) -> Axes:
    """Word x skipped blocks: how much depth each word's resolution needs.

    Parameters
    ----------
    skip_df : DataFrame
        From :func:`trajgeo.interventions.skip_layers`: ``word, start, stop, metric, value`` (``start == stop ==
        0``: nothing skipped).
    metric : {"final_separability", "lm_loss"}
    annot : bool
    cmap : str
    ax : Axes, optional

    Returns
    -------
    Axes
        A heatmap: rows words, columns the skipped ranges in order (``"none"`` first, then ``"l"`` or
        ``"a–b"``, blocks 1-based and inclusive); cell = the skip_df's value.
    """
    what = "skip_table"
    df = _require(skip_df, ["word", "start", "stop", "metric", "value"], what)
    df = _only(df, "metric", metric, what)
    ranges = sorted({(int(a), int(b)) for a, b in zip(df["start"], df["stop"])})
    labels = [_range_label(a, b) for a, b in ranges]
    df = df.assign(_range=[_range_label(int(a), int(b)) for a, b in zip(df["start"], df["stop"])])
    mat = df.pivot_table(index="word", columns="_range", values="value", aggfunc="mean")
    mat = mat.reindex(index=_levels(df["word"]), columns=labels)
    ax = _new_axes(ax, (mpl.rcParams["figure.figsize"][0], max(1.6, 0.25 * len(mat) + 0.9)))
    _heatmap(mat, ax=ax, cmap=cmap, annot=annot, fmt=".2f", annot_kws={"fontsize": 6},
             cbar_kws={"label": _PRETTY_METRIC.get(metric, metric)}, yticklabels=True, xticklabels=True)
    ax.set_xlabel("blocks skipped")
    ax.set_ylabel("")
    ax.tick_params(axis="y", rotation=0)
    ax.tick_params(axis="x", rotation=90 if len(labels) > 12 else 0)
    return ax
