"""Paper-ready figures from the tidy DataFrames of the analysis modules.

Every figure function takes a long-form DataFrame first (the contracts are in ``docs/architecture.md``), every
option by keyword, and ``ax=`` last: it draws on that Axes when given (or makes its own figure) and returns the
Axes, or a Figure for multi-panel plots. Nothing here computes statistics: intervals are read from the frame
(``mean, ci_low, ci_high`` from :func:`trajgeo.stats.bootstrap_ci`) or left to seaborn's own ``errorbar=``.
Nothing here calls ``plt.show()``; it is safe under the Agg backend. Wrap figure building in :func:`paper_style`
for journal sizes and a colour-blind-safe palette, and write files with :func:`savefig`, which strips timestamps
so that a figure rebuilt from the same data is byte-identical.

Typical use::

    import trajgeo as tg
    with tg.plotting.paper_style("single"):
        ax = tg.plotting.convergence(tg.senses.curves(traj), metric="margin")
        tg.plotting.savefig(ax.figure, "figures/bank_convergence")

The package imports nothing from trajgeo but the dependency-free ``trajgeo._api``. Its modules hold one figure
kind each: ``_style`` (paper_style, savefig), ``_curves`` (curves against point), ``_paths`` (paths in a shared
plane), ``_heatmaps``, ``_bars``, ``_validity`` (curves and values read against their permutation null, the
point x reference matrix), ``_causal`` (the frames of ``trajgeo.interventions``: causal trace, source
attribution, erasure and steering curves, skipped blocks); ``_common`` has the helpers they share.
"""

from __future__ import annotations

from trajgeo.plotting._bars import superposition_bars
from trajgeo.plotting._causal import causal_trace, condition_curves, erasure_curves, skip_table, source_map, \
    source_top_heads, steering_curves
from trajgeo.plotting._curves import convergence, path_panels, probe_accuracy, sense_log_odds
from trajgeo.plotting._heatmaps import attribution_heatmap, head_heatmap, lens_table, transfer_heatmap
from trajgeo.plotting._paths import path_grid, paths, trajectories, trajectory_grid
from trajgeo.plotting._style import CATEGORICAL, COLUMN_WIDTHS, categorical_palette, paper_style, savefig
from trajgeo.plotting._validity import against_null, null_band, reference_heatmap, separability_grid, \
    threshold_heatmap

# trajectories and trajectory_grid (0.1 names of paths and path_grid) still work, with a DeprecationWarning
__all__ = [
    "paper_style", "savefig", "convergence", "probe_accuracy", "paths", "path_grid",
    "attribution_heatmap", "head_heatmap", "lens_table", "sense_log_odds", "transfer_heatmap",
    "superposition_bars", "path_panels", "COLUMN_WIDTHS", "CATEGORICAL", "categorical_palette",
    "null_band", "separability_grid", "reference_heatmap", "against_null", "threshold_heatmap",
    # causal (trajgeo.interventions frames)
    "causal_trace", "source_map", "source_top_heads", "condition_curves", "erasure_curves",
    "steering_curves", "skip_table",
]
