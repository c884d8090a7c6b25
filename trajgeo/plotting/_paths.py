"""Example paths through a shared 2-D plane (PCA, UMAP): one panel (:func:`paths`) or one per word
(:func:`path_grid`)."""

from __future__ import annotations

from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from trajgeo.plotting._common import (_deprecated_alias, _levels, _new_axes, _new_legend, _palette, _panel_grid,
                                      _require)

_MARKER_LABELS = ("embedding (start)", "last point")


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


def _marker_handles() -> list[Line2D]:
    return [Line2D([], [], linestyle="", marker="o", markerfacecolor="white", markeredgecolor="black"),
            Line2D([], [], linestyle="", marker="o", markersize=3, color="0.3")]


def _draw_example_paths(ax: Axes, xs: np.ndarray, ys: np.ndarray, colours: list,
                        arrows: bool) -> tuple[np.ndarray, np.ndarray]:
    """One thin path per row of ``xs, ys`` (NaN where a point is absent) with an arrow on its middle step;
    returns the (n, 2) start and end positions."""
    alpha = float(np.clip(12.0 / max(len(xs), 1) ** 0.5, 0.25, 0.9))  # fainter as paths get denser
    starts, ends = [], []
    for px, py, colour in zip(xs, ys, colours):
        ok = ~(np.isnan(px) | np.isnan(py))
        px, py = px[ok], py[ok]
        ax.plot(px, py, color=colour, linewidth=0.7, alpha=alpha, gid="path", zorder=2)
        starts.append((px[0], py[0]))
        ends.append((px[-1], py[-1]))
        if arrows and len(px) > 1:
            j = (len(px) - 1) // 2  # middle step: the ends are crowded by the markers
            ann = ax.annotate("", xy=(px[j + 1], py[j + 1]), xytext=(px[j], py[j]), zorder=2,
                              arrowprops=dict(arrowstyle="-|>", color=colour, alpha=alpha, linewidth=0.7,
                                              mutation_scale=7, shrinkA=0, shrinkB=0))
            ann.set_gid("arrow")
    return np.asarray(starts).reshape(-1, 2), np.asarray(ends).reshape(-1, 2)


def _path_legend(ax: Axes, levels: list, palette: dict, legend: bool | str) -> None:
    handles = [Line2D([], [], color=palette[lev], linewidth=1.5) for lev in levels]
    if legend == "senses":
        ax.legend(handles, [str(lev) for lev in levels], loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  ncol=min(len(levels), 3), handlelength=1.2, columnspacing=0.8, borderaxespad=0.2)
    elif legend:
        _new_legend(ax, handles + _marker_handles(), [str(lev) for lev in levels] + list(_MARKER_LABELS))


def paths(coords_df: pd.DataFrame, *, hue: str = "sense", max_paths: int | None = 60, random_state: int = 0,
          arrows: bool = True, mean_path: bool = True, legend: bool | str = True, xlabel: str = "component 1",
          ylabel: str = "component 2", ax: Axes | None = None) -> Axes:
    """One path per example through a shared 2-D plane, from the common embedding point, coloured by sense.

    Parameters
    ----------
    coords_df : DataFrame
        From ``projector.coords``: ``example, point, x, y`` (+ ``word, sense``); one row per example and point.
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
    ax : Axes, optional
        Where to draw; a new figure when omitted.

    Returns
    -------
    Axes
        Paths have gid "path", arrows (annotations) gid "arrow", the start and end markers gids "start" and
        "end", mean paths gid "mean_path".
    """
    df = _require(coords_df, ["example", "point", "x", "y", hue], "paths")
    labels = df.groupby("example", sort=True)[hue].first()
    levels = _levels(labels)
    palette = _palette(levels)
    keep = _thin(labels, max_paths, random_state)
    wide = df.pivot_table(index="example", columns="point", values=["x", "y"], aggfunc="first").sort_index(axis=1)
    xs, ys = wide["x"].to_numpy(float), wide["y"].to_numpy(float)  # (n_examples, n_points), NaN where absent
    rows = wide.index.get_indexer(keep)
    ax = _new_axes(ax)
    colours = [palette[labels[e]] for e in keep]
    starts, ends = _draw_example_paths(ax, xs[rows], ys[rows], colours, arrows)
    if mean_path:
        outline = [patheffects.Stroke(linewidth=3.2, foreground="white"), patheffects.Normal()]
        for level in levels:
            members = wide.index.get_indexer(labels.index[labels == level])
            mx, my = np.nanmean(xs[members], axis=0), np.nanmean(ys[members], axis=0)
            ax.plot(mx, my, color=palette[level], linewidth=2.0, gid="mean_path", zorder=4, path_effects=outline)
    ax.scatter(ends[:, 0], ends[:, 1], s=10, c=colours, edgecolors="white", linewidths=0.3, zorder=5, gid="end")
    ax.scatter(starts[:, 0], starts[:, 1], s=30, facecolors="white", edgecolors="black", linewidths=0.9, zorder=6,
               gid="start")
    _path_legend(ax, levels, palette, legend)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


def path_grid(coords_df: pd.DataFrame, *, col: str = "word", col_wrap: int = 3, hue: str = "sense",
              max_paths: int | None = 40, random_state: int = 0, **kwargs: Any) -> Figure:
    """Small multiples of :func:`paths`, one panel per level of ``col`` (one word per panel).

    Parameters
    ----------
    coords_df : DataFrame
        ``example, point, x, y, <col>, <hue>``.
    col : str
        Column with one panel per level.
    col_wrap : int
        Panels per row.
    hue, max_paths, random_state, **kwargs
        Passed to :func:`paths` for each panel (thinning applies per panel).

    Returns
    -------
    Figure
        Panels titled by level, in sorted order, each with its senses listed underneath; one figure legend
        explains the start and end markers. The figure is as wide as the current style's figures.
    """
    _require(coords_df, ["example", "point", "x", "y", col, hue], "path_grid")
    levels = _levels(coords_df[col])
    ncols = max(1, min(col_wrap, len(levels)))
    width = mpl.rcParams["figure.figsize"][0]
    fig, axes = _panel_grid(len(levels), ncols, row_height=width / ncols + 0.25, extra_height=0.2)
    kwargs = {"legend": "senses", "xlabel": "", "ylabel": "", **kwargs}
    for ax, level in zip(axes, levels):
        paths(coords_df[coords_df[col] == level], hue=hue, max_paths=max_paths, random_state=random_state,
              ax=ax, **kwargs)
        ax.set_title(str(level))
        ax.set_xticks([])  # a projection's coordinates carry no meaning of their own
        ax.set_yticks([])
    if kwargs["legend"]:
        fig.legend(_marker_handles(), list(_MARKER_LABELS), loc="outside lower center", ncol=2)
    return fig


trajectories = _deprecated_alias(paths, "trajectories", positional=("ax", "hue"))
trajectory_grid = _deprecated_alias(path_grid, "trajectory_grid", positional=("col",))
