"""Heatmaps: attribution per layer and component or head, cross-layer transfer, the logit-lens table."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.font_manager import FontProperties

from trajgeo._api import changed_signature
from trajgeo.plotting._common import _PRETTY, _emb_label, _levels, _new_axes, _require


def _heatmap(data: pd.DataFrame, **kwargs: Any) -> Axes:
    """seaborn.heatmap without the PendingDeprecationWarning that seaborn 0.13 raises inside itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module="seaborn")
        return sns.heatmap(data, **kwargs)


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


def _rows(attr_df: pd.DataFrame, mask: pd.Series, what: str, wanted: str) -> pd.DataFrame:
    """The rows of ``mask``; none is an error naming the components there are."""
    sub = attr_df[mask]
    if sub.empty:
        raise ValueError(f"{what}: no rows with {wanted}; available: {_levels(attr_df['component'])}")
    return sub


def _push_heatmap(ax: Axes | None, mat: pd.DataFrame, height: float, ylabel: str, annot: bool, cmap: str) -> Axes:
    """Rows x layers of the mean push toward the correct sense, on a diverging scale symmetric about 0."""
    ax = _new_axes(ax, (mpl.rcParams["figure.figsize"][0], height))
    vmax = float(np.nanmax(np.abs(mat.to_numpy(float)))) if mat.notna().any(axis=None) else 1.0
    vmax = vmax or 1.0
    _heatmap(mat, ax=ax, cmap=cmap, center=0.0, vmin=-vmax, vmax=vmax, annot=annot, fmt=".2f",
             cbar_kws={"label": "push to\ncorrect sense"}, xticklabels=False, yticklabels=True)
    _heatmap_ticks(ax, "x", _int_values(mat.columns), 0.75 * ax.figure.get_figwidth())
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="y", rotation=0)
    return ax


@changed_signature(positional=("ax",))
def attribution_heatmap(attr_df: pd.DataFrame, *, value: str = "attribution",
                        components: Sequence[str] = ("attn", "mlp"), annot: bool = False, cmap: str = "RdBu_r",
                        ax: Axes | None = None) -> Axes:
    """Layer x component heatmap of the mean push toward the correct sense (diverging, centred at 0).

    Parameters
    ----------
    attr_df : DataFrame
        From ``trajgeo.senses.attribution``: ``example, word, sense, layer, component, head, attribution``.
        Filter it first to show one word or sense.
    value : str
        Column averaged over examples in each cell.
    components : sequence of str
        Rows, in order (default attention, then MLP).
    annot : bool
        Write the cell values.
    cmap : str
        A diverging colour map; limits are symmetric so that white means 0.
    ax : Axes, optional
        Where to draw; a new figure when omitted.

    Returns
    -------
    Axes
        Rows are components, columns layers (1..L); cell = mean ``value`` over examples.
    """
    what = "attribution_heatmap"
    _require(attr_df, ["layer", "component", value], what)
    sub = _rows(attr_df, attr_df["component"].isin(components), what, f"component in {list(components)}")
    mat = sub.pivot_table(index="component", columns="layer", values=value, aggfunc="mean")
    mat = mat.reindex([c for c in components if c in mat.index])
    mat.index = [_PRETTY.get(c, c) for c in mat.index]
    return _push_heatmap(ax, mat, 0.9 + 0.3 * len(mat), "", annot, cmap)


@changed_signature(positional=("ax",))
def head_heatmap(attr_df: pd.DataFrame, *, value: str = "attribution", annot: bool = False, cmap: str = "RdBu_r",
                 ax: Axes | None = None) -> Axes:
    """Layer x head heatmap of the mean push toward the correct sense (rows ``component == "head"``).

    Parameters
    ----------
    attr_df : DataFrame
        ``layer, component, head, <value>`` (from ``trajgeo.senses.attribution`` with heads).
    value, annot, cmap
        As in :func:`attribution_heatmap`.
    ax : Axes, optional
        Where to draw; a new figure when omitted.

    Returns
    -------
    Axes
        Rows are heads, columns layers; cell = mean ``value`` over examples.
    """
    what = "head_heatmap"
    _require(attr_df, ["layer", "component", "head", value], what)
    sub = _rows(attr_df, attr_df["component"] == "head", what, "component == 'head' (extract with heads=True)")
    mat = sub.pivot_table(index="head", columns="layer", values=value, aggfunc="mean").sort_index()
    height = min(0.8 + 0.2 * len(mat), 0.9 * mpl.rcParams["figure.figsize"][0])  # rows about as tall as text
    return _push_heatmap(ax, mat, height, "head", annot, cmap)


@changed_signature(positional=("ax",))
def transfer_heatmap(transfer_df: pd.DataFrame, *, value: str = "accuracy", annot: bool | None = None,
                     cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
                     ax: Axes | None = None) -> Axes:
    """Cross-layer probe transfer: accuracy of a probe trained at one point and tested at another.

    Parameters
    ----------
    transfer_df : DataFrame
        From ``trajgeo.probes.transfer``: ``train_point, test_point, accuracy`` (repeats are averaged).
    value : str
    annot : bool, optional
        Write the values in the cells; by default only when there are at most 8 points.
    cmap : str
    vmin, vmax : float, optional
    ax : Axes, optional
        Where to draw; a new figure when omitted.

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


@changed_signature(positional=("ax",))
def lens_table(top_tokens_df: pd.DataFrame, *, example: int | None = None, max_chars: int = 10,
               cmap: str = "Blues", ax: Axes | None = None) -> Axes:
    """Logit-lens read-out of one example: top tokens per point, shaded by probability.

    Parameters
    ----------
    top_tokens_df : DataFrame
        From ``trajgeo.lens.top_tokens``: ``point, rank, token, prob`` (one example). With an ``example``
        column holding several examples, pass ``example=``.
    example : int, optional
        Which example to show.
    max_chars : int
        Longer tokens are cut with an ellipsis; spaces are shown as "\N{OPEN BOX}".
    cmap : str
    ax : Axes, optional
        Where to draw; a new figure is sized to the number of points (one text row per point).

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
