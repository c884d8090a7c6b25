"""The standard pipeline: one call from trajectories to every table, every figure and an HTML report.

``analyze`` runs the metric suite on a :class:`~trajgeo.Trajectories` and returns (and writes) one
table per analysis (skipping, and listing in its ``skipped`` table, what the data cannot support), ``summarize`` reads them into one row per word; ``write_tables``/``read_tables``
store them as parquet; ``figures`` reads such tables (never a model) and draws the standard figures;
``write_index`` writes the HTML page; ``build`` chains extraction (cached), ``analyze``, ``figures``
and ``write_index``. The ``trajgeo`` command (:mod:`trajgeo.cli`), ``make demo`` and the analysis
scripts use these functions.

The package holds ``suite`` (analyze, summarize), ``tables`` (table I/O), ``drawing`` (figures from
tables, :data:`FIGURES`), ``page`` (the HTML page) and ``pipeline`` (build); import the names from here.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import pandas as pd

from trajgeo._api import changed_signature
from trajgeo.report.drawing import FIGURES, figures
from trajgeo.report.page import headline_text, write_index
from trajgeo.report.pipeline import build, check_out, light_pairs
from trajgeo.report.suite import SKIPPED_COLUMNS, Skipped, analyze, check_model, headline_stratum, summarize, \
    summarize_by_stratum
from trajgeo.report.tables import read_tables, write_tables

__all__ = ["analyze", "figures", "build", "summarize", "summarize_by_stratum", "headline_stratum", "check_model",
           "check_out", "light_pairs", "headline_text", "Skipped", "SKIPPED_COLUMNS", "stratified_sample",
           "write_tables", "read_tables", "write_index", "FIGURES"]


@changed_signature(renamed={"by": "strata"}, positional=("strata", "random_state"), n_leading=2)
def stratified_sample(df: pd.DataFrame, n: int, *, strata: str | Sequence[str] = ("word", "sense"),
                      random_state: int = 0) -> pd.DataFrame:
    """Deprecated since 0.2: :func:`trajgeo.datasets.stratified_sample` (``by=`` is ``strata=`` there).

    Sampling is the example sets' business; this alias warns and calls it.
    """
    from trajgeo import datasets

    warnings.warn("trajgeo.report.stratified_sample is deprecated since trajgeo 0.2; use "
                  "trajgeo.datasets.stratified_sample (its by= is strata=)", DeprecationWarning, stacklevel=3)
    return datasets.stratified_sample(df, n, strata=strata, random_state=random_state)
