"""Bars: the superposition of senses at the context-free embedding."""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from trajgeo._api import changed_signature
from trajgeo.plotting._common import _levels, _new_axes, _require


@changed_signature(positional=("ax",))
def superposition_bars(superposition_df: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Cosine of the context-free embedding to each sense prototype, grouped by word, balance annotated.

    Parameters
    ----------
    superposition_df : DataFrame
        From ``trajgeo.senses.superposition``: ``word, sense, cosine, balance`` (balance repeated within a word;
        optional; without ``word`` all rows are one word).
    ax : Axes, optional
        Where to draw; a new figure when omitted.

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
