"""What every probe analysis shares: reading labels, the per-word loop, class balancing and the
progress-reporting map over folds or blocks."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from trajgeo.trajectories import Trajectories

__all__: list[str] = []


def _labels(traj: Trajectories, labels: str | Sequence[Any] | np.ndarray) -> np.ndarray:
    """Per-example labels (a ``meta`` column or an array); a clear error for missing ones."""
    y = traj.labels(labels)
    missing = pd.isna(pd.Series(y)).to_numpy()
    if missing.any():
        ex = traj.meta["example"].to_numpy()[missing][:5].tolist()
        raise ValueError(f"labels are missing for {int(missing.sum())} examples (example ids {ex} ...)")
    return y


def _word_values(traj: Trajectories, word: str | Sequence[Any] | np.ndarray | None) -> np.ndarray | None:
    """The word of every example, shape (n_examples,), or None when all examples are one word.

    ``word=None`` pools everything; the default column ``"word"`` missing from ``meta`` means one
    word; any other missing column is a KeyError naming the columns there are.
    """
    if word is None:
        return None
    if isinstance(word, str):
        if word not in traj.meta.columns:
            if word == "word":
                return None
            raise KeyError(f"word column {word!r} not in meta; columns are {list(traj.meta.columns)}")
        w = traj.meta[word].to_numpy()
    else:
        w = np.asarray(word)
        if w.shape != (traj.n_examples,):
            raise ValueError(f"got {len(w)} words for {traj.n_examples} examples")
    missing = pd.isna(pd.Series(w)).to_numpy()
    if missing.any():
        ex = traj.meta["example"].to_numpy()[missing][:5].tolist()
        raise ValueError(f"the word is missing for {int(missing.sum())} examples (example ids {ex} ...)")
    return w


@dataclass
class _WordPart:
    """The examples of one word: ``word`` (None when pooled), positions ``rows`` in the full
    trajectories, the sub-trajectories ``traj`` and the per-example options cut to them."""

    word: Any
    rows: np.ndarray
    traj: Trajectories
    options: dict[str, Any]


def _by_word(
    traj: Trajectories, word: str | Sequence[Any] | np.ndarray | None, per_example: Mapping[str, Any]
) -> Iterator[_WordPart]:
    """The word parts of ``traj`` in order of first appearance (one part, word None, when pooled).

    ``per_example`` holds options that may be arrays of shape (n_examples,) (labels, groups,
    control types): arrays are cut to each word's examples, names and None pass unchanged.
    """
    n = traj.n_examples
    for name, v in per_example.items():
        if v is not None and not isinstance(v, str) and len(v) != n:
            raise ValueError(f"got {len(v)} {name} for {n} examples")
    words = _word_values(traj, word)
    if words is None:
        yield _WordPart(None, np.arange(n), traj, dict(per_example))
        return
    for w in pd.unique(words):
        rows = np.flatnonzero(words == w)
        cut = {k: v if v is None or isinstance(v, str) else np.asarray(v)[rows] for k, v in per_example.items()}
        yield _WordPart(w.item() if hasattr(w, "item") else w, rows, _subset(traj, rows), cut)


def _subset(traj: Trajectories, rows: np.ndarray) -> Trajectories:
    """The examples ``rows`` with states and meta only (the probes read no components)."""
    if len(rows) == traj.n_examples and (rows == np.arange(len(rows))).all():
        return traj
    return Trajectories(traj.states[rows], traj.meta.iloc[rows], points=traj.points, model_info=traj.model_info)


def _with_word(df: pd.DataFrame, word: Any) -> pd.DataFrame:
    """``df`` with a leading ``word`` column (unchanged when ``word`` is None: pooled)."""
    if word is not None:
        df.insert(0, "word", word)
    return df


@contextmanager
def _naming_word(part: _WordPart, several: bool) -> Iterator[None]:
    """A ValueError raised for one word's examples names the word (when the data hold several)."""
    try:
        yield
    except ValueError as err:
        if not several:
            raise
        raise ValueError(f"word {part.word!r}: {err}") from err


def _balanced_subset(y: np.ndarray, random_state: int | None) -> np.ndarray:
    """Indices of a class-balanced subsample: every class cut to the smallest class's size."""
    rng = np.random.default_rng(random_state)
    classes, codes = np.unique(y, return_inverse=True)
    m = np.bincount(codes).min()
    keep = [rng.permutation(np.flatnonzero(codes == k))[:m] for k in range(len(classes))]
    return np.sort(np.concatenate(keep))


def _map_with_progress(
    func: Callable[..., Any],
    args: Sequence[tuple],
    n_jobs: int | None,
    steps_per_job: int,
    progress: bool,
    desc: str,
) -> list[Any]:
    """``[func(*a) for a in args]``, in parallel with joblib when ``n_jobs`` allows, under a tqdm
    bar of ``len(args) * steps_per_job`` steps.

    In process (one job) ``func`` gets ``tick=bar.update`` and reports every step; joblib workers
    cannot reach the bar, so there it advances by ``steps_per_job`` as each job's result arrives
    (in order). Results are the same either way.
    """
    from joblib import Parallel, delayed, effective_n_jobs
    from tqdm.auto import tqdm

    with tqdm(total=len(args) * steps_per_job, desc=desc, unit="fit", disable=not progress) as bar:
        if effective_n_jobs(n_jobs) == 1:
            return [func(*a, tick=bar.update) for a in args]
        out = []
        for r in Parallel(n_jobs=n_jobs, return_as="generator")(delayed(func)(*a) for a in args):
            bar.update(steps_per_job)
            out.append(r)
        return out
