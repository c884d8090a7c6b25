"""Figure: when each model resolves the CoarseWSD-20 words, on a common relative-depth axis.

Left: sense margin against relative depth (point / n_layers), mean over words with a 95% bootstrap band
over words, one line per model. Right: layer-wise probe accuracy, likewise. Reads the tables of
``analyses/coarsewsd20.py`` (``results/coarsewsd20``).
"""

import sys

from _common import RESULTS, custom


def draw(df, plotting):
    import matplotlib.pyplot as plt
    import pandas as pd

    folder = RESULTS / "coarsewsd20"
    probes = pd.read_parquet(folder / "probes.parquet")
    acc = probes[(probes["fold"] == -1) & (probes["metric"] == "accuracy")]
    n_layers = df.groupby("model")["n_layers"].first()
    # one "example" per word: the band is over words
    margin = df.assign(example=df["word"], metric="margin", value=df["margin"])
    accuracy = acc.assign(example=acc["word"], metric="margin", n_layers=acc["model"].map(n_layers))
    band = dict(errorbar=("ci", 95), n_boot=1000, seed=0)  # seaborn's percentile bootstrap over the rows (words)
    fig, axes = plt.subplots(1, 2, sharex=True)
    plotting.convergence(margin, hue="model", relative_depth=True, **band, ax=axes[0])
    plotting.convergence(accuracy, hue="model", relative_depth=True, **band, ax=axes[1])
    axes[1].set_ylabel("probe accuracy")
    for line in axes[1].lines:
        if line.get_gid() == "zero":
            line.remove()
    axes[1].get_legend().remove() if axes[1].get_legend() else None
    return fig


if __name__ == "__main__":
    sys.exit(custom("coarsewsd20", __doc__, RESULTS / "coarsewsd20" / "curves.parquet",
                    "analyses/coarsewsd20.py", draw))
