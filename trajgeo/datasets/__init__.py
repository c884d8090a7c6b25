"""Example sets: readers, validation, the built-in polysemy set, and sampling.

Every reader returns a pandas DataFrame with one row per **example** (one occurrence of a
target word in one text). The example contract, checked by :func:`validate`:

==================  ==========================================================================
column              meaning
==================  ==========================================================================
``example``         int id, ``0..n-1`` (added if absent; must be unique when given)
``text``            the text, a non-empty str
``char_start``      int, first character of the target in ``text``
``char_end``        int, one past its last character: ``0 <= char_start < char_end <= len(text)``
``target``          ``text[char_start:char_end]`` (filled in; checked when given)
``word``            the target's lemma (default: the target, lower-cased)
``sense``           the sense label, a non-empty str (required by the labelled readers); integer
                    labels (a data set's sense numbers) are converted to str with a warning,
                    any other type (float, bool, ...) is an error
``group``           what must not be split across cross-validation folds (default: the text,
                    so duplicate sentences share a group)
``cue_position``    optional, ``"before"`` or ``"after"``: where the disambiguating cue is
``cue_distance``    optional, int >= 0: words strictly between the cue and the target
``split``           optional, e.g. ``"train"`` / ``"test"``
``source``          optional, where the example came from (``"builtin"``, ``"coarsewsd20"``, a path)
``sense_id``        optional, the data set's own sense number
==================  ==========================================================================

The target can be given in three forms; all are turned into ``char_start``/``char_end``:

* a character span: ``char_start`` and ``char_end`` columns, or ``span`` as ``"s:e"`` (or a pair);
* a ``target`` string plus an optional 0-based ``occurrence``: the occurrence-th whole-word
  match (case-sensitive first, case-insensitive if that finds nothing). Without ``occurrence``,
  a target that occurs more than once takes the first occurrence and a warning names the
  examples. In scripts written without spaces (Chinese, Japanese, Thai, Lao, Khmer, Myanmar,
  Tibetan) every character boundary counts as a word boundary, so ``"银行"`` is found in
  ``"我去银行取钱"``; a target inside a longer word of a spaced script is an error that gives the
  span to use instead;
* a ``word_index`` into the whitespace-tokenised text (the CoarseWSD-20 format); the span is that
  token (narrowed to ``target`` when a target is also given and the token only contains it).

Readers: :func:`from_dataframe`, :func:`from_records`, :func:`read_jsonl`, :func:`read_csv`,
:func:`read_coarsewsd20`, and :func:`load_dataset` for string specs (as used by the CLI).
Package data: :func:`builtin` (the built-in polysemy set), :func:`sense_words` (signal words per
sense for the logit-lens read-out) and :func:`corpus` (plain sentences for training a tuned lens).
Sampling: :func:`stratified_sample` (exactly ``n`` rows, every word-sense cell kept).

Every error is a ``ValueError`` (``KeyError`` for a missing column) that names the example and row,
and the file and line where the examples were read from a file; empty examples (an empty list,
frame, file or selection) are a ``ValueError`` saying so. The README's "Data format" section
shows the columns with an example.

The package holds ``validation`` (the contract and its checks), ``readers`` (generic readers and
specs), ``coarsewsd20``, ``package_data`` and ``sampling``; import the names from here.
"""

from __future__ import annotations

from trajgeo.datasets.coarsewsd20 import (  # the constants stay importable from here, as in 0.1
    COARSEWSD_SPLITS,
    coarsewsd20_sense_name,
    coarsewsd20_words,
    read_coarsewsd20,
)
from trajgeo.datasets.package_data import builtin, builtin_words, corpus, sense_words
from trajgeo.datasets.pairs import align_pairs, minimal_pairs, read_pairs
from trajgeo.datasets.readers import from_dataframe, from_records, load_dataset, read_csv, read_jsonl
from trajgeo.datasets.sampling import stratified_sample
from trajgeo.datasets.validation import COLUMNS, CUE_POSITIONS, validate

__all__ = [
    "COLUMNS",
    "validate",
    "from_dataframe",
    "from_records",
    "read_jsonl",
    "read_csv",
    "read_coarsewsd20",
    "coarsewsd20_words",
    "coarsewsd20_sense_name",
    "builtin",
    "builtin_words",
    "sense_words",
    "corpus",
    "load_dataset",
    "stratified_sample",
    "minimal_pairs", "read_pairs", "align_pairs",
]
