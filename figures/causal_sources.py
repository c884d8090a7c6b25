"""Figure: which context token pushed the target toward its sense. Left: per layer and source position
relative to the target, the heads' summed write on each example's own-sense direction (mean over examples).
Right: the ten largest (layer, head, cue / other) pushes against the shuffled-sense family-wise threshold
(black tick) and 95% quantile (grey tick). Reads ``sources_relative`` and ``sources_summary`` from
``analyses/causal.py`` (models with additive per-head writes: SmolLM2; MiniLM is a post-LN encoder).
"""

import sys

from _common import causal


def draw(data, plotting):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(plt.rcParams["figure.figsize"][0], 3.2 * len(data)), layout="constrained")
    axes = fig.subplots(len(data), 2, squeeze=False)
    for (left, right), (model, t) in zip(axes, data.items()):
        rel = t["sources_relative"]
        rel = rel[rel["relative_position"] >= -8]  # the nearest context (sentences are short)
        plotting.source_map(rel, by="relative_position", ax=left)
        left.set_title(f"{model}: push by source position")
        plotting.source_top_heads(t["sources_summary"], by="is_cue", n=10, ax=right)
        right.set_title(f"{model}: top heads vs shuffled senses")
    return fig


if __name__ == "__main__":
    sys.exit(causal("causal_sources", __doc__, ("sources_relative", "sources_summary"), draw))
