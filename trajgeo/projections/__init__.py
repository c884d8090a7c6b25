"""Low-dimensional views of trajectories: a shared PCA/UMAP space, and Procrustes-aligned per-point PCA.

Modules: :mod:`~trajgeo.projections.shared` (:class:`Projector`, :func:`fit`, the cache of fits),
:mod:`~trajgeo.projections.aligned` (:class:`AlignedPCA`, :func:`aligned_pca`).

A *shared* projection is fitted on the vectors of all chosen points at once, so that every point of
every example lands in the same plane and a path can be drawn from the embedding (point 0) to the
top. New contexts are projected into the same axes without refitting: the projector stores the
normalisation statistics it was fitted with.

Normalisation (``normalize=``)
------------------------------
The default is :data:`trajgeo.geometry.DEFAULT_NORMALIZE` (``"standardize"``): every point is
centred and each dimension scaled by its standard deviation *at that point*, with statistics from
the fitting examples. Without it the first principal axis of a shared fit is depth itself (the
residual norm grows by orders of magnitude through the stack) and the next few are rogue
dimensions, so all examples trace the same curve and the differences between contexts, which is
what the plot is for, are invisible. The price is that the common drift between points is removed:
each point's cloud is centred on the origin, so a path shows how an example moves *relative to the
population at each depth*. Pass ``normalize=None`` to see the raw drift, or use
:class:`AlignedPCA`, which fits one plane per point and aligns them by orthogonal Procrustes.

One path for memory and large stores
------------------------------------
PCA is computed from moments: the per-point normalisation statistics and the d x d covariance of the
normalised vectors are accumulated block by block (:class:`trajgeo._arrays.RunningMoments`; a lazily
loaded store is read one chunk at a time, an in-memory array is never copied whole), and the
components are the covariance's leading eigenvectors. This is exact (the same subspace as
scikit-learn's ``covariance_eigh``/SVD solvers give), unlike :class:`sklearn.decomposition.IncrementalPCA`,
whose per-batch truncation approximates it. Coordinates are projected block by block the same way.
"""

from __future__ import annotations

from trajgeo.projections.aligned import AlignedPCA, aligned_pca
from trajgeo.projections.shared import METHODS, Projector, fit

__all__ = ["Projector", "AlignedPCA", "fit", "aligned_pca", "METHODS"]
