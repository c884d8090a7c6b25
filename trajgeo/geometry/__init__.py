"""Path and population geometry of trajectories, CKA and rogue dimensions.

Path metrics (:func:`path_metrics`) describe each example's own path through the points; population
metrics (:func:`population_metrics`, :func:`cka`, :func:`rogue_dimensions`) describe the cloud of all
examples at each point. Every function accepts a :class:`~trajgeo.trajectories.Trajectories` or a
plain array of shape (n_examples, n_points, d_model), in memory or lazy (a lazy store is read chunk
by chunk, never loaded whole), and returns a tidy DataFrame.

Modules: :mod:`~trajgeo.geometry.paths` (path metrics), :mod:`~trajgeo.geometry.population`
(population metrics, one helper per metric family), :mod:`~trajgeo.geometry.cloud` (estimators on
one point cloud: maximum explainable variance, TwoNN), :mod:`~trajgeo.geometry.similarity` (CKA,
rogue dimensions). The normalisation names below live in :mod:`trajgeo.normalization` and are
re-exported here for code written against 0.1.
"""

from __future__ import annotations

from trajgeo.geometry.cloud import twonn_dimension
from trajgeo.geometry.paths import PATH_METRICS, path_metric_arrays, path_metrics
from trajgeo.geometry.population import POPULATION_METRICS, population_metrics
from trajgeo.geometry.similarity import cka, rogue_dimensions
from trajgeo.normalization import (  # noqa: F401  (re-exported: they lived here before 0.2)
    DEFAULT_NORMALIZE,
    DEFAULT_NORMALIZE_DOC,
    NORMALIZE_OPTIONS,
    PointNormalizer,
    fit_normalizer,
    normalize,
    normalized,
)

__all__ = [
    "PointNormalizer",
    "normalize",
    "NORMALIZE_OPTIONS",
    "DEFAULT_NORMALIZE",
    "PATH_METRICS",
    "POPULATION_METRICS",
    "path_metrics",
    "path_metric_arrays",
    "population_metrics",
    "twonn_dimension",
    "cka",
    "rogue_dimensions",
]
