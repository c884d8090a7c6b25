"""The standard pipeline: one call from trajectories to every table, every figure and an HTML report.

``analyze`` runs the metric suite on a :class:`~trajgeo.Trajectories` and writes one parquet table per
analysis; ``figures`` reads such a folder (never a model) and draws the eight standard figures;
``build`` chains extraction (cached), ``analyze`` and ``figures`` and writes ``index.html``. The
``trajgeo`` command (:mod:`trajgeo.cli`), ``make demo`` and the analysis scripts use these functions.
"""

from __future__ import annotations

import html
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

__all__ = ["analyze", "figures", "build", "summarize", "stratified_sample", "write_tables", "read_tables",
           "FIGURES"]


# ------------------------------------------------------------------ helpers
def stratified_sample(df: pd.DataFrame, n: int, by: tuple[str, ...] = ("word", "sense"),
                      random_state: int = 0) -> pd.DataFrame:
    """At most ``n`` rows, keeping the proportions of the ``by`` cells (each non-empty cell keeps >= 1 row).

    Parameters
    ----------
    df : DataFrame of examples
    n : int
    by : tuple of str
        Columns that define the strata (those absent are ignored).
    random_state : int
    """
    if len(df) <= n:
        return df
    cols = [c for c in by if c in df.columns]
    if not cols:
        return df.sample(n=n, random_state=random_state).reset_index(drop=True)
    frac = n / len(df)
    parts = [g.sample(n=max(1, int(round(len(g) * frac))), random_state=random_state)
             for _, g in df.groupby(cols, sort=True)]
    out = pd.concat(parts).sort_index().reset_index(drop=True)
    if "example" in out:
        out["example"] = np.arange(len(out))
    return out


def write_tables(tables: Mapping[str, pd.DataFrame], out: str | os.PathLike) -> Path:
    """Write each table as ``<out>/<name>.parquet``, each file atomically (temp file + rename)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".parquet")
        os.close(fd)
        try:
            _parquet_safe(df).to_parquet(tmp, index=False)
            os.replace(tmp, out / f"{name}.parquet")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return out


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    # object columns mixing None and numbers/strings break pyarrow's type inference: store them as text
    df = df.copy()
    df.attrs = {}  # attrs (e.g. a probe's out-of-fold predictions) are for the session, not the file
    for c in df.columns:
        if df[c].dtype == object:
            kinds = {type(v) for v in df[c].dropna()}
            if len(kinds) > 1:
                df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    return df


def read_tables(folder: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Read every ``*.parquet`` table of a folder written by :func:`analyze`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no tables folder at {folder}")
    return {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}


def _per_word(traj: Any, fn: Callable[[Any], pd.DataFrame], min_senses: int = 2) -> pd.DataFrame:
    """Run ``fn`` on each word's examples (senses compete only within a word) and stack with a word column."""
    meta = traj.meta
    words = meta["word"].unique() if "word" in meta else [None]
    frames = []
    for w in words:
        sub = traj if w is None else traj[(meta["word"] == w).to_numpy()]
        if sub.meta["sense"].nunique() < min_senses:
            continue
        df = fn(sub)
        if w is not None and "word" not in df.columns:
            df.insert(0, "word", w)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _probes_per_word(traj: Any, folds: int, random_state: int) -> pd.DataFrame:
    """Layer-wise probes per word (senses compete within a word), with each word's resolution point
    (and its bootstrap interval) kept in ``attrs["resolution"]``."""
    from trajgeo import probes

    res: list[pd.DataFrame] = []

    def one(t: Any) -> pd.DataFrame:
        pr = probes.layerwise(t, cv=folds, random_state=random_state, progress=False)
        r = probes.resolution_point(pr, random_state=random_state)
        res.append(r.assign(word=t.meta["word"].iloc[0] if "word" in t.meta else None))
        return pr

    out = _per_word(traj, one)
    out.attrs["resolution"] = pd.concat(res, ignore_index=True) if res else pd.DataFrame()
    return out


# ------------------------------------------------------------------ analyze
def analyze(traj: Any, model: Any = None, out: str | os.PathLike | None = None, *, focus_word: str | None = None,
            probe_folds: int = 5, random_state: int = 0, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Run the standard metric suite on trajectories.

    Parameters
    ----------
    traj : Trajectories
        With ``meta`` columns ``word`` and ``sense``; components (from ``extract(components=True)``)
        enable the attribution tables.
    model : LoadedModel, optional
        The model the trajectories came from; enables the logit-lens tables when it has an LM head.
    out : path, optional
        Folder to write the tables to (one parquet file each).
    focus_word : str, optional
        The word of the per-example displays (lens table, cross-layer transfer); default the word with
        the most examples, ``bank`` where present.
    probe_folds : int
        Folds of the layer-wise probes.
    random_state : int
    progress : bool

    Returns
    -------
    dict of name -> DataFrame: ``path_metrics, population, cka, rogue_dimensions, curves, commitment,
    superposition, reinforcement, attribution, probes, transfer, coords, lens, top_tokens, summary``
    (those that apply).
    """
    from tqdm.auto import tqdm

    from trajgeo import geometry, probes, projections, senses

    traj = traj.compute() if getattr(traj, "is_lazy", False) else traj
    if "sense" not in traj.meta:
        raise KeyError("the trajectories' meta has no 'sense' column: the sense analyses need labelled examples")
    words = traj.meta["word"].value_counts() if "word" in traj.meta else pd.Series({None: traj.n_examples})
    if focus_word is None:
        focus_word = "bank" if "bank" in words.index else words.index[0]
    elif focus_word not in words.index:
        raise KeyError(f"unknown word {focus_word!r}; the trajectories hold {sorted(map(str, words.index))}")
    focus = traj if focus_word is None else traj[(traj.meta["word"] == focus_word).to_numpy()]

    steps: list[tuple[str, Callable[[], pd.DataFrame]]] = [
        ("path_metrics", lambda: geometry.path_metrics(traj)),
        ("population", lambda: geometry.population_metrics(traj, random_state=random_state)),
        ("cka", lambda: geometry.cka(traj)),
        ("rogue_dimensions", lambda: geometry.rogue_dimensions(traj)),
        ("curves", lambda: senses.curves(traj)),
        ("commitment", lambda: senses.commitment(traj)),
        ("superposition", lambda: senses.superposition(traj)),
        ("reinforcement", lambda: senses.reinforcement(traj)),
        ("probes", lambda: _probes_per_word(traj, probe_folds, random_state)),
        ("transfer", lambda: probes.transfer(focus, random_state=random_state, progress=False).assign(word=focus_word)),
        # one PCA plane per word: a word's paths spread in its own plane, not in one shared by all words
        ("coords", lambda: _per_word(traj, lambda t: projections.fit(
            t, method="pca", random_state=random_state).coords(t), min_senses=1)),
    ]
    if traj.components:
        steps.append(("attribution", lambda: senses.attribution(traj)))
    if model is not None and getattr(getattr(model, "adapter", None), "unembed", None) is not None:
        from trajgeo import lens

        steps.append(("lens", lambda: lens.logit_lens(model, traj)))
        first = int(focus.meta["example"].iloc[0])
        steps.append(("top_tokens", lambda: lens.top_tokens(model, traj, example=first).assign(example=first)))

    tables: dict[str, pd.DataFrame] = {}
    timings = []
    bar = tqdm(steps, desc="analyses", disable=not progress)
    for name, fn in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        tables[name] = fn()
        timings.append({"analysis": name, "seconds": time.perf_counter() - t0, "rows": len(tables[name])})
    if "probes" in tables:
        tables["resolution"] = tables["probes"].attrs.pop("resolution", pd.DataFrame())
    tables["summary"] = summarize(tables, traj.meta)
    tables["timings"] = pd.DataFrame(timings)
    if out is not None:
        write_tables(tables, out)
    return tables


def summarize(tables: Mapping[str, pd.DataFrame], meta: pd.DataFrame) -> pd.DataFrame:
    """One row per word: examples per sense, majority baseline, probe accuracy at point 0, peak accuracy and
    its point, resolution point (with its bootstrap interval when the ``resolution`` table is there), median
    commitment point (margin stays > 0 from there on) and share of committed examples, median stable point
    (leave-one-out nearest prototype right from there on), selectivity at the peak, superposition balance."""
    rows = []
    for word, m in meta.groupby("word", sort=True) if "word" in meta else [(None, meta)]:
        counts = m["sense"].value_counts()
        row: dict[str, Any] = {"word": word, "n_examples": len(m),
                               "examples_per_sense": ", ".join(f"{k}: {v}" for k, v in counts.items()),
                               "majority_baseline": counts.max() / len(m)}
        pr = tables.get("probes")
        if pr is not None and len(pr):
            s = pr[(pr["fold"] == -1) & (pr["word"] == word)] if "word" in pr else pr[pr["fold"] == -1]
            acc = s[s["metric"] == "accuracy"].set_index("point")["value"]
            if len(acc):
                row["accuracy_point0"] = acc.get(0, np.nan)
                row["peak_accuracy"] = acc.max()
                row["peak_point"] = int(acc.idxmax())
                res = tables.get("resolution")
                if res is not None and len(res) and "word" in res and (res["word"] == word).any():
                    r = res[res["word"] == word].iloc[0]
                    row["resolution_point"] = r["resolution_point"]
                    row["resolution_ci_low"], row["resolution_ci_high"] = r["ci_low"], r["ci_high"]
                else:  # first point reaching 95% of the peak
                    row["resolution_point"] = int(acc[acc >= 0.95 * acc.max()].index.min())
                sel = s[s["metric"] == "selectivity"].set_index("point")["value"]
                row["selectivity_at_peak"] = sel.get(row["peak_point"], np.nan)
        com = tables.get("commitment")
        if com is not None and len(com):
            c = com[com["word"] == word] if "word" in com else com
            row["commitment_median"] = c["commitment_point"].median()
            row["committed_share"] = c["commitment_point"].notna().mean()
            row["stable_point_median"] = c["stable_point"].median()
        sup = tables.get("superposition")
        if sup is not None and len(sup) and "word" in sup:
            b = sup.loc[sup["word"] == word, "balance"]
            row["superposition_balance"] = b.iloc[0] if len(b) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ figures
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
        return plotting.trajectory_grid(c, col="word")
    return plotting.trajectories(c).figure


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
    tables : folder written by :func:`analyze`, or its dict of DataFrames
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


# ------------------------------------------------------------------ report
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


def write_index(out: Path, tables: Mapping[str, pd.DataFrame], paths: list[Path], traj: Any,
                seconds: Mapping[str, float]) -> Path:
    """Write ``index.html`` showing every figure (PNG, linked to its PDF) and the summary table."""
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
