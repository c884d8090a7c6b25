"""The HTML page of a report: the headline read against its null, every standard figure (PNG linked to its
PDF), the summary tables, and the list of what was skipped and why.

The prose is generated from the tables and says only what their numbers support: a word is called
separable only where its separability exceeds the family-wise threshold of its permutation null.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from trajgeo.report.drawing import FIGURES

__all__ = ["write_index", "headline_text"]

# summary columns shown on the page, in this order (others stay in tables/summary.parquet)
_SUMMARY_COLUMNS = [
    "word", "n_examples", "majority_baseline", "separability_peak", "separability_peak_point",
    "separability_null_fwer", "separability_peak_minus_null_fwer", "separability_p_fwer", "separability_p_holm",
    "separability_first_point_above_null", "surface_balanced_accuracy", "peak_kappa", "resolution_point",
    "resolution_ci_low", "resolution_ci_high", "commitment_median", "superposition_balance",
    "superposition_null_q95", "superposition_p_value",
]


def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3g}" if isinstance(
        v, float) else str(v)


def headline_text(tables: Mapping[str, pd.DataFrame], n_permutations: int = 0) -> list[str]:
    """The headline sentences of the page, each computed from the tables (no number without its source).

    Parameters
    ----------
    tables : mapping of name -> DataFrame
        ``summary`` (with the separability columns), optionally ``surface``, ``superposition``,
        ``sense_readout``, ``next_token``, ``patching_contrast``.
    n_permutations : int
        The permutations behind the nulls (named in the text).

    Returns
    -------
    list of str (plain text; the page escapes it).
    """
    s = tables.get("summary")
    if s is None or "separability_peak" not in s or s["separability_peak"].isna().all():
        return ["No word has separability scores (see the skipped analyses below)."] + _other_lines(tables, None)
    s = s[s["separability_peak"].notna()]
    return _separability_lines(s, n_permutations) + _other_lines(tables, s)


def _separability_lines(s: pd.DataFrame, n_permutations: int) -> list[str]:
    out: list[str] = []
    stratum = str(s["separability_stratum"].iloc[0]) if "separability_stratum" in s else "all examples"
    n = len(s)
    if "separability_separable" not in s:
        return [f"Separability ({stratum}) is shown without a null (n_permutations=0): no point of any word is "
                "called separable."]
    sep = s["separability_separable"].fillna(False).astype(bool)
    holm = s["separability_p_holm"] < 0.05 if "separability_p_holm" in s else sep
    first = s.loc[sep, "separability_first_point_above_null"]
    text = (f"Headline ({stratum}): {int(sep.sum())} of {n} words have a point whose separability exceeds the "
            f"family-wise 95% threshold of {n_permutations} group-respecting sense permutations; "
            f"{int(holm.sum())} remain significant after Holm's adjustment across words.")
    if len(first):
        text += (f" Among them, the first point above the threshold has median {np.median(first):g} "
                 f"(range {first.min():g}-{first.max():g}).")
    missing = sorted(map(str, s.loc[~sep, "word"]))
    if missing:
        text += f" Not separable against the null: {', '.join(missing)}."
    out.append(text)
    return out


def _other_lines(tables: Mapping[str, pd.DataFrame], s: pd.DataFrame | None) -> list[str]:
    out: list[str] = []
    n = 0 if s is None else len(s)
    if s is not None and "surface_balanced_accuracy" in s:
        beat = (s["separability_peak"] > s["surface_balanced_accuracy"]).sum()
        out.append(f"Surface cues: a bag of the visible context words reaches balanced accuracy "
                   f"{s['surface_balanced_accuracy'].median():.2f} (median over words); {int(beat)} of {n} words' "
                   "peak separability is above their surface-cue baseline.")
    if s is not None and "superposition_p_value" in s and s["superposition_p_value"].notna().any():
        sp = s["superposition_p_value"].dropna()
        out.append(f"Superposition at the embedding: {int((sp < 0.05).sum())} of {len(sp)} words' embeddings are "
                   "more balanced between their senses than the other words' embeddings are (p < 0.05 against that "
                   "null, uncorrected).")
    sr = tables.get("sense_readout")
    if sr is not None and len(sr) and "null_fwer" in sr:
        per = sr[sr["word"].notna()]
        hit = per.groupby("word").apply(lambda d: bool((d["value"] > d["null_fwer"]).any()), include_groups=False)
        out.append(f"Sense-word read-out of the lens: {int(hit.sum())} of {len(hit)} words exceed the family-wise "
                   "threshold of shuffled sense-word sets at some point.")
    nt = tables.get("next_token")
    if nt is not None and len(nt):
        ce = nt[(nt["metric"] == "cross_entropy") & (nt["lens"] == "logit")].sort_values("point")
        if len(ce):
            out.append(f"Next-token cross-entropy of the logit lens: {ce['value'].iloc[0]:.2f} nats at point 0, "
                       f"{ce['value'].min():.2f} at its best point ({int(ce.loc[ce['value'].idxmin(), 'point'])}), "
                       f"{ce['value'].iloc[-1]:.2f} at the last point (the model's own loss).")
    pc = tables.get("patching_contrast")
    if pc is not None and len(pc):
        above = pc.loc[pc["value"] > pc["null_fwer"], "point"].sort_values()
        where = f" (first at point {int(above.iloc[0])})" if len(above) else ""
        out.append(f"Light causal trace (a few built-in minimal pairs per word, residual at the target only, pooled "
                   f"over words): at {len(above)} of {len(pc)} patched points the flip pairs' effect exceeds the "
                   f"same-sense pairs' by more than the family-wise threshold of permuted pair kinds{where}. It is a "
                   "sketch, not a causal study: tg.interventions runs the full sweeps.")
    return out


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3g}", na_rep="–")


def write_index(out: str | os.PathLike, tables: Mapping[str, pd.DataFrame], paths: list[Path], traj: Any,
                seconds: Mapping[str, float], n_permutations: int = 0) -> Path:
    """Write ``index.html``: the headline, every figure (PNG, linked to its PDF), the summary tables, and
    what was skipped and why.

    Parameters
    ----------
    out : path
        The report folder; the figures' links are relative to it.
    tables : mapping of name -> DataFrame
        Needs ``summary`` (:func:`~trajgeo.report.summarize`); ``summary_by_cue`` and ``skipped`` are
        shown when present.
    paths : list of Path
        The figure files (:func:`~trajgeo.report.figures`), inside ``out``.
    traj : Trajectories
        For the header line (model name, examples, words, points, d_model).
    seconds : mapping of str -> float
        ``extract`` and ``total`` times for the header line.
    n_permutations : int
        The permutations of the nulls (for the text).

    Returns
    -------
    Path of ``index.html`` (written atomically).
    """
    out = Path(out)
    info = traj.model_info
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>trajgeo report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:85%}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}figure{margin:2em 0}"
        ".skipped td{text-align:left}</style></head><body>",
        f"<h1>trajgeo report: {esc(str(info.get('name', 'model')))}</h1>",
        f"<p>{traj.n_examples} examples, {traj.meta['word'].nunique() if 'word' in traj.meta else 1} words, "
        f"{traj.n_points} points (0 = token embedding, l = residual after block l), d_model {traj.d_model}. "
        f"Extraction {seconds.get('extract', 0):.0f} s, total {seconds.get('total', 0):.0f} s. "
        f"Nulls: {n_permutations} group-respecting permutations.</p>",
        "<h2>What the numbers support</h2><ul>",
        *[f"<li>{esc(t)}</li>" for t in headline_text(tables, n_permutations)],
        "</ul>",
    ]
    summary = tables["summary"]
    shown = [c for c in _SUMMARY_COLUMNS if c in summary.columns]
    parts += ["<h2>Summary per word</h2>",
              "<p>Separability columns read the headline examples against the family-wise null (peak minus "
              "null_fwer &gt; 0: separable at 5% family-wise over points); p_holm adjusts across words.</p>",
              _table_html(summary[shown])]
    by_cue = tables.get("summary_by_cue")
    if by_cue is not None and len(by_cue) and by_cue["stratum"].nunique() > 1:
        parts += ["<h2>Separability by cue position</h2>",
                  "<p>A causal model cannot read a cue that comes after the target.</p>", _table_html(by_cue)]
    pngs = {p.stem: p for p in paths if p.suffix == ".png"}
    not_drawn = []
    for name, (needs, _, caption) in FIGURES.items():
        if name in pngs:
            rel = pngs[name].relative_to(out)
            parts.append(f"<figure><h2>{name}</h2><a href='{rel.with_suffix('.pdf')}'><img src='{rel}' "
                         f"alt='{name}'></a><figcaption>{esc(caption)}</figcaption></figure>")
        else:
            missing = [k for k in needs if k not in tables or not len(tables[k])]
            not_drawn.append((name, f"no {', '.join(missing)} table" if missing else "could not be drawn"))
    skipped = tables.get("skipped")
    parts.append("<h2>Skipped</h2>")
    if (skipped is None or not len(skipped)) and not not_drawn:
        parts.append("<p>Nothing was skipped.</p>")
    if skipped is not None and len(skipped):
        parts += ["<p>What this data set or model cannot support, and why:</p>",
                  "<table class='skipped'><tr><th>analysis</th><th>word</th><th>reason</th></tr>",
                  *[f"<tr><td>{esc(str(r.analysis))}</td><td>{esc(_fmt(r.word))}</td><td>{esc(str(r.reason))}</td></tr>"
                    for r in skipped.itertuples()], "</table>"]
    if not_drawn:
        parts += ["<p>Figures not drawn:</p><ul>", *[f"<li>{esc(n)}: {esc(r)}</li>" for n, r in not_drawn], "</ul>"]
    parts.append("</body></html>")
    index = out / "index.html"
    tmp = index.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, index)
    return index
