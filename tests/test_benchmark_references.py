"""The plain-numpy references of benchmarks/metrics.py give the library's numbers, so the speed
ratios the benchmark reports compare like with like."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import trajgeo as tg


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "metrics.py"
    spec = importlib.util.spec_from_file_location("bench_metrics", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def traj(bench):
    t = bench.synthetic(240, 24, seed=1)
    x = np.array(t.states)
    x[:, 0] = x[0, 0]  # the benchmark's point 0 is already shared; make sure duplicates are exact
    meta = t.meta.copy()
    meta["word"] = np.where(np.arange(240) % 3 == 0, "bank", np.where(np.arange(240) % 3 == 1, "spring", "bass"))
    return tg.Trajectories(x, meta)


def test_population_reference_equals_population_metrics(bench, traj):
    kw = dict(max_samples=100, n_pairs=500, max_examples=60, random_state=3)  # subsample, cap and pairs all used
    ref = bench.population_reference(traj, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no deprecated call in the benchmark's way of calling it
        got = tg.geometry.population_metrics(traj, **kw)
    names = np.unique(traj.meta["word"].astype(str))
    for metric, want in ref.items():
        rows = got[got["metric"] == metric]
        if want.ndim == 1:
            have = rows[rows["word"].isna()].sort_values("point")["value"].to_numpy()
        else:
            have = np.stack([rows[rows["word"] == w].sort_values("point")["value"].to_numpy() for w in names])
        assert np.isfinite(want).sum() >= want.size * 0.9, metric  # numbers, not NaN = NaN
        np.testing.assert_allclose(have, want, rtol=2e-4, atol=1e-6, err_msg=metric)


def test_pca_reference_equals_projections_fit_and_coords(bench, traj):
    want, ratio = bench.pca_reference(traj)
    proj = tg.projections.fit(traj, method="pca")
    got = proj.coords(traj)
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got.drop(columns=["x", "y"]), want.drop(columns=["x", "y"]))
    scale = np.abs(want[["x", "y"]].to_numpy()).max()
    np.testing.assert_allclose(got[["x", "y"]].to_numpy(), want[["x", "y"]].to_numpy(), atol=1e-4 * scale)
    np.testing.assert_allclose(proj.explained_variance_ratio_, ratio, rtol=1e-4)


def test_commitment_reference_equals_senses_commitment(bench, traj):
    want = bench.commitment_reference(traj)
    got = tg.senses.commitment(traj)
    assert want["commitment_point"].notna().sum() > len(want) // 2  # the planted senses commit: not all NaN
    assert want["commitment_point"].nunique() > 3
    pd.testing.assert_frame_equal(got.reset_index(drop=True)[list(want.columns)], want, check_dtype=False)
