"""Figure: steering dose-response. Adding alpha standard deviations of the class-mean difference at one point:
the flip rate and the final sense margin against alpha, the sense direction against random directions of the
same norm; means over words. Reads ``steer.parquet`` from ``analyses/causal.py``.
"""

import sys

from _common import causal


def draw(data, plotting):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(plt.rcParams["figure.figsize"][0], 2.4 * len(data)), layout="constrained")
    axes = fig.subplots(len(data), 2, squeeze=False)
    for row, (model, t) in zip(axes, data.items()):
        for ax, metric in zip(row, ("flip_rate", "final_margin")):
            plotting.steering_curves(t["steer"], metric=metric, ax=ax)
            ax.set_title(f"{model}: point {int(t['steer']['layer'].iloc[0])}")
    return fig


if __name__ == "__main__":
    sys.exit(causal("causal_steering", __doc__, ("steer",), draw))
