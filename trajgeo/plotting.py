"""Paper-ready figures from the tidy DataFrames of the analysis modules.

Every figure function takes a long-form DataFrame (the contracts are in ``DESIGN.md``), draws on ``ax=`` when
given (or makes its own figure), and returns the Axes, or a Figure for multi-panel plots. Nothing here calls
``plt.show()``; it is safe under the Agg backend. Wrap figure building in :func:`paper_style` for journal sizes
and a colour-blind-safe palette, and write files with :func:`savefig`, which strips timestamps so that a figure
rebuilt from the same data is byte-identical.

Typical use::

    import trajgeo as tg
    with tg.plotting.paper_style("single"):
        ax = tg.plotting.convergence(tg.senses.curves(traj), metric="margin")
        tg.plotting.savefig(ax.figure, "figures/bank_convergence")
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from cycler import cycler
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.layout_engine import PlaceHolderLayoutEngine
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

__all__ = [
    "paper_style", "savefig", "convergence", "probe_accuracy", "trajectories", "trajectory_grid",
    "attribution_heatmap", "head_heatmap", "lens_table", "sense_log_odds", "transfer_heatmap",
    "superposition_bars", "path_panels", "COLUMN_WIDTHS",
]

#: Journal column widths in inches (single column, two columns).
COLUMN_WIDTHS = {"single": 3.35, "double": 6.9}

# Metadata that would otherwise carry a date or a library version into the file; None drops the key.
_METADATA: dict[str, dict[str, Any]] = {
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None},
    "png": {"Software": None},
    "svg": {"Creator": None, "Date": None},
}
_HASHSALT = "trajgeo"  # fixed salt: SVG element ids are otherwise random per process

_PRETTY = {
    "margin": "sense margin (cos own \N{MINUS SIGN} cos other)",
    "cos": "cosine to sense prototype",
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "balanced_accuracy": "balanced accuracy",
    "log_loss": "log loss",
    "step_size": "step size",
    "relative_step": "relative step",
    "turning_angle": "turning angle (\N{DEGREE SIGN})",
    "cos_to_final": "cos to final point",
    "cos_prev": "cos to previous point",
    "dist_to_final": "distance to final point",
    "norm": "norm",
    "sense_log_odds": "sense-word log-odds",
    "attn": "attention",
    "mlp": "MLP",
}


# --------------------------------------------------------------------------------------------------------------
# style and files
# --------------------------------------------------------------------------------------------------------------

@contextmanager
def paper_style(column: str | float = "single", *, aspect: float = 0.75, font_size: float = 8.0,
                palette: str = "colorblind") -> Iterator[dict[str, Any]]:
    """Context in which new figures have journal sizes, readable fonts and a colour-blind-safe palette.

    Parameters
    ----------
    column : {"single", "double"} or float
        Figure width: 3.35 in (one journal column), 6.9 in (two columns), or a width in inches.
    aspect : float
        Default figure height as a fraction of the width.
    font_size : float
        Axis-label size in points; tick labels and legends are one point smaller.
    palette : str
        Seaborn palette for the colour cycle ("colorblind" is safe for the common colour-vision deficiencies).

    Yields
    ------
    dict
        The rcParams in force inside the context.

    Notes
    -----
    PDF and PS fonts are embedded as TrueType (fonttype 42), so text stays editable and journals accept it.
    Layout is constrained (not ``bbox_inches="tight"``) so that saved figures keep the exact journal width.
    """
    if isinstance(column, str):
        if column not in COLUMN_WIDTHS:
            raise ValueError(f"paper_style: column must be one of {sorted(COLUMN_WIDTHS)} or a width in inches, "
                             f"got {column!r}")
        width = COLUMN_WIDTHS[column]
    else:
        width = float(column)
        if not width > 0:
            raise ValueError(f"paper_style: width must be positive, got {column!r}")
    small = font_size - 1
    rc: dict[str, Any] = dict(sns.axes_style("ticks"))
    rc.update({
        "figure.figsize": (width, width * aspect),
        "figure.dpi": 150,
        "savefig.dpi": 300,
        "figure.constrained_layout.use": True,
        "font.size": font_size,
        "axes.labelsize": font_size,
        "axes.titlesize": font_size,
        "xtick.labelsize": small,
        "ytick.labelsize": small,
        "legend.fontsize": small,
        "legend.title_fontsize": small,
        "legend.frameon": False,
        "axes.linewidth": 0.6,
        "xtick.major.width": 0.6,
        "ytick.major.width": 0.6,
        "xtick.major.size": 3,
        "ytick.major.size": 3,
        "lines.linewidth": 1.2,
        "lines.markersize": 4,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.prop_cycle": cycler(color=sns.color_palette(palette)),
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        "svg.hashsalt": _HASHSALT,
    })
    with mpl.rc_context(rc):
        yield dict(rc)


def savefig(fig: Figure | Axes, path_stem: str | os.PathLike, formats: Sequence[str] = ("pdf", "png"),
            dpi: float = 300, **kwargs: Any) -> list[Path]:
    """Write a figure in several formats, atomically and without timestamps or version strings.

    Parameters
    ----------
    fig : Figure or Axes
        What to save (an Axes saves its whole figure).
    path_stem : str or path
        Output path without extension; ``"out/fig"`` writes ``out/fig.pdf`` and ``out/fig.png``. Parent
        folders are created.
    formats : sequence of {"pdf", "png", "svg"}
        Formats to write; only these three are known to be reproducible byte for byte.
    dpi : float
        Resolution of raster output.
    **kwargs
        Passed to :meth:`matplotlib.figure.Figure.savefig` (``metadata`` is merged over the stripped defaults).

    Returns
    -------
    list of Path
        The files written, in the order of ``formats``.

    Notes
    -----
    Each file is written to a temporary name in the same folder and renamed over the target, so a reader
    never sees a half-written figure. PDF fonts are embedded as TrueType (fonttype 42) whatever the style.
    """
    figure = fig.figure if isinstance(fig, Axes) else fig
    if not isinstance(figure, Figure):
        raise TypeError(f"savefig: expected a matplotlib Figure or Axes, got {type(fig).__name__}")
    formats = [f.lower().lstrip(".") for f in ([formats] if isinstance(formats, str) else formats)]
    unknown = [f for f in formats if f not in _METADATA]
    if unknown:  # checked before anything is written
        raise ValueError(f"savefig: unsupported format(s) {unknown}; choose from {sorted(_METADATA)}")
    stem = Path(path_stem)
    if stem.suffix.lstrip(".").lower() in _METADATA:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    user_meta = kwargs.pop("metadata", {}) or {}
    written = []
    with _frozen_layout(figure), mpl.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": _HASHSALT}):
        for fmt in formats:
            target = stem.parent / f"{stem.name}.{fmt}"
            fd, tmp = tempfile.mkstemp(dir=stem.parent, prefix=f".{stem.name}.", suffix=f".{fmt}.tmp")
            os.close(fd)
            try:
                figure.savefig(tmp, format=fmt, dpi=dpi, metadata={**_METADATA[fmt], **user_meta}, **kwargs)
                os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; figures are meant to be shared
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            written.append(target)
    return written


@contextmanager
def _frozen_layout(figure: Figure, max_passes: int = 6) -> Iterator[None]:
    """Run the figure's layout engine until the axes stop moving, then switch it off while saving.

    Constrained layout starts from the current positions, so the first draw of a new figure lands slightly
    elsewhere than the second; without this a figure saved twice (or as PDF then PNG) would differ in the last
    digits of every coordinate.
    """
    engine = figure.get_layout_engine()
    if engine is None or isinstance(engine, PlaceHolderLayoutEngine):
        yield
        return
    for _ in range(max_passes):
        before = [ax.get_position().bounds for ax in figure.axes]
        figure.draw_without_rendering()
        if [ax.get_position().bounds for ax in figure.axes] == before:
            break
    figure.set_layout_engine("none")
    try:
        yield
    finally:
        figure.set_layout_engine(engine)


# --------------------------------------------------------------------------------------------------------------
# private helpers
# --------------------------------------------------------------------------------------------------------------

def _require(df: Any, columns: Iterable[str | None], what: str) -> pd.DataFrame:
    """Check that ``df`` is a DataFrame with ``columns``; raise naming every missing column."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c is not None and c not in df.columns]
    if missing:
        raise ValueError(f"{what}: DataFrame is missing column(s) {missing}; it has {list(df.columns)}")
    if df.empty:
        raise ValueError(f"{what}: DataFrame is empty")
    return df


def _select_metric(df: pd.DataFrame, metric: str, what: str) -> pd.DataFrame:
    """Rows of one metric (long form); a frame without a ``metric`` column is taken as already selected."""
    if "metric" not in df.columns:
        return df
    sub = df[df["metric"] == metric]
    if sub.empty:
        raise ValueError(f"{what}: no rows with metric == {metric!r}; available: {_levels(df['metric'].astype(str))}")
    return sub


def _levels(values: pd.Series) -> list:
    """Sorted distinct non-missing values (sorted as strings when types are mixed)."""
    uniq = pd.unique(values.dropna())
    try:
        return sorted(uniq)
    except TypeError:
        return sorted(uniq, key=str)


def _palette(levels: Sequence) -> dict:
    """Colour per level from the current colour cycle (husl when there are more levels than colours)."""
    cycle = sns.color_palette()
    colours = cycle[:len(levels)] if len(levels) <= len(cycle) else sns.color_palette("husl", len(levels))
    return dict(zip(levels, colours))


def _new_axes(ax: Axes | None, size: tuple[float, float] | None = None) -> Axes:
    """The given Axes, or a new one on a new constrained-layout figure (default size from rcParams)."""
    if ax is not None:
        return ax
    fig = plt.figure(figsize=size or tuple(mpl.rcParams["figure.figsize"]), layout="constrained")
    return fig.add_subplot()


def _heatmap(data: pd.DataFrame, **kwargs: Any) -> Axes:
    """seaborn.heatmap without the PendingDeprecationWarning that seaborn 0.13 raises inside itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module="seaborn")
        return sns.heatmap(data, **kwargs)


def _emb_label(value: float, _pos: int | None = None) -> str:
    return "emb" if value == 0 else f"{value:g}"


def _point_axis(ax: Axes, relative: bool = False, axis: str = "x") -> None:
    """Label a point axis: integer ticks, tick 0 shown as "emb" (the context-free embedding)."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_label_text("relative depth" if relative else "point")
    if not relative:
        target.set_major_locator(MaxNLocator(nbins="auto", integer=True))  # as many ticks as fit
    target.set_major_formatter(FuncFormatter(_emb_label))


def _heatmap_ticks(ax: Axes, axis: str, values: Sequence, length_in: float, emb: bool = False) -> None:
    """Readable categorical ticks on a heatmap axis: every value when they fit, else every 2nd, 5th, 10th ...
    (at values divisible by the step, so a layer axis reads 5, 10, 15), with 0 shown as "emb" on point axes.

    seaborn's "auto" labels are sized before constrained layout shrinks the axes, so they can overlap.
    """
    size = FontProperties(size=mpl.rcParams[f"{axis}tick.labelsize"]).get_size_in_points()
    width = size * (0.75 * max(len(str(v)) for v in values) + 1.2) if axis == "x" else size * 1.6
    fit = max(1.0, length_in * 72.0 / width)
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9) if len(values) / s <= fit)
    numeric = all(isinstance(v, (int, np.integer)) for v in values)
    keep = [i for i, v in enumerate(values) if (v if numeric else i) % step == 0]
    labels = ["emb" if emb and numeric and values[i] == 0 else str(values[i]) for i in keep]
    if axis == "x":
        ax.set_xticks(np.asarray(keep) + 0.5, labels, rotation=0)
    else:
        ax.set_yticks(np.asarray(keep) + 0.5, labels, rotation=0)


def _int_values(index: pd.Index) -> list:
    """Index values as Python ints when they are whole numbers (point and layer labels)."""
    vals = list(index)
    try:
        if all(float(v).is_integer() for v in vals):
            return [int(v) for v in vals]
    except (TypeError, ValueError):
        pass
    return vals


def _display_token(token: Any, max_chars: int = 10) -> str:
    """Token text as shown in a table: visible leading/trailing spaces and newlines, no mathtext."""
    text = str(token)
    stripped = text.strip(" ")
    lead, trail = len(text) - len(text.lstrip(" ")), len(text) - len(text.rstrip(" "))
    text = "\N{OPEN BOX}" * lead + stripped + "\N{OPEN BOX}" * trail if stripped else "\N{OPEN BOX}" * len(text)
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    if len(text) > max_chars:
        text = text[:max_chars - 1] + "\N{HORIZONTAL ELLIPSIS}"
    return text.replace("$", r"\$")  # a pair of $ would start matplotlib mathtext


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


def _precomputed(df: pd.DataFrame) -> bool:
    """True for interval tables from ``stats.bootstrap_ci`` (mean, ci_low, ci_high) rather than raw values."""
    columns = set(getattr(df, "columns", ()))  # a non-DataFrame is reported by _require
    return "value" not in columns and {"mean", "ci_low", "ci_high"} <= columns


def _value_column(df: pd.DataFrame) -> str | None:
    """The column a curve needs: None for an interval table, else ``value``."""
    return None if _precomputed(df) else "value"


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


def _new_legend(ax: Axes, handles: list, labels: list[str], **kwargs: Any) -> None:
    if handles:
        ax.legend(handles, labels, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# 1. convergence
# --------------------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------------------
# 2. probes
# --------------------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------------------
# 3. trajectories in a shared plane
# --------------------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------------------
# 4. attribution
# --------------------------------------------------------------------------------------------------------------

def _diverging_heatmap(ax: Axes, mat: pd.DataFrame, label: str, annot: bool, cmap: str) -> None:
    vmax = float(np.nanmax(np.abs(mat.to_numpy(float)))) if mat.notna().any(axis=None) else 1.0
    vmax = vmax or 1.0
    _heatmap(mat, ax=ax, cmap=cmap, center=0.0, vmin=-vmax, vmax=vmax, annot=annot, fmt=".2f",
             cbar_kws={"label": label}, xticklabels=False, yticklabels=True)
    _heatmap_ticks(ax, "x", _int_values(mat.columns), 0.75 * ax.figure.get_figwidth())


def attribution_heatmap(attr_df: pd.DataFrame, ax: Axes | None = None, *, value: str = "attribution",
                        components: Sequence[str] = ("attn", "mlp"), annot: bool = False,
                        cmap: str = "RdBu_r") -> Axes:
    """Layer x component heatmap of the mean push toward the correct sense (diverging, centred at 0).

    Parameters
    ----------
    attr_df : DataFrame
        From ``trajgeo.senses.attribution``: ``example, word, sense, layer, component, head, attribution``.
        Filter it first to show one word or sense.
    ax : Axes, optional
    value : str
        Column averaged over examples in each cell.
    components : sequence of str
        Rows, in order (default attention, then MLP).
    annot : bool
        Write the cell values.
    cmap : str
        A diverging colour map; limits are symmetric so that white means 0.

    Returns
    -------
    Axes
        Rows are components, columns layers (1..L); cell = mean ``value`` over examples.
    """
    what = "attribution_heatmap"
    _require(attr_df, ["layer", "component", value], what)
    sub = attr_df[attr_df["component"].isin(components)]
    if sub.empty:
        raise ValueError(f"{what}: no rows with component in {list(components)}; "
                         f"available: {_levels(attr_df['component'])}")
    mat = sub.pivot_table(index="component", columns="layer", values=value, aggfunc="mean")
    mat = mat.reindex([c for c in components if c in mat.index])
    mat.index = [_PRETTY.get(c, c) for c in mat.index]
    ax = _new_axes(ax, (mpl.rcParams["figure.figsize"][0], 0.9 + 0.3 * len(mat)))
    _diverging_heatmap(ax, mat, "push to\ncorrect sense", annot, cmap)
    ax.set_xlabel("layer")
    ax.set_ylabel("")
    ax.tick_params(axis="y", rotation=0)
    return ax


def head_heatmap(attr_df: pd.DataFrame, ax: Axes | None = None, *, value: str = "attribution", annot: bool = False,
                 cmap: str = "RdBu_r") -> Axes:
    """Layer x head heatmap of the mean push toward the correct sense (rows ``component == "head"``).

    Parameters
    ----------
    attr_df : DataFrame
        ``layer, component, head, <value>`` (from ``trajgeo.senses.attribution`` with heads).
    ax : Axes, optional
    value, annot, cmap
        As in :func:`attribution_heatmap`.

    Returns
    -------
    Axes
        Rows are heads, columns layers; cell = mean ``value`` over examples.
    """
    what = "head_heatmap"
    _require(attr_df, ["layer", "component", "head", value], what)
    sub = attr_df[attr_df["component"] == "head"]
    if sub.empty:
        raise ValueError(f"{what}: no rows with component == 'head' (extract with heads=True); "
                         f"available: {_levels(attr_df['component'])}")
    mat = sub.pivot_table(index="head", columns="layer", values=value, aggfunc="mean").sort_index()
    width = mpl.rcParams["figure.figsize"][0]
    ax = _new_axes(ax, (width, min(0.8 + 0.2 * len(mat), 0.9 * width)))  # rows about as tall as text
    _diverging_heatmap(ax, mat, "push to\ncorrect sense", annot, cmap)
    ax.set_xlabel("layer")
    ax.set_ylabel("head")
    ax.tick_params(axis="y", rotation=0)
    return ax


# --------------------------------------------------------------------------------------------------------------
# 5. logit lens
# --------------------------------------------------------------------------------------------------------------

def lens_table(top_tokens_df: pd.DataFrame, ax: Axes | None = None, *, example: int | None = None,
               max_chars: int = 10, cmap: str = "Blues") -> Axes:
    """Logit-lens read-out of one example: top tokens per point, shaded by probability.

    Parameters
    ----------
    top_tokens_df : DataFrame
        From ``trajgeo.lens.top_tokens``: ``point, rank, token, prob`` (one example). With an ``example``
        column holding several examples, pass ``example=``.
    ax : Axes, optional
        A new figure is sized to the number of points (one text row per point).
    example : int, optional
        Which example to show.
    max_chars : int
        Longer tokens are cut with an ellipsis; spaces are shown as "\N{OPEN BOX}".
    cmap : str

    Returns
    -------
    Axes
        Rows are points (0 = "emb"), columns ranks; cell colour = probability, cell text = token.
    """
    what = "lens_table"
    df = _require(top_tokens_df, ["point", "rank", "token", "prob"], what)
    if example is not None or ("example" in df.columns and df["example"].nunique() > 1):
        if example is None:
            raise ValueError(f"{what}: {df['example'].nunique()} examples in the table; pass example=<id>")
        if "example" not in df.columns:
            raise ValueError(f"{what}: example={example} given but the DataFrame has no 'example' column")
        df = df[df["example"] == example]
        if df.empty:
            raise ValueError(f"{what}: example {example} not in the table")
    if df.duplicated(["point", "rank"]).any():
        raise ValueError(f"{what}: several rows for the same (point, rank)")
    prob = df.pivot(index="point", columns="rank", values="prob").sort_index()
    tokens = df.pivot(index="point", columns="rank", values="token").reindex_like(prob)
    text = tokens.map(lambda t: "" if pd.isna(t) else _display_token(t, max_chars)).to_numpy()
    width = mpl.rcParams["figure.figsize"][0]
    ax = _new_axes(ax, (width, 0.7 + 0.16 * len(prob)))
    fs = max(mpl.rcParams["font.size"] - 2.0, 5.0)
    _heatmap(prob, ax=ax, cmap=cmap, vmin=0.0, vmax=1.0, annot=text, fmt="", annot_kws={"fontsize": fs},
             linewidths=0.4, linecolor="white", xticklabels=True, yticklabels=True,
             cbar_kws={"label": "probability", "shrink": 0.4, "aspect": 15})
    ax.set_yticks(np.arange(len(prob)) + 0.5, [_emb_label(p) for p in _int_values(prob.index)], rotation=0)
    ax.set_xlabel("rank")
    ax.set_ylabel("point")
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


# --------------------------------------------------------------------------------------------------------------
# 6.-8. transfer, superposition, path geometry
# --------------------------------------------------------------------------------------------------------------

def transfer_heatmap(transfer_df: pd.DataFrame, ax: Axes | None = None, *, value: str = "accuracy",
                     annot: bool | None = None, cmap: str = "viridis", vmin: float | None = None,
                     vmax: float | None = None) -> Axes:
    """Cross-layer probe transfer: accuracy of a probe trained at one point and tested at another.

    Parameters
    ----------
    transfer_df : DataFrame
        From ``trajgeo.probes.transfer``: ``train_point, test_point, accuracy`` (repeats are averaged).
    ax : Axes, optional
    value : str
    annot : bool, optional
        Write the values in the cells; by default only when there are at most 8 points.
    cmap : str
    vmin, vmax : float, optional

    Returns
    -------
    Axes
        Rows are training points, columns test points (0 = "emb").
    """
    what = "transfer_heatmap"
    _require(transfer_df, ["train_point", "test_point", value], what)
    mat = transfer_df.pivot_table(index="train_point", columns="test_point", values=value, aggfunc="mean")
    mat = mat.sort_index().sort_index(axis=1)
    if annot is None:
        annot = max(mat.shape) <= 8
    side = mpl.rcParams["figure.figsize"][0]
    ax = _new_axes(ax, (side, side * 0.85))
    _heatmap(mat, ax=ax, cmap=cmap, vmin=vmin, vmax=vmax, square=True, annot=annot, fmt=".2f",
             cbar_kws={"label": value.replace("_", " ")}, xticklabels=False, yticklabels=False)
    length = 0.65 * ax.figure.get_figwidth()  # square cells: both axes are about this long
    _heatmap_ticks(ax, "x", _int_values(mat.columns), length, emb=True)
    _heatmap_ticks(ax, "y", _int_values(mat.index), length, emb=True)
    ax.set_xlabel("test point")
    ax.set_ylabel("train point")
    return ax


def superposition_bars(superposition_df: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Cosine of the context-free embedding to each sense prototype, grouped by word, balance annotated.

    Parameters
    ----------
    superposition_df : DataFrame
        From ``trajgeo.senses.superposition``: ``word, sense, cosine, balance`` (balance repeated within a word;
        optional; without ``word`` all rows are one word).
    ax : Axes, optional

    Returns
    -------
    Axes
        One bar (gid "sense_bar") per row in word order then sense order; one text per word (gid "balance")
        with the word and its balance.
    """
    what = "superposition_bars"
    df = _require(superposition_df, ["sense", "cosine"], what)
    if "word" not in df.columns:  # superposition() leaves the column out when the data has no words
        df = df.assign(word="")
    ax = _new_axes(ax)
    colours = sns.color_palette()
    ticks, ticklabels, pos = [], [], 0.0
    top = float(np.nanmax(df["cosine"].to_numpy(float)))
    for word in _levels(df["word"]):
        group = df[df["word"] == word].sort_values("sense", key=lambda s: s.astype(str))
        xs = pos + np.arange(len(group))
        bars = ax.bar(xs, group["cosine"].to_numpy(float), width=0.8,
                      color=[colours[i % len(colours)] for i in range(len(group))])
        for bar in bars:
            bar.set_gid("sense_bar")
        ticks += list(xs)
        ticklabels += [str(s) for s in group["sense"]]
        lines = [str(word)] if str(word) else []
        if "balance" in group.columns and group["balance"].notna().any():
            lines.append(f"balance {group['balance'].dropna().iloc[0]:.2f}")
        label = "\n".join(lines)
        ax.text(xs.mean(), 1.0, label, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=mpl.rcParams["xtick.labelsize"], gid="balance")
        pos = xs[-1] + 2.0  # one bar-width gap between words
    ax.set_xticks(ticks, ticklabels, rotation=45 if len(ticks) > 6 else 0, ha="right" if len(ticks) > 6 else "center")
    ax.axhline(0.0, color="0.3", linewidth=0.6)
    ax.set_ylabel("cosine to sense prototype\n(context-free embedding)")
    if top > 0:
        ax.set_ylim(top=top * 1.05)
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
