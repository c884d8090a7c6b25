"""Uncertainty and nulls for per-point curves.

- Resampling (``_resampling``): the one bootstrap of the package (:func:`bootstrap_weights`,
  :func:`percentile_interval`, :func:`bootstrap_ci`), paired sign-flip permutation tests and paired
  differences between two models or conditions.
- The null (``_null``): group-respecting label permutations (:func:`group_permutations`), a per-point
  statistic read against them with a family-wise threshold over points (:func:`null_table`), and
  Holm's adjustment across curves (:func:`holm`).
"""

from trajgeo.stats._null import (
    FWER_LEVEL,
    NULL_COLUMNS,
    critical_value,
    group_permutations,
    holm,
    mixed_groups,
    null_table,
    permuted_statistic,
)
from trajgeo.stats._resampling import (
    bootstrap_ci,
    bootstrap_weights,
    paired_difference,
    percentile_interval,
    permutation_test,
)

__all__ = [
    "bootstrap_ci", "bootstrap_weights", "percentile_interval", "permutation_test", "paired_difference",
    "group_permutations", "mixed_groups", "null_table", "critical_value", "holm", "permuted_statistic", "NULL_COLUMNS", "FWER_LEVEL",
]
