"""Geometry: every metric against a brute-force loop or a planted truth; lazy (dask) == in memory."""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from dask.callbacks import Callback

import trajgeo as tg
from trajgeo import geometry as geo
from trajgeo import _arrays
from trajgeo.geometry import _common, cloud


# ------------------------------------------------------------------ fixtures and references
def random_traj(n=40, p=6, d=12, seed=0, n_words=3):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, p, d)) * rng.uniform(0.5, 3, size=d) + rng.normal(size=d)).astype(np.float32)
    meta = pd.DataFrame(
        {
            "word": rng.choice([f"w{i}" for i in range(n_words)], n),
            "sense": rng.choice(["s", "t"], n),
            "group": rng.integers(0, n // 3, n),
        }
    )
    return tg.Trajectories(x, meta)


def cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def brute_path(x):
    """Plain loops over examples and points, float64."""
    x = x.astype(np.float64)
    n, p, _ = x.shape
    out = {m: np.full((n, p), np.nan) for m in geo.PATH_METRICS}
    for i in range(n):
        length = 0.0
        for l in range(p):
            h = x[i, l]
            out["norm"][i, l] = np.linalg.norm(h)
            out["cos_to_final"][i, l] = cos(h, x[i, -1])
            out["dist_to_final"][i, l] = np.linalg.norm(h - x[i, -1])
            out["displacement"][i, l] = np.linalg.norm(h - x[i, 0])
            if l >= 1:
                step = h - x[i, l - 1]
                out["step_size"][i, l] = np.linalg.norm(step)
                out["relative_step"][i, l] = np.linalg.norm(step) / np.linalg.norm(x[i, l - 1])
                out["cos_prev"][i, l] = cos(h, x[i, l - 1])
                length += np.linalg.norm(step)
                out["straightness"][i, l] = out["displacement"][i, l] / length
            if l >= 2:
                prev = x[i, l - 1] - x[i, l - 2]
                out["turning_angle"][i, l] = np.degrees(np.arccos(np.clip(cos(step, prev), -1, 1)))
            out["path_length"][i, l] = length
    return out


def metric_array(df, metric, n, p):
    sub = df[df["metric"] == metric].sort_values(["example", "point"])
    return sub["value"].to_numpy().reshape(n, p)


# ------------------------------------------------------------------ path metrics
@pytest.mark.parametrize("method", [None, "standardize", "whiten"])
def test_path_metrics_match_brute_force_loops(method):
    t = random_traj()
    df = geo.path_metrics(t, normalize=method)
    ref = brute_path(geo.normalize(t, method))
    for m in geo.PATH_METRICS:
        got = metric_array(df, m, t.n_examples, t.n_points)
        np.testing.assert_allclose(got, ref[m], rtol=1e-4, atol=1e-3 if m == "turning_angle" else 1e-5, err_msg=m)
    assert list(df.columns) == ["example", "point", "word", "sense", "metric", "value"]
    assert set(df["metric"]) == set(geo.PATH_METRICS)


def test_path_metrics_block_size_does_not_change_results():
    t = random_traj(n=37)
    a = geo.path_metric_arrays(t, block_size=5)
    b = geo.path_metric_arrays(t, block_size=1000)
    for m in geo.PATH_METRICS:
        np.testing.assert_array_equal(a[m], b[m])


def test_straight_path_has_straightness_one_and_no_turning():
    rng = np.random.default_rng(1)
    start, direction = rng.normal(size=(2, 5, 1, 64))
    steps = np.cumsum(rng.uniform(0.1, 2.0, size=(5, 8, 1)), axis=1)  # uneven steps, same direction
    x = (start + steps * direction).astype(np.float32)
    a = geo.path_metric_arrays(x)
    np.testing.assert_allclose(a["straightness"][:, 1:], 1.0, atol=1e-5)
    np.testing.assert_allclose(a["turning_angle"][:, 2:], 0.0, atol=0.05)
    assert np.isnan(a["turning_angle"][:, :2]).all() and np.isnan(a["step_size"][:, 0]).all()
    np.testing.assert_allclose(a["path_length"][:, -1], a["displacement"][:, -1], rtol=1e-5)


@pytest.mark.parametrize("theta", [15.0, 90.0, 150.0])
def test_known_rotation_gives_known_turning_angle(theta):
    # steps of a path turn by theta degrees in a random 2-D plane of a 32-D space
    rng = np.random.default_rng(2)
    basis, _ = np.linalg.qr(rng.normal(size=(32, 2)))
    ang = np.radians(theta) * np.arange(7)
    steps = np.stack([np.cos(ang), np.sin(ang)], axis=1) @ basis.T * 3.0
    path = np.concatenate([rng.normal(size=(1, 32)), steps]).cumsum(axis=0)
    a = geo.path_metric_arrays(path[None].astype(np.float32))
    np.testing.assert_allclose(a["turning_angle"][0, 2:], theta, atol=0.01)


def test_path_metrics_follow_selected_points_and_report_original_indices():
    t = random_traj(p=8)
    sub = t.select_points([0, 3, 7])
    df = geo.path_metrics(sub)
    assert sorted(df["point"].unique()) == [0, 3, 7]
    ref = brute_path(t.states[:, [0, 3, 7]])
    np.testing.assert_allclose(metric_array(df, "step_size", t.n_examples, 3), ref["step_size"], rtol=1e-5)


def test_path_metrics_accept_plain_arrays_and_reject_bad_input():
    x = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    df = geo.path_metrics(x)
    assert len(df) == 3 * 4 * len(geo.PATH_METRICS)
    with pytest.raises(ValueError, match="normalize must be one of"):
        geo.path_metrics(x, normalize="zscore")
    with pytest.raises(ValueError, match="n_examples, n_points, d_model"):
        geo.path_metric_arrays(x[0])


def test_zero_step_gives_nan_turning_angle_not_an_error():
    x = np.zeros((1, 4, 3), dtype=np.float32)
    x[0, 2:] = 1.0  # step 2->3 is zero
    a = geo.path_metric_arrays(x)
    assert np.isnan(a["turning_angle"][0, 3])


# ------------------------------------------------------------------ lazy / dask
@pytest.fixture
def lazy_pair(tmp_path):
    t = random_traj(n=45, p=5, d=10, seed=3)
    t.save(tmp_path / "x.zarr")
    lazy = tg.load(tmp_path / "x.zarr", lazy=True)
    lazy.states = lazy.states.rechunk((8, -1, -1))  # several chunks over examples
    assert lazy.is_lazy and len(lazy.states.chunks[0]) > 1
    return t, lazy


@pytest.mark.parametrize("method", [None, "center", "standardize", "whiten"])
def test_lazy_path_metrics_equal_in_memory_on_local_scheduler(lazy_pair, method):
    import dask

    mem, lazy = lazy_pair
    with dask.config.set(scheduler="threads"):
        got = geo.path_metrics(lazy, normalize=method)
    want = geo.path_metrics(mem, normalize=method)
    pd.testing.assert_frame_equal(got.drop(columns="value"), want.drop(columns="value"))
    np.testing.assert_allclose(got["value"], want["value"], rtol=2e-4, atol=2e-4)


def test_lazy_path_metrics_equal_in_memory_on_distributed_cluster(lazy_pair):
    distributed = pytest.importorskip("distributed")
    mem, lazy = lazy_pair
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        got = geo.path_metrics(lazy, normalize="standardize")
    want = geo.path_metrics(mem, normalize="standardize")
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["center", "standardize", "whiten"])
def test_lazy_normalizer_fit_equals_in_memory_fit(lazy_pair, method):
    mem, lazy = lazy_pair
    a = geo.PointNormalizer(method).fit(mem)
    b = geo.PointNormalizer(method).fit(lazy)  # chunk-wise; whiten via Ledoit-Wolf moments
    np.testing.assert_allclose(b.mean_, a.mean_, rtol=1e-5, atol=1e-6)
    if method == "standardize":
        np.testing.assert_allclose(b.scale_, a.scale_, rtol=1e-5)
    if method == "whiten":  # against sklearn's LedoitWolf (the in-memory path)
        np.testing.assert_allclose(b.whitener_ @ np.swapaxes(b.whitener_, 1, 2),
                                   a.whitener_ @ np.swapaxes(a.whitener_, 1, 2), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", [None, "standardize"])
def test_lazy_population_and_rogue_dimensions_equal_in_memory(lazy_pair, method):
    mem, lazy = lazy_pair
    pd.testing.assert_frame_equal(geo.rogue_dimensions(lazy, normalize=method), geo.rogue_dimensions(mem, normalize=method),
                                  rtol=1e-4)
    a = geo.population_metrics(lazy, random_state=1, normalize=method)
    b = geo.population_metrics(mem, random_state=1, normalize=method)
    pd.testing.assert_frame_equal(a.drop(columns="value"), b.drop(columns="value"))
    assert a["value"].notna().mean() > 0.8
    np.testing.assert_allclose(a["value"], b["value"], rtol=1e-4, atol=1e-5)


class LargestTaskResult(Callback):
    """Records the bytes of the largest result any dask task computes (what was held at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        self.largest = max(self.largest, int(getattr(result, "nbytes", 0)))


@pytest.fixture
def small_chunks():
    """In-memory trajectories and the same as a dask array of 12 chunks of 10 examples."""
    t = random_traj(n=120, p=4, d=16, seed=21, n_words=3)
    lazy = tg.Trajectories(da.from_array(np.asarray(t.states), chunks=(10, -1, -1)), t.meta)
    return t, lazy


def test_largest_task_result_sees_a_whole_array_compute(small_chunks):
    # the probe of the tests below: computing the dask array whole is seen as one whole-array result
    _, lazy = small_chunks
    with LargestTaskResult() as seen:
        np.asarray(lazy.states)
    assert seen.largest == lazy.states.nbytes


def test_lazy_population_metrics_hold_one_gather_not_the_array(small_chunks, monkeypatch):
    mem, lazy = small_chunks
    row = 4 * mem.n_points * mem.d_model
    monkeypatch.setattr(_arrays, "GATHER_BYTES", 24 * row)  # 24 of 120 examples at once
    kw = dict(normalize="standardize", max_samples=16, max_examples=8, n_pairs=40, random_state=2)
    with LargestTaskResult() as seen:
        got = geo.population_metrics(lazy, **kw)
    assert 0 < seen.largest <= 24 * row  # chunks of 10, gathers of at most 24: never the 120
    monkeypatch.undo()
    want = geo.population_metrics(mem, **kw)  # in memory, with the default (unbounded here) budget
    pd.testing.assert_frame_equal(got.drop(columns="value"), want.drop(columns="value"))
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-4, atol=1e-5)


def test_lazy_cka_is_computed_slab_by_slab_and_equals_the_formula(small_chunks, monkeypatch):
    mem, lazy = small_chunks
    row = 4 * mem.n_points * mem.d_model
    monkeypatch.setattr(_arrays, "GATHER_BYTES", 24 * row)  # slabs of 12 examples: 10 slabs, 55 slab pairs
    with LargestTaskResult() as seen:
        got = geo.cka(lazy, max_examples=None).set_index(["point_a", "point_b"])["cka"]
    assert 0 < seen.largest <= 24 * row
    x = np.asarray(mem.states, dtype=np.float64)
    for a, b in itertools.product(range(mem.n_points), repeat=2):
        assert got[(a, b)] == pytest.approx(brute_cka(x[:, a], x[:, b]), rel=1e-6)


# ------------------------------------------------------------------ population metrics
def pop(df, metric, word=None):
    sub = df[df["metric"] == metric]
    sub = sub[sub["word"].isna()] if word is None else sub[sub["word"] == word]
    return sub.sort_values("point")["value"].to_numpy()


@pytest.mark.parametrize("block_rows", [None, 5])
def test_self_similarity_intra_sentence_and_between_within_match_brute_force(block_rows, monkeypatch):
    t = random_traj(n=36, p=4, d=9, seed=5)
    if block_rows:  # blocks of 5 examples: sentence groups and senses span blocks
        monkeypatch.setattr(_arrays, "BLOCK_BYTES", block_rows * 4 * t.n_points * t.d_model)
        assert len(_arrays.block_bounds(t.states)) == 8
    df = geo.population_metrics(t, normalize="standardize")
    x = geo.normalize(t, "standardize").astype(np.float64)
    words, senses, groups = (t.meta[c].to_numpy() for c in ("word", "sense", "group"))
    for w in np.unique(words):
        idx = np.flatnonzero(words == w)
        for p in range(t.n_points):
            ref = np.mean([cos(x[i, p], x[j, p]) for i, j in itertools.combinations(idx, 2)])
            assert pop(df, "self_similarity", w)[p] == pytest.approx(ref, abs=1e-5)
            # between / within sense scatter, by loops
            mu = x[idx, p].mean(0)
            between = within = 0.0
            for s in np.unique(senses[idx]):
                js = idx[senses[idx] == s]
                ms = x[js, p].mean(0)
                between += len(js) * np.sum((ms - mu) ** 2)
                within += sum(np.sum((x[j, p] - ms) ** 2) for j in js)
            assert pop(df, "between_within_ratio", w)[p] == pytest.approx(between / within, rel=1e-4)
    for p in range(t.n_points):
        per_group = []
        for g in np.unique(groups):
            js = np.flatnonzero(groups == g)
            if len(js) >= 2:
                m = x[js, p].mean(0)
                per_group.append(np.mean([cos(x[j, p], m) for j in js]))
        assert pop(df, "intra_sentence_similarity")[p] == pytest.approx(np.mean(per_group), abs=1e-5)
    # the word-NaN rows of per-word metrics are the mean over words
    per_word = np.stack([pop(df, "self_similarity", w) for w in np.unique(words)])
    np.testing.assert_allclose(pop(df, "self_similarity"), per_word.mean(0), rtol=1e-6)


def test_anisotropy_matches_mean_over_all_different_word_pairs():
    t = random_traj(n=60, p=3, d=8, seed=6)
    x = t.states.astype(np.float64) + 2.0  # a shared offset makes raw cosines positive
    t = tg.Trajectories(x, t.meta)
    df = geo.population_metrics(t, normalize=None, n_pairs=40000, random_state=0)
    words = t.meta["word"].to_numpy()
    for p in range(t.n_points):
        ref = np.mean([cos(x[i, p], x[j, p]) for i in range(60) for j in range(60) if words[i] != words[j]])
        assert pop(df, "anisotropy")[p] == pytest.approx(ref, abs=0.01)
        assert pop(df, "adjusted_self_similarity", "w0")[p] == pytest.approx(
            pop(df, "self_similarity", "w0")[p] - pop(df, "anisotropy")[p], abs=1e-9)


def test_common_direction_gives_high_raw_anisotropy_removed_by_centering():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(80, 2, 32)) + 20 * np.eye(32)[0]  # expected raw cos ~ 400 / 432
    meta = pd.DataFrame({"word": rng.choice(list("abcd"), 80)})
    raw = pop(geo.population_metrics(tg.Trajectories(x, meta), normalize=None), "anisotropy")
    cen = pop(geo.population_metrics(tg.Trajectories(x, meta), normalize="center"), "anisotropy")
    assert (raw > 0.9).all() and (np.abs(cen) < 0.05).all()


def test_max_explainable_variance_matches_svd_and_detects_a_one_dimensional_word():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(60, 3, 20))
    words = np.array(["line"] * 20 + ["a"] * 20 + ["b"] * 20)
    x[:20] = rng.normal(size=(20, 1, 1)) * rng.normal(size=(1, 3, 20)) + 0.01 * rng.normal(size=(20, 3, 20))
    t = tg.Trajectories(x, pd.DataFrame({"word": words}))
    df = geo.population_metrics(t, normalize=None)
    for w in ["line", "a"]:
        for p in range(3):
            s = np.linalg.svd(x[words == w, p], compute_uv=False)
            assert pop(df, "max_explainable_variance", w)[p] == pytest.approx(s[0] ** 2 / np.sum(s**2), rel=1e-5)
    assert (pop(df, "max_explainable_variance", "line") > 0.99).all()
    assert (pop(df, "adjusted_max_explainable_variance", "line") > 0.5).all()
    # "a"'s baseline draws from "line" and "b", so its adjusted MEV is negative, far below "line"'s
    assert (pop(df, "adjusted_max_explainable_variance", "a") < pop(df, "adjusted_max_explainable_variance", "line") - 0.5).all()


def test_single_word_warns_and_population_has_all_metrics():
    t = random_traj(n_words=1)
    with pytest.warns(UserWarning, match="only one word"):
        df = geo.population_metrics(t)
    assert set(df["metric"]) == set(geo.POPULATION_METRICS)
    assert list(df.columns) == ["point", "word", "metric", "value"]


def brute_twonn(x):
    from scipy.spatial.distance import cdist

    x = np.unique(x, axis=0)
    dist = cdist(x, x)
    np.fill_diagonal(dist, np.inf)
    srt = np.sort(dist, axis=1)
    return (len(x) - 1) / np.sum(np.log(srt[:, 1] / srt[:, 0]))


def test_twonn_finds_a_planted_plane_despite_duplicate_rows():
    rng = np.random.default_rng(9)
    plane = rng.uniform(size=(600, 2)) @ np.linalg.qr(rng.normal(size=(50, 2)))[0].T
    x = np.concatenate([plane, np.repeat(plane[:5], 40, axis=0)])  # 200 duplicated rows
    est = geo.twonn_dimension(x)
    assert est == pytest.approx(2.0, abs=0.25)
    assert est == pytest.approx(brute_twonn(x), rel=1e-9)
    # merged duplicates never give an infinite ratio, even when few distinct rows are allowed
    few = np.repeat(plane[:20], 10, axis=0)
    assert geo.twonn_dimension(few, min_distinct=3) == pytest.approx(brute_twonn(few), rel=1e-9)


def test_twonn_is_nan_with_a_reason_below_the_minimum_of_distinct_rows():
    # 12 distinct embeddings repeated over 550 examples (point 0 of the built-in set) gave "52"
    rng = np.random.default_rng(11)
    emb = rng.normal(size=(12, 576))
    x = emb[rng.integers(0, 12, 550)]
    with pytest.warns(UserWarning, match=r"NaN: 12 distinct row\(s\), fewer than min_distinct=100"):
        assert np.isnan(geo.twonn_dimension(x))
    assert np.isfinite(geo.twonn_dimension(x, min_distinct=12))  # the number it used to report
    # the minimum counts distinct rows after max_samples, and exactly TWONN_MIN_DISTINCT rows suffice
    blob = rng.normal(size=(150, 5))
    with pytest.warns(UserWarning, match="99 distinct"):
        assert np.isnan(geo.twonn_dimension(blob, max_samples=99))
    est = geo.twonn_dimension(blob, max_samples=cloud.TWONN_MIN_DISTINCT)
    assert np.isfinite(est) and est == pytest.approx(5.0, rel=0.4)
    with pytest.raises(ValueError, match="min_distinct"):
        geo.twonn_dimension(blob, min_distinct=2)


def test_intrinsic_dimension_per_point_and_point_zero_duplicates():
    rng = np.random.default_rng(10)
    basis = np.linalg.qr(rng.normal(size=(30, 3)))[0].T
    x = np.zeros((300, 3, 30))
    x[:, 0] = np.repeat(rng.normal(size=(3, 30)), 100, axis=0)  # embedding: 3 distinct rows
    x[:, 1] = rng.uniform(size=(300, 3)) @ basis
    x[:, 2] = x[:, 1]
    x[:250, 2] = x[0, 1]  # 51 distinct rows: also too few
    with pytest.warns(UserWarning, match="only one word"), \
            pytest.warns(UserWarning, match=r"NaN at point\(s\) \[0, 2\]: 3-51 distinct"):
        df = geo.population_metrics(tg.Trajectories(x), normalize=None)
    idim = pop(df, "intrinsic_dimension")
    assert np.isnan(idim[0]) and np.isnan(idim[2])  # too few distinct rows: no number, and a warning
    assert idim[1] == pytest.approx(3.0, abs=0.4)
    assert idim[1] == pytest.approx(brute_twonn(x[:, 1]), rel=1e-6)


# ------------------------------------------------------------------ CKA
def brute_cka(a, b):
    a = a - a.mean(0)
    b = b - b.mean(0)
    return np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))


def test_cka_matches_feature_space_formula_and_is_one_for_rotated_scaled_copy():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(30, 4, 16))
    q = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    x[:, 3] = 5.0 * x[:, 0] @ q + 2.0  # rotated, scaled and shifted copy of point 0
    df = geo.cka(x)
    assert list(df.columns) == ["point_a", "point_b", "cka"] and len(df) == 16
    val = df.set_index(["point_a", "point_b"])["cka"]
    for a, b in itertools.product(range(4), repeat=2):
        assert val[(a, b)] == pytest.approx(brute_cka(x[:, a], x[:, b]), rel=1e-5)
    assert val[(0, 3)] == pytest.approx(1.0, abs=1e-6)
    assert val[(1, 2)] < 0.9


def test_cka_subsample_is_seeded():
    x = np.random.default_rng(12).normal(size=(50, 3, 8))
    a = geo.cka(x, max_examples=20, random_state=1)
    pd.testing.assert_frame_equal(a, geo.cka(x, max_examples=20, random_state=1))


# ------------------------------------------------------------------ rogue dimensions
def test_rogue_dimensions_find_a_planted_dimension_and_shares_match_brute_force():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(25, 2, 10))
    x[:, 1, 7] += 30 + 5 * rng.normal(size=25)  # point 1: dimension 7 is rogue (large offset and variance)
    df = geo.rogue_dimensions(x, top_k=3)
    assert list(df.columns) == ["point", "rank", "dimension", "variance_share", "cosine_share"]
    top = df[(df["point"] == 1) & (df["rank"] == 1)].iloc[0]
    assert top["dimension"] == 7 and top["cosine_share"] > 0.9
    # brute force: contribution of each dimension to the mean pairwise cosine
    for p in range(2):
        u = x[:, p] / np.linalg.norm(x[:, p], axis=1, keepdims=True)
        contrib = np.mean([u[i] * u[j] for i in range(25) for j in range(25) if i != j], axis=0)
        var = x[:, p].var(0)
        for _, r in df[df["point"] == p].iterrows():
            k = int(r["dimension"])
            assert r["cosine_share"] == pytest.approx(contrib[k] / contrib.sum(), rel=1e-6)
            assert r["variance_share"] == pytest.approx(var[k] / var.sum(), rel=1e-6)
        assert list(df[df["point"] == p]["dimension"]) == list(np.argsort(-contrib)[:3])
    by_var = geo.rogue_dimensions(x, top_k=1, rank_by="variance")
    assert by_var.loc[by_var["point"] == 1, "dimension"].item() == 7


# ------------------------------------------------------------------ real model (slow)
@pytest.mark.slow
def test_smollm2_upper_points_have_a_rogue_dimension_that_standardize_removes(smollm2, balanced_bank):

    df = balanced_bank(20)
    traj = tg.extract(smollm2, df, max_point=14, progress=False)
    rogue = geo.rogue_dimensions(traj, top_k=1, rank_by="variance")
    assert rogue.loc[rogue["point"] == 14, "variance_share"].item() > 0.9  # one dimension carries >90%
    labels = traj.labels("sense")
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)

    def separation(x):
        u = x / np.linalg.norm(x, axis=-1, keepdims=True)
        c = np.einsum("ipd,jpd->pij", u, u)
        return c[:, same & off].mean(1) - c[:, ~same].mean(1)

    raw = separation(traj.states)
    std = separation(geo.normalize(traj, "standardize"))
    assert std[12:].mean() > 2 * raw[12:].mean()


# ------------------------------------------------------------------ fast paths (chunked sums, capped MEV)
def test_standardize_fit_is_exact_despite_large_offsets():
    # float32 data on a large offset: a naive float32 E[x^2] - E[x]^2 would lose the variance entirely
    rng = np.random.default_rng(14)
    x = (1e3 + rng.normal(size=(3000, 2, 5)) * np.array([0.01, 1, 3, 10, 100])).astype(np.float32)
    nz = geo.PointNormalizer("standardize").fit(x)
    np.testing.assert_allclose(nz.mean_, x.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(nz.scale_, x.astype(np.float64).std(0), rtol=1e-4)
    assert nz.transform(x).dtype == np.float32


def test_group_sums_in_blocks_equal_a_loop(monkeypatch):
    rng = np.random.default_rng(15)
    x = rng.normal(size=(53, 3, 4)).astype(np.float32)
    codes = rng.integers(0, 6, 53)
    codes[codes == 5] = 0  # codes must be 0..k-1, all present
    monkeypatch.setattr(_common, "_GROUP_BLOCK", 4)  # groups straddle many blocks
    got, sizes = _common.group_sums(x, codes)
    for c in range(codes.max() + 1):
        np.testing.assert_allclose(got[c], x[codes == c].astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)
        assert sizes[c] == (codes == c).sum()


def test_mev_lanczos_path_matches_svd_for_large_gram():
    # m and d above _EIGSH_MIN, so the top eigenvalue comes from ARPACK, not eigvalsh
    rng = np.random.default_rng(16)
    x = rng.normal(size=(150, 2, 130)) + 0.3 * rng.normal(size=(1, 2, 130))
    assert min(x.shape[0], x.shape[2]) >= cloud._EIGSH_MIN
    got = cloud._mev(x.astype(np.float32))
    for p in range(2):
        s = np.linalg.svd(x[:, p], compute_uv=False)
        assert got[p] == pytest.approx(s[0] ** 2 / np.sum(s**2), rel=1e-5)


def test_mev_cap_uses_the_same_size_for_metric_and_baseline():
    rng = np.random.default_rng(17)
    n = 240
    x = rng.normal(size=(n, 2, 16))
    words = np.array(["line"] * 120 + ["other"] * 120)
    x[:120] = rng.normal(size=(120, 1, 1)) * rng.normal(size=(1, 2, 16)) + 0.01 * rng.normal(size=(120, 2, 16))
    t = tg.Trajectories(x, pd.DataFrame({"word": words}))
    full = geo.population_metrics(t, normalize=None, max_examples=None)
    capped = geo.population_metrics(t, normalize=None, max_examples=30)
    # a planted rank-one word stays rank one in any subset; random vectors' MEV grows as m shrinks
    assert (pop(capped, "max_explainable_variance", "line") > 0.99).all()
    assert (pop(capped, "max_explainable_variance", "other") > pop(full, "max_explainable_variance", "other")).all()
    # a cap above every word's size changes nothing, not even the other metrics' random draws
    pd.testing.assert_frame_equal(geo.population_metrics(t, normalize=None, max_examples=120), full)
    with pytest.raises(ValueError, match="max_examples"):
        geo.population_metrics(t, max_examples=1)


def test_mev_baseline_sd_is_zero_when_every_draw_is_the_whole_other_word():
    rng = np.random.default_rng(18)
    x = rng.normal(size=(40, 3, 10)) + rng.normal(size=(1, 3, 10))
    words = np.array(["a"] * 20 + ["b"] * 20)  # pool of "a" is all 20 of "b": every draw is the same set
    t = tg.Trajectories(x, pd.DataFrame({"word": words}))
    df = geo.population_metrics(t, normalize=None)
    np.testing.assert_allclose(pop(df, "max_explainable_variance_baseline_sd", "a"), 0.0, atol=1e-7)
    np.testing.assert_allclose(pop(df, "adjusted_max_explainable_variance", "a"),
                               pop(df, "max_explainable_variance", "a") - pop(df, "max_explainable_variance", "b"),
                               atol=1e-7)
    one = geo.population_metrics(t, normalize=None, n_baseline_draws=1)
    assert np.isnan(pop(one, "max_explainable_variance_baseline_sd", "a")).all()


# ------------------------------------------------------------------ signatures (docs/architecture.md)
def test_population_metrics_defaults_to_raw_vectors():
    t = random_traj(n=40, p=3, d=8, seed=19)
    t = tg.Trajectories(t.states + 5.0, t.meta)  # a shared offset: raw and standardised cosines differ
    default = geo.population_metrics(t)
    pd.testing.assert_frame_equal(default, geo.population_metrics(t, normalize=None))
    std = geo.population_metrics(t, normalize="standardize")
    assert (pop(default, "anisotropy") > pop(std, "anisotropy") + 0.3).all()


def test_old_keywords_and_positional_options_warn_and_mean_the_same():
    t = random_traj(n=36, p=3, d=8, seed=20)
    mask = np.arange(36) < 20
    with pytest.warns(DeprecationWarning, match="'words' is deprecated.*'word'"):
        old = geo.population_metrics(t, words="word", normalize="center", n_pairs=50)
    pd.testing.assert_frame_equal(old, geo.population_metrics(t, word="word", normalize="center", n_pairs=50))
    with pytest.warns(DeprecationWarning, match="'reference' is deprecated.*'fit_on'"):
        old = geo.population_metrics(t, reference=mask, normalize="center", n_pairs=50)
    pd.testing.assert_frame_equal(old, geo.population_metrics(t, fit_on=mask, normalize="center", n_pairs=50))
    with pytest.warns(DeprecationWarning, match="by position"):
        old = geo.population_metrics(t, "center", 3, 50)
    pd.testing.assert_frame_equal(old, geo.population_metrics(t, normalize="center", random_state=3, n_pairs=50))
    with pytest.warns(DeprecationWarning, match="by position"):
        old = geo.path_metrics(t, "center", mask)
    pd.testing.assert_frame_equal(old, geo.path_metrics(t, normalize="center", fit_on=mask))
    with pytest.warns(DeprecationWarning, match="'reference' is deprecated"):
        old = geo.path_metric_arrays(t, normalize="center", reference=mask)
    np.testing.assert_array_equal(old["norm"], geo.path_metric_arrays(t, normalize="center", fit_on=mask)["norm"])
    with pytest.warns(DeprecationWarning, match="'by' is deprecated.*'rank_by'"):
        old = geo.rogue_dimensions(t, by="variance")
    pd.testing.assert_frame_equal(old, geo.rogue_dimensions(t, rank_by="variance"))
    with pytest.warns(DeprecationWarning, match="by position"):
        old = geo.cka(t, None, 20, 4)
    pd.testing.assert_frame_equal(old, geo.cka(t, max_examples=20, random_state=4))
    # the fitted statistics really come from fit_on: centring on the first 20 examples
    z = geo.path_metric_arrays(t.states - t.states[:20].mean(0), block_size=7)
    np.testing.assert_allclose(geo.path_metric_arrays(t, normalize="center", fit_on=mask)["norm"], z["norm"], rtol=1e-4)


def test_missing_columns_follow_the_rule():
    t = random_traj(n=30, p=2, d=6, seed=22)
    with pytest.raises(KeyError, match="lemma.*columns are"):
        geo.population_metrics(t, word="lemma")
    with pytest.raises(KeyError, match="gold"):
        geo.population_metrics(t, labels="gold")
    # default columns that are absent mean "absent": one word, no senses, no groups
    bare = tg.Trajectories(t.states)
    with pytest.warns(UserWarning, match="only one word"):
        df = geo.population_metrics(bare, n_pairs=50)
    assert df["word"].isna().all()
    assert df.loc[df["metric"] == "between_within_ratio", "value"].isna().all()
    assert df.loc[df["metric"] == "intra_sentence_similarity", "value"].isna().all()
    # word=None pools the words of a frame that has them
    with pytest.warns(UserWarning, match="only one word"):
        pooled = geo.population_metrics(t, word=None, n_pairs=50)
    assert pooled["word"].isna().all()
