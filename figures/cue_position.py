"""Figure: cue before vs after the target, causal vs encoder models.

Sense margin against point (relative depth) for each model, solid for cue-before and dashed for
cue-after examples, with the 95% bootstrap band. A causal model cannot use a cue it has not read yet,
so its cue-after margin should stay near 0. Reads ``results/cue_position/margin.parquet`` written by
``analyses/cue_position.py``.
"""

import sys

from _common import RESULTS, custom


def draw(df, plotting):
    curves = df.assign(metric="margin")
    ax = plotting.convergence(curves, hue="model", style="cue_position", relative_depth=True,
                              errorbar=("ci", 95), n_boot=1000, seed=0)  # seaborn's bootstrap over examples
    return ax.figure


if __name__ == "__main__":
    sys.exit(custom("cue_position", __doc__, RESULTS / "cue_position" / "margin.parquet",
                    "analyses/cue_position.py", draw))
