"""The HTML page of a report: every standard figure (PNG linked to its PDF) and the summary table."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from trajgeo.report.drawing import FIGURES

__all__ = ["write_index"]


def write_index(out: str | os.PathLike, tables: Mapping[str, pd.DataFrame], paths: list[Path], traj: Any,
                seconds: Mapping[str, float]) -> Path:
    """Write ``index.html`` showing every figure (PNG, linked to its PDF) and the summary table.

    Parameters
    ----------
    out : path
        The report folder; the figures' links are relative to it.
    tables : mapping of name -> DataFrame
        Needs ``summary`` (:func:`~trajgeo.report.summarize`).
    paths : list of Path
        The figure files (:func:`~trajgeo.report.figures`), inside ``out``.
    traj : Trajectories
        For the header line (model name, examples, words, points, d_model).
    seconds : mapping of str -> float
        ``extract`` and ``total`` times for the header line.

    Returns
    -------
    Path of ``index.html`` (written atomically).
    """
    out = Path(out)
    info = traj.model_info
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>trajgeo report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:90%}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}figure{margin:2em 0}</style></head><body>",
        f"<h1>trajgeo report: {html.escape(str(info.get('name', 'model')))}</h1>",
        f"<p>{traj.n_examples} examples, {traj.meta['word'].nunique() if 'word' in traj.meta else 1} words, "
        f"{traj.n_points} points (0 = token embedding, l = residual after block l), d_model {traj.d_model}. "
        f"Extraction {seconds.get('extract', 0):.0f} s, total {seconds.get('total', 0):.0f} s.</p>",
        "<h2>Summary per word</h2>",
        tables["summary"].to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–"),
    ]
    pngs = {p.stem: p for p in paths if p.suffix == ".png"}
    for name, (_, _, caption) in FIGURES.items():
        if name in pngs:
            rel = pngs[name].relative_to(out)
            parts.append(f"<figure><h2>{name}</h2><a href='{rel.with_suffix('.pdf')}'><img src='{rel}' "
                         f"alt='{name}'></a><figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    index = out / "index.html"
    tmp = index.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, index)
    return index
