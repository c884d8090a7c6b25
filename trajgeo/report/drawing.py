"""The standard figures, drawn from tables only (never from a model or trajectories).

:data:`FIGURES` maps each figure's name to the tables it needs, its drawing function and its caption;
:func:`figures` draws every figure whose tables exist. The figure scripts (``figures/``) use the same
entries.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from trajgeo.report.tables import read_tables

__all__ = ["FIGURES", "figures"]


def _fig_convergence(t: dict, plotting: Any) -> Any:
    return plotting.convergence(t["curves"], metric="margin", hue="word").figure


def _fig_probes(t: dict, plotting: Any) -> Any:
    pr = t["probes"]
    if "word" in pr and pr["word"].nunique() > 1:
        # the figure shows the mean curve over words, one line per word would not be legible
        pr = pr[pr["fold"] == -1].groupby(["point", "metric"], as_index=False)["value"].mean()
        pr["fold"] = -1
    return plotting.probe_accuracy(pr).figure


def _fig_paths(t: dict, plotting: Any) -> Any:
    c = t["coords"]
    if "word" in c and c["word"].nunique() > 1:
        return plotting.path_grid(c, col="word")
    return plotting.paths(c).figure


def _fig_attribution(t: dict, plotting: Any) -> Any:
    import matplotlib.pyplot as plt

    attr = t["attribution"]
    has_heads = (attr["component"] == "head").any()
    fig, axes = plt.subplots(1, 2 if has_heads else 1, squeeze=False)
    plotting.attribution_heatmap(attr, ax=axes[0, 0])
    if has_heads:
        plotting.head_heatmap(attr, ax=axes[0, 1])
    return fig


def _fig_lens(t: dict, plotting: Any) -> Any:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, squeeze=False, gridspec_kw={"width_ratios": [2, 1]})
    top = t["top_tokens"]
    plotting.lens_table(top, ax=axes[0, 0])
    lens = t["lens"]
    if "word" in lens and "example" in top and lens["word"].nunique() > 1:
        # the log-odds of the displayed example's word: one line per sense stays legible
        word = lens.loc[lens["example"] == top["example"].iloc[0], "word"].iloc[0]
        lens = lens[lens["word"] == word]
        axes[0, 1].set_title(str(word))
    plotting.sense_log_odds(lens, ax=axes[0, 1])
    return fig


def _fig_transfer(t: dict, plotting: Any) -> Any:
    return plotting.transfer_heatmap(t["transfer"]).figure


def _fig_superposition(t: dict, plotting: Any) -> Any:
    return plotting.superposition_bars(t["superposition"]).figure


def _fig_geometry(t: dict, plotting: Any) -> Any:
    pm = t["path_metrics"]
    # one curve per sense while that stays legible, else the mean over all examples
    hue = "sense" if "sense" in pm and pm["sense"].nunique() <= 6 else None
    return plotting.path_panels(pm, hue=hue)


#: The standard figures: name -> (tables it needs, drawing function, caption).
FIGURES: dict[str, tuple[tuple[str, ...], Callable, str]] = {
    "convergence": (("curves",), _fig_convergence,
                    "Sense margin (cosine to the correct sense's final prototype minus the best other sense, "
                    "leave-one-out) against point, mean and 95% bootstrap band per word."),
    "probes": (("probes",), _fig_probes,
               "Layer-wise probe accuracy (grouped cross-validation) with the control task and the majority baseline."),
    "trajectories": (("coords",), _fig_paths,
                     "Trajectories in one PCA plane per word from the word's common embedding point, coloured by sense."),
    "attribution": (("attribution",), _fig_attribution,
                    "Mean push of each layer's attention and MLP write (and each head) toward the correct sense."),
    "lens": (("lens", "top_tokens"), _fig_lens,
             "Logit lens on the target token: top tokens per point for one example, and the sense-word log-odds."),
    "transfer": (("transfer",), _fig_transfer,
                 "Cross-layer probe transfer: accuracy of a probe trained at one point and tested at another."),
    "superposition": (("superposition",), _fig_superposition,
                      "Superposition at the embedding: cosine of point 0 with each sense's final prototype."),
    "geometry": (("path_metrics",), _fig_geometry,
                 "Path geometry per point: step size, turning angle between consecutive steps, cosine to the final point."),
}


def figures(tables: str | os.PathLike | Mapping[str, pd.DataFrame], out: str | os.PathLike,
            column: str = "double") -> list[Path]:
    """Draw every standard figure whose tables exist; write each as PDF and PNG.

    Parameters
    ----------
    tables : folder written by :func:`~trajgeo.report.analyze`, or its dict of DataFrames
    out : path
        Folder for the figures.
    column : {"single", "double"}
        Journal width of the figures.

    Returns
    -------
    list of Path: the files written (``<name>.pdf`` and ``<name>.png`` per figure).
    """
    import matplotlib.pyplot as plt  # no backend switch: a notebook's stays as it is (headless falls back to Agg)

    from trajgeo import plotting

    t = read_tables(tables) if not isinstance(tables, Mapping) else dict(tables)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, (needs, draw, _) in FIGURES.items():
        if not all(k in t and len(t[k]) for k in needs):
            continue
        with plotting.paper_style(column=column):
            fig = draw(t, plotting)
            written += plotting.savefig(fig, out / name)
            plt.close(fig)
    return written
