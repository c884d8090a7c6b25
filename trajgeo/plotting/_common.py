"""Helpers every figure kind shares: input checks, level order and colours, new axes, point axes."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from trajgeo._api import changed_signature

# axis labels of the metrics and components the analysis modules write
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


def _emb_label(value: float, _pos: int | None = None) -> str:
    return "emb" if value == 0 else f"{value:g}"


def _point_axis(ax: Axes, relative: bool = False, axis: str = "x") -> None:
    """Label a point axis: integer ticks, tick 0 shown as "emb" (the context-free embedding)."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_label_text("relative depth" if relative else "point")
    if not relative:
        target.set_major_locator(MaxNLocator(nbins="auto", integer=True))  # as many ticks as fit
    target.set_major_formatter(FuncFormatter(_emb_label))


def _precomputed(df: pd.DataFrame) -> bool:
    """True for interval tables from ``stats.bootstrap_ci`` (mean, ci_low, ci_high) rather than raw values."""
    columns = set(getattr(df, "columns", ()))  # a non-DataFrame is reported by _require
    return "value" not in columns and {"mean", "ci_low", "ci_high"} <= columns


def _value_column(df: pd.DataFrame) -> str | None:
    """The column a curve needs: None for an interval table, else ``value``."""
    return None if _precomputed(df) else "value"


def _new_legend(ax: Axes, handles: list, labels: list[str], **kwargs: Any) -> None:
    if handles:
        ax.legend(handles, labels, **kwargs)


def _panel_grid(n: int, ncols: int, *, row_height: float, extra_height: float,
                **subplot_kws: Any) -> tuple[Figure, list[Axes]]:
    """A constrained-layout figure as wide as the current style with ``n`` panels in rows of ``ncols``; the
    unused cells of the last row are removed."""
    nrows = math.ceil(n / ncols)
    width = mpl.rcParams["figure.figsize"][0]
    fig = plt.figure(figsize=(width, row_height * nrows + extra_height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kws).ravel()
    for ax in axes[n:]:
        ax.remove()
    return fig, list(axes[:n])


def _deprecated_alias(new: Callable, old: str, *, positional: Sequence[str] = ()) -> Callable:
    """``old``: the function ``new`` under its 0.1 name, accepting the 0.1 positional options; warns."""
    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(f"plotting.{old} is deprecated since trajgeo 0.2; use plotting.{new.__name__} "
                      "(options by keyword, ax= last)", DeprecationWarning, stacklevel=3)
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated alias of :func:`{new.__name__}` (its 0.1 name and argument order); warns."
    return changed_signature(positional=positional)(alias)
