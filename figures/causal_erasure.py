"""Figure: erasing the sense with LEACE at one point inside the pass (held-out groups). Per model: the held-out
separability at every later point, the later MLP writes along the own-sense direction and (SmolLM2) the
next-token loss after the target, for no edit, LEACE, LEACE on permuted senses and a matched random subspace;
means over words (the legend gives the rank erased). Reads ``erase.parquet`` from ``analyses/causal.py``.
"""

import sys

from _common import causal

METRICS = ("separability", "mlp_write_projection", "lm_loss")


def draw(data, plotting):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(plt.rcParams["figure.figsize"][0], 2.4 * len(data)), layout="constrained")
    axes = fig.subplots(len(data), 3, squeeze=False)
    for row, (model, t) in zip(axes, data.items()):
        f = t["erase"]
        for ax, metric in zip(row, METRICS):
            if metric not in set(f["metric"]):
                ax.text(0.5, 0.5, f"{model}: no {metric}\n(no LM head)", ha="center", va="center",
                        transform=ax.transAxes)
                ax.set_axis_off()
                continue
            plotting.erasure_curves(f, metric=metric, ax=ax)
            ax.set_title(f"{model}")
            if ax is not row[0]:
                ax.get_legend().remove()
    return fig


if __name__ == "__main__":
    sys.exit(causal("causal_erasure", __doc__, ("erase",), draw))
