"""Example paths through a shared 2-D plane (PCA, UMAP), one panel or one per word."""

from __future__ import annotations

import math
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from trajgeo.plotting._common import _levels, _new_axes, _new_legend, _palette, _require


def _thin(labels: pd.Series, max_paths: int | None, random_state: int) -> np.ndarray:
    """Example ids to draw: all, or ``max_paths`` of them stratified by label (so no sense disappears)."""
    ids = labels.index.to_numpy()
    if max_paths is None or len(ids) <= max_paths:
        return ids
    from sklearn.model_selection import train_test_split

    try:
        keep, _ = train_test_split(ids, train_size=max_paths, stratify=labels.to_numpy(), random_state=random_state)
    except ValueError:  # a label with a single example cannot be stratified: plain random subset
        keep = np.random.default_rng(random_state).choice(ids, size=max_paths, replace=False)
    return np.sort(keep)


def trajectories(coords_df: pd.DataFrame, ax: Axes | None = None, hue: str = "sense", *, max_paths: int | None = 60,
                 random_state: int = 0, arrows: bool = True, mean_path: bool = True, legend: bool | str = True,
                 xlabel: str = "component 1", ylabel: str = "component 2") -> Axes:
    """One path per example through a shared 2-D plane, from the common embedding point, coloured by sense.

    Parameters
    ----------
    coords_df : DataFrame
        From ``projector.coords``: ``example, point, x, y`` (+ ``word, sense``); one row per example and point.
    ax : Axes, optional
    hue : str
        Column that colours the paths.
    max_paths : int or None
        Draw at most this many example paths, a subset stratified by ``hue`` (None draws all).
    random_state : int
        Seed of the thinning.
    arrows : bool
        One arrowhead per path on its middle step, showing the direction of travel.
    mean_path : bool
        Also draw the mean path of each ``hue`` level over all examples (thick, outlined).
    legend : bool or "senses"
        True: hue levels and the start/end markers; "senses": hue levels only, in a row under the panel.
    xlabel, ylabel : str

    Returns
    -------
    Axes
        Paths have gid "path", arrows (annotations) gid "arrow", the start and end markers gids "start" and
        "end", mean paths gid "mean_path".
    """
    what = "trajectories"
    df = _require(coords_df, ["example", "point", "x", "y", hue], what)
    labels = df.groupby("example", sort=True)[hue].first()
    levels = _levels(labels)
    palette = _palette(levels)
    keep = _thin(labels, max_paths, random_state)
    wide = df.pivot_table(index="example", columns="point", values=["x", "y"], aggfunc="first").sort_index(axis=1)
    xs, ys = wide["x"].to_numpy(float), wide["y"].to_numpy(float)  # (n_examples, n_points), NaN where absent
    row = {e: i for i, e in enumerate(wide.index)}
    ax = _new_axes(ax)
    alpha = float(np.clip(12.0 / max(len(keep), 1) ** 0.5, 0.25, 0.9))  # fainter as paths get denser
    starts, ends, end_colours = [], [], []
    for example in keep:
        i = row[example]
        ok = ~(np.isnan(xs[i]) | np.isnan(ys[i]))
        px, py = xs[i][ok], ys[i][ok]
        colour = palette[labels[example]]
        ax.plot(px, py, color=colour, linewidth=0.7, alpha=alpha, gid="path", zorder=2)
        starts.append((px[0], py[0]))
        ends.append((px[-1], py[-1]))
        end_colours.append(colour)
        if arrows and len(px) > 1:
            j = (len(px) - 1) // 2  # middle step: the ends are crowded by the markers
            ann = ax.annotate("", xy=(px[j + 1], py[j + 1]), xytext=(px[j], py[j]), zorder=2,
                              arrowprops=dict(arrowstyle="-|>", color=colour, alpha=alpha, linewidth=0.7,
                                              mutation_scale=7, shrinkA=0, shrinkB=0))
            ann.set_gid("arrow")
    if mean_path:
        outline = [patheffects.Stroke(linewidth=3.2, foreground="white"), patheffects.Normal()]
        for level in levels:
            members = [row[e] for e in labels.index[labels == level]]
            mx, my = np.nanmean(xs[members], axis=0), np.nanmean(ys[members], axis=0)
            ax.plot(mx, my, color=palette[level], linewidth=2.0, gid="mean_path", zorder=4, path_effects=outline)
    starts, ends = np.asarray(starts).reshape(-1, 2), np.asarray(ends).reshape(-1, 2)
    ax.scatter(ends[:, 0], ends[:, 1], s=10, c=end_colours, edgecolors="white", linewidths=0.3, zorder=5, gid="end")
    ax.scatter(starts[:, 0], starts[:, 1], s=30, facecolors="white", edgecolors="black", linewidths=0.9, zorder=6,
               gid="start")
    handles = [Line2D([], [], color=palette[lev], linewidth=1.5) for lev in levels]
    if legend == "senses":
        ax.legend(handles, [str(lev) for lev in levels], loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  ncol=min(len(levels), 3), handlelength=1.2, columnspacing=0.8, borderaxespad=0.2)
    elif legend:
        handles, labels = handles + _marker_handles(), [str(lev) for lev in levels] + list(_MARKER_LABELS)
        _new_legend(ax, handles, labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


_MARKER_LABELS = ("embedding (start)", "last point")


def _marker_handles() -> list[Line2D]:
    return [Line2D([], [], linestyle="", marker="o", markerfacecolor="white", markeredgecolor="black"),
            Line2D([], [], linestyle="", marker="o", markersize=3, color="0.3")]


def trajectory_grid(coords_df: pd.DataFrame, col: str = "word", *, col_wrap: int = 3, hue: str = "sense",
                    max_paths: int | None = 40, random_state: int = 0, **kwargs: Any) -> Figure:
    """Small multiples of :func:`trajectories`, one panel per level of ``col`` (one word per panel).

    Parameters
    ----------
    coords_df : DataFrame
        ``example, point, x, y, <col>, <hue>``.
    col : str
        Column with one panel per level.
    col_wrap : int
        Panels per row.
    hue, max_paths, random_state, **kwargs
        Passed to :func:`trajectories` for each panel (thinning applies per panel).

    Returns
    -------
    Figure
        Panels titled by level, in sorted order, each with its senses listed underneath; one figure legend
        explains the start and end markers. The figure is as wide as the current style's figures.
    """
    _require(coords_df, ["example", "point", "x", "y", col, hue], "trajectory_grid")
    levels = _levels(coords_df[col])
    ncols = max(1, min(col_wrap, len(levels)))
    nrows = math.ceil(len(levels) / ncols)
    width = mpl.rcParams["figure.figsize"][0]
    fig = plt.figure(figsize=(width, (width / ncols + 0.25) * nrows + 0.2), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    kwargs = {"legend": "senses", "xlabel": "", "ylabel": "", **kwargs}
    for ax, level in zip(axes, levels):
        trajectories(coords_df[coords_df[col] == level], ax=ax, hue=hue, max_paths=max_paths,
                     random_state=random_state, **kwargs)
        ax.set_title(str(level))
        ax.set_xticks([])  # a projection's coordinates carry no meaning of their own
        ax.set_yticks([])
    for ax in axes[len(levels):]:
        ax.remove()
    if kwargs["legend"]:
        fig.legend(_marker_handles(), list(_MARKER_LABELS), loc="outside lower center", ncol=2)
    return fig
