"""Curves against point: sense convergence, probe accuracy, lens log-odds, path-geometry panels.

Plotting computes no statistics (docs/architecture.md, rule 3). A frame of intervals (``mean, ci_low,
ci_high``, as :func:`trajgeo.stats.bootstrap_ci` writes them) is drawn as it is; for a raw long frame
(``value`` rows) the interval is seaborn's own, chosen with ``errorbar=`` (plus ``n_boot=`` and ``seed=`` for
a bootstrap) and passed through to :func:`seaborn.lineplot` unchanged.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Union

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from trajgeo._api import changed_signature
from trajgeo.plotting._common import (_PRETTY, _levels, _new_axes, _new_legend, _palette, _panel_grid, _point_axis,
                                      _precomputed, _require, _select_metric, _value_column)

#: What seaborn accepts as ``errorbar=``: "ci", "pi", "se", "sd", (method, level), a callable, or None.
ErrorBar = Union[str, tuple, Callable, None]
#: What seaborn accepts as ``seed=``.
Seed = Union[int, np.random.Generator, np.random.RandomState, None]
_DEFAULT_ERRORBAR = ("ci", 95)  # what 0.1's ci=0.95 drew: the figures of old tables stay byte-identical


def _old_interval_keywords(fn: Callable) -> Callable:
    """Accept 0.1's ``ci=`` (a coverage in (0, 1), or None for no band) as seaborn's ``errorbar=("ci", 100 * ci)``,
    with a DeprecationWarning (``random_state=`` -> ``seed=`` is a plain rename, left to changed_signature)."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "ci" in kwargs:
            if "errorbar" in kwargs:
                raise TypeError(f"{name}() got both 'ci' (deprecated) and 'errorbar'; pass only 'errorbar'")
            ci = kwargs.pop("ci")
            kwargs["errorbar"] = ("ci", 100 * ci) if ci else None
            warnings.warn(f"{name}(): the keyword 'ci' is deprecated since trajgeo 0.2; pass seaborn's "
                          f"errorbar={kwargs['errorbar']!r}, or a frame of intervals from trajgeo.stats.bootstrap_ci",
                          DeprecationWarning, stacklevel=3)  # caller -> changed_signature -> here
        return fn(*args, **kwargs)

    return wrapper


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


def _frame_bands(ax: Axes, df: pd.DataFrame, x: str, keys: list[str], colour: Callable[[tuple], Any]) -> None:
    """Fill ``ci_low`` .. ``ci_high`` of each ``keys`` group, exactly as the frame gives them."""
    groups = df.groupby(keys, sort=True) if keys else [((), df)]
    for key, g in groups:
        g = g.sort_values(x)
        ax.fill_between(g[x].to_numpy(float), g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float),
                        color=colour(key if isinstance(key, tuple) else (key,)), alpha=0.2, linewidth=0)


def _curve(ax: Axes, df: pd.DataFrame, x: str, hue: str | None, style: str | None, errorbar: ErrorBar,
           n_boot: int, seed: Seed, legend: bool = True) -> list[Line2D]:
    """Mean line per hue/style group with a band: the ``ci_low``/``ci_high`` of a frame of intervals (``mean``
    column), or seaborn's ``errorbar`` over the ``value`` rows of a raw frame. ``errorbar=None`` draws no band."""
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
        if errorbar is not None:
            _frame_bands(ax, df, x, [k for k in (hue, style) if k],
                         lambda key: palette[key[0]] if hue else kws["color"])
    else:
        sns.lineplot(errorbar=errorbar, n_boot=n_boot, seed=seed, err_kws={"linewidth": 0}, **kws)
    # seaborn also adds empty lines as legend handles; only lines with data are curves
    lines = [line for line in ax.lines if line not in before and len(line.get_xdata())]
    for line in lines:
        line.set_gid("curve")  # lets callers (and tests) tell data curves from reference lines
    return lines


_BAND_DOC = """errorbar : str, tuple, callable or None
        The band of a raw frame, passed to :func:`seaborn.lineplot`: the default ``("ci", 95)`` is seaborn's
        percentile bootstrap over rows (examples); ``"se"``, ``"sd"``, ``("pi", 50)``... or None (no band). A frame
        of intervals is drawn as given; there only ``errorbar=None`` matters (it hides the band).
    n_boot : int
        Bootstrap resamples of seaborn's ``("ci", ...)`` band.
    seed : int, numpy Generator or None
        Seed of seaborn's bootstrap, so the band is the same on every rebuild."""


def _band_doc(fn: Callable) -> Callable:
    """Write the one description of the band keywords into ``fn``'s docstring (at ``{band}``)."""
    fn.__doc__ = fn.__doc__.replace("{band}", _BAND_DOC)
    return fn


@changed_signature(positional=("metric", "hue", "ax"), renamed={"random_state": "seed"})
@_old_interval_keywords
@_band_doc
def convergence(curves_df: pd.DataFrame, *, metric: str = "margin", hue: str | None = "sense",
                style: str | None = None, relative_depth: bool = False, errorbar: ErrorBar = _DEFAULT_ERRORBAR,
                n_boot: int = 1000, seed: Seed = 0, ax: Axes | None = None) -> Axes:
    """Sense margin (or cosine to each sense prototype) against point: mean and interval band per group.

    Parameters
    ----------
    curves_df : DataFrame
        Long form from ``trajgeo.senses.curves``: ``example, point, word, sense, metric, to_sense, value``
        (one row per example, point and prototype). Or a frame of intervals from
        ``trajgeo.stats.bootstrap_ci``: ``point, <hue>, mean, ci_low, ci_high`` (+ ``metric``), drawn as given.
    metric : {"margin", "cos"}
        Which rows to draw. For "cos", lines are split by ``to_sense`` (line style, legend "prototype") unless
        ``style`` is given.
    hue : str or None
        Column with one colour per level, e.g. "sense", "word" or "model".
    style : str, optional
        Column with one line style per level.
    relative_depth : bool
        Put models of different depth on a common 0..1 axis: point / n_layers (column ``n_layers``), or
        point / the largest point of each ``model``.
    {band}
    ax : Axes, optional
        Where to draw; a new figure when omitted.

    Returns
    -------
    Axes
        Mean curves have gid "curve"; for ``metric="margin"`` a zero line has gid "zero".
    """
    what = "convergence"
    _require(curves_df, ["point", hue, style, _value_column(curves_df)], what)
    df = _select_metric(curves_df, metric, what)
    if metric == "cos" and style is None and "to_sense" in df.columns and df["to_sense"].notna().any():
        df, style = df.rename(columns={"to_sense": "prototype"}), "prototype"  # legend title reads "prototype"
    df = df.assign(_x=_depth_axis(df, relative_depth))
    ax = _new_axes(ax)
    _curve(ax, df, "_x", hue, style, errorbar, n_boot, seed)
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


def _draw_probe_level(ax: Axes, main: pd.DataFrame, ctrl: pd.DataFrame, base: pd.DataFrame,
                      colours: tuple[Any, Any, Any]) -> None:
    """One probe curve (with its interval when the frame has one), its control curve and its baseline."""
    probe_c, ctrl_c, base_c = colours
    ax.plot(main["point"], main["value"], color=probe_c, gid="probe", zorder=3)
    if {"ci_low", "ci_high"} <= set(main.columns) and main[["ci_low", "ci_high"]].notna().all(axis=None):
        ax.fill_between(main["point"].to_numpy(float), main["ci_low"].to_numpy(float),
                        main["ci_high"].to_numpy(float), color=probe_c, alpha=0.2, linewidth=0)
    if not ctrl.empty:
        ax.plot(ctrl["point"], ctrl["value"], color=ctrl_c, linestyle=":", gid="control", zorder=2)
    if not base.empty:
        values = base["value"].to_numpy(float)
        if np.allclose(values, values[0]):  # one baseline for every point: a horizontal reference line
            ax.axhline(values[0], color=base_c, linestyle="--", linewidth=0.9, gid="majority_baseline", zorder=1)
        else:
            ax.plot(base["point"], values, color=base_c, linestyle="--", linewidth=0.9, gid="majority_baseline",
                    zorder=1)


@changed_signature(positional=("metric", "ax"))
def probe_accuracy(layerwise_df: pd.DataFrame, *, metric: str = "accuracy", hue: str | None = None,
                   control: bool | None = None, baseline: bool | None = None, ax: Axes | None = None) -> Axes:
    """Probe score against point, with the control-task curve and the majority baseline (dashed).

    Parameters
    ----------
    layerwise_df : DataFrame
        From ``trajgeo.probes.layerwise``: ``point, fold, metric, value, ci_low, ci_high``; summary rows have
        ``fold == -1`` (their interval is drawn as a band). Without summary rows the folds are averaged.
    metric : str
        The probe score to draw, e.g. "accuracy", "macro_f1", "balanced_accuracy".
    hue : str, optional
        Column (e.g. "word" or "model") with one colour per level; the control and baseline lines of a level
        share its colour.
    control : bool, optional
        Draw the ``control_accuracy`` rows (dotted) when present. Default: only when ``metric == "accuracy"``,
        the scale both are on.
    baseline : bool, optional
        Draw the ``majority_baseline`` rows (dashed) when present. Default as for ``control``.
    ax : Axes, optional
        Where to draw; a new figure when omitted.

    Returns
    -------
    Axes
        Curves have gids "probe", "control" and "majority_baseline".
    """
    what = "probe_accuracy"
    _require(layerwise_df, ["point", "metric", "value", hue], what)
    keys = [hue] if hue else []
    same_scale = metric == "accuracy"  # control and majority baseline are accuracies
    main = _probe_summary(layerwise_df, metric, keys)
    if main.empty:
        raise ValueError(f"{what}: no rows with metric == {metric!r}; "
                         f"available: {sorted(map(str, layerwise_df['metric'].unique()))}")
    wanted = {"control_accuracy": same_scale if control is None else control,
              "majority_baseline": same_scale if baseline is None else baseline}
    ctrl, base = (_probe_summary(layerwise_df, m, keys) if on else main.iloc[:0] for m, on in wanted.items())
    ax = _new_axes(ax)
    levels = _levels(main[hue]) if hue else [None]
    palette = _palette(levels) if hue else {None: sns.color_palette()[0]}
    for level in levels:
        frames = [f if hue is None else f[f[hue] == level] for f in (main, ctrl, base)]
        colours = (palette[level],) * 3 if hue else (palette[None], sns.color_palette()[1], "0.3")
        _draw_probe_level(ax, *frames, colours)
    name = _PRETTY.get(metric, metric)
    # with hue, colours name the levels and grey lines name the roles; without, each role keeps its colour
    handles = [Line2D([], [], color=palette[lev]) for lev in levels] if hue else []
    labels = [str(lev) for lev in levels] if hue else []
    roles = [(f"probe ({name})", "-", palette[None] if not hue else "0.3", True),
             ("control task", ":", sns.color_palette()[1] if not hue else "0.3", not ctrl.empty),
             ("majority baseline", "--", "0.3", not base.empty)]
    for label, linestyle, colour, shown in roles:
        if shown:
            handles.append(Line2D([], [], color=colour, linestyle=linestyle))
            labels.append(label)
    _new_legend(ax, handles, labels)
    _point_axis(ax)
    ax.set_ylabel(name)
    return ax


@changed_signature(positional=("ax",), renamed={"random_state": "seed"})
@_old_interval_keywords
@_band_doc
def sense_log_odds(lens_df: pd.DataFrame, *, hue: str | None = "sense", errorbar: ErrorBar = _DEFAULT_ERRORBAR,
                   n_boot: int = 1000, seed: Seed = 0, ax: Axes | None = None) -> Axes:
    """Sense-word log-odds (own sense vs the others) read through the logit lens, against point.

    Parameters
    ----------
    lens_df : DataFrame
        From ``trajgeo.lens.logit_lens``: ``example, point, word, sense, metric, value``; rows with
        ``metric == "sense_log_odds"`` are drawn. Or a frame of intervals (``point, <hue>, mean, ci_low,
        ci_high``, + ``metric``), drawn as given.
    hue : str or None
    {band}
    ax : Axes, optional
        Where to draw; a new figure when omitted.

    Returns
    -------
    Axes
        Mean curve per ``hue`` level (gid "curve") and a zero line (gid "zero").
    """
    what = "sense_log_odds"
    _require(lens_df, ["point", hue, _value_column(lens_df)], what)
    df = _select_metric(lens_df, "sense_log_odds", what)
    ax = _new_axes(ax)
    _curve(ax, df.assign(_x=df["point"].astype(float)), "_x", hue, None, errorbar, n_boot, seed)
    ax.axhline(0.0, color="0.6", linewidth=0.6, zorder=0, gid="zero")
    _point_axis(ax)
    ax.set_ylabel(_PRETTY["sense_log_odds"])
    return ax


@changed_signature(positional=("metrics",), renamed={"random_state": "seed"})
@_old_interval_keywords
@_band_doc
def path_panels(path_metrics_df: pd.DataFrame, *, metrics: Sequence[str] = ("step_size", "turning_angle",
                                                                             "cos_to_final"),
                hue: str | None = "sense", ncols: int | None = None, errorbar: ErrorBar = _DEFAULT_ERRORBAR,
                n_boot: int = 1000, seed: Seed = 0) -> Figure:
    """Path geometry against point, one panel per metric, mean and interval band per ``hue`` level.

    Parameters
    ----------
    path_metrics_df : DataFrame
        From ``trajgeo.geometry.path_metrics``: ``example, point, word, sense, metric, value``. Or a frame of
        intervals (``metric, point, <hue>, mean, ci_low, ci_high``), drawn as given.
    metrics : sequence of str
        One panel each, in order.
    hue : str or None
    ncols : int, optional
        Panels per row; default all in one row on a wide figure (>= 5 in), one column on a narrow one.
    {band}

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
    fig, axes = _panel_grid(len(metrics), ncols, row_height=min(width / ncols * 0.75, 1.3), extra_height=0.45,
                            sharex=True)
    for i, (ax, metric) in enumerate(zip(axes, metrics)):
        sub = df[df["metric"] == metric]
        _curve(ax, sub.assign(_x=sub["point"].astype(float)), "_x", hue, None, errorbar, n_boot, seed, legend=i == 0)
        _point_axis(ax)
        ax.set_ylabel(_PRETTY.get(metric, metric))
        if i < len(metrics) - ncols:
            ax.set_xlabel("")  # the shared point axis is labelled once, on the bottom row
    legend = axes[0].get_legend()
    if legend is not None:  # one legend for all panels, outside the data
        handles, labels = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
        legend.remove()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), title=hue)
    return fig
