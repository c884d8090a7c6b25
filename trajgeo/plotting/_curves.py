"""Curves against point: sense convergence, probe accuracy, lens log-odds, path-geometry panels."""

from __future__ import annotations

import math
from typing import Any, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from trajgeo.plotting._common import (_PRETTY, _levels, _new_axes, _new_legend, _palette, _point_axis, _precomputed,
                                      _require, _select_metric, _value_column)


def _depth_axis(df: pd.DataFrame, relative: bool) -> pd.Series:
    """x values: the point, or point / depth where depth is ``n_layers`` or the largest point per ``model``."""
    point = df["point"].astype(float)
    if not relative:
        return point
    if "n_layers" in df.columns:
        depth = df["n_layers"].astype(float)
    elif "model" in df.columns:
        depth = df.groupby("model")["point"].transform("max").astype(float)
    else:
        depth = pd.Series(point.max(), index=df.index)
    if (depth <= 0).any():
        raise ValueError("relative depth needs at least one point beyond the embedding per model")
    return point / depth


def _curve(ax: Axes, df: pd.DataFrame, x: str, hue: str | None, style: str | None, ci: float | None,
           n_boot: int, random_state: int, legend: bool = True) -> list[Line2D]:
    """Mean line per hue/style group with a band: bootstrapped from ``value`` rows, or read from precomputed
    ``mean``/``ci_low``/``ci_high`` columns (as written by ``trajgeo.stats.bootstrap_ci``)."""
    precomputed = _precomputed(df)
    y = "mean" if precomputed else "value"
    df = df.dropna(subset=[y])  # undefined points (e.g. the turning angle at point 0) are not zeros
    hue_order = _levels(df[hue]) if hue else None
    style_order = _levels(df[style]) if style else None
    palette = _palette(hue_order) if hue else None
    before = list(ax.lines)
    kws = dict(data=df, x=x, y=y, hue=hue, hue_order=hue_order, palette=palette, style=style,
               style_order=style_order, ax=ax, legend="auto" if legend else False)
    if hue is None:
        kws.pop("palette")
        kws["color"] = sns.color_palette()[0]
    if precomputed:
        sns.lineplot(errorbar=None, **kws)
        keys = [k for k in (hue, style) if k]
        groups = df.groupby(keys, sort=True) if keys else [((), df)]
        for key, g in groups:
            key = key if isinstance(key, tuple) else (key,)
            colour = palette[key[0]] if hue else kws["color"]
            g = g.sort_values(x)
            ax.fill_between(g[x].to_numpy(float), g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float),
                            color=colour, alpha=0.2, linewidth=0)
    else:
        sns.lineplot(errorbar=("ci", 100 * ci) if ci else None, n_boot=n_boot, seed=random_state,
                     err_kws={"linewidth": 0}, **kws)
    # seaborn also adds empty lines as legend handles; only lines with data are curves
    lines = [line for line in ax.lines if line not in before and len(line.get_xdata())]
    for line in lines:
        line.set_gid("curve")  # lets callers (and tests) tell data curves from reference lines
    return lines


def convergence(curves_df: pd.DataFrame, metric: str = "margin", hue: str | None = "sense", ax: Axes | None = None,
                *, style: str | None = None, relative_depth: bool = False, ci: float | None = 0.95,
                n_boot: int = 1000, random_state: int = 0) -> Axes:
    """Sense margin (or cosine to each sense prototype) against point: mean with a bootstrap band per group.

    Parameters
    ----------
    curves_df : DataFrame
        Long form from ``trajgeo.senses.curves``: ``example, point, word, sense, metric, to_sense, value``
        (one row per example, point and prototype). Or precomputed intervals from
        ``trajgeo.stats.bootstrap_ci``: ``point, <hue>, mean, ci_low, ci_high`` (+ ``metric``).
    metric : {"margin", "cos"}
        Which rows to draw. For "cos", lines are split by ``to_sense`` (line style, legend "prototype") unless
        ``style`` is given.
    hue : str or None
        Column with one colour per level, e.g. "sense", "word" or "model".
    ax : Axes, optional
        Where to draw; a new figure when omitted.
    style : str, optional
        Column with one line style per level.
    relative_depth : bool
        Put models of different depth on a common 0..1 axis: point / n_layers (column ``n_layers``), or
        point / the largest point of each ``model``.
    ci : float or None
        Confidence level of the percentile bootstrap band over examples; None draws no band.
    n_boot : int
        Bootstrap resamples.
    random_state : int
        Seed of the bootstrap, so the band is the same on every rebuild.

    Returns
    -------
    Axes
    """
    what = "convergence"
    _require(curves_df, ["point", hue, style, _value_column(curves_df)], what)
    df = _select_metric(curves_df, metric, what)
    if metric == "cos" and style is None and "to_sense" in df.columns and df["to_sense"].notna().any():
        df, style = df.rename(columns={"to_sense": "prototype"}), "prototype"  # legend title reads "prototype"
    df = df.assign(_x=_depth_axis(df, relative_depth))
    ax = _new_axes(ax)
    _curve(ax, df, "_x", hue, style, ci, n_boot, random_state)
    if metric == "margin":
        ax.axhline(0.0, color="0.6", linewidth=0.6, zorder=0, gid="zero")
    _point_axis(ax, relative=relative_depth)
    ax.set_ylabel(_PRETTY.get(metric, metric))
    return ax


def _probe_summary(df: pd.DataFrame, metric: str, keys: list[str]) -> pd.DataFrame:
    """Per-point summary of one probe metric: the fold == -1 rows when present, else the mean over folds."""
    rows = df[df["metric"] == metric]
    if rows.empty:
        return rows
    if "fold" in rows.columns and (rows["fold"] == -1).any():
        rows = rows[rows["fold"] == -1]
    elif "fold" in rows.columns:
        rows = rows.assign(ci_low=np.nan, ci_high=np.nan)
    cols = ["value"] + [c for c in ("ci_low", "ci_high") if c in rows.columns]
    return rows.groupby(keys + ["point"], sort=True)[cols].mean().reset_index()


def probe_accuracy(layerwise_df: pd.DataFrame, metric: str = "accuracy", ax: Axes | None = None, *,
                   hue: str | None = None, control: bool | None = None, baseline: bool | None = None) -> Axes:
    """Probe score against point, with the control-task curve and the majority baseline (dashed).

    Parameters
    ----------
    layerwise_df : DataFrame
        From ``trajgeo.probes.layerwise``: ``point, fold, metric, value, ci_low, ci_high``; summary rows have
        ``fold == -1`` (their interval is drawn as a band). Without summary rows the folds are averaged.
    metric : str
        The probe score to draw, e.g. "accuracy", "macro_f1", "balanced_accuracy".
    ax : Axes, optional
    hue : str, optional
        Column (e.g. "word" or "model") with one colour per level; the control and baseline lines of a level
        share its colour.
    control : bool, optional
        Draw the ``control_accuracy`` rows (dotted) when present. Default: only when ``metric == "accuracy"``,
        the scale both are on.
    baseline : bool, optional
        Draw the ``majority_baseline`` rows (dashed) when present. Default as for ``control``.

    Returns
    -------
    Axes
        Curves have gids "probe", "control" and "majority_baseline".
    """
    what = "probe_accuracy"
    _require(layerwise_df, ["point", "metric", "value", hue], what)
    keys = [hue] if hue else []
    same_scale = metric == "accuracy"  # control and majority baseline are accuracies
    control = same_scale if control is None else control
    baseline = same_scale if baseline is None else baseline
    main = _probe_summary(layerwise_df, metric, keys)
    if main.empty:
        raise ValueError(f"{what}: no rows with metric == {metric!r}; "
                         f"available: {sorted(map(str, layerwise_df['metric'].unique()))}")
    ctrl = _probe_summary(layerwise_df, "control_accuracy", keys) if control else main.iloc[:0]
    base = _probe_summary(layerwise_df, "majority_baseline", keys) if baseline else main.iloc[:0]
    ax = _new_axes(ax)
    levels = _levels(main[hue]) if hue else [None]
    palette = _palette(levels) if hue else {None: sns.color_palette()[0]}
    ctrl_colour = (lambda lev: palette[lev]) if hue else (lambda lev: sns.color_palette()[1])
    base_colour = (lambda lev: palette[lev]) if hue else (lambda lev: "0.3")

    def part(frame: pd.DataFrame, level: Any) -> pd.DataFrame:
        return frame if hue is None else frame[frame[hue] == level]

    for level in levels:
        m = part(main, level)
        ax.plot(m["point"], m["value"], color=palette[level], gid="probe", zorder=3)
        if {"ci_low", "ci_high"} <= set(m.columns) and m[["ci_low", "ci_high"]].notna().all(axis=None):
            ax.fill_between(m["point"].to_numpy(float), m["ci_low"].to_numpy(float), m["ci_high"].to_numpy(float),
                            color=palette[level], alpha=0.2, linewidth=0)
        c = part(ctrl, level)
        if not c.empty:
            ax.plot(c["point"], c["value"], color=ctrl_colour(level), linestyle=":", gid="control", zorder=2)
        b = part(base, level)
        if not b.empty:
            values = b["value"].to_numpy(float)
            if np.allclose(values, values[0]):  # one baseline for every point: a horizontal reference line
                ax.axhline(values[0], color=base_colour(level), linestyle="--", linewidth=0.9, gid="majority_baseline",
                           zorder=1)
            else:
                ax.plot(b["point"], values, color=base_colour(level), linestyle="--", linewidth=0.9,
                        gid="majority_baseline", zorder=1)
    name = _PRETTY.get(metric, metric)
    handles, labels = [], []
    if hue:
        handles += [Line2D([], [], color=palette[lev]) for lev in levels]
        labels += [str(lev) for lev in levels]
        grey = "0.3"
        handles.append(Line2D([], [], color=grey))
        labels.append(f"probe ({name})")
    else:
        handles.append(Line2D([], [], color=palette[None]))
        labels.append(f"probe ({name})")
        grey = None
    if not ctrl.empty:
        handles.append(Line2D([], [], color=grey or ctrl_colour(None), linestyle=":"))
        labels.append("control task")
    if not base.empty:
        handles.append(Line2D([], [], color=grey or base_colour(None), linestyle="--"))
        labels.append("majority baseline")
    _new_legend(ax, handles, labels)
    _point_axis(ax)
    ax.set_ylabel(name)
    return ax


def sense_log_odds(lens_df: pd.DataFrame, ax: Axes | None = None, *, hue: str | None = "sense",
                   ci: float | None = 0.95, n_boot: int = 1000, random_state: int = 0) -> Axes:
    """Sense-word log-odds (own sense vs the others) read through the logit lens, against point.

    Parameters
    ----------
    lens_df : DataFrame
        From ``trajgeo.lens.logit_lens``: ``example, point, word, sense, metric, value``; rows with
        ``metric == "sense_log_odds"`` are drawn (or precomputed ``mean, ci_low, ci_high``).
    ax : Axes, optional
    hue : str or None
    ci, n_boot, random_state
        Bootstrap band over examples, as in :func:`convergence`.

    Returns
    -------
    Axes
        Mean curve per ``hue`` level (gid "curve") and a zero line (gid "zero").
    """
    what = "sense_log_odds"
    _require(lens_df, ["point", hue, _value_column(lens_df)], what)
    df = _select_metric(lens_df, "sense_log_odds", what)
    ax = _new_axes(ax)
    _curve(ax, df.assign(_x=df["point"].astype(float)), "_x", hue, None, ci, n_boot, random_state)
    ax.axhline(0.0, color="0.6", linewidth=0.6, zorder=0, gid="zero")
    _point_axis(ax)
    ax.set_ylabel(_PRETTY["sense_log_odds"])
    return ax


def path_panels(path_metrics_df: pd.DataFrame,
                metrics: Sequence[str] = ("step_size", "turning_angle", "cos_to_final"), *,
                hue: str | None = "sense", ncols: int | None = None, ci: float | None = 0.95, n_boot: int = 1000,
                random_state: int = 0) -> Figure:
    """Path geometry against point, one panel per metric, mean with a bootstrap band per ``hue`` level.

    Parameters
    ----------
    path_metrics_df : DataFrame
        From ``trajgeo.geometry.path_metrics``: ``example, point, word, sense, metric, value``.
    metrics : sequence of str
        One panel each, in order.
    hue : str or None
    ncols : int, optional
        Panels per row; default all in one row on a wide figure (>= 5 in), one column on a narrow one.
    ci, n_boot, random_state
        As in :func:`convergence`.

    Returns
    -------
    Figure
        Panels share the point axis; one figure legend for the ``hue`` levels.
    """
    what = "path_panels"
    df = _require(path_metrics_df, ["point", "metric", hue, _value_column(path_metrics_df)], what)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metrics if m not in set(df["metric"])]
    if unknown:
        raise ValueError(f"{what}: metric(s) {unknown} not in the table; available: {_levels(df['metric'])}")
    width = mpl.rcParams["figure.figsize"][0]
    ncols = ncols or (len(metrics) if width >= 5 else 1)
    nrows = math.ceil(len(metrics) / ncols)
    panel_h = min(width / ncols * 0.75, 1.3)
    fig = plt.figure(figsize=(width, panel_h * nrows + 0.45), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    for i, (ax, metric) in enumerate(zip(axes, metrics)):
        sub = df[df["metric"] == metric]
        _curve(ax, sub.assign(_x=sub["point"].astype(float)), "_x", hue, None, ci, n_boot, random_state,
               legend=i == 0)
        _point_axis(ax)
        ax.set_ylabel(_PRETTY.get(metric, metric))
        if i < len(metrics) - ncols:
            ax.set_xlabel("")  # the shared point axis is labelled once, on the bottom row
    for ax in axes[len(metrics):]:
        ax.remove()
    legend = axes[0].get_legend()
    if legend is not None:  # one legend for all panels, outside the data
        handles, labels = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
        legend.remove()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), title=hue)
    return fig
