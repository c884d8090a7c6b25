"""The analysis suite: every standard table from one set of trajectories, and the summary per word.

:func:`analyze` runs the metrics of geometry, senses, probes, projections and (given a model with an
LM head) the lens, and (given minimal pairs and a causal LM) a light activation-patching trace;
:func:`summarize` reads those tables back into one row per word. Neither draws nor writes anything
but the tables (:func:`~trajgeo.report.write_tables`).

What the data cannot support is skipped, never fatal: a word with one sense, a sense with fewer
groups than folds, a model without an LM head, a word without sense words, trajectories cut before
the last point, one word only (no other-words null, no reinforcement origin). Each skip is one row of
the ``skipped`` table (``analysis, word, reason``), which the report page lists.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd

from trajgeo._api import changed_signature
from trajgeo.report.tables import write_tables

__all__ = ["analyze", "summarize", "summarize_by_stratum", "headline_stratum", "check_model", "Skipped",
           "SKIPPED_COLUMNS", "STRATA"]

# a step returns one table (stored under its name) or several (name -> table)
Step = tuple[str, Callable[[], "pd.DataFrame | dict[str, pd.DataFrame]"]]

#: Columns of the ``skipped`` table.
SKIPPED_COLUMNS = ("analysis", "word", "reason")

#: Strata of the cue-position tables: the ``cue_position`` value -> its name in the tables.
STRATA = {"before": "cue before target", "after": "cue after target"}
ALL = "all examples"


class Skipped(Exception):
    """Raised by a step whose analysis the data or the model cannot support; the message is the reason."""


# ------------------------------------------------------------------ per word
def _word_subsets(traj: Any, min_senses: int) -> Iterator[tuple[Any, Any]]:
    """``(word, its examples)`` for every word with at least ``min_senses`` senses (senses compete only
    within a word); one ``(None, traj)`` when ``meta`` has no word column."""
    meta = traj.meta
    words = pd.unique(meta["word"]) if "word" in meta else [None]
    for w in words:
        sub = traj if w is None else traj[(meta["word"] == w).to_numpy()]
        if sub.meta["sense"].nunique() >= min_senses:
            yield w, sub


def _with_word(df: pd.DataFrame, word: Any) -> pd.DataFrame:
    """``df`` with a leading ``word`` column (unless it has one, or there are no words)."""
    if word is not None and "word" not in df.columns:
        df = df.copy()
        df.insert(0, "word", word)
    return df


def _stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


class _Log:
    """The skips of one run: ``add(analysis, word, reason)``; ``frame()`` is the ``skipped`` table."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, analysis: str, word: Any, reason: str) -> None:
        self.rows.append({"analysis": analysis, "word": None if word is None else str(word), "reason": str(reason)})

    def frame(self) -> pd.DataFrame:
        out = pd.DataFrame(self.rows, columns=list(SKIPPED_COLUMNS)).astype(object)
        return out.where(out.notna(), None)  # no word: None (not NaN)


def _per_word(traj: Any, fn: Callable[[Any], pd.DataFrame], log: _Log, analysis: str,
              min_senses: int = 2) -> pd.DataFrame:
    """Run ``fn`` on each word's examples and stack the results with a word column; a word the
    analysis cannot run on (a ``ValueError``: too few examples or groups of a sense for the folds, ...)
    is logged as skipped and the others go on."""
    frames = []
    for w, sub in _word_subsets(traj, min_senses):
        try:
            frames.append(_with_word(fn(sub), w))
        except (ValueError, Skipped) as exc:
            log.add(analysis, w, str(exc))
    return _stack(frames)


def _one_line(exc: BaseException) -> str:
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return str(msg).splitlines()[0] if str(msg) else type(exc).__name__


# ------------------------------------------------------------------ strata
def headline_stratum(traj: Any) -> str:
    """The examples the headline reads: for a causal model with a ``cue_position`` column, those whose
    cue precedes the target (a causal model cannot read a cue after it); otherwise all examples."""
    meta = traj.meta
    if traj.model_info.get("causal") and "cue_position" in meta and (meta["cue_position"] == "before").any():
        return STRATA["before"]
    return ALL


def _strata(traj: Any) -> dict[str, Any]:
    """``{stratum name: its trajectories}``: all examples, and each cue position present."""
    out = {ALL: traj}
    if "cue_position" in traj.meta:
        for value, name in STRATA.items():
            mask = (traj.meta["cue_position"] == value).to_numpy()
            if mask.any() and not mask.all():
                out[name] = traj[mask]
    return out


# ------------------------------------------------------------------ probes, separability, surface
def _probe_tables(traj: Any, folds: int, random_state: int, n_permutations: int, log: _Log) -> dict[str, pd.DataFrame]:
    """Layer-wise ridge probes per word with the permutation null (``probes``), each word's resolution
    point read against the null (``resolution``), both from the same sweep, and separability per
    cue-position stratum (``separability``; its ``all examples`` rows are the sweep's balanced accuracy)."""
    from trajgeo import probes, senses

    scores, resolution, sep = [], [], []
    for w, sub in _word_subsets(traj, min_senses=2):
        try:
            sweep = probes.layerwise(sub, cv=folds, random_state=random_state, progress=False, return_result=True,
                                     n_permutations=n_permutations, n_boot=200)
        except ValueError as exc:
            log.add("probes and separability", w, _one_line(exc))
            continue
        scores.append(_with_word(sweep.scores, w))
        resolution.append(_with_word(probes.resolution_point(sweep, metric="balanced_accuracy", n_boot=200,
                                                             random_state=random_state), w))
        rows = sweep.scores[(sweep.scores["fold"] == -1) & (sweep.scores["metric"] == "balanced_accuracy")]
        keep = ["point", "metric", "value"] + ([c for c in _null_columns() if c in rows] if n_permutations else [])
        sep.append(_with_word(rows[keep].reset_index(drop=True), w).assign(stratum=ALL))
    for name, part in _strata(traj).items():
        if name == ALL:
            continue
        for w, sub in _word_subsets(part, min_senses=2):
            try:
                s = senses.separability(sub, cv=folds, random_state=random_state, n_permutations=n_permutations,
                                        progress=False)
            except ValueError as exc:
                log.add(f"separability ({name})", w, _one_line(exc))
                continue
            sep.append(_with_word(s, w).assign(stratum=name))
    return {"probes": _stack(scores), "resolution": _stack(resolution), "separability": _stack(sep)}


def _null_columns() -> tuple[str, ...]:
    from trajgeo.stats import NULL_COLUMNS

    return tuple(NULL_COLUMNS)


def _surface(traj: Any, folds: int, random_state: int, n_permutations: int, log: _Log) -> pd.DataFrame:
    """The surface-cue baseline (a bag of the visible context words) per word, on the headline examples."""
    from trajgeo import probes

    if not {"text", "char_start", "char_end"} <= set(traj.meta.columns):
        raise Skipped("the examples have no text columns (text, char_start, char_end) to read context words from")
    stratum = headline_stratum(traj)
    part = _strata(traj).get(stratum, traj)
    out = _per_word(part, lambda sub: probes.surface_baseline(
        sub, cv=folds, random_state=random_state, n_permutations=n_permutations, n_boot=200, progress=False),
        log, "surface-cue baseline")
    return out.assign(stratum=stratum) if len(out) else out


# ------------------------------------------------------------------ senses
def _superposition(traj: Any) -> pd.DataFrame:
    from trajgeo import senses

    if 0 not in set(np.asarray(traj.points).tolist()):
        raise Skipped("the trajectories have no point 0 (the embedding)")
    return senses.superposition(traj)


def _superposition_logged(traj: Any, log: _Log) -> pd.DataFrame:
    out = _superposition(traj)
    if "null_q95" in out and out["null_q95"].isna().all():
        log.add("superposition null", None, "one word only: the null is the other words' embeddings")
    return out


def _reinforcement(traj: Any) -> pd.DataFrame:
    from trajgeo import senses

    words = traj.meta["word"].nunique() if "word" in traj.meta else 1
    if words < 2:
        raise Skipped("one word only: reinforcement measures each sense's projection from a neutral origin, "
                      "the mean of the other words' vectors")
    return senses.reinforcement(traj)


# ------------------------------------------------------------------ lens
def _model_mismatch(lm: Any, traj: Any) -> str | None:
    """Why ``traj`` cannot come from ``lm`` (width, depth, name), or None."""
    info = traj.model_info
    if traj.d_model != lm.d_model:
        return f"the trajectories have d_model {traj.d_model} but model {lm.name!r} has {lm.d_model}"
    if "n_layers" in info and int(info["n_layers"]) != lm.n_layers:
        return f"the trajectories come from a {info['n_layers']}-layer model, model {lm.name!r} has {lm.n_layers}"
    if int(np.max(traj.points)) > lm.n_layers:
        return f"the trajectories have point {int(np.max(traj.points))}, model {lm.name!r} only {lm.n_layers} layers"
    fp = info.get("weights_fingerprint")
    if fp and info.get("name") not in (None, lm.name) and fp != lm.fingerprint():
        return f"the trajectories come from model {info.get('name')!r}, not {lm.name!r}"
    return None


def check_model(model: Any, traj: Any) -> None:
    """Refuse, before any analysis, a model the trajectories do not come from (``ValueError``)."""
    why = _model_mismatch(model, traj)
    if why:
        raise ValueError(f"{why}: pass the model the trajectories were extracted with")


def _sense_sets(traj: Any, sense_words: Mapping[str, Mapping[str, Any]] | None, log: _Log) -> dict[str, dict]:
    """Per word, the sense words of the read-out: the caller's, else the built-in ones; a word whose
    senses are not all covered gets none (logged)."""
    from trajgeo.datasets import sense_words as builtin_sense_words

    given = {str(k): v for k, v in (sense_words or {}).items()}
    out = {}
    for w, sub in _word_subsets(traj, min_senses=2):
        table = given.get(str(w))
        source = "--sense-words"
        if table is None:
            try:
                table = builtin_sense_words(str(w))
                source = "the built-in sense words"
            except (KeyError, ValueError, FileNotFoundError):
                log.add("sense-word read-out", w, f"no sense words for {w!r} (give them with --sense-words FILE "
                        "or analyze(sense_words=...))")
                continue
        missing = sorted(set(map(str, sub.meta["sense"].unique())) - set(map(str, table)))
        if missing:
            log.add("sense-word read-out", w, f"{source} of {w!r} name senses {sorted(map(str, table))}, the data "
                    f"has {missing} without sense words")
            continue
        out[str(w)] = {str(k): list(v) for k, v in table.items()}
    return out


def _lens_steps(traj: Any, model: Any, focus: Any, n_permutations: int, sense_words: Any, next_token_texts: int,
                random_state: int, progress: bool, log: _Log) -> list[Step]:
    """The lens steps the model and the trajectories allow; the rest is logged as skipped."""
    from trajgeo import lens

    if model is None:
        log.add("lens", None, "no model given (analyze(model=...), 'trajgeo analyze --model')")
        return []
    if not lens.has_lm_head(model):
        log.add("lens", None, f"model {model.name!r} has no LM head (an encoder such as MiniLM): no logit lens, "
                "sense-word read-out or next-token scores")
        return []
    steps: list[Step] = []
    last = model.n_layers
    if last not in set(np.asarray(traj.points).tolist()):
        log.add("lens on the targets", None, f"the trajectories stop at point {int(np.max(traj.points))}, before the "
                f"model's last point {last} that the lens compares with (extracted with a max point)")
    else:
        sets = _sense_sets(traj, sense_words, log)
        words = traj.meta["word"] if "word" in traj.meta else pd.Series([None] * traj.n_examples)
        with_sets = traj[words.astype(str).isin(sets).to_numpy()] if sets else None

        def logit() -> dict[str, pd.DataFrame]:
            if sets:
                table = lens.logit_lens(model, traj, sense_tokens=sets)
            else:  # no word has sense words: the lens's own metrics only (no word column, no built-in sets)
                from trajgeo import Trajectories

                bare = Trajectories(traj.states, traj.meta.drop(columns="word", errors="ignore"),
                                    model_info=traj.model_info)
                table = lens.logit_lens(model, bare)
                if "word" in traj.meta:
                    table.insert(2, "word", traj.meta.set_index("example")["word"].reindex(table["example"]).to_numpy())
            tables = {"lens": table}
            first = int(focus.meta["example"].iloc[0])
            tables["top_tokens"] = lens.top_tokens(model, traj, example=first).assign(example=first)
            return tables

        steps.append(("lens", logit))
        if sets:
            steps.append(("sense_readout", lambda: lens.sense_readout(
                model, with_sets, sense_tokens=sets, n_permutations=max(n_permutations, 0),
                random_state=random_state)))
    if not model.adapter.causal:
        log.add("next-token scores", None, f"model {model.name!r} is not a causal LM: its LM head predicts the "
                "token at a position, not the next one")
    elif next_token_texts > 0:
        def next_token() -> pd.DataFrame:
            tuned = lens.TunedLens.cached(model)
            if tuned is None:
                log.add("tuned lens", None, f"no tuned lens is cached for {model.name!r} (train one with "
                        "'python -m trajgeo.lens.train'); the logit lens alone is scored")
            texts = pd.unique(traj.meta["text"]).tolist() if "text" in traj.meta else None
            return lens.next_token_scores(model, texts, lens=tuned, max_texts=next_token_texts, n_boot=200,
                                          random_state=random_state, progress=progress)

        steps.append(("next_token", next_token))
    return steps


# ------------------------------------------------------------------ causal
def _patching(model: Any, pairs: pd.DataFrame, n_permutations: int, random_state: int,
              progress: bool) -> dict[str, pd.DataFrame]:
    """The light causal trace: the residual stream at the target patched from the clean run into the
    counterfactual one at about ten points, read out as the sense words' next-token log-odds; flip pairs
    against same-sense pairs (the null) per point, pooled over words (``patching_contrast``, with the
    permutation null), and per word and point without a null (``patching_by_word``)."""
    from trajgeo import interventions

    if not model.adapter.causal:
        raise Skipped(f"model {model.name!r} is not a causal LM (the read-out is the next token)")
    step = max(1, model.n_layers // 10)  # about ten points, the last included: a sketch, not a sweep
    points = sorted({*range(0, model.n_layers + 1, step), model.n_layers})
    frame = interventions.patch(model, pairs, site="resid", positions="target", points=points, direction="denoise",
                                readout="logit", on_misaligned="skip", progress=progress, random_state=random_state)
    if frame.empty:
        raise Skipped("no minimal pair aligned token for token on this tokenizer")
    # pooled over words: with a few pairs per word, a word's own permutations cannot reach a 5% threshold
    contrast = interventions.kind_contrast(frame, by=["point"], n_permutations=max(n_permutations, 1),
                                           alternative="greater", random_state=random_state)
    by_word = interventions.kind_contrast(frame, by=["word", "point"], n_permutations=1, random_state=random_state)
    return {"patching": frame, "patching_contrast": contrast,
            "patching_by_word": by_word.drop(columns=[c for c in _null_columns() if c in by_word])}


# ------------------------------------------------------------------ analyze
def _focus(traj: Any, focus_word: str | None) -> tuple[Any, Any]:
    """The word of the per-example displays (default ``bank`` where present, else the most frequent
    word) and its examples."""
    words = traj.meta["word"].value_counts() if "word" in traj.meta else pd.Series({None: traj.n_examples})
    if focus_word is None:
        focus_word = "bank" if "bank" in words.index else words.index[0]
    elif focus_word not in words.index:
        raise KeyError(f"unknown word {focus_word!r}; the trajectories hold {sorted(map(str, words.index))}")
    return focus_word, traj if focus_word is None else traj[(traj.meta["word"] == focus_word).to_numpy()]


def _steps(traj: Any, model: Any, focus_word: Any, focus: Any, probe_folds: int, random_state: int,
           n_permutations: int, sense_words: Any, next_token_texts: int, pairs: Any, progress: bool,
           log: _Log) -> list[Step]:
    """The suite, in order: geometry, senses, probes, separability and the surface-cue baseline,
    projections, then attribution, the lens and the causal trace where the trajectories (components),
    the model (an LM head, causal) and the data (minimal pairs) allow them."""
    from trajgeo import geometry, probes, projections, senses

    def transfer() -> pd.DataFrame:
        if focus.meta["sense"].nunique() < 2:
            raise Skipped(f"the focus word {focus_word!r} has one sense")
        return probes.transfer(focus, random_state=random_state, progress=False).assign(word=focus_word)

    steps: list[Step] = [
        ("path_metrics", lambda: geometry.path_metrics(traj)),
        ("population", lambda: geometry.population_metrics(traj, random_state=random_state)),
        ("cka", lambda: geometry.cka(traj)),
        ("rogue_dimensions", lambda: geometry.rogue_dimensions(traj)),
        ("curves", lambda: senses.curves(traj)),
        ("reference_matrix", lambda: senses.reference_matrix(traj)),
        ("commitment", lambda: senses.commitment(traj)),
        ("superposition", lambda: _superposition_logged(traj, log)),
        ("reinforcement", lambda: _reinforcement(traj)),
        ("probes", lambda: _probe_tables(traj, probe_folds, random_state, n_permutations, log)),
        ("surface", lambda: _surface(traj, probe_folds, random_state, n_permutations, log)),
        ("transfer", transfer),
        # one PCA plane per word: a word's paths spread in its own plane, not in one shared by all words
        ("coords", lambda: _per_word(traj, lambda t: projections.fit(
            t, method="pca", random_state=random_state).coords(t), log, "trajectories plane", min_senses=1)),
    ]
    if traj.components:
        steps.append(("attribution", lambda: senses.attribution(traj)))
    else:
        log.add("attribution", None, "the trajectories hold no attention/MLP writes (extract with components)")
    steps += _lens_steps(traj, model, focus, n_permutations, sense_words, next_token_texts, random_state, progress,
                         log)
    if pairs is not None and len(pairs) and model is not None:
        steps.append(("patching", lambda: _patching(model, pairs, n_permutations, random_state, progress)))
    return steps


def _run(steps: list[Step], progress: bool, log: _Log) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Run every step under one tqdm bar; the tables and one timing row per step. A step the data
    cannot support (:class:`Skipped`, or a ``ValueError`` / ``KeyError`` naming what is missing) is
    logged and the others go on."""
    from tqdm.auto import tqdm

    tables: dict[str, pd.DataFrame] = {}
    timings = []
    bar = tqdm(steps, desc="analyses", disable=not progress)
    for name, fn in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # NaN means of tied points: the tables say NaN
                result = fn()
        except Skipped as exc:
            log.add(name, None, str(exc))
            continue
        except (ValueError, KeyError) as exc:
            log.add(name, None, _one_line(exc))
            continue
        result = result if isinstance(result, Mapping) else {name: result}
        tables.update(result)
        timings.append({"analysis": name, "seconds": time.perf_counter() - t0,
                        "rows": sum(len(t) for t in result.values())})
    return tables, pd.DataFrame(timings)


@changed_signature(positional=("model", "out"))  # 0.1: analyze(traj, model=None, out=None, *, ...)
def analyze(traj: Any, *, model: Any = None, out: str | os.PathLike | None = None, focus_word: str | None = None,
            probe_folds: int = 5, random_state: int = 0, progress: bool = True, n_permutations: int = 0,
            sense_words: Mapping[str, Mapping[str, Any]] | None = None, next_token_texts: int = 0,
            pairs: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Run the standard metric suite on trajectories; skip (and log) what the data cannot support.

    Parameters
    ----------
    traj : Trajectories
        With ``meta`` columns ``word`` and ``sense``; components (from ``extract(components=True)``)
        enable the attribution tables; a ``cue_position`` column stratifies separability.
    model : LoadedModel, optional
        The model the trajectories came from (checked first: another width or depth is a
        ``ValueError`` before any analysis); enables the lens tables when it has an LM head.
    out : path, optional
        Folder to write the tables to (one parquet file each).
    focus_word : str, optional
        The word of the per-example displays (lens table, cross-layer transfer); default the word with
        the most examples, ``bank`` where present.
    probe_folds : int
        Folds of the layer-wise probes, separability and the surface-cue baseline.
    random_state : int
    progress : bool
    n_permutations : int
        Group-respecting label permutations of the null of probes, separability, the surface-cue
        baseline, the sense-word read-out and the causal contrast (0: no null, fast).
    sense_words : dict, optional
        ``{word: {sense: [words]}}`` for the lens's sense-word read-out; words not in it use the
        built-in sense words where there are some (others are skipped, and logged).
    next_token_texts : int
        Texts (of the examples) on which the lens is scored against the actual next token (0: none).
    pairs : DataFrame, optional
        Minimal pairs (:func:`trajgeo.datasets.minimal_pairs`) for the light causal trace (causal LMs).

    Returns
    -------
    dict of name -> DataFrame: ``path_metrics, population, cka, rogue_dimensions, curves,
    reference_matrix, commitment, superposition, reinforcement, probes, resolution, separability,
    surface, transfer, coords, attribution, lens, top_tokens, sense_readout, next_token, patching,
    patching_contrast, patching_by_word, summary, summary_by_cue, skipped, timings`` (those that apply; ``skipped``
    always, with one row per analysis and word left out and why). ``resolution`` holds each word's
    :func:`trajgeo.probes.resolution_point` of balanced accuracy read against the family-wise null,
    from the same sweep as the word's ``probes`` rows; ``separability`` has a ``stratum`` column
    (all examples, and each cue position).
    """
    traj = traj.compute() if getattr(traj, "is_lazy", False) else traj
    if "sense" not in traj.meta:
        raise KeyError("the trajectories' meta has no 'sense' column: the sense analyses need labelled examples")
    if model is not None:
        check_model(model, traj)
    log = _Log()
    if "word" in traj.meta:
        for w, m in traj.meta.groupby("word", sort=False):
            if m["sense"].nunique() < 2:
                log.add("sense analyses", w, f"one sense only ({m['sense'].iloc[0]!r}): nothing to tell apart")
    focus_word, focus = _focus(traj, focus_word)
    steps = _steps(traj, model, focus_word, focus, probe_folds, random_state, n_permutations, sense_words,
                   next_token_texts, pairs, progress, log)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*one sense.*")  # logged in the skipped table instead
        tables, timings = _run(steps, progress, log)
    tables["summary"] = summarize(tables, traj.meta, headline=headline_stratum(traj))
    tables["summary_by_cue"] = summarize_by_stratum(tables)
    tables["skipped"] = log.frame()
    tables["timings"] = timings
    if out is not None:
        write_tables(tables, out)
    return tables


# ------------------------------------------------------------------ summarize
def _rows_of(df: pd.DataFrame | None, word: Any) -> pd.DataFrame | None:
    """The rows of ``word`` in a per-word table (all rows of a table without a word column)."""
    if df is None or not len(df):
        return None
    return df[df["word"] == word] if "word" in df else df


def _curve_against_null(d: pd.DataFrame) -> dict[str, Any]:
    """Peak, its point, the family-wise threshold, the peak minus it, p_fwer and the first point above it."""
    d = d.sort_values("point")
    best = d.loc[d["value"].idxmax()]
    row: dict[str, Any] = {"peak": float(best["value"]), "peak_point": int(best["point"])}
    if "null_fwer" in d and d["null_fwer"].notna().any():
        fwer = float(d["null_fwer"].dropna().iloc[0])
        above = d.loc[d["value"] > fwer, "point"]
        row.update(null_fwer=fwer, peak_minus_null_fwer=row["peak"] - fwer, p_fwer=float(d["p_fwer"].min()),
                   first_point_above_null=float(above.iloc[0]) if len(above) else np.nan,
                   separable=bool(len(above)))
    return row


def _separability_summary(tables: Mapping[str, pd.DataFrame], word: Any, stratum: str) -> dict[str, Any]:
    s = _rows_of(tables.get("separability"), word)
    if s is None or "stratum" not in s:
        return {}
    s = s[s["stratum"] == stratum]
    if not len(s) or s["value"].isna().all():
        return {}
    return {"separability_stratum": stratum, **{f"separability_{k}": v for k, v in _curve_against_null(s).items()}}


def _probe_summary(tables: Mapping[str, pd.DataFrame], word: Any) -> dict[str, Any]:
    s = _rows_of(tables.get("probes"), word)
    if s is None:
        return {}
    s = s[s["fold"] == -1]
    acc = s[s["metric"] == "accuracy"].set_index("point")["value"]
    if not len(acc):
        return {}
    row: dict[str, Any] = {"accuracy_point0": acc.get(0, np.nan), "peak_accuracy": acc.max(),
                           "peak_point": int(acc.idxmax())}
    kappa = s[s["metric"] == "cohen_kappa"].set_index("point")["value"]
    if len(kappa):
        row["peak_kappa"] = kappa.max()
    res = _rows_of(tables.get("resolution"), word)
    if res is not None and len(res):
        r = res.iloc[0]
        row["resolution_point"] = r["resolution_point"]
        # not resolved against the null: no point to put an interval around
        resolved = pd.notna(r["resolution_point"])
        row["resolution_ci_low"] = r["ci_low"] if resolved else np.nan
        row["resolution_ci_high"] = r["ci_high"] if resolved else np.nan
    return row


def _surface_summary(tables: Mapping[str, pd.DataFrame], word: Any) -> dict[str, Any]:
    s = _rows_of(tables.get("surface"), word)
    if s is None:
        return {}
    r = s[(s["fold"] == -1) & (s["metric"] == "balanced_accuracy")]
    if not len(r):
        return {}
    row = {"surface_balanced_accuracy": float(r["value"].iloc[0])}
    if "p_value" in r:
        row["surface_p_value"] = float(r["p_value"].iloc[0])
    return row


def _commitment_summary(tables: Mapping[str, pd.DataFrame], word: Any) -> dict[str, Any]:
    c = _rows_of(tables.get("commitment"), word)
    if c is None:
        return {}
    return {"commitment_median": c["commitment_point"].median(),
            "committed_share": c["commitment_point"].notna().mean(),
            "stable_point_median": c["stable_point"].median()}


def _superposition_summary(tables: Mapping[str, pd.DataFrame], word: Any) -> dict[str, Any]:
    sup = tables.get("superposition")
    if sup is None or not len(sup) or "word" not in sup:
        return {}
    r = sup[sup["word"] == word]
    if not len(r):
        return {"superposition_balance": np.nan}
    row = {"superposition_balance": r["balance"].iloc[0]}
    if "null_q95" in r:
        row.update(superposition_null_q95=r["null_q95"].iloc[0], superposition_p_value=r["p_value"].iloc[0])
    return row


def summarize(tables: Mapping[str, pd.DataFrame], meta: pd.DataFrame, *, headline: str = ALL) -> pd.DataFrame:
    """One row per word, from the tables of :func:`analyze`.

    Columns: examples per sense, majority baseline; from ``separability`` (the ``headline`` stratum):
    ``separability_peak``, ``_peak_point`` and, with a null, ``_null_fwer`` (the family-wise 95%
    threshold over points), ``_peak_minus_null_fwer``, ``_p_fwer``, ``_first_point_above_null`` (NaN
    when no point exceeds the threshold) and ``_separable``; from ``surface``: the surface-cue
    baseline's balanced accuracy (and p-value); from ``probes``: accuracy at point 0, peak accuracy
    and its point, peak Cohen's kappa; from ``resolution`` (:func:`trajgeo.probes.resolution_point`
    of balanced accuracy, against the null when the sweep had one): the resolution point and its
    bootstrap interval; from ``commitment``: the median commitment point, the share of committed
    examples, the median stable point; from ``superposition``: the balance at the embedding and the
    other words' null (95% quantile, p-value).

    Parameters
    ----------
    tables : mapping of name -> DataFrame
        Any of ``separability``, ``surface``, ``probes``, ``resolution``, ``commitment``,
        ``superposition``; per-word tables have a ``word`` column (a table without one describes a
        single word).
    meta : DataFrame
        The examples (``sense``, and ``word`` when there are several words).
    headline : str
        The stratum of ``separability`` summarised (see :func:`headline_stratum`).

    Returns
    -------
    DataFrame with one row per word (sorted), the columns of the tables that are there.
    """
    rows = []
    for word, m in meta.groupby("word", sort=True) if "word" in meta else [(None, meta)]:
        counts = m["sense"].value_counts()
        row: dict[str, Any] = {"word": word, "n_examples": len(m),
                               "examples_per_sense": ", ".join(f"{k}: {v}" for k, v in counts.items()),
                               "majority_baseline": counts.max() / len(m)}
        row.update(_separability_summary(tables, word, headline))
        for part in (_surface_summary, _probe_summary, _commitment_summary, _superposition_summary):
            row.update(part(tables, word))
        rows.append(row)
    out = pd.DataFrame(rows)
    if "separability_p_fwer" in out and out["separability_p_fwer"].notna().any():
        from trajgeo.stats import holm

        ok = out["separability_p_fwer"].notna().to_numpy()
        out["separability_p_holm"] = np.nan
        out.loc[ok, "separability_p_holm"] = holm(out.loc[ok, "separability_p_fwer"].to_numpy())
    return out


def summarize_by_stratum(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Separability per word and cue-position stratum, read against each stratum's null.

    Returns
    -------
    DataFrame with columns ``stratum, word, n_points, peak, peak_point`` and, with a null,
    ``null_fwer, peak_minus_null_fwer, p_fwer, first_point_above_null, separable, p_holm`` (Holm
    across the words of the stratum); empty without a ``separability`` table.
    """
    sep = tables.get("separability")
    if sep is None or not len(sep) or "stratum" not in sep:
        return pd.DataFrame(columns=["stratum", "word", "peak", "peak_point"])
    rows = []
    keys = ["stratum", "word"] if "word" in sep else ["stratum"]
    for key, d in sep.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        if d["value"].isna().all():
            continue
        rows.append({**dict(zip(keys, key)), "n_points": len(d), **_curve_against_null(d)})
    out = pd.DataFrame(rows)
    if "p_fwer" in out:
        from trajgeo.stats import holm

        out["p_holm"] = np.nan
        for _, idx in out.groupby("stratum").groups.items():
            ok = [i for i in idx if np.isfinite(out.at[i, "p_fwer"])]
            if ok:
                out.loc[ok, "p_holm"] = holm(out.loc[ok, "p_fwer"].to_numpy())
    return out
