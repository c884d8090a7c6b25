"""Reading patching effects against the same-sense null: flip pairs versus pairs whose cue swap keeps the sense."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from trajgeo.stats import group_permutations, mixed_groups, null_table

__all__ = ["kind_contrast"]

_CELL_COLUMNS = ("direction", "site", "point", "layer", "head", "role")


def _means(x: np.ndarray, present: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Mean over the member pairs (rows) of each cell (column), ignoring missing cells: (n_labellings, n_cells)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (members @ x) / (members @ present)


def kind_contrast(
    frame: pd.DataFrame,
    *,
    by: Sequence[str] | None = None,
    value: str = "effect",
    groups: str | None = None,
    n_permutations: int = 1000,
    alternative: str = "two-sided",
    random_state: int | None = 0,
) -> pd.DataFrame:
    """Flip pairs' mean effect minus same-sense pairs' mean effect, per cell, against a permutation null.

    Each pair's effects are first averaged within a cell (e.g. over the positions of one role), so a pair
    counts once. The null permutes the ``kind`` labels across pairs (whole groups at a time when
    ``groups`` names a column constant within each pair, e.g. a shared sentence), with a family-wise
    threshold over all cells (the max statistic, :func:`trajgeo.stats.null_table`).

    Parameters
    ----------
    frame : DataFrame
        A :func:`~trajgeo.interventions.patch` (or attribution) frame with a ``kind`` column holding
        both ``"flip"`` and ``"same"``.
    by : sequence of str, optional
        Columns that define a cell (default: those of ``direction, site, point, layer, head, role``
        present).
    value : str
        The column compared (``"effect"``; ``normalized_effect`` is mostly NaN or unstable for
        same-sense pairs, whose readouts barely differ).
    groups : str, optional
        A column constant within each pair whose values must move together under the null. Groups should
        keep the kinds apart: a group holding both flip and same-sense pairs (e.g. the built-in minimal
        pairs' word, or a shared sentence patched both ways) takes its kind labels with it, so the
        permutations barely change the labelling and the p-values come out near 1 whatever the effect. Such
        groups are counted in a UserWarning; use ``groups=None`` or a grouping that keeps the kinds apart.
    n_permutations : int
    alternative : {"two-sided", "greater"}
        "greater" when flip effects are expected larger (denoising with a readout oriented to the
        clean sense); two-sided compares absolute deviations.
    random_state : int or None

    Returns
    -------
    DataFrame
        One row per cell: the ``by`` columns, ``flip_mean, same_mean, n_flip, n_same``, ``value`` (flip
        minus same) and the null columns ``null_mean, null_q95, null_fwer, p_value, p_fwer``.
    """
    for col in ("pair", "kind", value):
        if col not in frame.columns:
            raise KeyError(f"kind_contrast needs a {col!r} column; the frame has {list(frame.columns)}")
    by = [c for c in _CELL_COLUMNS if c in frame.columns] if by is None else list(by)
    missing = [c for c in by if c not in frame.columns]
    if missing:
        raise KeyError(f"by= names columns {missing} that the frame does not have ({list(frame.columns)})")
    kinds = frame.groupby("pair", sort=True)["kind"].agg(lambda s: s.unique().tolist())
    mixed = kinds[kinds.map(len) > 1].index.tolist()
    if mixed:
        raise ValueError(f"pairs {mixed[:5]} carry several kinds")
    labels = kinds.map(lambda k: k[0]).to_numpy()
    if set(labels) != {"flip", "same"}:
        raise ValueError(f"kind_contrast needs both 'flip' and 'same' pairs, got {sorted(set(labels))}")
    cells = frame.groupby(["pair"] + by, sort=True, dropna=False)[value].mean().unstack(by)
    cells = cells.reindex(kinds.index)
    x = cells.to_numpy(dtype=np.float64)
    present = np.isfinite(x).astype(np.float64)
    x = np.nan_to_num(x, nan=0.0)
    g = None
    if groups is not None:
        per_pair = frame.groupby("pair", sort=True)[groups].nunique()
        if (per_pair > 1).any():
            bad = per_pair[per_pair > 1].index[:5].tolist()
            raise ValueError(f"groups column {groups!r} is not constant within pairs {bad}")
        g = frame.groupby("pair", sort=True)[groups].first().reindex(kinds.index).to_numpy()
        mixed = mixed_groups(labels, g)
        if len(mixed):
            warnings.warn(
                f"{len(mixed)} of {len(pd.unique(g))} groups of {groups!r} hold both flip and same-sense pairs (e.g. "
                f"{[m.item() if hasattr(m, 'item') else m for m in mixed[:3]]}): the null moves whole groups with "
                "their kind labels, so it barely changes the labelling and the p-values are near 1 by construction. "
                "Use groups=None, or a grouping that keeps the kinds apart", UserWarning, stacklevel=2)
    perms = group_permutations(labels, groups=g, n_permutations=n_permutations, random_state=random_state)
    flips = (labels == "flip").astype(np.float64)

    def stat(member: np.ndarray) -> np.ndarray:  # (k, n_pairs) indicators of flip -> (k, n_cells)
        return _means(x, present, member) - _means(x, present, 1.0 - member)

    # one value per distinct labelling: a permutation that returns the observed labelling (as every one does when
    # each group holds both kinds in one order) ties it exactly, not to within the rounding of another product
    members, which = np.unique(np.vstack([flips[None], flips[perms]]), axis=0, return_inverse=True)
    both = stat(members)[which.reshape(-1)]
    observed, null = both[0], both[1:]
    table = null_table(observed, null, alternative=alternative).drop(columns="point")
    index = cells.columns.to_frame(index=False)
    out = pd.concat([index, pd.DataFrame({
        "flip_mean": _means(x, present, flips[None])[0],
        "same_mean": _means(x, present, 1.0 - flips[None])[0],
        "n_flip": (flips @ present).astype(int),
        "n_same": ((1 - flips) @ present).astype(int),
    }), table], axis=1)
    return out
