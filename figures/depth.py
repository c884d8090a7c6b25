"""Figure: how many layers a disambiguation needs (toy models with planted ambiguity).

Continuation accuracy and the probe resolution point against depth, per composition level, every seed
shown. Reads ``results/depth/runs.parquet`` written by ``analyses/depth.py``.
"""

import sys
from pathlib import Path

from _common import RESULTS, custom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analyses"))


def draw(df, plotting):
    from depth import draw as draw_depth  # the analysis's own drawing, so both copies agree

    return draw_depth(df)


if __name__ == "__main__":
    sys.exit(custom("depth", __doc__, RESULTS / "depth" / "runs.parquet", "analyses/depth.py", draw))
