"""The standard figures, drawn from tables only (never from a model or trajectories).

:data:`FIGURES` maps each figure's name to the tables it needs, its drawing function and its caption;
:func:`figures` draws every figure whose tables exist. The figure scripts (``figures/``) use the same
entries.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from trajgeo.report.tables import read_tables

__all__ = ["FIGURES", "figures"]


def _headline(t: dict) -> str | None:
    """The separability stratum of the summary (the examples the headline reads), if any."""
    s = t.get("summary")
    if s is not None and "separability_stratum" in s and s["separability_stratum"].notna().any():
        return str(s["separability_stratum"].dropna().iloc[0])
    return None


def _fig_separability(t: dict, plotting: Any) -> Any:
    sep = t["separability"]
    stratum = _headline(t) or "all examples"
    if "stratum" in sep:
        sep = sep[sep["stratum"] == stratum]
    baseline = None
    sur = t.get("surface")
    if sur is not None and len(sur) and "word" in sur:
        r = sur[(sur["fold"] == -1) & (sur["metric"] == "balanced_accuracy")]
        baseline = dict(zip(r["word"], r["value"]))
    chance = None
    summary = t.get("summary")
    if summary is not None and "word" in summary:
        chance = {w: 1.0 / len(str(e).split(", ")) for w, e in zip(summary["word"], summary["examples_per_sense"])}
    sep = sep if "word" in sep else sep.assign(word="")
    fig = plotting.separability_grid(sep, baseline=baseline, chance=chance)
    fig.suptitle(f"separability ({stratum})", fontsize="medium")
    return fig


def _fig_reference_matrix(t: dict, plotting: Any) -> Any:
    return plotting.reference_heatmap(t["reference_matrix"], metric="margin").figure


def _fig_convergence(t: dict, plotting: Any) -> Any:
    return plotting.convergence(t["curves"], metric="margin", hue="word").figure


def _fig_probes(t: dict, plotting: Any) -> Any:
    pr = t["probes"]
    if "word" in pr and pr["word"].nunique() > 1:
        # the figure shows the mean curve over words, one line per word would not be legible
        pr = pr[pr["fold"] == -1].groupby(["point", "metric"], as_index=False)["value"].mean()
        pr["fold"] = -1
    return plotting.probe_accuracy(pr, control=False).figure


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

    readout = t.get("sense_readout")
    top = t["top_tokens"]
    if readout is None or not len(readout):
        return plotting.lens_table(top).figure
    fig, axes = plt.subplots(1, 2, squeeze=False, gridspec_kw={"width_ratios": [2, 1]})
    plotting.lens_table(top, ax=axes[0, 0])
    lens = t.get("lens")
    word = None
    if lens is not None and "word" in lens and "example" in top:
        hit = lens.loc[lens["example"] == top["example"].iloc[0], "word"]
        word = hit.iloc[0] if len(hit) else None
    words = readout["word"]
    one = readout[words == word] if word is not None and (words == word).any() else readout[words.isna()]
    if one.empty:
        one = readout[words == words.dropna().iloc[0]]
    plotting.null_band(one, ax=axes[0, 1])
    axes[0, 1].axhline(0.0, color="0.5", linewidth=0.5)
    axes[0, 1].set_ylabel("sense log-odds (lens)")
    label = one["word"].iloc[0]
    axes[0, 1].set_title("mean over words" if pd.isna(label) else str(label))
    return fig


def _fig_next_token(t: dict, plotting: Any) -> Any:
    import matplotlib.pyplot as plt

    nt = t["next_token"]
    metrics = [m for m in ("cross_entropy", "top1_accuracy") if (nt["metric"] == m).any()]
    fig, axes = plt.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, (name, d) in enumerate(nt[nt["metric"] == metric].groupby("lens", sort=False)):
            d = d.sort_values("point")
            ax.plot(d["point"], d["value"], color=f"C{i}", label=f"{name} lens")
            ax.fill_between(d["point"], d["ci_low"], d["ci_high"], color=f"C{i}", alpha=0.25, linewidth=0)
        ax.set_xlabel("point")
        if metric == "cross_entropy":
            ax.set_yscale("log")  # point 0 (the input token's own embedding) is far above the rest
        ax.set_ylabel({"cross_entropy": "next-token cross-entropy (nats, log scale)",
                       "top1_accuracy": "next-token top-1 accuracy"}[metric])
    axes[0, 0].legend()
    return fig


def _fig_transfer(t: dict, plotting: Any) -> Any:
    return plotting.transfer_heatmap(t["transfer"]).figure


def _fig_superposition(t: dict, plotting: Any) -> Any:
    sup = t["superposition"]
    sup = sup if "word" in sup else sup.assign(word="")
    if "null_q95" not in sup or sup["null_q95"].isna().all():
        return plotting.superposition_bars(sup).figure
    return plotting.against_null(sup, y="word", value="balance",
                                 xlabel="balance at the embedding (min / max cosine to the senses)").figure


def _fig_geometry(t: dict, plotting: Any) -> Any:
    pm = t["path_metrics"]
    # one curve per sense while that stays legible, else the mean over all examples
    hue = "sense" if "sense" in pm and pm["sense"].nunique() <= 6 else None
    return plotting.path_panels(pm, hue=hue)


def _fig_patching(t: dict, plotting: Any) -> Any:
    import matplotlib.pyplot as plt

    by_word = t.get("patching_by_word")
    fig, axes = plt.subplots(1, 2 if by_word is not None and len(by_word) else 1, squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.4]} if by_word is not None and len(by_word) else None)
    ax = plotting.null_band(t["patching_contrast"], ax=axes[0, 0])
    ax.axhline(0.0, color="0.5", linewidth=0.5)
    ax.set_ylabel("flip minus same-sense effect\n(all words)")
    if axes.shape[1] > 1:
        plotting.threshold_heatmap(by_word, row="word", col="point", value="value", threshold=None,
                                   label="flip minus same (no null per word)", ax=axes[0, 1])
    return fig


#: The standard figures: name -> (tables it needs, drawing function, caption).
FIGURES: dict[str, tuple[tuple[str, ...], Callable, str]] = {
    "separability": (("separability",), _fig_separability,
                     "Headline: separability of the senses at each point, with no reference point: balanced "
                     "accuracy of a ridge probe fitted at that point on some sentence groups and scored on held-out "
                     "ones (chance dotted). Grey: the null of group-respecting sense permutations (mean to 95% "
                     "quantile); dashed: its family-wise 95% threshold over points; dots: points above it. "
                     "Dash-dot: the surface-cue baseline, the same probe on a bag of the visible context words."),
    "reference_matrix": (("reference_matrix",), _fig_reference_matrix,
                         "Mean margin of every point (x) against the sense prototypes of every reference point (y), "
                         "mean over words. Each row peaks near its own reference by construction; the diagonal "
                         "(dotted) is the same-point view."),
    "probes": (("probes",), _fig_probes,
               "Layer-wise ridge probe accuracy (grouped cross-validation), mean over words, with the majority "
               "baseline. No control task: with one target word per set it is a previous-word probe; read the "
               "separability figure for the null."),
    "convergence": (("curves",), _fig_convergence,
                    "Alignment with the final representation: sense margin (cosine to the correct sense's prototype "
                    "of the last point minus the best other sense, leave-group-out) against point. It peaks at the "
                    "last point by construction: it is not a measure of when the sense is resolved."),
    "trajectories": (("coords",), _fig_paths,
                     "Trajectories in one PCA plane per word from the word's common embedding point, coloured by sense."),
    "attribution": (("attribution",), _fig_attribution,
                    "Mean push of each layer's attention and MLP write (and each head) toward the correct sense."),
    "lens": (("lens", "top_tokens"), _fig_lens,
             "Logit lens on the target token: top tokens per point for one example, and the mean sense-word "
             "log-odds with the null of shuffled sense-word sets (grey: mean to 95%; dashed: family-wise threshold)."),
    "next_token": (("next_token",), _fig_next_token,
                   "The lens scored against the actual next token over every position of whole texts: cross-entropy "
                   "and top-1 accuracy per point (95% bootstrap over texts); the tuned lens where one is cached."),
    "transfer": (("transfer",), _fig_transfer,
                 "Cross-layer probe transfer: accuracy of a probe trained at one point and tested at another."),
    "superposition": (("superposition",), _fig_superposition,
                      "Superposition at the embedding: balance of point 0 between each word's sense prototypes "
                      "(dot), against the balance of the other words' embeddings (grey: null mean to 95%)."),
    "geometry": (("path_metrics",), _fig_geometry,
                 "Path geometry per point: step size, turning angle between consecutive steps, cosine to the final point."),
    "patching": (("patching_contrast",), _fig_patching,
                 "Light causal trace (a few built-in minimal pairs per word, cue before the target): the clean "
                 "run's residual at the target patched into the counterfactual run at about ten points; effect on "
                 "the sense words' next-token log-odds, flip pairs minus same-sense pairs. Left, pooled over words, "
                 "with the null of permuted pair kinds (grey: mean to 95%; dashed: family-wise threshold; dots: "
                 "above it). Right, per word, without a null (too few pairs per word)."),
}


def figures(tables: str | os.PathLike | Mapping[str, pd.DataFrame], out: str | os.PathLike,
            column: str = "double") -> list[Path]:
    """Draw every standard figure whose tables exist; write each as PDF and PNG.

    A figure whose tables are missing (the analysis was skipped) is not drawn; one that cannot be drawn
    from its tables is left out with a warning naming it, and the others are drawn.

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
        with plotting.paper_style(column=column, palette="trajgeo"):
            try:
                fig = draw(t, plotting)
            except (ValueError, KeyError, IndexError) as exc:  # a table this figure cannot draw: the others go on
                warnings.warn(f"figure {name!r} not drawn: {exc}", stacklevel=2)
                plt.close("all")
                continue
            written += plotting.savefig(fig, out / name)
            plt.close(fig)
    return written
