"""PointNormalizer: the one normalisation path (in memory, lazy, shared statistics, pulled-back directions)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from trajgeo.normalization import PointNormalizer, normalize


@pytest.fixture
def states() -> np.ndarray:
    rng = np.random.default_rng(0)
    scale = np.linspace(0.1, 5, 6)
    return (rng.normal(size=(40, 3, 6)) * scale + 2.0).astype(np.float32)


def test_whitening_uses_sklearn_ledoit_wolf_covariance(states):
    nz = PointNormalizer("whiten").fit(states)
    for p in range(states.shape[1]):
        cov = LedoitWolf().fit(states[:, p].astype(np.float64)).covariance_
        w = nz.whitener_[p].astype(np.float64)
        # W W^T is the inverse of the shrunk covariance
        np.testing.assert_allclose(w @ w.T, np.linalg.inv(cov), rtol=1e-4, atol=1e-5)
    z = nz.transform(states)
    assert z.dtype == np.float32 and z.shape == states.shape


@pytest.mark.parametrize("method", [None, "center", "standardize", "whiten"])
def test_lazy_transform_stays_lazy_and_equals_memory(states, method):
    lazy = da.from_array(states, chunks=(7, -1, -1))
    a = PointNormalizer(method).fit(states)
    b = PointNormalizer(method).fit(lazy)
    zl = b.transform(lazy)
    assert hasattr(zl, "dask")
    np.testing.assert_allclose(zl.compute(), a.transform(states), rtol=1e-4, atol=1e-4)


def test_shared_statistics_are_fitted_at_one_point_and_applied_everywhere(states):
    nz = PointNormalizer("standardize", shared_at=2).fit(states)
    assert nz.mean_.shape == (1, states.shape[2])
    want = (states - states[:, 2].mean(0)) / states[:, 2].std(0)
    np.testing.assert_allclose(nz.transform(states), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", [None, "center", "standardize", "whiten"])
def test_pulled_back_direction_gives_differences_of_normalised_projections(states, method):
    nz = PointNormalizer(method).fit(states)
    u = np.random.default_rng(1).normal(size=states.shape[2])
    w = nz.pull_back(u, position=1)
    z = nz.transform(states)[:, 1].astype(np.float64)
    lhs = (z[1:] - z[:1]) @ u
    rhs = (states[1:, 1] - states[:1, 1]).astype(np.float64) @ w
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-4)


def test_unknown_method_and_too_few_examples_are_clear_errors(states):
    with pytest.raises(ValueError, match="normalize must be one of"):
        PointNormalizer("zscore").fit(states)
    with pytest.raises(ValueError, match="at least 2 examples"):
        PointNormalizer("center").fit(states[:1])
    with pytest.raises(RuntimeError, match="not fitted"):
        PointNormalizer("center").transform(states)


def test_old_reference_keyword_of_normalize_warns_and_still_selects_examples(states):
    with pytest.warns(DeprecationWarning, match="'reference' is deprecated"):
        old = normalize(states, "center", reference=np.arange(10))
    np.testing.assert_array_equal(old, normalize(states, "center", fit_on=np.arange(10)))
    np.testing.assert_allclose(old[:10].mean(0), 0, atol=1e-5)
