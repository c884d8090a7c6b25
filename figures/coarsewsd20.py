"""Figure: when each model resolves the CoarseWSD-20 words, read against the permutation null.

Left: sense margin against relative depth (point / n_layers), mean over words with a 95% bootstrap band
over words, one line per model. Middle: layer-wise balanced accuracy (chance 1/K however unbalanced the
senses), likewise; the shaded band of each model's colour runs from the null's mean to its per-point 95%
quantile (means over words of the label-permutation null), the dashed line is the mean over words of the
family-wise threshold ``null_fwer`` (a word's curve above its own threshold is above chance at 5%
family-wise over its points). Right: per word, the peak balanced accuracy (filled), the word's
``null_fwer`` (bar) and the surface-cue baseline (open: a probe on the context words alone). Reads the
tables of ``analyses/coarsewsd20.py`` (``results/coarsewsd20``; ``--tables <folder>/curves.parquet`` reads
another run's folder).
"""

import sys

from _common import RESULTS, custom

DEFAULT = RESULTS / "coarsewsd20" / "curves.parquet"


def draw(df, plotting, folder=None):
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    folder = RESULTS / "coarsewsd20" if folder is None else folder  # probes and summary lie next to curves
    probes = pd.read_parquet(folder / "probes.parquet")
    summary = pd.read_parquet(folder / "summary.parquet")
    summary = summary[summary["status"] == "done"]
    bal = probes[(probes["fold"] == -1) & (probes["metric"] == "balanced_accuracy")]
    n_layers = df.groupby("model")["n_layers"].first()
    # one "example" per word: the band is over words
    margin = df.assign(example=df["word"], metric="margin", value=df["margin"])
    accuracy = bal.assign(example=bal["word"], metric="margin", n_layers=bal["model"].map(n_layers))
    band = dict(errorbar=("ci", 95), n_boot=1000, seed=0)  # seaborn's percentile bootstrap over the rows (words)
    fig, axes = plt.subplots(1, 3, figsize=(7.0, 2.4), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    plotting.convergence(margin, hue="model", relative_depth=True, **band, ax=axes[0])
    plotting.convergence(accuracy, hue="model", relative_depth=True, **band, ax=axes[1])
    axes[1].set_ylabel("balanced accuracy")
    for line in axes[1].lines:
        if line.get_gid() == "zero":
            line.remove()
    handles, labels = axes[1].get_legend_handles_labels()
    colour = {label: h.get_color() for h, label in zip(handles, labels) if hasattr(h, "get_color")}
    for model, d in accuracy.groupby("model"):
        null = d.groupby("point")[["null_mean", "null_q95", "null_fwer"]].mean()
        x = null.index.to_numpy() / n_layers[model]
        c = colour.get(model, "0.5")
        axes[1].fill_between(x, null["null_mean"], null["null_q95"], color=c, alpha=0.15, linewidth=0, zorder=0)
        axes[1].plot(x, null["null_fwer"], color=c, linestyle="--", linewidth=0.8, zorder=1)
    if axes[1].get_legend():
        axes[1].get_legend().remove()
    # per word: peak, its family-wise threshold and the surface cue
    ax = axes[2]
    words = sorted(summary["word"].unique())
    models = list(summary["model"].unique())
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        s = summary[summary["model"] == model].set_index("word").reindex(words)
        y = np.arange(len(words)) + (i - (len(models) - 1) / 2) * width
        c = colour.get(model, f"C{i}")
        ax.barh(y, s["null_fwer"], height=width * 0.9, color=c, alpha=0.25, linewidth=0)
        ax.plot(s["peak_balanced_accuracy"], y, "o", color=c, markersize=3)
        ax.plot(s["surface_balanced_accuracy"], y, "o", mfc="none", color=c, markersize=3)
    ax.set_yticks(np.arange(len(words)), words)
    ax.invert_yaxis()
    ax.set_xlim(0.3, 1.0)
    ax.set_xlabel("balanced accuracy")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    key = [Line2D([], [], marker="o", linestyle="", color="0.3", markersize=3, label="peak"),
           Line2D([], [], marker="o", linestyle="", mfc="none", color="0.3", markersize=3, label="surface cue"),
           Patch(color="0.3", alpha=0.25, label="null_fwer")]
    ax.legend(handles=key, frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(0.0, 1.18), ncol=3)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(custom("coarsewsd20", __doc__, DEFAULT, "analyses/coarsewsd20.py", draw))
