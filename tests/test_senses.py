"""Senses: leave-one-out prototypes and margins against brute force, planted commitment and
superposition, reference choice, directions, the attribution identity, lazy (dask) equality."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import trajgeo as tg
from trajgeo import senses
from trajgeo.normalization import PointNormalizer
from trajgeo.models import load_model


# ============================================================== data makers
def random_traj(seed: int = 0, n_points: int = 4, d: int = 6) -> tg.Trajectories:
    """Two words: "w" with three senses (unequal counts), "v" with two; random states."""
    rng = np.random.default_rng(seed)
    meta = pd.DataFrame(
        {
            "word": ["w"] * 9 + ["v"] * 7,
            "sense": list("aaaabbccc") + list("xxxyyyy"),
        }
    )
    meta["example"] = np.arange(100, 100 + len(meta))  # ids need not be positions
    states = rng.normal(size=(len(meta), n_points, d)) + 0.5
    return tg.Trajectories(states.astype(np.float32), meta)


def planted(
    n_per_sense: int = 40,
    n_points: int = 9,
    d: int = 8,
    start: str = "middle",
    noise: float = 0.05,
    seed: int = 0,
) -> tuple[tg.Trajectories, np.ndarray]:
    """Paths that start from one shared point, lean toward the wrong sense, then commit at a known point.

    Senses "A" and "B" resolve to the orthonormal directions u_A = e0 and u_B = e1. Point 0 is the
    same for every example: halfway between them (``start="middle"``) or on u_A (``"on_sense"``).
    Points 1..k-1 lean toward the wrong sense; from point k on the path moves onto its own sense.
    k is drawn per example in 2..n_points-2 and returned.
    """
    rng = np.random.default_rng(seed)
    n = 2 * n_per_sense
    own = np.repeat([0, 1], n_per_sense)
    u = np.eye(d)[:2]
    u_own, u_wrong = u[own], u[1 - own]
    x0 = (u[0] + u[1]) / 2 if start == "middle" else u[0]
    k = rng.integers(2, n_points - 1, size=n)
    states = np.empty((n, n_points, d))
    states[:, 0] = x0
    for p in range(1, n_points):
        lean = x0 + 0.45 * (u_wrong - u_own)  # closer to the wrong sense
        a = np.minimum(0.7 + 0.1 * (p - k), 1.0)[:, None]  # 0.7 at k, growing to 1
        go = (1 - a) * x0 + a * u_own
        states[:, p] = np.where((p < k)[:, None], lean, go) + noise * rng.normal(size=(n, d))
    meta = pd.DataFrame({"word": "w", "sense": np.array(["A", "B"])[own]})
    return tg.Trajectories(states.astype(np.float32), meta), k


# ============================================================== brute force
def brute_normalise(states: np.ndarray, method: str | None, ref: int | None) -> np.ndarray:
    """Loop reference: each point centred/scaled with its own statistics (``ref`` matters only for
    whitening, which this reference does not do)."""
    x = states.astype(np.float64)
    if method is None:
        return x
    out = np.empty_like(x)
    for p in range(x.shape[1]):
        base = x[:, p]
        mu = base.mean(0)
        out[:, p] = x[:, p] - mu
        if method == "standardize":
            out[:, p] /= np.maximum(base.std(0), 1e-6)
    return out


def brute_cos_margin(traj: tg.Trajectories, method: str | None, reference, groups=None) -> tuple[dict, np.ndarray]:
    """cos[(i, l, sense)] and margin[i, l] by explicit loops and explicit leave-one-out prototypes
    (leave-group-out with ``groups``: no example of i's group is in any prototype i is scored
    against). A margin is NaN where the word's raw vectors at l or at the reference are all equal."""
    s = traj.states
    ref = None if reference == "same" else (s.shape[1] - 1 if reference == "last" else int(reference))
    z = brute_normalise(s, method, ref)
    words, sens = traj.meta["word"].to_numpy(), traj.meta["sense"].to_numpy()
    groups = np.arange(len(z)) if groups is None else np.asarray(groups)
    cos, margin = {}, np.full(s.shape[:2], np.nan)
    for i in range(len(z)):
        word_rows = s[words == words[i]]
        for l in range(z.shape[1]):
            r = l if ref is None else ref
            vals = {}
            for sense in np.unique(sens[words == words[i]]):
                members = [j for j in range(len(z)) if words[j] == words[i] and sens[j] == sense and groups[j] != groups[i]]
                proto = z[members, r].mean(0)
                if np.linalg.norm(z[i, l]) < 1e-9:  # a zero vector (shared point 0, centred): no preference
                    vals[sense] = 0.0
                else:
                    vals[sense] = z[i, l] @ proto / (np.linalg.norm(z[i, l]) * np.linalg.norm(proto))
                cos[(i, l, sense)] = vals[sense]
            tie = (word_rows[:, l] == word_rows[0, l]).all() or (word_rows[:, r] == word_rows[0, r]).all()
            margin[i, l] = np.nan if tie else vals[sens[i]] - max(v for k, v in vals.items() if k != sens[i])
    return cos, margin


def brute_direction(z_ref: np.ndarray, words, sens, i: int, groups=None) -> np.ndarray:
    """Unit leave-one-out (leave-group-out with ``groups``) prototype direction of example i's sense, by loops."""
    groups = np.arange(len(z_ref)) if groups is None else np.asarray(groups)
    protos = {}
    for sense in np.unique(sens[words == words[i]]):
        members = [j for j in range(len(z_ref)) if words[j] == words[i] and sens[j] == sense and groups[j] != groups[i]]
        protos[sense] = z_ref[members].mean(0)
    d = protos[sens[i]] - np.mean([p for k, p in protos.items() if k != sens[i]], axis=0)
    return d / np.linalg.norm(d)


def grouped_traj(seed: int = 0, n_points: int = 4, d: int = 6) -> tg.Trajectories:
    """:func:`random_traj` with groups: pairs and a triple that mix senses, one group spanning both words."""
    traj = random_traj(seed, n_points, d)
    group = ["g0", "g0", "g1", "g2", "g2", "g3", "g3", "g3", "g4",  # w: a a a a b b c c c
             "g4", "g5", "g5", "g6", "g7", "g8", "g8"]  # v: x x x y y y y (g4 spans both words)
    return tg.Trajectories(traj.states, traj.meta.assign(group=group))


# ============================================================== tests
@pytest.mark.parametrize("normalize", [None, "standardize"])
@pytest.mark.parametrize("reference", ["last", 1, "same"])
def test_loo_cosines_and_margins_match_brute_force(normalize, reference):
    traj = random_traj()
    cos_b, margin_b = brute_cos_margin(traj, normalize, reference)
    df = senses.curves(traj, reference=reference, normalize=normalize)
    pos = {e: i for i, e in enumerate(traj.meta["example"])}
    cos_rows = df[df.metric == "cos"]
    got = {(pos[e], p, s): v for e, p, s, v in cos_rows[["example", "point", "to_sense", "value"]].itertuples(index=False)}
    assert got.keys() == cos_b.keys()  # exactly the senses of each example's own word
    np.testing.assert_allclose([got[k] for k in cos_b], list(cos_b.values()), rtol=1e-5, atol=1e-6)
    m = df[df.metric == "margin"].pivot(index="example", columns="point", values="value")
    np.testing.assert_allclose(m.loc[traj.meta["example"]].to_numpy(), margin_b, rtol=1e-5, atol=1e-6)


def test_whitened_scores_use_one_normaliser_fitted_at_the_reference():
    traj = random_traj(seed=3, d=5)
    fitted = senses.prototypes(traj, normalize="whiten")
    norm = PointNormalizer("whiten").fit(traj.states[:, [-1]])
    n, p, d = traj.states.shape
    z = norm.transform(traj.states.reshape(n * p, 1, d)).reshape(n, p, d)
    np.testing.assert_allclose(fitted.prototypes_[0], z[fitted.fit_group_ == 0].mean(0), rtol=1e-5, atol=1e-6)


def test_curves_frame_follows_the_contract():
    traj = random_traj()
    df = senses.curves(traj)
    assert list(df.columns) == ["example", "point", "word", "sense", "metric", "to_sense", "value"]
    assert set(df.metric) == {"cos", "margin"}
    assert df.loc[df.metric == "margin", "to_sense"].isna().all()
    # w has 3 senses x 9 examples, v 2 senses x 7, per point; plus one margin per example and point
    assert len(df) == (9 * 3 + 7 * 2 + 16) * traj.n_points
    no_word = tg.Trajectories(traj.states, traj.meta.drop(columns="word"))
    assert "word" not in senses.curves(no_word).columns  # one word: all senses compete


def test_senses_compete_only_within_a_word():
    traj = random_traj()
    cos = senses.prototypes(traj).transform(traj)
    w = (traj.meta["word"] == "w").to_numpy()
    groups = senses.prototypes(traj).groups_
    assert np.isnan(cos[np.ix_(w, range(traj.n_points), np.flatnonzero(groups.word == "v"))]).all()
    assert not np.isnan(cos[np.ix_(w, range(traj.n_points), np.flatnonzero(groups.word == "w"))]).any()


def test_an_example_is_never_scored_against_a_prototype_containing_itself():
    # one example far out along its own axis: with itself in its prototype it would score ~1
    traj = random_traj()
    states = traj.states.copy()
    states[0, :, 0] = 1e3
    traj = tg.Trajectories(states, traj.meta)
    cos = senses.prototypes(traj, normalize=None).transform(traj)
    assert cos[0, -1, 0] < 0.9
    without = senses.SensePrototypes(normalize=None, leave_one_out=False).fit(traj).transform(traj)
    assert without[0, -1, 0] > 0.9


@pytest.mark.parametrize("normalize", [None, "standardize"])
@pytest.mark.parametrize("reference", ["last", 1, "same"])
def test_leave_group_out_cosines_and_margins_match_brute_force(normalize, reference):
    traj = grouped_traj(seed=2)
    cos_b, margin_b = brute_cos_margin(traj, normalize, reference, groups=traj.meta["group"])
    df = senses.curves(traj, reference=reference, normalize=normalize)
    cos_rows = df[df.metric == "cos"]
    got = {(e - 100, p, s): v for e, p, s, v in cos_rows[["example", "point", "to_sense", "value"]].itertuples(index=False)}
    np.testing.assert_allclose([got[k] for k in cos_b], list(cos_b.values()), rtol=1e-5, atol=1e-6)
    m = df[df.metric == "margin"].pivot(index="example", columns="point", values="value")
    np.testing.assert_allclose(m.loc[traj.meta["example"]].to_numpy(), margin_b, rtol=1e-5, atol=1e-6)
    # leave-one-out gives other numbers: the check above could fail
    loo = senses.curves(traj, reference=reference, normalize=normalize, groups=None)
    assert not np.allclose(loo.loc[loo.metric == "margin", "value"], df.loc[df.metric == "margin", "value"])


def test_prototype_directions_leave_the_whole_group_out():
    traj = grouped_traj(seed=3)
    fitted = senses.prototypes(traj, normalize=None)
    u = fitted.directions(traj)
    own = pd.MultiIndex.from_frame(fitted.groups_[["word", "sense"]]).get_indexer(
        pd.MultiIndex.from_frame(traj.meta[["word", "sense"]]))
    z_ref = traj.states[:, -1].astype(np.float64)
    words, sens, group = (traj.meta[c].to_numpy() for c in ("word", "sense", "group"))
    for i in range(traj.n_examples):
        np.testing.assert_allclose(u[i, own[i]], brute_direction(z_ref, words, sens, i, group), rtol=1e-5, atol=1e-6)


def duplicated_prefixes(n_prefix: int = 12, d: int = 200, seed: int = 0, same_sense: bool = True) -> tg.Trajectories:
    """A causal model's pure-noise states: each prefix is read by two examples (identical states), whose
    texts differ after the target; the two carry the same sense (``same_sense``) or one of each."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_prefix, 3, d))
    texts = [f"p{k} bank {tail}" for k in range(n_prefix) for tail in ("x", "y")]
    sense = np.repeat(np.array(["a", "b"] * (n_prefix // 2)), 2) if same_sense else np.array(["a", "b"] * n_prefix)
    meta = pd.DataFrame({"text": texts, "char_end": [t.index(" bank") + 5 for t in texts], "word": "bank",
                         "sense": sense, "group": texts})
    return tg.Trajectories(np.repeat(base, 2, 0).astype(np.float32), meta, model_info={"causal": True})


def test_identical_prefixes_never_score_each_other():
    """Noise labels: an example whose twin (same prefix, same state) sits in its own sense's centroid looks
    "resolved" under leave-one-out; leaving out the whole prefix group gives chance, as there is nothing."""
    traj = duplicated_prefixes()
    grouped = senses.nearest_centroid_accuracy(traj, normalize=None)["accuracy"]
    leaky = senses.nearest_centroid_accuracy(traj, normalize=None, groups=None)["accuracy"]
    assert (leaky > 0.9).all()  # the twin is nearest: the leak
    assert (grouped.between(0.2, 0.8)).all()
    # the text groups alone would not join the twins (their texts differ after the target): the default
    # joins them because the model is causal
    no_prefix = tg.Trajectories(traj.states, traj.meta, model_info={"causal": False})
    assert (senses.nearest_centroid_accuracy(no_prefix, normalize=None)["accuracy"] > 0.9).all()
    # a twin of the other sense pulls its example the wrong way under leave-one-out
    opposite = duplicated_prefixes(same_sense=False)
    assert (senses.nearest_centroid_accuracy(opposite, normalize=None, groups=None)["accuracy"] < 0.1).all()
    margin = lambda **kw: senses.curves(opposite, normalize=None, reference="same", **kw).query(  # noqa: E731
        "metric == 'margin'")["value"]
    assert margin(groups=None).max() < -0.2
    # without the group, both senses' prototypes are the other prefixes: the same; no pull either way
    assert margin().abs().max() < 1e-5
    # the same groups reach the margins of curves and commitment
    same = lambda **kw: senses.curves(traj, normalize=None, reference="same", **kw).query(  # noqa: E731
        "metric == 'margin'")["value"]
    assert abs(same().mean()) < 0.05 and same(groups=None).min() > 0.04 and same(groups=None).mean() > 0.15


@pytest.mark.parametrize("normalize", [None, "standardize"])
def test_a_shared_point_0_is_a_tie_and_never_a_decision(normalize):
    """Resolved from point 1 on; point 0 is every example's context-free embedding, which lies on
    sense A: against the last point's prototypes A "wins" there, but no example chose anything."""
    rng = np.random.default_rng(0)
    n, d = 40, 6
    own = np.repeat([0, 1], n // 2)
    states = np.empty((n, 4, d))
    states[:, 0] = np.eye(d)[0]
    states[:, 1:] = np.eye(d)[own][:, None] + 0.1 * rng.normal(size=(n, 3, d))
    traj = tg.Trajectories(states.astype(np.float32), pd.DataFrame({"word": "w", "sense": np.array(["A", "B"])[own]}))
    for reference in ("last", 2, "same"):
        m = senses.curves(traj, reference=reference, normalize=normalize).query("metric == 'margin'")
        assert m.loc[m.point == 0, "value"].isna().all() and m.loc[m.point > 0, "value"].notna().all()
    assert senses.curves(traj, reference=0, normalize=normalize).query("metric == 'margin'")["value"].isna().all()
    com = senses.commitment(traj, normalize=normalize)
    assert (com["commitment_point"] == 1).all() and (com["stable_point"] == 1).all()  # the planted point
    acc = senses.nearest_centroid_accuracy(traj, normalize=normalize).set_index("point")["accuracy"]
    assert np.isnan(acc.loc[0]) and (acc.loc[1:] == 1.0).all()
    # leave the tie rule out (a tiny spread) and point 0 decides again: the checks above could fail
    jitter = states.copy()
    jitter[:, 0] += 1e-2 * rng.normal(size=(n, d))
    loose = senses.commitment(tg.Trajectories(jitter.astype(np.float32), traj.meta), normalize=None)
    assert (loose["commitment_point"] == 0).any()


def test_the_tie_tolerance_is_relative_to_the_vectors_norm():
    rng = np.random.default_rng(1)
    meta = pd.DataFrame({"word": "w", "sense": list("ab" * 10)})
    base = rng.normal(size=(1, 3, 8))
    for scale in (1e-3, 1.0, 1e6):
        near = base + 1e-6 * rng.normal(size=(20, 3, 8))  # spread 1e-6 of the norm: a tie
        far = base + 1e-3 * rng.normal(size=(20, 3, 8))  # 1e-3: a real, if small, spread
        ties = [senses.prototypes(tg.Trajectories((scale * x).astype(np.float32), meta)).ties_ for x in (near, far)]
        assert ties[0].all() and not ties[1].any()


def test_one_sense_words_are_skipped_with_one_warning_naming_them():
    traj = random_traj()
    meta = traj.meta.assign(sense=np.where(traj.meta["word"] == "v", "x", traj.meta["sense"]))
    one = tg.Trajectories(traj.states, meta)
    calls = {
        "curves": lambda: senses.curves(one), "commitment": lambda: senses.commitment(one),
        "reference_matrix": lambda: senses.reference_matrix(one),
        "nearest_centroid_accuracy": lambda: senses.nearest_centroid_accuracy(one),
        "superposition": lambda: senses.superposition(one), "reinforcement": lambda: senses.reinforcement(one),
    }
    for name, call in calls.items():
        with pytest.warns(UserWarning, match=rf"{name}: 1 word\(s\) have a single sense \('v'\)") as rec:
            out = call()
        assert len([r for r in rec if "single sense" in str(r.message)]) == 1
        # (superposition's null here is one other word: too few for any value to reach 5%, so no threshold)
        kept = out.drop(columns="null_fwer") if name == "superposition" else out
        assert set(out["word"]) == {"w"} and kept.notna().any().all()
    # the rows kept are those of the word alone (raw vectors: the normalisation uses every example)
    w_only = senses.curves(traj[(traj.meta["word"] == "w").to_numpy()], normalize=None)
    with pytest.warns(UserWarning):
        pd.testing.assert_frame_equal(senses.curves(one, normalize=None), w_only)
    single = tg.Trajectories(traj.states, meta.drop(columns="word").assign(sense="x"))
    with pytest.warns(UserWarning, match="the data have a single sense"):
        assert senses.commitment(single).empty


def drifting_senses(n_per_sense: int = 30, k: int = 2, n_points: int = 8, signal: float = 2.0, seed: int = 0):
    """Two words; from point k on, sense A sits at +u(l) and B at -u(l), with u(l) turning 45 degrees
    per point (the representation drifts along depth); before k, noise only; point 0 is shared."""
    rng = np.random.default_rng(seed)
    d = 8
    own = np.tile(np.repeat([1.0, -1.0], n_per_sense), 2)
    n = len(own)
    states = rng.normal(size=(n, n_points, d)) * 0.3
    for p in range(k, n_points):
        u = np.cos(np.pi / 4 * p) * np.eye(d)[0] + np.sin(np.pi / 4 * p) * np.eye(d)[1]
        states[:, p] += signal * own[:, None] * u
    states[:, 0] = np.where(np.arange(n)[:, None] < n // 2, 1.0, -1.0) * np.eye(d)[3]
    meta = pd.DataFrame({"word": np.repeat(["w", "v"], n // 2),
                         "sense": np.where(own > 0, "A", "B")})
    return tg.Trajectories(states.astype(np.float32), meta)


def test_reference_matrix_is_the_mean_margin_of_curves_at_every_reference():
    traj = drifting_senses(n_per_sense=8, n_points=5)
    mat = senses.reference_matrix(traj, normalize="standardize")
    assert list(mat.columns) == ["word", "point", "reference", "metric", "value"]
    for r in traj.points:
        m = senses.curves(traj, reference=int(r)).query("metric == 'margin'")
        mean = m.groupby(["word", "point"])["value"].mean()
        acc = m.assign(right=np.where(m["value"].isna(), np.nan, m["value"] > 0)).groupby(
            ["word", "point"])["right"].mean()
        got = mat[mat.reference == r].set_index(["word", "point", "metric"])["value"]
        np.testing.assert_allclose(got.xs("margin", level="metric").loc[mean.index], mean, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(got.xs("accuracy", level="metric").loc[acc.index], acc, rtol=1e-6, atol=1e-9)
    diag = mat[(mat.point == mat.reference) & (mat.metric == "margin")].set_index(["word", "point"])["value"]
    same = senses.curves(traj, reference="same").query("metric == 'margin'").groupby(["word", "point"])["value"].mean()
    np.testing.assert_allclose(diag.loc[same.index], same, rtol=1e-6, atol=1e-9)


def test_the_reference_makes_the_curve_and_the_diagonal_does_not():
    """Planted: separable from point 2 with a constant strength, in a direction that drifts with depth.
    Every row of the matrix peaks at its own reference; the diagonal (no reference) is flat from 2 on."""
    traj = drifting_senses(k=2)
    mat = senses.reference_matrix(traj, normalize="center").query("metric == 'margin'")
    for w, g in mat.groupby("word"):
        rows = g.pivot(index="reference", columns="point", values="value")
        for r in range(2, traj.n_points):
            assert rows.loc[r].idxmax() == r
        diag = np.diag(rows.to_numpy())
        assert np.isnan(diag[0]) and np.abs(diag[1]) < 0.1  # point 0 is a tie; point 1 has no signal
        assert diag[2:].min() > 0.5 and diag[2:].max() - diag[2:].min() < 0.25 * diag[2:].mean()


def test_reference_matrix_stays_silent_without_senses():
    mat = senses.reference_matrix(drifting_senses(k=2, signal=0.0))
    margin = mat.query("metric == 'margin'")["value"].dropna()
    acc = mat.query("metric == 'accuracy'")["value"].dropna()
    assert margin.abs().max() < 0.25 and margin.abs().mean() < 0.08  # the planted diagonal is > 0.5
    assert acc.between(0.25, 0.75).all() and abs(acc.mean() - 0.5) < 0.08


@pytest.mark.parametrize("normalize", [None, "standardize"])
def test_commitment_recovers_planted_point(normalize):
    traj, k = planted()
    out = senses.commitment(traj, reference="last", normalize=normalize)
    assert list(out.columns) == ["example", "word", "sense", "commitment_point", "stable_point"]
    np.testing.assert_array_equal(out["commitment_point"].to_numpy(), k)


@pytest.mark.parametrize("reference", ["last", "same"])
def test_commitment_and_stable_point_match_brute_force(reference):
    traj, _ = planted(noise=0.35, n_per_sense=15, seed=4)  # noisy: onsets vary and some never commit
    out = senses.commitment(traj, threshold=0.05, reference=reference, normalize="standardize")
    margin = brute_cos_margin(traj, "standardize", reference)[1]
    margin_same = brute_cos_margin(traj, "standardize", "same")[1]

    def onset(ok):
        for p in range(len(ok)):
            if all(ok[p:]):
                return float(p)
        return np.nan

    expect_c = [onset(m > 0.05) for m in margin]
    expect_s = [onset(m > 0) for m in margin_same]
    assert 0 < np.isnan(expect_c).sum() < len(expect_c)  # the planted noise makes both cases occur
    np.testing.assert_array_equal(out["commitment_point"].to_numpy(), expect_c)
    np.testing.assert_array_equal(out["stable_point"].to_numpy(), expect_s)


def test_commitment_is_nan_when_the_last_point_is_not_committed():
    traj, _ = planted(n_points=6)
    states = traj.states.copy()
    states[0, -1] = states[0, 0] + np.eye(8)[1 - 0] * 0.45 - np.eye(8)[0] * 0.45  # A ends leaning to B
    out = senses.commitment(tg.Trajectories(states, traj.meta), normalize=None)
    assert np.isnan(out.loc[0, "commitment_point"]) and np.isnan(out.loc[0, "stable_point"])
    assert out["commitment_point"].iloc[1:].notna().all()


def test_superposition_balance_is_near_one_between_senses_and_low_on_one():
    middle = senses.superposition(planted(start="middle")[0])
    assert list(middle.columns) == ["word", "sense", "cosine", "balance", "n_null", "null_mean", "null_q95",
                                    "null_fwer", "p_value", "p_fwer"]
    assert (middle["n_null"] == 0).all() and middle[["null_mean", "p_value"]].isna().all().all()  # one word: no null
    np.testing.assert_allclose(middle["cosine"], np.sqrt(0.5), atol=0.03)
    assert middle["balance"].iloc[0] > 0.95
    on_a = senses.superposition(planted(start="on_sense")[0])
    assert on_a["balance"].iloc[0] < 0.1
    assert on_a.set_index("sense").loc["A", "cosine"] > 0.95


def many_words(n_words: int = 20, between: bool = True, seed: int = 0) -> tg.Trajectories:
    """Every vector shares a large common direction (as real embeddings do); word k's senses resolve
    to common + u_kA and common + u_kB, its embedding is common + a random offset, except word 0's
    (``between``), which is common + (u_0A + u_0B) / 2: exactly between its senses."""
    rng = np.random.default_rng(seed)
    d, per = 32, 4
    common = 3.0 * np.eye(d)[0]
    unit = lambda: (lambda v: v / np.linalg.norm(v))(rng.normal(size=d))  # noqa: E731
    states, meta = [], []
    for k in range(n_words):
        u = [unit(), unit()]
        emb = common + (0.5 * (u[0] + u[1]) if (k == 0 and between) else 0.8 * unit())
        for s_i in (0, 1):
            x = np.empty((per, 2, d))
            x[:, 0] = emb
            x[:, 1] = common + u[s_i] + 0.05 * rng.normal(size=(per, d))
            states.append(x)
            meta += [{"word": f"w{k}", "sense": "AB"[s_i]}] * per
    return tg.Trajectories(np.concatenate(states).astype(np.float32), pd.DataFrame(meta))


def test_superposition_is_read_against_the_other_words_embeddings():
    out = senses.superposition(many_words()).groupby("word", sort=False).first()
    w0 = out.loc["w0"]
    assert w0["balance"] > 0.99 and w0["n_null"] == 19
    # brute force: the other words' mean cosine to w0's prototypes (every example), then min / max
    traj = many_words()
    x0, xl = traj.states[:, 0].astype(float), traj.states[:, 1].astype(float)
    mine = (traj.meta["word"] == "w0").to_numpy()
    protos = [xl[mine & (traj.meta["sense"] == s).to_numpy()].mean(0) for s in "AB"]
    cos = lambda a, b: a @ b / (np.linalg.norm(a) * np.linalg.norm(b))  # noqa: E731
    null = []
    for w in traj.meta["word"].unique()[1:]:
        rows = x0[(traj.meta["word"] == w).to_numpy()]
        c = [np.mean([cos(r, p) for r in rows]) for p in protos]
        null.append(min(c) / max(c))
    np.testing.assert_allclose(w0["null_mean"], np.mean(null), rtol=1e-6)
    np.testing.assert_allclose(w0["null_q95"], np.quantile(null, 0.95), rtol=1e-6)
    assert np.mean(null) > 0.8  # unrelated embeddings are balanced too: a balance alone says little
    assert w0["balance"] > w0["null_q95"] and w0["p_value"] == 1 / 20 and w0["p_fwer"] == w0["p_value"]


def test_superposition_null_stays_silent_when_no_embedding_is_special():
    out = senses.superposition(many_words(between=False, seed=1)).groupby("word", sort=False).first()
    assert (out["p_value"] <= 0.05).sum() <= 2 and out["p_value"].median() > 0.2


def early_separable_wrong_heading(n_per_sense: int = 30, k: int = 5, n_points: int = 8, seed: int = 1):
    """Sense A starts at +e2 leaning to B's final direction, sense B at -e2 leaning to A's; both
    resolve onto their own sense from point k: separable from point 1, heading the wrong way."""
    rng = np.random.default_rng(seed)
    d = 6
    own = np.repeat([0, 1], n_per_sense)
    e = np.eye(d)
    sign = np.where(own == 0, 1.0, -1.0)[:, None]
    states = np.empty((2 * n_per_sense, n_points, d))
    states[:, 0] = (e[0] + e[1]) / 2
    for p in range(1, n_points):
        early = sign * e[2] + 0.8 * e[1 - own]
        states[:, p] = (early if p < k else e[own]) + 0.05 * rng.normal(size=(len(own), d))
    meta = pd.DataFrame({"word": "w", "sense": np.array(["A", "B"])[own]})
    return tg.Trajectories(states.astype(np.float32), meta)


def test_same_reference_sees_early_separability_last_sees_the_wrong_heading():
    traj = early_separable_wrong_heading(k=5)
    same = senses.curves(traj, reference="same", normalize=None)
    last = senses.curves(traj, reference="last", normalize=None)
    early = lambda df: df[(df.metric == "margin") & df.point.between(1, 4)]["value"]  # noqa: E731
    assert (early(same) > 0.5).all()
    assert (early(last) < -0.3).all()
    c_same = senses.commitment(traj, reference="same", normalize=None)["commitment_point"]
    c_last = senses.commitment(traj, reference="last", normalize=None)["commitment_point"]
    assert (c_same <= 1).all() and (c_last == 5).all()
    stable = senses.commitment(traj, reference="last", normalize=None)["stable_point"]
    assert (stable <= 1).all()  # decodable early, committed late


@pytest.mark.parametrize("normalize", [None, "standardize"])
def test_deprecated_reinforcement_at_a_reference_projects_on_loo_prototype_directions(normalize):
    """The 0.1 measure, kept for one release under reference=<point>: the mirror it had is why it went."""
    traj = random_traj(seed=5)
    with pytest.warns(DeprecationWarning, match="0.1 measure"):
        df = senses.reinforcement(traj, normalize=normalize, reference="last")
    assert list(df.columns) == ["example", "point", "word", "sense", "metric", "value"]
    z = brute_normalise(traj.states, normalize, traj.n_points - 1)
    words, sens = traj.meta["word"].to_numpy(), traj.meta["sense"].to_numpy()
    correct = np.stack([z[i] @ brute_direction(z[:, -1], words, sens, i) for i in range(len(z))])
    got = df[df.metric == "correct"].pivot(index="example", columns="point", values="value")
    np.testing.assert_allclose(got.loc[traj.meta["example"]].to_numpy(), correct, rtol=1e-5, atol=1e-6)
    # the "v" word has two senses: the other sense's direction is minus the correct one
    v = df[df.word == "v"].pivot_table(index=["example", "point"], columns="metric", values="value")
    np.testing.assert_allclose(v["other"], -v["correct"], rtol=1e-5, atol=1e-6)


def brute_reinforcement(traj: tg.Trajectories, normalize, groups, labels=None) -> dict:
    """proj[(i, l, sense)] by loops: origin = mean of the other words' vectors at l; the sense's prototype
    at l without i's group; (z_i(l) - origin) . (prototype - origin), divided by the distance of the word's
    mean from the origin at point 0."""
    x = traj.states.astype(np.float64)
    if normalize == "standardize":  # the last point's per-dimension scale, at every point
        x = x / np.maximum(x[:, -1].std(0), 1e-6)
    words = traj.meta["word"].to_numpy()
    sens = traj.meta["sense"].to_numpy() if labels is None else np.asarray(labels)
    groups = np.asarray(groups)
    out = {}
    for i in range(len(x)):
        mine = words == words[i]
        unit = np.linalg.norm(x[mine, 0].mean(0) - x[~mine, 0].mean(0))
        for l in range(x.shape[1]):
            origin = x[~mine, l].mean(0)
            for s in np.unique(sens[mine]):
                members = mine & (sens == s) & (groups != groups[i])
                v = x[members, l].mean(0) - origin if members.any() else np.full(x.shape[-1], np.nan)
                out[(i, l, s)] = (x[i, l] - origin) @ v / unit
    return out


@pytest.mark.parametrize("normalize", [None, "standardize"])
def test_reinforcement_projections_match_brute_force(normalize):
    traj = grouped_traj(seed=5)
    df = senses.reinforcement(traj, normalize=normalize)
    assert list(df.columns) == ["example", "point", "word", "sense", "to_sense", "is_correct", "metric", "value"]
    assert (df["metric"] == "projection").all() and (df["is_correct"] == (df["sense"] == df["to_sense"])).all()
    brute = brute_reinforcement(traj, normalize, traj.meta["group"])
    got = {(e - 100, p, s): v for e, p, s, v in df[["example", "point", "to_sense", "value"]].itertuples(index=False)}
    assert got.keys() == brute.keys()  # every sense of the example's word, at every point
    np.testing.assert_allclose([got[k] for k in brute], list(brute.values()), rtol=1e-5, atol=1e-6)
    # no mirror: with two senses (word "v") the wrong-sense projection is not minus the correct one
    v = df[df.word == "v"].pivot_table(index=["example", "point"], columns="is_correct", values="value")
    assert np.abs(v[True] + v[False]).max() > 0.5


def test_reinforcement_nulls_by_brute_force():
    """Separation against group-respecting label permutations (the directions recomputed for each), the
    changes from point 0 against sign flips of each group's change."""
    traj = grouped_traj(seed=6)
    n_perm, seed = 12, 3
    res = senses.reinforcement(traj, normalize=None, n_permutations=n_perm, random_state=seed, return_result=True)
    summary = res.summary
    assert list(summary.columns) == ["word", "point", "metric", "value", "n_examples", "n_mixed_groups", "null",
                                     "null_mean", "null_q95", "null_fwer", "p_value", "p_fwer", "claimed"]
    codes = traj.group_codes()
    for w in ("w", "v"):
        mine = (traj.meta["word"] == w).to_numpy()
        rows = np.flatnonzero(mine)
        y = traj.meta["sense"].to_numpy()[mine]
        g = pd.factorize(codes[mine])[0]
        perms = tg.stats.group_permutations(pd.factorize(y)[0], groups=g, n_permutations=n_perm, random_state=seed)

        def per_example(labels):  # correct and mean wrong projection (n_w, P), by loops
            full = traj.meta["sense"].to_numpy().copy()
            full[mine] = labels
            b = brute_reinforcement(traj, None, codes, labels=full)
            correct = np.array([[b[(i, p, full[i])] for p in traj.points] for i in rows])
            wrong = np.array([[np.mean([v for (j, q, s), v in b.items() if j == i and q == p and s != full[i]])
                               for p in traj.points] for i in rows])
            return correct, wrong

        correct, wrong = per_example(y)
        sep = lambda c, wr: (c - wr).mean(0)  # noqa: E731
        want = tg.stats.null_table(sep(correct, wrong), np.array([sep(*per_example(y[p])) for p in perms]),
                                   points=traj.points)
        got = summary[(summary.word == w) & (summary.metric == "separation")].reset_index(drop=True)
        pd.testing.assert_frame_equal(got[want.columns], want, check_exact=False, rtol=1e-6, atol=1e-9)
        assert (got["null"] == "label_permutation").all()
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_perm, g.max() + 1))
        for metric, change in (("reinforcement", correct - correct[:, :1]), ("attenuation", wrong[:, :1] - wrong)):
            null = np.array([(s[g][:, None] * change).mean(0) for s in signs])
            want = tg.stats.null_table(change.mean(0), null, points=traj.points)
            got = summary[(summary.word == w) & (summary.metric == metric)].reset_index(drop=True)
            pd.testing.assert_frame_equal(got[want.columns], want, check_exact=False, rtol=1e-6, atol=1e-9)
            assert (got["null"] == "sign_flip").all()
        assert (summary.loc[summary.word == w, "n_mixed_groups"] == len(tg.stats.mixed_groups(y, g))).all()


def suppression(mode: str = "suppress", n_per_sense: int = 20, n_points: int = 6, n_other: int = 3,
                noise: float = 0.3, seed: int = 0) -> tg.Trajectories:
    """Word "w" whose embedding carries both senses' features (f_A + f_B, superposed); from point 1 on
    its examples carry their own feature with weight a(l) and the other's with b(l), plus noise.
    ``mode``: "suppress" (b falls from 1 to 0: the wrong-sense feature is removed), "persist" (a = b = 1:
    the wrong-sense feature simply persists), "reinforce" (a rises from 1 to 2, b stays 1: the correct
    feature grows, the wrong one persists). Three other words (their own features) set the neutral origin."""
    rng = np.random.default_rng(seed)
    d = 16
    e = np.eye(d)
    own = np.repeat([0, 1], n_per_sense)
    n = len(own)
    t = np.arange(n_points) / (n_points - 1)
    a = 1 + t if mode == "reinforce" else np.ones(n_points)
    b = 1 - t if mode == "suppress" else np.ones(n_points)
    x = np.stack([2 * e[2] + a[p] * e[own] + b[p] * e[1 - own] for p in range(n_points)], axis=1)
    x[:, 1:] += noise * rng.normal(size=(n, n_points - 1, d))
    states, meta = [x], [{"word": "w", "sense": "AB"[k]} for k in own]
    for k in range(n_other):
        y = 2 * e[3 + k] + 0.7 * e[8 + 2 * k + own][:, None] + noise * rng.normal(size=(n, n_points, d))
        y[:, 0] = 2 * e[3 + k]
        states.append(y)
        meta += [{"word": f"o{k}", "sense": "AB"[s]} for s in own]
    return tg.Trajectories(np.concatenate(states).astype(np.float32), pd.DataFrame(meta))


def _claims(traj: tg.Trajectories, normalize=None, word: str = "w", n_permutations: int = 200) -> pd.Series:
    """Per metric of one word: at how many points the claim is made (beyond the family-wise nulls)."""
    summary = senses.reinforcement(traj, normalize=normalize, n_permutations=n_permutations,
                                   return_result=True).summary
    return summary[summary.word == word].groupby("metric")["claimed"].sum()


@pytest.mark.parametrize("normalize", [None, "standardize"])
def test_attenuation_is_found_where_the_wrong_sense_feature_is_suppressed(normalize):
    hits = _claims(suppression("suppress"), normalize)
    assert hits["attenuation"] >= 1 and hits["reinforcement"] == 0
    projections = senses.reinforcement(suppression("suppress"), normalize=normalize)
    wrong = projections[(projections.word == "w") & ~projections.is_correct].groupby("point")["value"].mean()
    assert wrong.iloc[-1] < wrong.iloc[0] - 0.2  # the planted removal, visible in the raw numbers too


@pytest.mark.parametrize("normalize", [None, "standardize"])
def test_attenuation_is_not_found_where_the_wrong_sense_feature_persists_and_the_right_one_grows(normalize):
    hits = _claims(suppression("reinforce"), normalize)
    assert hits["attenuation"] == 0 and hits["reinforcement"] >= 1  # the correct feature's growth is seen


@pytest.mark.parametrize("normalize", [None, "standardize"])
def test_reinforcement_and_attenuation_stay_silent_where_the_senses_do_not_change(normalize):
    """Both features simply persist: the two senses' examples are exchangeable, so a claim may be made only
    at the family-wise rate (5% of data sets)."""
    called = [(_claims(suppression("persist", seed=seed), normalize, n_permutations=100) > 0) for seed in range(10)]
    assert sum(c["attenuation"] for c in called) <= 2 and sum(c["reinforcement"] for c in called) <= 2
    assert sum(c["separation"] for c in called) <= 2


def test_reinforcement_needs_two_words_and_says_so():
    traj, _ = planted()
    with pytest.raises(ValueError, match="neutral origin, the mean of the other words' vectors.*one word"):
        senses.reinforcement(traj)
    with pytest.raises(ValueError, match="no word column"):
        senses.reinforcement(tg.Trajectories(traj.states, traj.meta.drop(columns="word")))
    with pytest.raises(ValueError, match="n_permutations"):
        senses.reinforcement(random_traj(), n_permutations=-1)


@pytest.mark.parametrize("method", ["lda", "probe"])
def test_learned_directions_point_from_one_sense_to_the_other(method):
    traj, _ = planted(noise=0.2)
    fitted = senses.prototypes(traj, normalize=None)
    u = fitted.directions(traj, method=method, cv=4)
    a = (traj.meta["sense"] == "A").to_numpy()
    target = np.array([1.0, -1.0] + [0.0] * 6) / np.sqrt(2)
    assert (u[a, 0] @ target > 0.8).all() and (u[~a, 1] @ -target > 0.8).all()
    # cross-fitted: directions of different folds differ; a new example gets the full model's
    assert len(np.unique(u[a, 0].round(6), axis=0)) == 4
    new = tg.Trajectories(traj.states[:2], pd.DataFrame({"word": "w", "sense": ["A", "B"], "example": [-1, -2]}))
    u_new = fitted.directions(new, method=method)
    np.testing.assert_allclose(u_new[0, 0], u_new[1, 0])


@pytest.mark.parametrize("normalize,reference", [("standardize", "last"), (None, 1), ("center", "same")])
def test_scoring_one_word_at_a_time_gives_identical_results(monkeypatch, normalize, reference):
    traj = grouped_traj(seed=3)  # leave-group-out, with a group spanning two words (two blocks)
    # a third word whose rows interleave with the others', so blocks are not contiguous slices
    rng = np.random.default_rng(1)
    extra = tg.Trajectories(
        rng.normal(size=(6, traj.n_points, traj.d_model)).astype(np.float32),
        pd.DataFrame({"word": "u", "sense": list("pqpqpq"), "example": np.arange(6), "group": list("xxyzzz")}),
    )
    both = tg.concat([traj, extra])
    mixed = both[np.argsort(np.r_[np.arange(16) * 2, np.arange(6) * 5 + 1], kind="stable")]
    kw = dict(normalize=normalize, reference=reference)

    def run():
        fitted = senses.SensePrototypes(**kw).fit(mixed)
        out = [senses.curves(mixed, **kw), senses.commitment(mixed, **kw), fitted.transform(mixed)]
        if reference != "same":
            out.append(senses.superposition(mixed, **kw))
        return out

    at_once = run()
    monkeypatch.setattr(senses.estimator, "_SCORE_BLOCK_BYTES", 1)  # every word its own block
    blocks = [rows for rows, *_ in senses.SensePrototypes(**kw).fit(mixed)._score_blocks(mixed, None)]
    assert len(blocks) == 3
    # equal up to float rounding: BLAS may sum a (rows x d) product in another order for another
    # number of rows, so the last float32 bits of a cosine can differ between block sizes
    for a, b in zip(at_once, run()):
        if isinstance(a, pd.DataFrame):
            pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def duplicated_sentences(n_sent: int = 40, copies: int = 3, d: int = 30, seed: int = 0) -> tg.Trajectories:
    """Pure-noise sentences, each repeated ``copies`` times (tiny jitter) under one ``group``:
    labels carry no signal, so only a direction learned from a duplicate can "predict" them."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_sent, 3, d))
    states = np.repeat(base, copies, 0) + 0.01 * rng.normal(size=(n_sent * copies, 3, d))
    meta = pd.DataFrame(
        {
            "word": "w",
            "sense": np.repeat(np.array(["a", "b"] * (n_sent // 2)), copies),
            "group": np.repeat(np.arange(n_sent), copies),
        }
    )
    return tg.Trajectories(states.astype(np.float32), meta)


@pytest.mark.parametrize("method", ["lda", "probe"])
def test_cross_fitted_direction_never_comes_from_a_fold_holding_a_duplicate(method):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression

    traj = duplicated_sentences(n_sent=20)
    fitted = senses.prototypes(traj, normalize=None)
    u = fitted.directions(traj, method=method, cv=4)[:, 0]  # direction of sense "a" per example
    # fold membership read off the output: examples scored with the same model share a direction
    fold = np.unique(u.round(6), axis=0, return_inverse=True)[1].ravel()
    assert len(np.unique(fold)) == 4
    group = traj.meta["group"].to_numpy()
    # every duplicate of an example is held out with it...
    assert all(len(np.unique(fold[group == g])) == 1 for g in np.unique(group))
    # ...and, independently, each fold's direction is that of a model fitted without that fold
    x, y = traj.states[:, -1].astype(np.float64), traj.meta["sense"].to_numpy()
    for f in np.unique(fold):
        test = fold == f
        m = (
            LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
            if method == "lda"
            else LogisticRegression(max_iter=2000, random_state=0)
        ).fit(x[~test], y[~test])
        want = -m.coef_[0] / np.linalg.norm(m.coef_[0])  # classes_ = [a, b]: "a" is -coef
        np.testing.assert_allclose(u[test], np.broadcast_to(want, u[test].shape), rtol=1e-4, atol=1e-5)
    # without groups, duplicates do land in different folds: the check above could fail
    u_plain = senses.SensePrototypes(normalize=None, groups=None).fit(traj).directions(traj, method=method, cv=4)[:, 0]
    fold_plain = np.unique(u_plain.round(6), axis=0, return_inverse=True)[1].ravel()
    assert any(len(np.unique(fold_plain[group == g])) > 1 for g in np.unique(group))


@pytest.mark.parametrize("method", ["lda", "probe"])
def test_grouped_cross_fitting_removes_the_duplicate_sentence_leak(method):
    traj = duplicated_sentences()
    last = traj.points[-1]  # the reference point: where the directions were learned

    def mean_correct(groups):  # mean projection at the reference on each example's own-sense direction
        fitted = senses.SensePrototypes(normalize=None, groups=groups).fit(traj)
        u = fitted.directions(traj, method=method)
        own = fitted._score_keys(traj, None)[0]
        x = traj.states[:, traj.points == last][:, 0].astype(np.float64)
        return np.einsum("nd,nd->n", x, u[np.arange(traj.n_examples), own]).mean()

    # ungrouped folds let a direction learn the scored example from its duplicates: noise labels
    # look "resolved"; grouped folds see no signal, as there is none
    leaky, grouped = mean_correct(None), mean_correct("group")
    assert leaky > 0.4
    assert abs(grouped) < 0.25 and leaky - grouped > 0.3
    # the default reads the group column
    assert mean_correct("group") == grouped


def test_grouped_cross_fitting_errors_name_the_problem():
    traj = duplicated_sentences(n_sent=4, copies=3)  # two sentences per sense
    fitted = senses.prototypes(traj, normalize=None)
    fitted.directions(traj, method="lda", cv=5)  # folds capped at 2 groups per sense
    meta = traj.meta.assign(group=np.where(traj.meta["sense"] == "a", 0, traj.meta["group"]))
    one_group = tg.Trajectories(traj.states, meta)
    with pytest.raises(ValueError, match="sense 'a' has 1 group"):
        senses.prototypes(one_group, normalize=None).directions(one_group, method="lda")
    with pytest.raises(KeyError, match="sentence"):
        senses.SensePrototypes(groups="sentence").fit(traj)


@pytest.fixture(scope="module")
def tiny_components(wtok, tiny_model, span_frame, corpus):
    lm = load_model((tiny_model("llama", len(wtok), n_layers=3, seed=1), wtok))
    bank = span_frame(corpus[:4], "bank")
    bank["sense"] = ["river", "finance", "finance", "river"]
    the = span_frame([c for c in corpus if " the " in f" {c} "][:6], "the")
    the["sense"] = ["s1", "s2"] * 3
    df = pd.concat([bank, the], ignore_index=True)
    return tg.extract(lm, df, components=True, heads=True, progress=False)


@pytest.mark.parametrize("normalize", [None, "standardize"])
def test_attributions_add_up_to_the_change_of_the_projection(tiny_components, normalize):
    traj = tiny_components
    att = senses.attribution(traj, normalize=normalize)
    assert list(att.columns) == ["example", "word", "sense", "layer", "component", "head", "direction_point",
                                 "attribution"]
    assert (att["direction_point"] == traj.points[-1]).all()  # the reference's direction, said in each row
    assert set(att.component) == {"attn", "mlp", "head"} and (att.loc[att.component != "head", "head"] == -1).all()
    # independent: loop LOO direction in normalised space, projections of the normalised endpoints
    s = traj.states.astype(np.float64)
    ref = s[:, -1]
    mu, sd = ref.mean(0), (np.maximum(ref.std(0), 1e-6) if normalize == "standardize" else 1.0)
    if normalize is None:
        mu = 0.0
    z_ref = (ref - mu) / sd
    words, sens = traj.meta["word"].to_numpy(), traj.meta["sense"].to_numpy()
    total = att[att.component != "head"].groupby("example")["attribution"].sum()
    for i in range(traj.n_examples):
        u = brute_direction(z_ref, words, sens, i)
        change = ((s[i, -1] - mu) / sd - (traj.aux["block_input"][i] - mu) / sd) @ u
        assert abs(total.loc[traj.meta["example"][i]] - change) <= 1e-4 * max(1.0, abs(change))
    heads = att[att.component == "head"].groupby(["example", "layer"])["attribution"].sum()
    attn = att[att.component == "attn"].set_index(["example", "layer"])["attribution"]
    np.testing.assert_allclose(heads.loc[attn.index], attn, atol=1e-5)


@pytest.mark.parametrize("normalize", [None, "standardize"])
@pytest.mark.parametrize("direction_point", ["same", "previous"])
def test_per_layer_attributions_add_up_to_the_change_across_each_block(tiny_components, normalize, direction_point):
    """(attn_l + mlp_l) . w_l = (h_l - h_{l-1}) . w_l with w_l the direction found at point l (or l - 1),
    in that point's normalisation; checked against loop directions and the states themselves."""
    traj = tiny_components
    att = senses.attribution(traj, normalize=normalize, direction_point=direction_point)
    offset = 1 if direction_point == "previous" else 0
    assert (att["direction_point"] == att["layer"] - offset).all()
    s = traj.states.astype(np.float64)
    words, sens = traj.meta["word"].to_numpy(), traj.meta["sense"].to_numpy()
    groups = traj.group_codes()
    blocks = att[att.component != "head"].groupby(["layer", "example"])["attribution"].sum(min_count=1)
    for layer in range(1, traj.n_points):
        p = layer - offset
        x = s[:, p]
        mu, sd = x.mean(0), (np.maximum(x.std(0), 1e-6) if normalize == "standardize" else 1.0)
        z_p = (x - mu) / sd if normalize else x
        before = traj.aux["block_input"] if layer == 1 else s[:, layer - 1]
        got = blocks.loc[layer].loc[traj.meta["example"]].to_numpy()
        if p == 0:  # point 0 is one embedding per word: no direction, no attribution
            assert np.isnan(got).all()
            continue
        for i in range(traj.n_examples):
            u = brute_direction(z_p, words, sens, i, groups)
            change = ((s[i, layer] - before[i]) / sd) @ u
            assert abs(got[i] - change) <= 1e-4 * max(1.0, abs(change)), (layer, i)
    heads = att[att.component == "head"].groupby(["example", "layer"])["attribution"].sum(min_count=1)
    attn = att[att.component == "attn"].set_index(["example", "layer"])["attribution"]
    np.testing.assert_allclose(heads.loc[attn.index], attn, atol=1e-5)


def test_attribution_identity_holds_for_learned_directions(tiny_components):
    traj = tiny_components
    att = senses.attribution(traj, direction="probe", normalize="standardize", cv=2)
    fitted = senses.prototypes(traj)
    u = fitted.directions(traj, method="probe", cv=2)
    own = pd.MultiIndex.from_frame(fitted.groups_[["word", "sense"]]).get_indexer(
        pd.MultiIndex.from_frame(traj.meta[["word", "sense"]]))
    norm = PointNormalizer("standardize").fit(traj.states[:, [-1]])
    end = norm.transform(traj.states[:, [-1]])[:, 0]
    start = norm.transform(traj.aux["block_input"][:, None])[:, 0]
    change = np.einsum("nd,nd->n", end - start, u[np.arange(len(own)), own])
    total = att[att.component != "head"].groupby("example")["attribution"].sum()
    np.testing.assert_allclose(total.loc[traj.meta["example"]], change, atol=1e-4)


# ============================================================== nearest centroid
def two_word_planted(seed: int = 2) -> tg.Trajectories:
    """Word "w" (senses a, b, c; separable from point 2 on) and word "v" (x, y; never separable)."""
    rng = np.random.default_rng(seed)
    states = rng.normal(size=(30, 4, 6)).astype(np.float32)
    meta = pd.DataFrame({"word": ["w"] * 18 + ["v"] * 12, "sense": list("abc" * 6) + list("xy" * 6)})
    states[(meta["sense"] == "a").to_numpy(), 2:, 0] += 8.0
    states[(meta["sense"] == "b").to_numpy(), 2:, 1] += 8.0
    order = rng.permutation(len(meta))  # words interleaved
    return tg.Trajectories(states[order], meta.iloc[order].reset_index(drop=True))


def test_nearest_centroid_accuracy_matches_brute_force_per_word(brute_loo_centroid_accuracy):
    traj = two_word_planted()
    acc = senses.nearest_centroid_accuracy(traj, normalize="center")
    assert list(acc.columns) == ["word", "point", "n_examples", "accuracy"]
    for w, g in acc.groupby("word"):
        rows = (traj.meta["word"] == w).to_numpy()
        brute = brute_loo_centroid_accuracy(traj.states[rows], traj.meta["sense"].to_numpy()[rows])
        np.testing.assert_allclose(g["accuracy"], brute)
        assert (g["n_examples"] == rows.sum()).all() and list(g["point"]) == list(traj.points)
    w = acc[acc.word == "w"].set_index("point")["accuracy"]
    assert w.loc[2:].min() > 0.9 and w.loc[:1].max() < 0.6  # the planted separation from point 2 on


def test_nearest_centroid_accuracy_is_the_same_point_prototype_rule_fitted_per_word():
    """The default normalisation ("standardize"), fitted on each word's own examples, against the
    loop reference of leave-one-out prototypes at the same point."""
    traj = two_word_planted(seed=4)
    acc = senses.nearest_centroid_accuracy(traj)
    for w, g in acc.groupby("word"):
        sub = traj[(traj.meta["word"] == w).to_numpy()]
        margin = brute_cos_margin(sub, "standardize", "same")[1]
        np.testing.assert_allclose(g["accuracy"], (margin > 1e-6).mean(0))


@pytest.mark.parametrize("normalize", [None, "center"])
def test_nearest_centroid_tied_point_is_no_answer_and_one_sense_word_is_skipped(normalize):
    rng = np.random.default_rng(1)
    states = rng.normal(size=(12, 3, 5)).astype(np.float32)
    states[:, 0] = states[0, 0]  # point 0 is shared by every context: no answer is possible
    meta = pd.DataFrame({"word": ["w"] * 10 + ["u"] * 2, "sense": ["x", "y"] * 5 + ["z", "z"]})
    with pytest.warns(UserWarning, match="single sense \\('u'\\)"):
        acc = senses.nearest_centroid_accuracy(tg.Trajectories(states, meta), normalize=normalize)
    w = acc[acc.word == "w"]
    assert np.isnan(w["accuracy"].iloc[0]) and w["accuracy"].iloc[1:].notna().all()
    assert "u" not in set(acc.word)
    no_word = senses.nearest_centroid_accuracy(tg.Trajectories(states[:10], meta.drop(columns="word")[:10]))
    assert list(no_word.columns) == ["point", "n_examples", "accuracy"]


def test_stable_point_from_the_shared_fit_equals_its_own_per_point_fit():
    """commitment scores the per-point prototypes from the sums of the reference fit (a whitening at a
    fixed reference needs its own per-point fit): stable points must equal those of reference='same'."""
    traj, _ = planted(noise=0.35, n_per_sense=15, seed=4)
    for normalize in ("standardize", "whiten"):
        a = senses.commitment(traj, reference="last", normalize=normalize)["stable_point"]
        b = senses.commitment(traj, reference="same", normalize=normalize)["commitment_point"]
        c = senses.commitment(traj, reference="same", normalize=normalize)["stable_point"]
        pd.testing.assert_series_equal(a, c)
        assert 0 < a.isna().sum() < len(a)  # noisy enough that some never become stable
    np.testing.assert_array_equal(b.to_numpy(), c.to_numpy())  # with 'same', margin > 0 is the prediction


# ============================================================== signatures
def test_old_keyword_and_positional_forms_warn_and_give_the_same_results():
    traj = random_traj()
    new = senses.curves(traj, labels="sense", word="word", reference=1, normalize=None)
    with pytest.warns(DeprecationWarning, match="'by' is deprecated.*'word'"):
        pd.testing.assert_frame_equal(senses.curves(traj, by="word", reference=1, normalize=None), new)
    with pytest.warns(DeprecationWarning, match="by position"):
        pd.testing.assert_frame_equal(senses.curves(traj, "sense", 1, None, "word"), new)
    with pytest.warns(DeprecationWarning, match="by position"):
        old = senses.commitment(traj, 0.05, "sense", "last", None)
    pd.testing.assert_frame_equal(old, senses.commitment(traj, threshold=0.05, normalize=None))
    with pytest.warns(DeprecationWarning):
        old = senses.reinforcement(traj, "sense", "same", None, "prototype", "word")
    pd.testing.assert_frame_equal(old, senses.reinforcement(traj, normalize=None))
    with pytest.warns(DeprecationWarning):
        old = senses.prototypes(traj, "sense", None, "word", "last").sums_
    np.testing.assert_array_equal(old, senses.prototypes(traj, normalize=None).sums_)
    with pytest.warns(DeprecationWarning, match="'by' is deprecated"):
        est = senses.SensePrototypes(by="word", normalize=None)
    assert est.word == "word" and not hasattr(est, "by")
    with pytest.warns(DeprecationWarning, match="by position"):
        assert senses.SensePrototypes("sense", None).word is None
    with pytest.warns(DeprecationWarning, match="by position"):
        old = est.fit(traj).directions(traj, "prototype")
    np.testing.assert_array_equal(old, est.directions(traj, method="prototype"))
    with pytest.raises(TypeError, match="both 'by'"):
        senses.curves(traj, by="word", word="word")


def test_sense_prototypes_is_a_scikit_learn_estimator():
    from sklearn.base import clone

    est = senses.SensePrototypes(word="lemma", normalize=None, reference=1)
    params = est.get_params()
    assert params == dict(labels="sense", word="lemma", groups="group", reference=1, normalize=None,
                          leave_one_out=True)
    traj = random_traj()
    copy = clone(est).set_params(word="word")
    np.testing.assert_array_equal(copy.fit(traj).sums_, senses.prototypes(traj, reference=1, normalize=None).sums_)
    assert not hasattr(est, "sums_")  # clone left the original unfitted


def test_word_may_be_an_array_of_words():
    traj = random_traj()
    a = senses.curves(traj, word=traj.meta["word"].to_numpy())
    pd.testing.assert_frame_equal(a, senses.curves(traj))
    with pytest.raises(ValueError, match="got 3 labels for 16 examples"):
        senses.curves(traj, word=["w", "v", "w"])



def test_bad_input_gives_clear_errors(tiny_components):
    traj = random_traj()
    with pytest.raises(KeyError, match="nope"):
        senses.curves(traj, labels="nope")
    with pytest.raises(ValueError, match="reference point 9"):
        senses.curves(traj, reference=9)
    with pytest.raises(ValueError, match="reference"):
        senses.curves(traj, reference="first")
    with pytest.raises(KeyError, match="components"):
        senses.attribution(traj)
    with pytest.raises(ValueError, match="'same'"):
        senses.attribution(tiny_components, reference="same")
    with pytest.raises(ValueError, match=r"direction_point='same' needs points \[1, 2\]"):
        senses.attribution(tiny_components.select_points([0, 3]), direction_point="same")
    with pytest.raises(ValueError, match="direction_point must be"):
        senses.attribution(tiny_components, direction_point="last")
    with pytest.raises(ValueError, match="point 0"):
        senses.superposition(traj.select_points([1, 2, 3]))
    with pytest.raises(ValueError, match="direction 'pca'"):
        senses.reinforcement(traj, direction="pca")
    with pytest.raises(ValueError, match="direction"), pytest.warns(DeprecationWarning):
        senses.reinforcement(traj, direction="pca", reference="last")
    meta = traj.meta.copy()
    meta.loc[3, "sense"] = None
    with pytest.raises(ValueError, match="missing for examples \\[103\\]"):
        senses.curves(tg.Trajectories(traj.states, meta))


def lazy_copy(traj: tg.Trajectories, tmp_path) -> tg.Trajectories:
    traj.save(tmp_path / "t.zarr")
    lazy = tg.load(tmp_path / "t.zarr", lazy=True)
    # several chunks along examples, so that every sum really is taken chunk by chunk
    rechunk = lambda a: a.rechunk((4,) + a.shape[1:])  # noqa: E731
    return tg.Trajectories(
        rechunk(lazy.states), lazy.meta, {k: rechunk(v) for k, v in lazy.components.items()},
        {k: rechunk(v) for k, v in lazy.aux.items()}, lazy.points, lazy.model_info,
    )


@pytest.mark.parametrize("normalize,reference", [("standardize", "last"), ("whiten", "same"), (None, 2)])
def test_lazy_store_gives_the_same_numbers_as_memory(tmp_path, normalize, reference):
    traj = grouped_traj(seed=7)  # leave-group-out reads the group's rows from the store
    lazy = lazy_copy(traj, tmp_path)
    assert lazy.is_lazy and lazy.states.numblocks[0] > 1
    mem_p = senses.prototypes(traj, normalize=normalize, reference=reference)
    lazy_p = senses.prototypes(lazy, normalize=normalize, reference=reference)
    np.testing.assert_allclose(lazy_p.sums_, mem_p.sums_, rtol=1e-6, atol=1e-6)
    for fn in (senses.curves, senses.commitment):
        a, b = fn(traj, normalize=normalize, reference=reference), fn(lazy, normalize=normalize, reference=reference)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)
    a = senses.reinforcement(traj, normalize=normalize, n_permutations=5, return_result=True)
    b = senses.reinforcement(lazy, normalize=normalize, n_permutations=5, return_result=True)
    for x, y in ((a.projections, b.projections), (a.summary, b.summary)):
        pd.testing.assert_frame_equal(x, y, check_exact=False, rtol=1e-5, atol=1e-6)


def test_lazy_attribution_and_distributed_cluster_match_memory(tmp_path, tiny_components):
    distributed = pytest.importorskip("distributed")
    lazy = lazy_copy(tiny_components, tmp_path)
    mem = senses.attribution(tiny_components)
    pd.testing.assert_frame_equal(senses.attribution(lazy), mem, check_exact=False, rtol=1e-5, atol=1e-6)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cl, \
            distributed.Client(cl):
        a = senses.curves(lazy)
    pd.testing.assert_frame_equal(a, senses.curves(tiny_components), check_exact=False, rtol=1e-5, atol=1e-6)


# ============================================================== real model
@pytest.mark.slow
def test_smollm2_bank_margin_rises_from_zero_to_clearly_positive(smollm2, balanced_bank):
    stats = pytest.importorskip("trajgeo.stats")
    df = balanced_bank(per_sense=20)
    traj = tg.extract(smollm2, df, progress=False, batch_size=16)
    curves = senses.curves(traj)
    margin = curves[curves.metric == "margin"]
    ci = stats.bootstrap_ci(margin, value="value", by=("point",), unit="example", n_boot=1000, random_state=0)
    ci = ci.set_index("point")
    print(ci.round(3).to_string())
    # measured (standardize, reference="last"): 0.000 at point 0, 0.04 at point 20, 0.17 at 24,
    # 0.69 at 30, with every interval from point 20 on above 0
    assert abs(ci.loc[0, "mean"]) < 0.02 and ci.loc[0, "ci_low"] < 0 < ci.loc[0, "ci_high"]
    upper = ci.loc[ci.index >= 20]
    assert (upper["ci_low"] > 0).all()
    assert ci.loc[ci.index >= 25, "mean"].min() > 0.1 and ci.loc[30, "mean"] > 0.4


def test_a_dimension_constant_at_the_reference_does_not_blank_earlier_points():
    """MiniLM's last point has a dimension of zero variance; statistics of the reference point applied
    everywhere divided the other points by ~0 there, and every margin before the last point came out 0.
    Per-point statistics keep the planted separation visible at every point."""
    rng = np.random.default_rng(5)
    n, p, d = 40, 4, 12
    y = np.repeat([0, 1], n // 2)
    states = rng.normal(size=(n, p, d))
    states[:, :, 1] += np.where(y == 0, 3.0, -3.0)[:, None]  # senses separate on dim 1 at every point
    states[:, -1, 0] = 5.0  # constant at the reference point...
    states[:, :-1, 0] *= 50.0  # ...and large, sense-free noise before it
    traj = tg.Trajectories(states.astype(np.float32), pd.DataFrame({"sense": np.array(["A", "B"])[y]}))
    m = senses.curves(traj, reference="last").query("metric == 'margin'").groupby("point")["value"].mean()
    assert (m > 0.2).all(), m.to_dict()
