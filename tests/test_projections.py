"""Projections: shared PCA/UMAP spaces and Procrustes-aligned per-point PCA, checked against brute force."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

import trajgeo as tg
from trajgeo import projections
from trajgeo.geometry import PointNormalizer

N, P, D = 60, 5, 16


def _planted(n: int = N, p: int = P, d: int = D, seed: int = 0) -> tg.Trajectories:
    """Two senses that separate with depth, on top of a common drift whose norm grows 10x per point."""
    rng = np.random.default_rng(seed)
    sense = np.repeat(["river", "finance"], n // 2)
    sign = np.where(sense == "river", 1.0, -1.0)
    drift = rng.normal(size=d)
    axis = rng.normal(size=d)
    depth = np.arange(p) / (p - 1)
    x = (
        (10.0 ** np.arange(p))[None, :, None] * drift
        + 3 * sign[:, None, None] * depth[None, :, None] * axis
        + rng.normal(size=(n, p, d))
    )
    meta = pd.DataFrame({"word": "bank", "sense": sense, "group": np.arange(n) // 2, "source": "toy"})
    return tg.Trajectories(x.astype(np.float32), meta)


@pytest.fixture(scope="module")
def traj() -> tg.Trajectories:
    return _planted()


def _subspace_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest principal-angle sine between the row spaces of a and b (0 when they are equal)."""
    qa, _ = np.linalg.qr(a.T)
    qb, _ = np.linalg.qr(b.T)
    return float(np.linalg.norm(qb - qa @ (qa.T @ qb), 2))


# ------------------------------------------------------------------ shared PCA
def test_coords_of_training_points_equal_transform(traj):
    proj = projections.fit(traj, method="pca", n_components=3)
    y = proj.transform(traj)
    df = proj.coords(traj, meta_columns=("word", "sense", "source"))
    assert list(df.columns) == ["example", "point", "x", "y", "z", "word", "sense", "source"]
    assert y.shape == (N, P, 3) and len(df) == N * P
    row = df.set_index(["example", "point"]).loc[(7, 3)]
    assert np.allclose(row[["x", "y", "z"]].to_numpy(float), y[7, 3])
    assert np.allclose(df[["x", "y", "z"]].to_numpy(), y.reshape(-1, 3))
    assert (df.loc[df.example == 40, "sense"] == traj.meta.sense[40]).all()


def test_new_examples_project_without_refitting_and_match_manual_computation(traj):
    train, test = traj[np.arange(N) < 40], traj[np.arange(N) >= 40]
    proj = projections.fit(train, method="pca", points=[1, 2, 4])
    x = np.asarray(train.states)[:, [1, 2, 4]].astype(np.float64)
    # statistics come from the training examples only
    assert np.allclose(proj.normalizer_.mean_, x.mean(0), rtol=1e-5, atol=1e-4)
    assert np.allclose(proj.normalizer_.scale_, x.std(0), rtol=1e-5)
    new = np.asarray(test.states)[:, [1, 2, 4]].astype(np.float64)
    manual = ((new - x.mean(0)) / x.std(0) - proj.mean_) @ proj.components_.T
    got = proj.transform(test)
    assert got.shape == (20, 3, 2)
    assert np.allclose(got, manual, atol=1e-3)
    assert list(proj.coords(test)["point"].unique()) == [1, 2, 4]


def test_explained_variance_matches_numpy_svd(traj):
    proj = projections.fit(traj, method="pca", n_components=4, normalize="center")
    x = np.asarray(traj.states, dtype=np.float64)
    flat = (x - x.mean(0)).reshape(-1, D)
    flat -= flat.mean(0)
    _, s, vt = np.linalg.svd(flat, full_matrices=False)
    ratio = s**2 / (s**2).sum()
    assert np.allclose(proj.explained_variance_ratio_, ratio[:4], atol=1e-5)
    assert np.all(np.diff(proj.explained_variance_ratio_) <= 0)
    assert proj.explained_variance_ratio_.sum() <= 1 + 1e-9
    # same axes up to sign
    cos = np.abs((proj.components_ * vt[:4]).sum(1))
    assert np.allclose(cos, 1, atol=1e-4)


def test_default_normalisation_removes_norm_growth_from_the_first_axis(traj):
    point = np.tile(traj.points, N).astype(float)
    raw = projections.fit(traj, normalize=None).coords(traj)
    std = projections.fit(traj).coords(traj)
    # raw: axis 1 is depth (the planted 10x drift); standardised: it separates the senses at the top
    assert abs(np.corrcoef(raw["x"], point)[0, 1]) > 0.6
    assert raw["x"].abs().max() > 1e3
    top = std[std.point == P - 1]
    gap = abs(top.loc[top.sense == "river", "x"].mean() - top.loc[top.sense == "finance", "x"].mean())
    assert gap > 3 * top.groupby("sense")["x"].std().max()


def test_sample_fits_on_the_drawn_examples_only(traj):
    proj = projections.fit(traj, sample=20, random_state=3)
    assert len(proj.fit_index_) == 20 and len(np.unique(proj.fit_index_)) == 20
    x = np.asarray(traj.states)[proj.fit_index_]
    assert np.allclose(proj.normalizer_.mean_, x.mean(0), atol=1e-4)
    again = projections.fit(traj, sample=0.5, random_state=3)
    assert len(again.fit_index_) == N // 2


def test_plain_arrays_are_accepted():
    x = np.random.default_rng(1).normal(size=(10, 3, 8)).astype(np.float32)
    df = projections.fit(x).coords(x)
    assert list(df.columns) == ["example", "point", "x", "y"]
    assert np.array_equal(df.example.unique(), np.arange(10))


def test_bad_input_raises_clear_errors(traj):
    with pytest.raises(ValueError, match="method"):
        projections.fit(traj, method="tsne")
    with pytest.raises(ValueError, match="normalize"):
        projections.fit(traj, normalize="zscore")
    proj = projections.fit(traj, points=[0, 4])
    with pytest.raises(KeyError, match=r"\[4\]"):
        proj.transform(traj.select_points([0, 1, 2]))
    with pytest.raises(KeyError, match="lemma"):
        proj.coords(traj, meta_columns=("lemma",))
    with pytest.raises(RuntimeError, match="not fitted"):
        projections.Projector().transform(traj)
    with pytest.raises(ValueError, match="d_model"):
        proj.transform(np.zeros((3, P, D + 1), dtype=np.float32))


@pytest.mark.parametrize("kw,error,says", [
    ({"n_components": 2.5}, TypeError, "n_components must be an int, got 2.5"),
    ({"n_components": "2"}, TypeError, "n_components must be an int, got '2'"),
    ({"n_components": True}, TypeError, "n_components must be an int"),
    ({"n_components": 0}, ValueError, "n_components must be at least 1, got 0"),
    ({"sample": "20"}, TypeError, "sample must be an int .* got '20'"),
    ({"sample": 1.5}, ValueError, r"sample as a fraction must be in \(0, 1\], got 1.5"),
    ({"sample": 1}, ValueError, "sample must keep at least 2 examples, got 1"),
])
def test_numeric_options_are_checked_not_coerced(traj, kw, error, says):
    with pytest.raises(error, match=says):
        projections.fit(traj, **kw)
    with pytest.raises(error, match=says):
        projections.aligned_pca(traj, **kw)
    assert projections.fit(traj, n_components=np.int64(2), sample=np.int64(30)).components_.shape == (2, D)


# --------------------------------------------------------------- aligned PCA
def _planted_rotation(seed: int = 0, noise: float = 0.0):
    """Point 1 is point 0 rotated by a random orthogonal Q (plus optional noise)."""
    rng = np.random.default_rng(seed)
    n, d = 80, 12
    # an almost isotropic plane: per-point PCA's in-plane axes are arbitrary, so alignment is needed
    plane = rng.normal(size=(n, 2)) * [1.0, 0.97]
    basis = np.linalg.qr(rng.normal(size=(d, 2)))[0].T
    x0 = 5 * plane @ basis + 0.05 * rng.normal(size=(n, d))
    q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    x1 = x0 @ q + noise * rng.normal(size=(n, d))
    return tg.Trajectories(np.stack([x0, x1], 1).astype(np.float32)), q


def test_procrustes_alignment_recovers_planted_rotation():
    traj, q = _planted_rotation()
    ap = projections.aligned_pca(traj, normalize="center", reference="first")
    y = ap.transform(traj)
    # the configuration is the same at both points, so aligned coordinates coincide ...
    assert np.allclose(y[:, 1], y[:, 0], atol=1e-3 * np.abs(y).max())
    # ... and the aligned axes of point 1 are those of point 0 carried by the planted rotation
    assert np.allclose(ap.components_[1], ap.components_[0] @ q, atol=1e-4)
    assert np.allclose(ap.rotations_[1] @ ap.rotations_[1].T, np.eye(2), atol=1e-6)
    # without alignment the per-point planes disagree (so the test above could fail)
    own = np.einsum("pij,pjd->pid", ap.rotations_, ap.components_.astype(np.float64))
    raw1 = (np.asarray(traj.states)[:, 1] - np.asarray(traj.states)[:, 1].mean(0) - ap.mean_[1]) @ own[1].T
    assert not np.allclose(raw1, y[:, 0], atol=0.1)


def test_procrustes_alignment_tolerates_noise_and_chains():
    traj, _ = _planted_rotation(seed=2, noise=0.05)
    three = tg.Trajectories(np.concatenate([traj.states, traj.states[:, 1:] @ np.eye(12)[::-1]], 1))
    ap = projections.aligned_pca(three, normalize="center", reference="last", chain=True)
    y = ap.transform(three)
    scale = np.abs(y).max()
    assert np.abs(y[:, 0] - y[:, 2]).max() < 0.05 * scale
    assert np.abs(y[:, 1] - y[:, 2]).max() < 1e-4 * scale  # a permutation of axes: exact


def test_aligned_coords_equal_transform_and_keep_explained_variance(traj):
    ap = projections.aligned_pca(traj, n_components=2)
    df = ap.coords(traj)
    assert list(df.columns) == ["example", "point", "x", "y", "word", "sense"]
    assert np.allclose(df[["x", "y"]].to_numpy(), ap.transform(traj).reshape(-1, 2))
    assert ap.explained_variance_ratio_.shape == (P, 2)
    xn = PointNormalizer("standardize").fit_transform(traj).astype(np.float64)
    for p in range(P):
        s = np.linalg.svd(xn[:, p] - xn[:, p].mean(0), compute_uv=False)
        assert np.allclose(ap.explained_variance_ratio_[p], (s**2 / (s**2).sum())[:2], atol=1e-5)


# ---------------------------------------------------------------- lazy stores
def _lazy(traj: tg.Trajectories, tmp_path) -> tg.Trajectories:
    """Save and reload lazily with several chunks along examples."""
    import dask.array as da

    path = traj.save(tmp_path / "t.zarr")
    lazy = tg.load(path, lazy=True)
    lazy.states = da.rechunk(lazy.states, (7, -1, -1))
    assert lazy.is_lazy and lazy.states.numblocks[0] > 1
    return lazy


def test_lazy_pca_gives_the_in_memory_subspace(traj, tmp_path):
    lazy = _lazy(traj, tmp_path)
    mem = projections.fit(traj, n_components=3)
    out = projections.fit(lazy, n_components=3)
    assert _subspace_distance(out.components_, mem.components_) < 1e-4
    assert np.allclose(np.abs((out.components_ * mem.components_).sum(1)), 1, atol=1e-4)
    assert np.allclose(out.explained_variance_ratio_, mem.explained_variance_ratio_, atol=1e-5)
    assert np.allclose(out.normalizer_.scale_, mem.normalizer_.scale_, rtol=1e-5)
    # projecting a lazy store chunk-wise equals projecting it in memory (same signs by convention)
    assert np.allclose(out.transform(lazy), mem.transform(traj), atol=1e-3)
    ap_lazy, ap_mem = projections.aligned_pca(lazy), projections.aligned_pca(traj)
    assert np.allclose(ap_lazy.transform(lazy), ap_mem.transform(traj), atol=1e-3)


def test_lazy_whiten_gives_the_in_memory_projection(traj, tmp_path):
    # one normalisation path: a lazy store is whitened chunk-wise (Ledoit-Wolf from two moments)
    lazy = _lazy(traj, tmp_path)
    mem = projections.fit(traj, normalize="whiten", n_components=3)
    out = projections.fit(lazy, normalize="whiten", n_components=3)
    assert _subspace_distance(out.components_, mem.components_) < 1e-3
    assert np.allclose(out.transform(lazy), mem.transform(traj), atol=1e-2)


# ---------------------------------------------------------------------- UMAP
@pytest.mark.slow  # numba compiles UMAP's kernels on first use (~15 s); the fits themselves take a second
def test_umap_is_reproducible_and_returns_its_layout_for_training_points(traj, tmp_path, monkeypatch):
    small = traj.select_points([0, 2, 4])
    kw = dict(method="umap", random_state=7, cache=False, umap_kwargs={"n_epochs": 30, "n_neighbors": 8})
    a = projections.fit(small, **kw)
    b = projections.fit(small, **kw)
    ya = a.transform(small)
    assert ya.shape == (N, 3, 2) and np.isfinite(ya).all()
    assert np.array_equal(ya, b.transform(small))
    assert np.array_equal(ya, a.embedding_)
    assert np.allclose(a.coords(small)[["x", "y"]].to_numpy(), ya.reshape(-1, 2))
    # new contexts go through umap's transform, into the same axes
    new = _planted(n=10, seed=5).select_points([0, 2, 4])
    assert a.transform(new).shape == (10, 3, 2)
    # by default UMAP fits (slow) are cached under cache_dir()/projections
    monkeypatch.setenv("TRAJGEO_CACHE", str(tmp_path))
    kw.pop("cache")
    c = projections.fit(small, **kw)
    assert len(list((tmp_path / "projections").glob("*.npz"))) == 1
    loaded = projections.fit(small, **kw)
    assert loaded.umap_ is None  # arrays only: the layout, not the model
    assert np.array_equal(loaded.transform(small), c.transform(small))


# --------------------------------------------------------------------- cache
def test_cache_hit_returns_an_equal_projector_without_refitting(traj, tmp_path, monkeypatch):
    first = projections.fit(traj, method="pca", cache=tmp_path, points=[0, 3, 4])
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.partial"))

    def refit(*args, **kwargs):
        raise AssertionError("fit was called on a cache hit")

    monkeypatch.setattr(projections.Projector, "fit", refit)
    again = projections.fit(traj, method="pca", cache=tmp_path, points=[0, 3, 4])
    assert again is not first
    assert again.get_params() == first.get_params()
    assert np.array_equal(again.components_, first.components_)
    assert np.array_equal(again.transform(traj), first.transform(traj))
    # another parameter or other trajectories are another key: they would have to refit
    with pytest.raises(AssertionError, match="cache hit"):
        projections.fit(traj, method="pca", cache=tmp_path, points=[0, 3, 4], n_components=3)
    with pytest.raises(AssertionError, match="cache hit"):
        projections.fit(traj[np.arange(N) < 50], method="pca", cache=tmp_path, points=[0, 3, 4])


def test_default_cache_is_for_umap_only_and_true_caches_pca(traj, tmp_path, monkeypatch):
    monkeypatch.setenv("TRAJGEO_CACHE", str(tmp_path))
    projections.fit(traj, method="pca")
    projections.fit(traj, method="pca", cache=False)
    assert not (tmp_path / "projections").exists()
    projections.fit(traj, method="pca", cache=True)
    assert len(list((tmp_path / "projections").glob("*.npz"))) == 1


class _Planted:
    """A pickle payload that writes a file when unpickled: what an attacker would plant in the cache."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.write_text, (pathlib.Path(self.marker), "code ran")


@pytest.fixture
def fake_umap(monkeypatch):
    """UMAP without umap-learn's minutes of compilation: a fixed layout (the example's first coordinates)
    and a model whose transform the test can see; counts the fits."""
    fits = []

    class Model:
        def transform(self, flat):
            return flat[:, :2] * 0 - 1.0

    def fit_umap(self, flat, shape):
        fits.append(shape)
        self.umap_ = Model()
        self.embedding_ = flat[:, :2].reshape(*shape, 2).astype(np.float32)

    monkeypatch.setattr(projections.Projector, "_fit_umap", fit_umap)
    return fits


def test_the_default_cache_never_unpickles_a_planted_file(traj, tmp_path, monkeypatch, fake_umap):
    import pickle

    import joblib

    monkeypatch.setenv("TRAJGEO_CACHE", str(tmp_path))
    first = projections.fit(traj, method="umap")  # the default: UMAP fits are cached
    (cached,) = list((tmp_path / "projections").glob("*.npz"))
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Planted(marker))
    pickle.loads(payload)  # the payload works: unpickling it runs code
    assert marker.read_text() == "code ran"
    marker.unlink()
    # plant it under the cache's own name, and under the name the joblib cache of 0.2 used
    cached.write_bytes(payload)
    joblib.dump(_Planted(marker), cached.with_suffix(".joblib"))
    again = projections.fit(traj, method="umap")
    assert not marker.exists()  # nothing was unpickled
    assert len(fake_umap) == 2  # the planted file was refused and the projector refitted
    np.testing.assert_array_equal(again.transform(traj), first.transform(traj))
    # the refit replaced the planted file with arrays that load without pickle
    with np.load(cached, allow_pickle=False) as z:
        assert "embedding_" in z.files and z["embedding_"].dtype == np.float32


def test_a_cached_umap_returns_its_layout_and_refuses_new_examples(traj, tmp_path, fake_umap):
    fresh = projections.fit(traj, method="umap", cache=tmp_path)
    loaded = projections.fit(traj, method="umap", cache=tmp_path)
    assert len(fake_umap) == 1 and loaded.umap_ is None  # loaded, not refitted
    np.testing.assert_array_equal(loaded.embedding_, fresh.embedding_)
    np.testing.assert_array_equal(loaded.transform(traj), fresh.embedding_)
    pd.testing.assert_frame_equal(loaded.coords(traj), fresh.coords(traj))
    new = _planted(n=10, seed=5)
    assert (fresh.transform(new) == -1).all()  # a fitted model projects new examples
    with pytest.raises(RuntimeError, match="loaded from the projection cache.*fit it again with cache=False"):
        loaded.transform(new)


def test_a_cache_file_is_used_only_for_its_own_key(traj, tmp_path, monkeypatch):
    projections.fit(traj, method="pca", cache=tmp_path, n_components=2)
    (two,) = list(tmp_path.glob("*.npz"))
    projections.fit(traj, method="pca", cache=tmp_path, n_components=3)
    (three,) = [f for f in tmp_path.glob("*.npz") if f != two]
    three.write_bytes(two.read_bytes())  # a valid file of another key, under this key's name
    fits = []
    real_fit = projections.Projector.fit

    def counting_fit(self, *args, **kwargs):
        fits.append(self.n_components)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(projections.Projector, "fit", counting_fit)
    got = projections.fit(traj, method="pca", cache=tmp_path, n_components=3)
    assert fits == [3] and got.components_.shape == (3, D)
    # a truncated file is refitted too
    three.write_bytes(three.read_bytes()[:100])
    assert projections.fit(traj, method="pca", cache=tmp_path, n_components=3).components_.shape == (3, D)
    assert fits == [3, 3]
    projections.fit(traj, method="pca", cache=tmp_path, n_components=3)
    assert fits == [3, 3]  # and the rewritten file is a hit again


# ------------------------------------------------------- one pass for memory and lazy stores
def test_lazy_pca_holds_a_chunk_not_the_array(traj):
    import dask.array as da
    from dask.callbacks import Callback

    class Largest(Callback):
        largest = 0

        def _posttask(self, key, result, dsk, state, worker_id):
            Largest.largest = max(Largest.largest, int(getattr(result, "nbytes", 0)))

    lazy = tg.Trajectories(da.from_array(np.asarray(traj.states), chunks=(6, -1, -1)), traj.meta)
    with Largest():
        proj = projections.fit(lazy, n_components=3)
        y = proj.transform(lazy)
        ap = projections.aligned_pca(lazy, normalize="center")
        ya = ap.transform(lazy)
    row = 4 * P * D
    assert 0 < Largest.largest <= 6 * row < N * row  # one chunk of 6 examples at a time
    mem = projections.fit(traj, n_components=3)
    np.testing.assert_allclose(y, mem.transform(traj), atol=1e-3)
    np.testing.assert_allclose(ya, projections.aligned_pca(traj, normalize="center").transform(traj), atol=1e-3)


def test_pca_from_moments_is_exact_despite_a_huge_common_offset():
    # float32 vectors on an offset 1e4 times their spread: an uncentred scatter would lose the variance
    rng = np.random.default_rng(3)
    x = (1e4 + rng.normal(size=(400, 2, 6)) * np.array([5, 2, 1, 0.5, 0.2, 0.1])).astype(np.float32)
    proj = projections.fit(x, normalize=None, n_components=3)
    flat = x.reshape(-1, 6).astype(np.float64)
    _, s, vt = np.linalg.svd(flat - flat.mean(0), full_matrices=False)
    np.testing.assert_allclose(proj.explained_variance_ratio_, (s**2 / (s**2).sum())[:3], rtol=1e-4)
    np.testing.assert_allclose(np.abs((proj.components_ * vt[:3]).sum(1)), 1, atol=1e-4)


# ------------------------------------------------------------ signatures (docs/architecture.md)
def test_options_by_position_warn_and_mean_the_same(traj):
    with pytest.warns(DeprecationWarning, match="by position"):
        old = projections.fit(traj, "pca", [0, 4], None, 3)
    new = projections.fit(traj, method="pca", points=[0, 4], normalize=None, n_components=3)
    np.testing.assert_array_equal(old.components_, new.components_)
    with pytest.warns(DeprecationWarning, match="by position"):
        old = projections.aligned_pca(traj, [1, 2], "center")
    np.testing.assert_array_equal(old.transform(traj), projections.aligned_pca(traj, points=[1, 2], normalize="center").transform(traj))
    with pytest.warns(DeprecationWarning, match="by position"):
        assert projections.Projector("umap", [0]).get_params()["method"] == "umap"
    with pytest.warns(DeprecationWarning, match="by position"):
        assert projections.AlignedPCA([1, 2], None).normalize is None
    with pytest.raises(TypeError):
        projections.fit(traj, n_componets=3)  # a misspelt option is an error, not ignored
