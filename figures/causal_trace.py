"""Figure: the causal trace. Patching effect of the residual by point x position role (cue, other, target),
flip pairs (left), same-sense pairs: the null (middle), and flip minus same with the cells whose family-wise
permutation p is below 0.05 starred (right); one row per model. SmolLM2 is read by its own next-token
log-odds of the senses' words, MiniLM (no LM head) by the representation's sense margin. Reads
``results/causal/<run>/<model>/patch.parquet`` and ``patch_contrast.parquet`` from ``analyses/causal.py``.
"""

import sys

from _common import causal


def draw(data, plotting):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(plt.rcParams["figure.figsize"][0], 2.4 * len(data)), layout="constrained")
    axes = fig.subplots(len(data), 3, squeeze=False)
    for row, (model, t) in zip(axes, data.items()):
        patch = t["patch"]
        top = float(patch.groupby(["kind", "point", "role"])["effect"].mean().abs().max())
        for ax, kind in zip(row, ("flip", "same", "difference")):
            plotting.causal_trace(patch, kind=kind, vmax=top, ax=ax,
                                  contrast=t["patch_contrast"] if kind == "difference" else None)
            ax.set_title(f"{model}: {kind}" + (" (null)" if kind == "same" else ""))
    return fig


if __name__ == "__main__":
    sys.exit(causal("causal_trace", __doc__, ("patch", "patch_contrast"), draw))
