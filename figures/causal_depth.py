"""Figure: depth as an intervention. Per word, the final separability of the senses (ridge probe, held-out
groups) with blocks skipped (each returns its input), one panel per model. Reads ``skip.parquet`` from
``analyses/causal.py``.
"""

import sys

from _common import causal


def draw(data, plotting):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(plt.rcParams["figure.figsize"][0], 3.0 * len(data)), layout="constrained")
    axes = fig.subplots(len(data), 1, squeeze=False)[:, 0]
    for ax, (model, t) in zip(axes, data.items()):
        plotting.skip_table(t["skip"], metric="final_separability", ax=ax)
        ax.set_title(model)
    return fig


if __name__ == "__main__":
    sys.exit(causal("causal_depth", __doc__, ("skip",), draw))
