"""Curves read against their null: the permutation band, separability per word, the point x reference matrix,
values against a null interval, and heatmaps that mark the cells above a family-wise threshold.

Every function takes a tidy frame with the null columns of :mod:`trajgeo.stats` (``null_mean, null_q95,
null_fwer``; see ``docs/architecture.md``) and draws what the frame holds: nothing here computes a statistic.
"""

from __future__ import annotations

from typing import Any, Mapping

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from trajgeo.plotting._common import _levels, _new_axes, _panel_grid, _point_axis, _require

__all__ = ["null_band", "separability_grid", "reference_heatmap", "against_null", "threshold_heatmap"]

_NULL_COLOUR = "0.75"


def null_band(df: pd.DataFrame, *, x: str = "point", value: str = "value", label: str | None = None,
              color: Any = None, ax: Axes | None = None) -> Axes:
    """One curve with its permutation null: a band from the null's mean to its 95% quantile, the
    family-wise threshold dashed, and the points above that threshold marked.

    Parameters
    ----------
    df : DataFrame
        One curve: columns ``x`` and ``value``; ``null_mean, null_q95`` (per point) and ``null_fwer``
        (the family-wise 95% threshold over points, constant) draw the null when present (NaN: none).
    x, value : str
        The columns of the curve.
    label : str, optional
        Legend label of the curve.
    color : colour, optional
        Of the curve (default: the first of the colour cycle).
    ax : Axes, optional

    Returns
    -------
    Axes
        Artists with gids ``"curve"``, ``"null_band"``, ``"null_fwer"`` and ``"above_fwer"`` (the markers
        of the points whose value exceeds ``null_fwer``).
    """
    d = _require(df, [x, value], "null_band").sort_values(x)
    ax = _new_axes(ax)
    colour = color if color is not None else mpl.rcParams["axes.prop_cycle"].by_key()["color"][0]
    xs, ys = d[x].to_numpy(float), d[value].to_numpy(float)
    if {"null_mean", "null_q95"} <= set(d.columns) and d["null_q95"].notna().any():
        ax.fill_between(xs, d["null_mean"].to_numpy(float), d["null_q95"].to_numpy(float), color=_NULL_COLOUR,
                        alpha=0.6, linewidth=0, gid="null_band", label="null: mean to 95%")
    ax.plot(xs, ys, color=colour, gid="curve", label=label)
    if "null_fwer" in d.columns and d["null_fwer"].notna().any():
        fwer = float(d["null_fwer"].dropna().iloc[0])
        ax.axhline(fwer, color="0.35", linestyle="--", linewidth=0.8, gid="null_fwer",
                   label="family-wise 95% threshold")
        above = ys > fwer
        if above.any():
            ax.plot(xs[above], ys[above], linestyle="none", marker="o", markersize=2.5, color=colour,
                    gid="above_fwer")
    if x == "point":
        _point_axis(ax)
    return ax


def separability_grid(df: pd.DataFrame, *, col: str = "word", value: str = "value",
                      baseline: Mapping[Any, float] | None = None, chance: Mapping[Any, float] | None = None,
                      ylabel: str = "balanced accuracy (held-out groups)", ncols: int = 4) -> Figure:
    """Separability against point, one panel per word, each with its permutation null (:func:`null_band`).

    Parameters
    ----------
    df : DataFrame
        From :func:`trajgeo.senses.separability` (``word, point, value`` and the null columns).
    col : str
        The column with one panel per level.
    value : str
    baseline : mapping of level -> float, optional
        A horizontal line per panel (gid ``"baseline"``), e.g. the surface-cue probe's score.
    chance : mapping of level -> float, optional
        The chance level per panel (gid ``"chance"``, dotted), e.g. ``1 / n_senses``.
    ylabel : str
    ncols : int
        Panels per row.

    Returns
    -------
    Figure
        One Axes per level (titled with it), sharing both axes.
    """
    d = _require(df, [col, "point", value], "separability_grid")
    levels = _levels(d[col])
    ncols = max(1, min(ncols, len(levels)))
    fig, axes = _panel_grid(len(levels), ncols, row_height=1.25, extra_height=0.5, sharex=True, sharey=True)
    bottom = {i for i in range(len(levels)) if i + ncols >= len(levels)}  # panels with nothing below them
    for i, (ax, level) in enumerate(zip(axes, levels)):
        null_band(d[d[col] == level], value=value, ax=ax)
        if baseline is not None and level in baseline and np.isfinite(baseline[level]):
            ax.axhline(baseline[level], color="C1", linestyle="-.", linewidth=0.8, gid="baseline")
        if chance is not None and level in chance:
            ax.axhline(chance[level], color="0.5", linestyle=":", linewidth=0.8, gid="chance")
        ax.set_title(str(level), pad=2)
        ax.set_xlabel("point" if i in bottom else "")
        ax.set_ylabel("")
    handles = [Line2D([], [], color="C0", label="observed"),
               Patch(color=_NULL_COLOUR, label="null: mean to 95%"),
               Line2D([], [], color="0.35", linestyle="--", label="family-wise 95% threshold")]
    if baseline is not None:
        handles.append(Line2D([], [], color="C1", linestyle="-.", label="surface-cue baseline"))
    if chance is not None:
        handles.append(Line2D([], [], color="0.5", linestyle=":", label="chance"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3))
    fig.supylabel(ylabel, fontsize=mpl.rcParams["axes.labelsize"])
    return fig


def reference_heatmap(df: pd.DataFrame, *, metric: str = "margin", ax: Axes | None = None) -> Axes:
    """The point x reference matrix: each row is the mean margin against one reference point's prototypes.

    Parameters
    ----------
    df : DataFrame
        From :func:`trajgeo.senses.reference_matrix`: ``point, reference, metric, value`` (with a ``word``
        column, the cell is the mean over words).
    metric : str
        The rows of ``metric`` drawn.
    ax : Axes, optional

    Returns
    -------
    Axes
        An image (gid ``"reference_matrix"``) with points on x and references on y, a colour bar, and
        the diagonal (point == reference, separability at each point) outlined (gid ``"diagonal"``).
    """
    d = _require(df, ["point", "reference", "metric", "value"], "reference_heatmap")
    d = d[d["metric"] == metric]
    if d.empty:
        raise ValueError(f"reference_heatmap: no rows of metric {metric!r}")
    m = d.groupby(["reference", "point"])["value"].mean().unstack("point")
    ax = _new_axes(ax)
    values = m.to_numpy(float)
    lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    pts, refs = m.columns.to_numpy(float), m.index.to_numpy(float)
    img = ax.pcolormesh(_edges(pts), _edges(refs), np.ma.masked_invalid(values), cmap="RdBu_r", vmin=-lim,
                        vmax=lim, shading="flat")
    img.set_gid("reference_matrix")
    lo, hi = max(pts.min(), refs.min()), min(pts.max(), refs.max())
    ax.plot([lo, hi], [lo, hi], color="0.2", linewidth=0.6, linestyle=":", gid="diagonal")
    ax.figure.colorbar(img, ax=ax, label=f"mean {metric}")
    ax.set_xlabel("point")
    ax.set_ylabel("reference point of the prototypes")
    return ax


def against_null(df: pd.DataFrame, *, y: str = "word", value: str = "value", xlabel: str | None = None,
                 ax: Axes | None = None) -> Axes:
    """One value per level (a dot) beside its null (a bar from the null's mean to its 95% quantile).

    Parameters
    ----------
    df : DataFrame
        One row per level (the first row of a level is used): ``y``, ``value``, ``null_mean``, ``null_q95``.
    y, value : str
    xlabel : str, optional
    ax : Axes, optional

    Returns
    -------
    Axes
        Levels on the y axis (one tick label each); dots (gid ``"observed"``) and null bars (gid ``"null"``).
    """
    d = _require(df, [y, value, "null_mean", "null_q95"], "against_null").drop_duplicates(y)
    levels = _levels(d[y])
    d = d.set_index(y).loc[levels]
    ax = _new_axes(ax)
    pos = np.arange(len(levels))
    ax.hlines(pos, d["null_mean"].to_numpy(float), d["null_q95"].to_numpy(float), color=_NULL_COLOUR,
              linewidth=4, gid="null", label="null: mean to 95%")
    ax.plot(d[value].to_numpy(float), pos, linestyle="none", marker="o", color="C0", gid="observed",
            label="observed")
    ax.set_yticks(pos, [str(v) for v in levels])
    ax.invert_yaxis()
    ax.set_xlabel(xlabel or value)
    ax.legend(loc="best")
    return ax


def threshold_heatmap(df: pd.DataFrame, *, row: str = "word", col: str = "point", value: str = "value",
                      threshold: str | None = "null_fwer", label: str | None = None, ax: Axes | None = None) -> Axes:
    """A row x column heatmap of ``value``, with the cells above ``threshold`` marked by a dot.

    Parameters
    ----------
    df : DataFrame
        One row per cell (duplicates are averaged): ``row, col, value`` and, optionally, ``threshold``.
    row, col, value : str
    threshold : str or None
        The column of each cell's threshold; None (or a column the frame lacks): no marks.
    label : str, optional
        Colour-bar label (default ``value``).
    ax : Axes, optional

    Returns
    -------
    Axes
        An image (gid ``"heatmap"``) centred at 0, and dots (gid ``"above_threshold"``) on the cells whose
        value exceeds the threshold.
    """
    d = _require(df, [row, col, value], "threshold_heatmap")
    m = d.groupby([row, col])[value].mean().unstack(col)
    ax = _new_axes(ax)
    values = m.to_numpy(float)
    lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    img = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim,
                    interpolation="nearest")
    img.set_gid("heatmap")
    if threshold is not None and threshold in d.columns:
        t = d.groupby([row, col])[threshold].first().unstack(col).reindex_like(m).to_numpy(float)
        with np.errstate(invalid="ignore"):
            r, c = np.nonzero(values > t)
        if len(r):
            ax.plot(c, r, linestyle="none", marker=".", color="k", markersize=3, gid="above_threshold")
    ax.set_xticks(np.arange(m.shape[1]), [str(v) for v in m.columns],
                  rotation=90 if m.shape[1] > 12 else 0)
    ax.set_yticks(np.arange(m.shape[0]), [str(v) for v in m.index])
    ax.set_xlabel(col)
    ax.set_ylabel(row)
    ax.figure.colorbar(img, ax=ax, label=label or value)
    return ax


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (half-way between neighbours)."""
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[centres[0] - (mid[0] - centres[0])], mid, [centres[-1] + (centres[-1] - mid[-1])]])
