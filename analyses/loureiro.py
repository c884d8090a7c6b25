"""The 1-NN sense-vector protocol of Loureiro et al. (2021) on CoarseWSD-20, for any model.

Loureiro et al. (2021, "Analysis and Evaluation of Language Models for Word Sense
Disambiguation") classify a test occurrence of a word by its nearest sense vector: token vector =
sum of the last 4 layers (averaged over the word's subtokens), sense vector = mean of the sense's
training token vectors, prediction = the sense (among the word's own senses) with the largest
cosine. With BERT-base on CoarseWSD-20 they report 0.910 mean per-word macro F1 and 95.7% accuracy
(:data:`trajgeo.probes.LOUREIRO_BERT_BASE`). This script runs the same protocol
(:func:`trajgeo.probes.loureiro_1nn`) on other models, so they can be put next to those figures.

For each model and word it

1. reads the CoarseWSD-20 train and test splits (:func:`trajgeo.datasets.read_coarsewsd20`);
2. caps them (``--max-train``, ``--max-test``) with a stratified sample
   (:func:`trajgeo.datasets.stratified_sample`, ``random_state``): every sense keeps at least one
   example and the sense proportions are kept;
3. extracts all points with subtoken-mean pooling, cached in ``<out>/<model>/<word>-<split>.zarr``
   (a re-run with the same examples reuses the store; a store built for other examples, e.g.
   another cap, is re-extracted);
4. runs the 1-NN protocol on raw token vectors (as in the paper) and, for comparison, on token
   vectors standardised per dimension with statistics of the training vectors (trajgeo's default
   normalisation), and the most-frequent-sense baseline (the majority sense of the full training
   split, scored on the test examples).

Each word's row is recorded as soon as it is done (``<out>/words/<model>/<word>.json``, atomically) and
the tables are rewritten after every word, so an interrupted run loses at most the word it was on; a
rerun with the same options keeps the words done (it says so) and retries the failed ones. A word the
protocol cannot be run on (no training or test examples, fewer than 2 training senses, a cap smaller
than its number of senses) is skipped with the reason; a word that fails (unreadable files, an error)
is recorded as failed and the study goes on; both are named at the end (exit status 1 on a failure),
and ``status``, ``reason`` and ``note`` columns say it in the per-word table.

It writes ``<out>/per_word.parquet`` (+ .csv; columns :data:`PER_WORD_COLUMNS`) and
``<out>/summary.parquet`` (+ .csv; :data:`SUMMARY_COLUMNS`: one row per model with the mean
per-word macro F1, the mean per-word accuracy (how the paper averages), the pooled accuracy over
all test examples, the mean majority baseline and the standardised variant, plus a row with the
paper's BERT-base figures) and prints both.

Caveats, printed with the results:

- The caps make the run feasible on 2 shared CPU cores. Measured on the development machine
  (2 cores at a load average of 6-8, i.e. roughly a quarter of them), all 15 words: the default
  caps (32 training and 64 test examples per word, 1,418 examples per model) took 17 minutes for
  both models (1.5 for MiniLM, 15 for SmolLM2 at about 1.6 examples/s); caps of 64/128 (2,580
  examples per model) took 27 minutes (4 for MiniLM, 23 for SmolLM2). The paper uses the
  full splits: sense vectors from fewer training examples are noisier, and capped test sets widen
  the uncertainty of each word's figures (a rare sense may have only a few test examples). Use
  ``--max-train 0 --max-test 0`` for the full protocol.
- CoarseWSD-20 sentences are lower-cased and pre-tokenised (spaces around punctuation). BERT-base
  in the paper was fed exactly that; a cased decoder such as SmolLM2 sees text unlike its training
  data. A causal model also sees only the context before the target.
- Raw token vectors of a pre-LN decoder are raw residuals. When the target is the first token of
  the input (SmolLM2 adds no BOS token), its state is the attention-sink state, 25-30 times the
  usual norm; a single such training example dominates its sense's mean vector, and the raw
  protocol falls to or below the majority baseline. For SmolLM2 this happened for exactly the
  words with a sentence-initial training example (apple, java, yard at the default caps; also arm,
  bow, club, square at 64/128). ``n_train_at_start``/``n_test_at_start`` count these examples;
  the standardised columns are not affected this way.

Usage::

    python analyses/loureiro.py --data ../shared/data/coarsewsd20 --models minilm,smollm2
                                [--words bank,java] [--max-train 64] [--max-test 128]
                                [--out results/loureiro]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

import trajgeo as tg
from trajgeo.normalization import DEFAULT_NORMALIZE
from trajgeo.datasets import stratified_sample
from trajgeo.report import write_tables

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # for _analysis_common, also when a test imports this by path
    sys.path.insert(0, str(_HERE))
from _analysis_common import print_outcomes, read_record, write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Default caps per word: both shipped models over all 15 words in about 15 minutes on 2 shared cores.
DEFAULT_MAX_TRAIN = 32
DEFAULT_MAX_TEST = 64
#: The comparison normalisation (fitted on the training token vectors); the paper's protocol is raw.
COMPARE_NORMALIZE = DEFAULT_NORMALIZE
PAPER_NAME = "BERT-base (Loureiro et al. 2021, paper)"
PER_WORD_COLUMNS = ["model", "word", "n_senses", "n_train", "n_test", "n_train_full", "n_test_full",
                    "accuracy", "macro_f1", "majority_baseline", f"accuracy_{COMPARE_NORMALIZE}",
                    f"macro_f1_{COMPARE_NORMALIZE}", "n_train_at_start", "n_test_at_start", "seconds",
                    "status", "note", "reason"]
SUMMARY_COLUMNS = ["model", "n_words", "n_train", "n_test", "mean_macro_f1", "mean_accuracy",
                   "pooled_accuracy", "mean_majority_baseline", f"mean_macro_f1_{COMPARE_NORMALIZE}",
                   f"mean_accuracy_{COMPARE_NORMALIZE}", "max_train", "max_test", "seconds", "n_skipped", "n_failed"]

__all__ = ["SkipWord", "cap", "majority_baseline", "select_word", "extract_split", "evaluate_word", "summarize",
           "run", "main", "DEFAULT_MAX_TRAIN", "DEFAULT_MAX_TEST", "COMPARE_NORMALIZE", "PER_WORD_COLUMNS",
           "SUMMARY_COLUMNS"]


class SkipWord(Exception):
    """The protocol cannot be run on this word (the message says why); it is skipped, not failed."""


def cap(df: pd.DataFrame, n: int | None, random_state: int = 0) -> pd.DataFrame:
    """At most ``n`` examples of ``df``, stratified by sense (``None`` or 0: all of them).

    Parameters
    ----------
    df : DataFrame of examples of one word (``sense`` column)
    n : int or None
    random_state : int
    """
    if not n or len(df) <= n:
        return df.reset_index(drop=True)
    if n < 0:
        raise ValueError(f"a cap must be a positive number of examples (0 or None for no cap), got {n}")
    return stratified_sample(df, n, strata="sense", random_state=random_state)


def majority_baseline(train_senses: Sequence[Any], test_senses: Sequence[Any]) -> float:
    """Test accuracy of always answering the most frequent training sense (ties: first in sorted order).

    Parameters
    ----------
    train_senses : sequence of shape (n_train,)
    test_senses : sequence of shape (n_test,)
    """
    counts = pd.Series(np.asarray(train_senses)).value_counts().sort_index(kind="stable")
    if counts.empty:
        raise ValueError("no training senses: the majority baseline needs at least one training example")
    mfs = counts.idxmax()  # first maximum of the sorted index: deterministic under ties
    return float(np.mean(np.asarray(test_senses) == mfs))


def extract_split(model: Any, df: pd.DataFrame, store: Path, batch_size: int = 16,
                  progress: bool = False, log: Callable[[str], None] = print) -> tg.Trajectories:
    """All points of ``df``'s targets, mean-pooled over subtokens, cached in ``store``.

    This is the protocol's extraction (the token vector averages the word's subtokens);
    :func:`trajgeo.probes.loureiro_1nn` takes the trajectories it returns. The store is reused when it holds exactly these examples from this model with these options;
    a complete store built for other examples (another cap, other data) is re-extracted.

    Returns
    -------
    Trajectories with states of shape (n_examples, n_layers + 1, d_model).
    """
    kwargs = dict(pool="mean", store=store, batch_size=batch_size, progress=progress)
    try:
        return tg.extract(model, df, **kwargs)
    except FileExistsError:
        log(f"  {store} holds other examples (another cap or data?): re-extracting")
        return tg.extract(model, df, overwrite=True, **kwargs)


def select_word(data: Path, word: str, max_train: int | None, max_test: int | None,
                random_state: int = 0) -> dict[str, Any]:
    """The word's full splits, their caps, and notes: ``{"full": {split: df}, "train", "test", "notes"}``.

    Raises
    ------
    SkipWord
        A split without examples, fewer than 2 training senses, or a cap smaller than the number of senses.
    """
    full = {}
    for sp in ("train", "test"):
        try:
            full[sp] = tg.datasets.read_coarsewsd20(data, word, split=sp)
        except ValueError as err:
            if "no examples" in str(err):
                raise SkipWord(f"no {sp} examples ({err})") from None
            raise
    senses = full["train"]["sense"].unique()
    if len(senses) < 2:
        raise SkipWord(f"fewer than 2 training senses ({', '.join(map(repr, senses))}): nothing to choose between")
    for sp, n in (("train", max_train), ("test", max_test)):
        k = full[sp]["sense"].nunique()
        if n and n < k and len(full[sp]) > n:
            raise SkipWord(f"the {sp} cap {n} is smaller than its {k} senses (a stratified cap keeps one of each)")
    notes = []
    unseen = sorted(set(full["test"]["sense"]) - set(senses))
    if unseen:
        notes.append(f"test sense(s) {', '.join(map(repr, unseen))} have no training example: never predicted")
    return {"full": full, "train": cap(full["train"], max_train, random_state),
            "test": cap(full["test"], max_test, random_state), "notes": notes}


def evaluate_word(model: Any, name: str, data: Path, word: str, out: Path, max_train: int | None,
                  max_test: int | None, batch_size: int = 16, random_state: int = 0, progress: bool = False,
                  log: Callable[[str], None] = print, selected: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One per-word row (the columns of :data:`PER_WORD_COLUMNS`) for one model and word.

    ``selected`` is :func:`select_word`'s result when the caller already has it.
    """
    t0 = time.perf_counter()
    if selected is None:
        selected = select_word(data, word, max_train, max_test, random_state)
    full, train, test = selected["full"], selected["train"], selected["test"]
    tr = extract_split(model, train, out / name / f"{word}-train.zarr", batch_size, progress, log)
    te = extract_split(model, test, out / name / f"{word}-test.zarr", batch_size, progress, log)
    r = tg.probes.loureiro_1nn(tr, te, labels="sense", word="word").set_index("word").loc[word]
    rn = tg.probes.loureiro_1nn(tr, te, labels="sense", word="word",
                                normalize=COMPARE_NORMALIZE).set_index("word").loc[word]
    return {
        "model": name, "word": word, "n_senses": int(full["train"]["sense"].nunique()),
        "n_train": int(r["n_train"]), "n_test": int(r["n_test"]),
        "n_train_full": len(full["train"]), "n_test_full": len(full["test"]),
        "accuracy": float(r["accuracy"]), "macro_f1": float(r["macro_f1"]),
        # the paper's MFS baseline: the majority of the whole training split, not of the capped sample
        "majority_baseline": majority_baseline(full["train"]["sense"], test["sense"]),
        f"accuracy_{COMPARE_NORMALIZE}": float(rn["accuracy"]), f"macro_f1_{COMPARE_NORMALIZE}": float(rn["macro_f1"]),
        # targets with no token before them (for a decoder without BOS: the attention-sink state)
        "n_train_at_start": int((tr.meta["token_start"] == 0).sum()),
        "n_test_at_start": int((te.meta["token_start"] == 0).sum()),
        "seconds": time.perf_counter() - t0,
        "status": "done", "note": "; ".join(selected["notes"]) or None, "reason": None,
    }


def summarize(per_word: pd.DataFrame, max_train: int | None = None, max_test: int | None = None) -> pd.DataFrame:
    """One row per model (the columns of :data:`SUMMARY_COLUMNS`) and a last row with the paper's figures.

    ``mean_macro_f1`` and ``mean_accuracy`` are unweighted means over words (how the paper
    averages); ``pooled_accuracy`` weights each word by its test examples. Only the words done count;
    ``n_skipped`` and ``n_failed`` count the others.
    """
    rows = []
    for name, everything in per_word.groupby("model", sort=False):
        status = everything["status"] if "status" in everything else pd.Series("done", index=everything.index)
        g = everything[status == "done"]
        rows.append({
            "model": name, "n_words": len(g), "n_train": int(g["n_train"].sum()), "n_test": int(g["n_test"].sum()),
            "mean_macro_f1": g["macro_f1"].mean(), "mean_accuracy": g["accuracy"].mean(),
            "pooled_accuracy": float((g["accuracy"] * g["n_test"]).sum() / g["n_test"].sum()) if len(g) else np.nan,
            "mean_majority_baseline": g["majority_baseline"].mean(),
            f"mean_macro_f1_{COMPARE_NORMALIZE}": g[f"macro_f1_{COMPARE_NORMALIZE}"].mean(),
            f"mean_accuracy_{COMPARE_NORMALIZE}": g[f"accuracy_{COMPARE_NORMALIZE}"].mean(),
            "max_train": max_train or 0, "max_test": max_test or 0,
            "seconds": g["seconds"].sum(),
            "n_skipped": int((status == "skipped").sum()), "n_failed": int((status == "failed").sum()),
        })
    paper = tg.probes.LOUREIRO_BERT_BASE
    rows.append({"model": PAPER_NAME, "n_words": 20, "mean_macro_f1": paper["macro_f1"],
                 "mean_accuracy": paper["accuracy"], "max_train": 0, "max_test": 0})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _tables(out: Path, pairs: Sequence[tuple[str, str]], options: Mapping[tuple[str, str], dict],
            max_train: int | None, max_test: int | None) -> dict[str, pd.DataFrame]:
    """The tables of the (model, word) pairs recorded with this run's options, in run order."""
    rows = []
    for name, word in pairs:
        rec = read_record(out / "words" / name / f"{word}.json")
        if rec is not None and rec["options"] == options[name, word]:
            rows.append(rec["row"])
    per_word = pd.DataFrame(rows, columns=PER_WORD_COLUMNS)
    return {"per_word": per_word, "summary": summarize(per_word, max_train, max_test)}


def _write(out: Path, tables: Mapping[str, pd.DataFrame]) -> None:
    write_tables(tables, out)
    for key, df in tables.items():
        write_text(out / f"{key}.csv", df.to_csv(index=False))


def run(models: Mapping[str, Any], data: str | Path, out: str | Path, words: Sequence[str] | None = None,
        max_train: int | None = DEFAULT_MAX_TRAIN, max_test: int | None = DEFAULT_MAX_TEST,
        batch_size: int = 16, random_state: int = 0, progress: bool = False,
        log: Callable[[str], None] = print) -> dict[str, pd.DataFrame]:
    """Run the protocol for every model and word; write and return the tables.

    Each word's row is recorded as it is done and the tables are rewritten after every word; a word
    recorded by an earlier run with the same options is kept, not recomputed (failed ones are retried).

    Parameters
    ----------
    models : mapping of name -> model
        Anything :func:`trajgeo.load_model` accepts (a shipped name, a LoadedModel, a (model,
        tokenizer) pair); loaded one at a time, and only when a word needs it.
    data : path
        CoarseWSD-20 folder (one sub-folder per word).
    out : path
        Results and extraction stores go here.
    words : sequence of str, optional
        Default: every word in ``data``.
    max_train, max_test : int or None
        Stratified caps per word (None or 0: the full split).
    batch_size : int
        Examples per forward pass.
    random_state : int
        Seeds the stratified caps.

    Returns
    -------
    dict with ``"per_word"`` (:data:`PER_WORD_COLUMNS`; ``status`` done/skipped/failed with the
    ``reason``) and ``"summary"`` (:data:`SUMMARY_COLUMNS`).
    """
    data, out = Path(data), Path(out)
    words = list(words) if words else tg.datasets.coarsewsd20_words(data)
    if not words:
        raise ValueError(f"no CoarseWSD-20 words in {data}")
    pairs = [(name, word) for name in models for word in words]
    options = {(name, word): {"model": name, "word": word, "data": str(data), "max_train": int(max_train or 0),
                              "max_test": int(max_test or 0), "random_state": int(random_state)}
               for name, word in pairs}
    for name, spec in models.items():
        model, load_error = None, None
        for word in words:
            path = out / "words" / name / f"{word}.json"
            rec = read_record(path)
            if rec is not None and rec["options"] == options[name, word] and rec["row"]["status"] != "failed":
                log(f"{name:10s} {word:8s} {rec['row']['status']} in an earlier run with these options: kept ({path})")
                continue
            try:
                if load_error is not None:
                    raise load_error
                selected = select_word(data, word, max_train, max_test, random_state)
                if model is None:
                    try:
                        model = tg.load_model(spec)
                    except Exception as err:  # every word of this model fails the same way: load once
                        load_error = err
                        raise
                row = evaluate_word(model, name, data, word, out, max_train, max_test, batch_size, random_state,
                                    progress, log, selected=selected)
                log(f"{name:10s} {word:8s} train {row['n_train']:4d}/{row['n_train_full']:<4d} "
                    f"test {row['n_test']:4d}/{row['n_test_full']:<4d} acc {row['accuracy']:.3f} "
                    f"F1 {row['macro_f1']:.3f} MFS {row['majority_baseline']:.3f} ({row['seconds']:.0f} s)"
                    + (f"; {row['note']}" if row["note"] else ""))
            except SkipWord as why:
                row = {"model": name, "word": word, "status": "skipped", "reason": str(why)}
                log(f"{name:10s} {word:8s} skipped: {why}")
            except Exception as err:  # noqa: BLE001 - one word's failure must not lose the others
                row = {"model": name, "word": word, "status": "failed", "reason": f"{type(err).__name__}: {err}"}
                log(f"{name:10s} {word:8s} FAILED: {row['reason']}")
            write_text(path, json.dumps({"options": options[name, word], "row": row}, indent=1))
            _write(out, _tables(out, pairs, options, max_train, max_test))
        del model  # one model in memory at a time
    tables = _tables(out, pairs, options, max_train, max_test)
    _write(out, tables)
    return tables


def _notes(max_train: int | None, max_test: int | None, random_state: int) -> list[str]:
    notes = []
    if max_train:
        notes.append(f"training examples capped at {max_train} per word (stratified by sense, "
                     f"random_state={random_state}); the paper uses the full training split")
    if max_test:
        notes.append(f"test examples capped at {max_test} per word (stratified by sense, "
                     f"random_state={random_state}); the paper uses the full test split")
    notes.append("CoarseWSD-20 sentences are lower-cased and pre-tokenised, as fed to BERT-base in the paper")
    notes.append("mean_* = unweighted mean over words (the paper's average); pooled_accuracy weights words "
                 "by test examples; majority_baseline = most frequent training sense, scored on test")
    notes.append(f"accuracy/macro_f1: raw token vectors (the paper's protocol); *_{COMPARE_NORMALIZE}: token "
                 "vectors standardised with the training vectors' statistics. A target that is the first token "
                 "(n_*_at_start) has a decoder's attention-sink state, whose huge norm distorts raw means")
    return notes


def main(argv: Sequence[str] | None = None, models: Mapping[str, Any] | None = None) -> int:
    """Command line entry point; ``models`` (name -> model) replaces ``--models`` (for tests)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "coarsewsd20")
    parser.add_argument("--models", default="minilm,smollm2", help="comma-separated shipped model names")
    parser.add_argument("--words", default=None, help="comma-separated words (default: every word in --data)")
    parser.add_argument("--max-train", type=int, default=DEFAULT_MAX_TRAIN,
                        help="training examples per word, stratified sample (0: all)")
    parser.add_argument("--max-test", type=int, default=DEFAULT_MAX_TEST,
                        help="test examples per word, stratified sample (0: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "loureiro")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show extraction progress bars")
    args = parser.parse_args(argv)
    for opt in ("max_train", "max_test"):
        if getattr(args, opt) < 0:
            parser.error(f"--{opt.replace('_', '-')} must be >= 0 (0: no cap)")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")

    if models is None:
        models = {name: name for name in args.models.split(",") if name}
    notes = _notes(args.max_train, args.max_test, args.random_state)
    for note in notes:
        print(f"note: {note}")
    t0 = time.perf_counter()
    tables = run(models, args.data, args.out, words=args.words.split(",") if args.words else None,
                 max_train=args.max_train or None, max_test=args.max_test or None, batch_size=args.batch_size,
                 random_state=args.random_state, progress=args.progress)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 500):
        print()
        print(tables["per_word"].round(3).to_string(index=False))
        print()
        print(tables["summary"].round(3).to_string(index=False))
    print()
    for note in notes:
        print(f"note: {note}")
    per_word = tables["per_word"]
    print_outcomes(per_word)
    print(f"total {time.perf_counter() - t0:.0f} s; tables in {args.out}")
    return 1 if (per_word["status"] == "failed").any() else 0


if __name__ == "__main__":
    sys.exit(main())
