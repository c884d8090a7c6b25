"""The whole pipeline into one folder: extraction (cached), the analysis suite, figures, ``index.html``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from trajgeo.report.drawing import figures
from trajgeo.report.page import write_index
from trajgeo.report.suite import analyze

__all__ = ["build"]


def build(model: Any, examples: pd.DataFrame, out: str | os.PathLike, *, components: bool = True,
          heads: bool = True, dtype: str = "float32", device: str = "cpu", batch_size: int = 16,
          random_state: int = 0, progress: bool = True) -> Path:
    """The whole pipeline into one folder: ``trajectories.zarr``, ``tables/``, ``figures/``, ``index.html``.

    Extraction is cached in the folder (and resumes if interrupted): re-running rebuilds tables and
    figures without re-running the model.

    Parameters
    ----------
    model : anything :func:`trajgeo.load_model` accepts
    examples : DataFrame in the :mod:`trajgeo.datasets` contract
    out : path
    components, heads : bool
        Extract the sublayer (and per-head) writes for the attribution figure.
    dtype, device, batch_size
        Passed to :func:`trajgeo.load_model` and :func:`trajgeo.extract`.
    random_state : int
        Seeds the analyses (:func:`~trajgeo.report.analyze`).
    progress : bool
        Show tqdm bars (extraction, analyses); ``False`` silences them.

    Returns
    -------
    Path of ``index.html``.
    """
    import trajgeo as tg

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lm = tg.load_model(model, dtype=dtype, device=device)
    traj = tg.extract(lm, examples, components=components, heads=heads, store=out / "trajectories.zarr",
                      batch_size=batch_size, progress=progress)
    t_extract = time.perf_counter() - t0
    lens_model = lm if lm.adapter.unembed is not None else None  # encoders without an LM head: no lens
    tables = analyze(traj, model=lens_model, out=out / "tables", random_state=random_state, progress=progress)
    paths = figures(tables, out / "figures")
    return write_index(out, tables, paths, traj, seconds={"extract": t_extract,
                                                          "total": time.perf_counter() - t0})
