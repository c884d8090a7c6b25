"""Cue before vs after the target: does a causal model resolve a sense it has not yet seen the evidence for?

In every built-in sentence one word disambiguates the target ("He deposited his paycheck at the
*bank*" vs "The *bank* was steep and muddy"); ``cue_position`` says whether it comes before or after
the target and ``cue_distance`` how many words lie between. A causal model's state at the target
is computed from the prefix only, so a cue after the target cannot help it: its sense margin and
probe accuracy on cue-after examples should stay near chance at every depth. An encoder attends
both ways and should resolve both conditions.

For each model the script

1. extracts the target's trajectory for every example (cached in ``<out>/<model>.zarr`` and reused
   when the examples match);
2. computes the leave-one-out sense margin per example and point (:func:`trajgeo.senses.curves`,
   prototypes of the last point, shared by both conditions) and splits it by cue position;
3. fits layer-wise probes (:func:`trajgeo.probes.layerwise`, grouped cross-validation) separately on
   the cue-before and the cue-after examples, with labels ``word:sense`` (a word's own senses
   compete; the word itself is read off the embedding, so point 0 sits at within-word chance);
4. reads each word's senses against its permutation null, per cue position
   (:func:`significance_table`: a probe per word with ``labels="sense"``, the group-respecting label
   permutations of :func:`trajgeo.probes.layerwise` and the family-wise threshold over points; Holm
   across the words of a condition) and the surface-cue baseline (:func:`trajgeo.probes.surface_baseline`:
   a bag of the context words the model could see, so before the target for a causal model);
5. writes tidy tables to ``<out>``: ``margin.parquet`` (example, point, word, sense, cue_position,
   cue_distance, model, causal, value), ``margin_by_point.parquet`` (mean and 95% bootstrap
   interval), ``probes.parquet`` (the layerwise rows plus model, causal, cue_position),
   ``significance.parquet`` (one row per model, condition and word: peak balanced accuracy and its point,
   ``null_fwer``, ``p_fwer``, ``p_holm``, ``resolved``, the surface baseline), ``summary.parquet`` (one row
   per model and condition: margin, pooled probe accuracy and kappa, words resolved against the null; ``note`` says why a condition has no probe
   figures), ``status.parquet`` (one row per model: done or failed, with the reason) and prints the
   summary.

Each model's tables are written as soon as it is done (``<out>/models/<model>/``, ``status.json`` last,
every file atomically) and the combined tables are rewritten after every model, so an interrupted run
loses at most the model it was on. A rerun with the same examples and options keeps the models done (it
says so); a model that fails (it does not load, an analysis error) is recorded with the error and the
others go on; failures are named at the end (exit status 1).

Usage::

    python analyses/cue_position.py [--models smollm2,minilm] [--out results/cue_position]
                                    [--words bank,bass] [--max-examples 200] [--permutations 1000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

import trajgeo as tg
from trajgeo.report import write_tables

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # for _analysis_common, also when a test imports this by path
    sys.path.insert(0, str(_HERE))
from _analysis_common import int_at_least, read_record, write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONDITIONS = ("before", "after")
PER_MODEL = ("margin", "probes", "significance")
#: The chance-corrected score each word's null is read on.
METRIC = "balanced_accuracy"

__all__ = ["select_examples", "trajectories", "margin_table", "margin_by_point", "probe_table", "significance_table",
           "summarize",
           "run", "main"]


def select_examples(words: Sequence[str] | None = None, max_examples: int | None = None,
                    random_state: int = 0) -> pd.DataFrame:
    """Built-in examples, optionally subsampled keeping the word x sense x cue-position cells balanced.

    Returns
    -------
    DataFrame with the columns of :func:`trajgeo.datasets.builtin` (``cue_position`` included).
    """
    from trajgeo.datasets import stratified_sample

    df = tg.datasets.builtin(list(words) if words else None)
    if max_examples:
        df = stratified_sample(df, max_examples, strata=("word", "sense", "cue_position"), random_state=random_state)
    return df.reset_index(drop=True)


def _same_examples(meta: pd.DataFrame, examples: pd.DataFrame) -> bool:
    cols = ["text", "char_start", "char_end", "sense", "cue_position"]
    if len(meta) != len(examples) or any(c not in meta for c in cols):
        return False
    a, b = meta[cols].reset_index(drop=True), examples[cols].reset_index(drop=True)
    return bool((a.astype(str) == b.astype(str)).all().all())


def trajectories(model: Any, examples: pd.DataFrame, store: Path, batch_size: int = 32) -> tg.Trajectories:
    """Extract the examples' trajectories into ``store``, or load them when the store holds the same examples.

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
    examples : DataFrame with ``text, char_start, char_end, word, sense, cue_position``
    store : path of the Zarr store

    Returns
    -------
    Trajectories in memory, states of shape (n_examples, n_layers + 1, d_model).
    """
    store = Path(store)
    if store.exists():
        traj = tg.load(store)
        if _same_examples(traj.meta, examples):
            return traj
        print(f"[cue_position] {store} holds other examples; extracting again", file=sys.stderr)
    return tg.extract(model, examples, store=store, overwrite=True, batch_size=batch_size, progress=False)


def margin_table(traj: tg.Trajectories, normalize: str | None = "standardize") -> pd.DataFrame:
    """Leave-one-out sense margin per example and point, with the example's cue position and distance.

    The prototypes (per word and sense, at the last point) come from both conditions, so the two
    conditions are measured against the same resolved meanings.

    Returns
    -------
    DataFrame with columns example, point, word, sense, cue_position, cue_distance, value.
    """
    m = tg.senses.curves(traj, labels="sense", reference="last", normalize=normalize)
    m = m[m["metric"] == "margin"].drop(columns=["metric", "to_sense"])
    cue = traj.meta.set_index("example")[["cue_position", "cue_distance"]]
    m = m.join(cue, on="example")
    return m[["example", "point", "word", "sense", "cue_position", "cue_distance", "value"]].reset_index(drop=True)


def margin_by_point(margin: pd.DataFrame, by: Sequence[str] = ("model", "causal", "cue_position"),
                    n_boot: int = 1000, random_state: int = 0) -> pd.DataFrame:
    """Mean margin per point with a percentile bootstrap interval over examples.

    The interval is :func:`trajgeo.stats.bootstrap_ci` with the example as the unit: one draw of
    examples serves every cell, so a curve over points is resampled as a whole.

    Parameters
    ----------
    margin : DataFrame from :func:`margin_table` (plus the ``by`` columns)
    by : sequence of str
        The columns that, with ``point``, define a cell.

    Returns
    -------
    DataFrame with columns ``by..., point, mean, ci_low, ci_high, n`` (n: examples in the cell).
    """
    return tg.stats.bootstrap_ci(margin, value="value", by=[*by, "point"], unit="example", n_boot=n_boot,
                                 random_state=random_state)


def probe_table(traj: tg.Trajectories, cv: int = 5, n_boot: int = 200, random_state: int = 0,
                notes: dict[str, str] | None = None) -> pd.DataFrame:
    """Layer-wise probe accuracy fitted separately within each cue position.

    Labels are ``word:sense`` and all words are pooled in one probe (``word=None``): one curve per
    condition, while only a word's own senses compete in practice (the word is decodable from the
    embedding). Folds keep sentences (``group``) apart, and are fewer where a class has fewer
    sentences than ``cv``. Conditions without examples, or with a class of fewer than 2 sentences,
    are skipped; ``notes`` (cue position -> why) receives the reasons, and the folds lowered.

    Returns
    -------
    DataFrame: the columns of :func:`trajgeo.probes.layerwise` plus ``cue_position``.
    """
    notes = {} if notes is None else notes
    out = []
    for cond in CONDITIONS:
        sub = traj[traj.meta["cue_position"].to_numpy() == cond]
        if sub.n_examples == 0:
            notes[cond] = f"no examples with the cue {cond} the target: no probes"
            continue
        labels = (sub.meta["word"].astype(str) + ":" + sub.meta["sense"].astype(str)).to_numpy()
        # the folds' groups: sentences, merged with identical prefixes for a causal model (what it can see)
        sentences = pd.Series(sub.group_codes("group")).groupby(labels).nunique()
        smallest = int(sentences.min())
        if smallest < 2:
            notes[cond] = (f"no probes: sense {sentences.idxmin()!r} has {smallest} sentence with the cue {cond} the "
                           "target (cross-validation needs 2)")
            print(f"[cue_position] {notes[cond]}", file=sys.stderr)
            continue
        if smallest < cv:
            notes[cond] = f"probe folds {cv} -> {smallest}: sense {sentences.idxmin()!r} has {smallest} sentences"
        df = tg.probes.layerwise(sub, labels=labels, word=None, groups="group", cv=min(cv, smallest),
                                 n_boot=n_boot, random_state=random_state)
        df.insert(0, "cue_position", cond)
        out.append(df)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def significance_table(traj: tg.Trajectories, cv: int = 5, n_permutations: int = 1000, random_state: int = 0,
                       notes: dict[str, str] | None = None) -> pd.DataFrame:
    """Per cue position and word: the word's senses read against their permutation null, and the surface cue.

    The pooled probe of :func:`probe_table` has no null of its own that respects words (a permutation
    of ``word:sense`` labels across words is beaten by the word identity alone, at point 0), so each
    word is probed on its own senses with ``n_permutations`` group-respecting label permutations:
    its best point against the family-wise threshold over points (:func:`trajgeo.probes.word_significance`),
    Holm across the words of the condition. A word whose sense has fewer than 2 sentences in a
    condition is left out (``notes`` says which).

    Returns
    -------
    DataFrame with columns cue_position, word, n_examples, folds, peak_point, peak_value (balanced
    accuracy), null_fwer, peak_minus_null, p_fwer, p_holm, resolved, surface_value (the surface-cue
    baseline's balanced accuracy), surface_p.
    """
    notes = {} if notes is None else notes
    out = []
    for cond in CONDITIONS:
        sub = traj[traj.meta["cue_position"].to_numpy() == cond]
        rows, left_out = [], []
        for word in pd.unique(sub.meta["word"]):
            w = sub[sub.meta["word"].to_numpy() == word]
            # the folds' groups as layerwise sees them (sentences, merged with identical prefixes for a causal model)
            sentences = pd.Series(w.group_codes("group")).groupby(w.meta["sense"].to_numpy()).nunique()
            if len(sentences) < 2 or int(sentences.min()) < 2:
                left_out.append(str(word))
                continue
            k = min(cv, int(sentences.min()))
            scores = tg.probes.layerwise(w, labels="sense", word="word", groups="group", cv=k, n_boot=0,
                                         n_permutations=n_permutations, random_state=random_state, progress=False)
            sig = tg.probes.word_significance(scores, metric=METRIC).iloc[0]
            surface = tg.probes.surface_baseline(w, cv=k, n_boot=0, n_permutations=n_permutations,
                                                 random_state=random_state, progress=False)
            surf = surface[(surface["fold"] == -1) & (surface["metric"] == METRIC)].iloc[0]
            rows.append({"cue_position": cond, "word": word, "n_examples": w.n_examples, "folds": k,
                         "peak_point": int(sig["peak_point"]), "peak_value": sig["peak_value"],
                         "null_fwer": sig["null_fwer"], "peak_minus_null": sig["peak_value"] - sig["null_fwer"],
                         "p_fwer": sig["p_fwer"], "resolved": bool(sig["resolved"]),
                         "surface_value": surf["value"], "surface_p": surf["p_value"]})
        if left_out:
            why = (f"words without 2 senses of 2 sentences each with the cue {cond} the target, not read against "
                   f"the null: {', '.join(left_out)}")
            notes[cond] = f"{notes[cond]}; {why}" if cond in notes else why
        if rows:
            df = pd.DataFrame(rows)
            df.insert(df.columns.get_loc("resolved"), "p_holm", tg.stats.holm(df["p_fwer"].to_numpy()))
            out.append(df)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def summarize(margin: pd.DataFrame, probes: pd.DataFrame,
              notes: Mapping[tuple[str, str], str] | None = None,
              significance: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per model and cue position: margin and probe accuracy at point 0, at the top and at their peak.

    ``notes`` maps (model, cue position) to a note (why the probe columns are empty, fewer folds).

    Returns
    -------
    DataFrame with columns model, causal, cue_position, n_examples, margin_point0, margin_last,
    margin_peak, margin_peak_point, accuracy_point0, accuracy_last, accuracy_peak,
    accuracy_peak_point, kappa_last (Cohen's kappa of the pooled probe at the last point, 0 at chance),
    and from ``significance`` (:func:`significance_table`): words_tested, words_resolved (peak above the
    word's family-wise null), median_peak_minus_null, median_surface (the surface baseline's balanced
    accuracy); and note, with ``notes``.
    """
    rows = []
    for (model, causal, cond), g in margin.groupby(["model", "causal", "cue_position"], sort=False):
        curve = g.groupby("point")["value"].mean()
        row = {"model": model, "causal": causal, "cue_position": cond, "n_examples": g["example"].nunique(),
               "margin_point0": curve.iloc[0], "margin_last": curve.iloc[-1],
               "margin_peak": curve.max(), "margin_peak_point": int(curve.idxmax())}
        if len(probes):
            p = probes[(probes["model"] == model) & (probes["cue_position"] == cond) & (probes["fold"] == -1)]
            acc = p[p["metric"] == "accuracy"].set_index("point")["value"]
            kappa = p[p["metric"] == "cohen_kappa"].set_index("point")["value"]
            if len(acc):
                row.update(accuracy_point0=acc.iloc[0], accuracy_last=acc.iloc[-1], accuracy_peak=acc.max(),
                           accuracy_peak_point=int(acc.idxmax()),
                           kappa_last=kappa.iloc[-1] if len(kappa) else np.nan)
        if significance is not None and len(significance):
            sg = significance[(significance["model"] == model) & (significance["cue_position"] == cond)]
            row.update(words_tested=len(sg), words_resolved=int(sg["resolved"].sum()),
                       median_peak_minus_null=sg["peak_minus_null"].median() if len(sg) else np.nan,
                       median_surface=sg["surface_value"].median() if len(sg) else np.nan)
        if notes is not None:
            row["note"] = notes.get((model, cond))
        rows.append(row)
    return pd.DataFrame(rows)


def _load(spec: Any) -> Any:
    return spec if hasattr(spec, "adapter") else tg.load_model(spec)


def _examples_key(examples: pd.DataFrame) -> str:
    """A hash of what the results depend on in the examples."""
    cols = [c for c in ("text", "char_start", "char_end", "word", "sense", "group", "cue_position", "cue_distance")
            if c in examples]
    rows = pd.util.hash_pandas_object(examples[cols].astype(str), index=False).to_numpy()
    return hashlib.blake2b(rows.tobytes() + json.dumps(cols).encode(), digest_size=16).hexdigest()


def _combined(out: Path, names: Sequence[str], options: Mapping[str, dict], n_boot: int,
              random_state: int) -> dict[str, pd.DataFrame]:
    """The tables of the models recorded with this run's options, in run order."""
    margins, probes, sigs, notes, status = [], [], [], {}, []
    for name in names:
        folder = out / "models" / name
        rec = read_record(folder / "status.json")
        if rec is None or rec["options"] != options[name]:
            continue
        status.append({"model": name, "status": rec["status"], "reason": rec.get("reason")})
        if rec["status"] != "done":
            continue
        margins.append(pd.read_parquet(folder / "margin.parquet"))
        p = pd.read_parquet(folder / "probes.parquet")
        if len(p):
            probes.append(p)
        sg = pd.read_parquet(folder / "significance.parquet")
        if len(sg):
            sigs.append(sg)
        notes.update({(name, cond): note for cond, note in (rec.get("notes") or {}).items()})
    margin = pd.concat(margins, ignore_index=True) if margins else pd.DataFrame()
    probe = pd.concat(probes, ignore_index=True) if probes else pd.DataFrame()
    significance = pd.concat(sigs, ignore_index=True) if sigs else pd.DataFrame()
    by_point = (margin_by_point(margin, n_boot=n_boot, random_state=random_state) if len(margin)
                else pd.DataFrame())
    summary = summarize(margin, probe, notes, significance) if len(margin) else pd.DataFrame()
    return {"margin": margin, "probes": probe, "significance": significance, "margin_by_point": by_point, "summary": summary,
            "status": pd.DataFrame(status, columns=["model", "status", "reason"])}


def run(models: Mapping[str, Any] | Sequence[str], out: str | Path, examples: pd.DataFrame | None = None,
        words: Sequence[str] | None = None, max_examples: int | None = None, batch_size: int = 32,
        n_boot: int = 1000, probe_boot: int = 200, random_state: int = 0, n_permutations: int = 1000,
        log: Callable[[str], None] = print) -> dict[str, pd.DataFrame]:
    """The whole analysis; returns the tables (also written as parquet under ``out``).

    Each model's tables are written as it is done and the combined tables after every model; a model
    done by an earlier run with the same examples and options is kept, not recomputed; a model that
    fails is recorded (``status`` table) and the others go on.

    Parameters
    ----------
    models : sequence of model names, or mapping name -> model spec / LoadedModel
    out : results folder; stores go to ``out/<name>.zarr``
    examples : DataFrame, optional
        Examples with ``cue_position`` (default: :func:`select_examples` of ``words``/``max_examples``).
    n_boot, probe_boot : int
        Bootstrap replicates for the margin intervals and for the probes' summary intervals.
    n_permutations : int >= 1
        Group-respecting label permutations of each word's null (:func:`significance_table`).

    Returns
    -------
    dict with keys "margin", "margin_by_point", "probes", "significance", "summary", "status".
    """
    if int(n_permutations) < 1:
        raise ValueError(f"n_permutations must be >= 1 (each word is read against its null), got {n_permutations}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(models, Mapping):
        models = {m: m for m in models}
    if examples is None:
        examples = select_examples(words, max_examples, random_state)
    if "cue_position" not in examples:
        raise KeyError("examples need a cue_position column ('before'/'after'), as tg.datasets.builtin() has")
    key = _examples_key(examples)
    options = {name: {"model": name, "examples": key, "probe_boot": int(probe_boot), "random_state": int(random_state),
                     "n_permutations": int(n_permutations)}
               for name in models}
    names = list(models)
    tables = _combined(out, names, options, n_boot, random_state)
    for name, spec in models.items():
        folder = out / "models" / name
        rec = read_record(folder / "status.json")
        if rec is not None and rec["options"] == options[name] and rec["status"] == "done":
            log(f"[cue_position] {name}: done in an earlier run with these examples and options: kept ({folder})")
            continue
        (folder / "status.json").unlink(missing_ok=True)
        try:
            lm = _load(spec)
            causal = bool(lm.adapter.causal)
            traj = trajectories(lm, examples, out / f"{name}.zarr", batch_size=batch_size)
            m = margin_table(traj)
            m.insert(0, "model", name)
            m.insert(1, "causal", causal)
            notes: dict[str, str] = {}
            p = probe_table(traj, n_boot=probe_boot, random_state=random_state, notes=notes)
            if len(p):
                p.insert(0, "model", name)
                p.insert(1, "causal", causal)
            sg = significance_table(traj, n_permutations=n_permutations, random_state=random_state, notes=notes)
            if len(sg):
                sg.insert(0, "model", name)
                sg.insert(1, "causal", causal)
            write_tables({"margin": m, "probes": p, "significance": sg}, folder)
            write_text(folder / "status.json", json.dumps({"options": options[name], "status": "done",
                                                           "notes": notes}, indent=1))
        except Exception as err:  # noqa: BLE001 - one model's failure must not lose the others
            reason = f"{type(err).__name__}: {err}"
            for t in PER_MODEL:
                (folder / f"{t}.parquet").unlink(missing_ok=True)
            write_text(folder / "status.json", json.dumps({"options": options[name], "status": "failed",
                                                           "reason": reason}, indent=1))
            log(f"[cue_position] {name} FAILED: {reason}")
        tables = _combined(out, names, options, n_boot, random_state)
        write_tables(tables, out)
    write_tables(tables, out)
    return tables


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python analyses/cue_position.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,minilm", help="comma-separated model names (default: %(default)s)")
    parser.add_argument("--out", default=str(ROOT / "results" / "cue_position"), type=Path,
                        help="results folder (default: results/cue_position)")
    parser.add_argument("--words", default=None, help="comma-separated built-in words (default: all)")
    parser.add_argument("--max-examples", type=int_at_least(1), default=None,
                        help="stratified subsample size, at least one example per word, sense and cue position "
                             "(default: all)")
    parser.add_argument("--permutations", type=int_at_least(1), default=1000,
                        help="group-respecting label permutations of each word's null (default: %(default)s)")
    args = parser.parse_args(argv)
    words = args.words.split(",") if args.words else None
    tables = run(args.models.split(","), args.out, words=words, max_examples=args.max_examples,
                 n_permutations=args.permutations)
    failed = tables["status"][tables["status"]["status"] == "failed"]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(tables["summary"].to_string(index=False))
    summary = tables["summary"]
    s = summary.set_index(["model", "cue_position"]) if len(summary) else summary
    for model, causal in (summary[["model", "causal"]].drop_duplicates().itertuples(index=False) if len(summary)
                          else []):
        if {(model, "before"), (model, "after")} <= set(s.index):
            b, a = s.loc[(model, "before")], s.loc[(model, "after")]
            kind = "causal" if causal else "encoder"
            print(f"{model} ({kind}): final margin before {b.margin_last:+.3f} vs after {a.margin_last:+.3f}"
                  + (f"; final probe accuracy before {b.accuracy_last:.2f} vs after {a.accuracy_last:.2f}"
                     f" (point 0: {b.accuracy_point0:.2f} / {a.accuracy_point0:.2f})" if "accuracy_last" in s else ""))
    if "note" in summary:
        for r in summary[summary["note"].notna()].itertuples():
            print(f"note: {r.model} cue {r.cue_position}: {r.note}")
    if len(failed):
        print(f"failed {len(failed)} of {len(tables['status'])}: "
              + "; ".join(f"{r.model} ({r.reason})" for r in failed.itertuples()))
    print(f"tables written to {args.out}")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
