"""Figure: cue before vs after the target, causal vs encoder models.

Left: sense margin against point (relative depth) for each model, one line style per cue position (see
the legend), with the 95% bootstrap band. A causal model cannot use a cue it has not read yet,
so its cue-after margin should stay near 0. Right: per model and cue position, each word's peak balanced
accuracy minus its family-wise null threshold (``peak_minus_null``: right of 0 is above chance at 5%
family-wise over the word's points; one dot per word, filled for cue-before), from ``significance.parquet``. Reads
``results/cue_position/margin.parquet`` and ``significance.parquet`` written by ``analyses/cue_position.py``.
"""

import sys

from _common import RESULTS, custom

DEFAULT = RESULTS / "cue_position" / "margin.parquet"


def draw(df, plotting, folder=None):
    import matplotlib.pyplot as plt
    import pandas as pd

    curves = df.assign(metric="margin")
    path = (DEFAULT.parent if folder is None else folder) / "significance.parquet"  # next to margin.parquet
    sig = pd.read_parquet(path) if path.exists() else pd.DataFrame()
    if not len(sig):
        ax = plotting.convergence(curves, hue="model", style="cue_position", relative_depth=True,
                                  errorbar=("ci", 95), n_boot=1000, seed=0)  # seaborn's bootstrap over examples
        return ax.figure
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.6), gridspec_kw={"width_ratios": [1.4, 1]})
    plotting.convergence(curves, hue="model", style="cue_position", relative_depth=True,
                         errorbar=("ci", 95), n_boot=1000, seed=0, ax=axes[0])
    handles, labels = axes[0].get_legend_handles_labels()
    colour = {label: h.get_color() for h, label in zip(handles, labels) if hasattr(h, "get_color")}
    ax = axes[1]
    cells = list(sig.groupby(["model", "cue_position"], sort=False).groups)
    for i, (model, cond) in enumerate(cells):
        d = sig[(sig["model"] == model) & (sig["cue_position"] == cond)]
        filled = "full" if cond == "before" else "none"
        ax.plot(d["peak_minus_null"], [i] * len(d), "o", color=colour.get(model, f"C{i}"), fillstyle=filled,
                markersize=3, alpha=0.8, linestyle="")
    ax.axvline(0.0, color="0.5", linewidth=0.6)
    ax.set_yticks(range(len(cells)), [f"{m}, cue {c}" for m, c in cells])
    ax.invert_yaxis()
    ax.set_xlabel("peak balanced accuracy - null_fwer")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(custom("cue_position", __doc__, DEFAULT, "analyses/cue_position.py", draw))
