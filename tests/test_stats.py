"""Statistics: bootstrap coverage on a known mean, permutation p-values under a planted shift and
under the null, paired differences against brute force."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trajgeo import stats


def long_frame(values: np.ndarray, **extra) -> pd.DataFrame:
    """values of shape (n_examples, n_points) -> example, point, metric, value."""
    n, p = values.shape
    df = pd.DataFrame({"example": np.repeat(np.arange(n), p), "point": np.tile(np.arange(p), n),
                       "metric": "margin", "value": values.ravel()})
    for k, v in extra.items():
        df[k] = np.repeat(np.asarray(v), p)
    return df


def test_bootstrap_mean_and_n_match_pandas_and_interval_brackets_the_mean():
    rng = np.random.default_rng(0)
    df = long_frame(rng.normal(size=(40, 5)) + np.arange(5))
    out = stats.bootstrap_ci(df, n_boot=500)
    assert list(out.columns) == ["point", "mean", "ci_low", "ci_high", "n"]
    np.testing.assert_allclose(out["mean"], df.groupby("point")["value"].mean().to_numpy())
    assert (out["n"] == 40).all()
    assert ((out["ci_low"] < out["mean"]) & (out["mean"] < out["ci_high"])).all()


def test_bootstrap_matches_a_brute_force_loop_with_the_same_draws():
    rng = np.random.default_rng(1)
    df = long_frame(rng.exponential(size=(15, 2)))
    out = stats.bootstrap_ci(df, n_boot=300, ci=0.9, random_state=4)
    # brute force: the same multinomial draw counts, one sample at a time
    draws = np.random.default_rng(4).multinomial(15, np.full(15, 1 / 15), size=300)
    wide = df.pivot(index="example", columns="point", values="value").to_numpy()
    boot = np.array([[np.repeat(wide[:, p], c).mean() for p in range(2)] for c in draws])
    np.testing.assert_allclose(out["ci_low"], np.quantile(boot, 0.05, axis=0), rtol=1e-10)
    np.testing.assert_allclose(out["ci_high"], np.quantile(boot, 0.95, axis=0), rtol=1e-10)


def test_bootstrap_interval_covers_a_known_mean_about_95_percent_of_the_time():
    # 200 independent data sets of 30 skewed draws with mean 1; each cell of `point` is one data set
    rng = np.random.default_rng(2)
    df = long_frame(rng.exponential(1.0, size=(30, 200)))
    out = stats.bootstrap_ci(df, n_boot=1000, ci=0.95, random_state=0)
    coverage = ((out["ci_low"] <= 1.0) & (1.0 <= out["ci_high"])).mean()
    assert 0.86 <= coverage <= 0.99  # percentile bootstrap under-covers a little at n=30


def test_cluster_bootstrap_over_groups_is_wider_than_over_correlated_examples():
    rng = np.random.default_rng(3)
    group = np.repeat(np.arange(10), 8)  # 10 sentences of 8 strongly correlated examples
    vals = (rng.normal(size=10)[group] + 0.1 * rng.normal(size=80))[:, None]
    df = long_frame(vals, group=group)
    by_example = stats.bootstrap_ci(df, unit="example", random_state=0)
    by_group = stats.bootstrap_ci(df, unit="group", random_state=0)
    assert by_group["n"].item() == 10 and by_example["n"].item() == 80
    width = lambda o: (o["ci_high"] - o["ci_low"]).item()  # noqa: E731
    assert width(by_group) > 2 * width(by_example)


def test_bootstrap_refuses_mixed_metrics_missing_columns_and_bad_ci():
    df = long_frame(np.ones((4, 2)))
    mixed = pd.concat([df, df.assign(metric="cos")])
    with pytest.raises(ValueError, match="metric"):
        stats.bootstrap_ci(mixed)
    assert len(stats.bootstrap_ci(mixed, by=("point", "metric"), n_boot=10)) == 4
    with pytest.raises(KeyError, match="group"):
        stats.bootstrap_ci(df, unit="group")
    with pytest.raises(ValueError, match="ci must be"):
        stats.bootstrap_ci(df, ci=95)


def test_bootstrap_is_reproducible_with_random_state():
    df = long_frame(np.random.default_rng(5).normal(size=(20, 3)))
    pd.testing.assert_frame_equal(stats.bootstrap_ci(df, random_state=7), stats.bootstrap_ci(df, random_state=7))
    assert not stats.bootstrap_ci(df, random_state=7).equals(stats.bootstrap_ci(df, random_state=8))


def test_permutation_p_value_is_small_for_a_planted_shift():
    rng = np.random.default_rng(6)
    base = rng.normal(size=(40, 1))
    vals = np.hstack([base, base + 0.5 + 0.3 * rng.normal(size=(40, 1))])  # point 1 larger by 0.5
    out = stats.permutation_test(long_frame(vals), a=1, b=0, n_permutations=5000)
    assert list(out.columns) == ["a", "b", "statistic", "p_value", "n"]
    assert out["p_value"].item() < 0.001 and out["statistic"].item() == pytest.approx(
        (vals[:, 1] - vals[:, 0]).mean())
    # the other direction is not significant
    assert stats.permutation_test(long_frame(vals), a=0, b=1, n_permutations=2000)["p_value"].item() > 0.99


def test_permutation_p_values_are_roughly_uniform_without_an_effect():
    rng = np.random.default_rng(7)
    pvals = []
    for seed in range(200):
        vals = rng.normal(size=(20, 2))
        pvals.append(stats.permutation_test(long_frame(vals), a=1, b=0, n_permutations=199,
                                            random_state=seed)["p_value"].item())
    pvals = np.array(pvals)
    from scipy.stats import kstest

    assert kstest(pvals, "uniform").pvalue > 0.01  # discrete p-values on a 1/200 grid: close to uniform
    assert 0.005 <= np.mean(pvals <= 0.05) <= 0.11  # binomial(200, 0.05): 10 +- 3
    assert 0.4 <= np.mean(pvals <= 0.5) <= 0.6


def test_permutation_p_value_matches_exact_enumeration_for_few_units():
    # 8 units: the exact sign-flip distribution has 256 equally likely members
    import itertools

    d = np.array([0.9, 0.4, 1.2, -0.2, 0.7, 0.3, 0.5, -0.1])
    vals = np.stack([np.zeros(8), d], axis=1)
    exact = np.mean([np.mean(np.array(s) * d) >= d.mean() - 1e-12
                     for s in itertools.product([-1, 1], repeat=8)])
    got = stats.permutation_test(long_frame(vals), a=1, b=0, n_permutations=40000)["p_value"].item()
    assert got == pytest.approx(exact, abs=0.006)


def test_permutation_test_per_word_and_errors():
    rng = np.random.default_rng(8)
    vals = rng.normal(size=(30, 2))
    vals[:15, 1] += 2.0  # only word "a" shifts
    df = long_frame(vals, word=["a"] * 15 + ["b"] * 15)
    out = stats.permutation_test(df, a=1, b=0, by="word", n_permutations=2000).set_index("word")
    assert out.loc["a", "p_value"] < 0.01 < out.loc["b", "p_value"]
    with pytest.raises(KeyError, match="point=9"):
        stats.permutation_test(df, a=9, b=0)
    with pytest.raises(ValueError, match="alternative"):
        stats.permutation_test(df, a=1, b=0, alternative="bigger")


def test_paired_difference_matches_per_unit_differences():
    rng = np.random.default_rng(9)
    a = rng.normal(size=(25, 3))
    b = a - 0.4 + 0.2 * rng.normal(size=(25, 3))  # model A is higher by 0.4 at every point
    df = pd.concat([long_frame(a).assign(model="A"), long_frame(b).assign(model="B")], ignore_index=True)
    out = stats.paired_difference(df, "A", "B", column="model", n_boot=500, n_permutations=2000)
    assert list(out.columns) == ["point", "mean_a", "mean_b", "difference", "ci_low", "ci_high", "p_value", "n"]
    np.testing.assert_allclose(out["difference"], (a - b).mean(0))
    np.testing.assert_allclose(out["mean_a"], a.mean(0))
    assert ((out["ci_low"] > 0.2) & (out["ci_high"] < 0.6)).all()
    assert (out["p_value"] < 0.001).all() and (out["n"] == 25).all()
    # the interval is the bootstrap of the per-unit differences
    diff = long_frame(a - b)
    np.testing.assert_allclose(out["ci_low"], stats.bootstrap_ci(diff, n_boot=500)["ci_low"])


def test_paired_difference_pairs_conditions_by_group():
    # cue before vs after: different examples, paired by the sentence group they share
    rng = np.random.default_rng(10)
    g = np.arange(30)
    before = pd.DataFrame({"example": g, "group": g, "cue_position": "before", "point": 0,
                           "value": rng.normal(size=30)})
    after = before.assign(example=g + 100, cue_position="after", value=before["value"] + 1.0)
    out = stats.paired_difference(pd.concat([before, after]), "after", "before", column="cue_position",
                                  unit="group", n_boot=200, n_permutations=500)
    assert out["difference"].item() == pytest.approx(1.0) and out["n"].item() == 30


def test_bootstrap_weights_draw_whole_units_like_a_brute_force_multinomial():
    units = np.array(["s2", "s1", "s2", "s3", "s1", "s2"])
    w = stats.bootstrap_weights(units, n_boot=400, random_state=11)
    assert w.shape == (400, 6)
    # units are numbered by first appearance (s2, s1, s3) and drawn with the same generator
    draws = np.random.default_rng(11).multinomial(3, np.full(3, 1 / 3), size=400)
    np.testing.assert_array_equal(w, draws[:, [0, 1, 0, 2, 1, 0]])
    # rows of one unit move together; every replicate draws as many units as there are
    assert (w[:, 0] == w[:, 2]).all() and (w[:, 0] == w[:, 5]).all() and (w[:, 1] == w[:, 4]).all()
    np.testing.assert_array_equal(w[:, [0, 1, 3]].sum(1), 3)
    # every unit is drawn 1 time per replicate on average
    assert abs(w[:, 3].mean() - 1) < 0.15
    with pytest.raises(ValueError, match="missing for rows \\[1\\]"):
        stats.bootstrap_weights(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="n_boot"):
        stats.bootstrap_weights(units, n_boot=0)


def test_percentile_interval_equals_numpy_quantiles_and_keeps_all_nan_columns_nan():
    rng = np.random.default_rng(12)
    b = rng.normal(size=(500, 3))
    b[:, 2] = np.nan  # e.g. log-loss of a probe without probabilities
    b[:10, 1] = np.nan  # a few replicates that left a cell empty
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no all-NaN RuntimeWarning
        low, high = stats.percentile_interval(b, ci=0.9)
    np.testing.assert_allclose([low[0], high[0]], np.quantile(b[:, 0], [0.05, 0.95]))
    np.testing.assert_allclose([low[1], high[1]], np.quantile(b[10:, 1], [0.05, 0.95]))
    assert np.isnan(low[2]) and np.isnan(high[2])
    with pytest.raises(ValueError, match="ci must be"):
        stats.percentile_interval(b, ci=1.5)


# ------------------------------------------------------------------ the group-respecting permutation null
def test_group_permutations_move_whole_label_vectors_among_groups_of_one_size():
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 6, 6])
    labels = np.array(list("aabbabcabccc"))
    perms = stats.group_permutations(labels, groups=groups, n_permutations=200, random_state=3)
    assert perms.shape == (200, len(labels))
    for p in perms:
        assert sorted(p) == list(range(len(labels)))  # a permutation of the examples
        for g in np.unique(groups):
            members = np.flatnonzero(groups == g)
            source = groups[p[members]]
            assert len(set(source)) == 1  # one group's labels, never a mix of two groups
            assert (groups == source[0]).sum() == len(members)  # from a group of the same size
            # the label vector arrives in member order
            np.testing.assert_array_equal(p[members], np.flatnonzero(groups == source[0]))
    # the three pairs are exchanged: every pair receives every pair's labels at some point
    first_pair = {int(groups[p[0]]) for p in perms}
    assert first_pair == {0, 1, 2}
    np.testing.assert_array_equal(perms, stats.group_permutations(labels, groups=groups, n_permutations=200,
                                                                  random_state=3))


def test_ungrouped_permutations_are_uniform():
    perms = stats.group_permutations(np.arange(5), n_permutations=20000, random_state=0)
    where_zero = np.argmax(perms == 0, axis=1)  # position that receives example 0's label
    freq = np.bincount(where_zero, minlength=5) / len(perms)
    np.testing.assert_allclose(freq, 0.2, atol=0.015)


def test_mixed_groups_are_reported():
    labels = ["a", "a", "a", "b", "b", "b"]
    groups = ["s1", "s1", "s2", "s2", "s3", "s3"]
    assert list(stats.mixed_groups(labels, groups)) == ["s2"]


def _class_mean_gap(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|mean of class 1 - mean of class 0| per point (columns of x)."""
    return np.abs(x[y == 1].mean(0) - x[y == 0].mean(0))


def test_null_table_finds_a_planted_point_and_reports_its_threshold():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    x = rng.normal(size=(60, 8))
    x[:, 5] += 1.5 * y  # the planted point
    obs, null = stats.permuted_statistic(lambda lab: _class_mean_gap(x, lab), y, n_permutations=500,
                                         random_state=1)
    table = stats.null_table(obs, null, points=np.arange(8) * 2)
    assert list(table.columns) == ["point", "value", *stats.NULL_COLUMNS]
    assert table["point"].tolist() == list(range(0, 16, 2))
    significant = table.loc[table["value"] > table["null_fwer"], "point"].tolist()
    assert significant == [10]
    assert table.loc[5, "p_fwer"] <= 1 / 501 + 1e-12 and table.loc[5, "p_value"] <= 1 / 501 + 1e-12
    # the family-wise threshold is the 25th largest of the 500 permutations' maxima over points:
    # exceeding it is p_fwer <= (1 + 24) / 501 < 0.05, reaching it is not
    np.testing.assert_allclose(table["null_fwer"], np.sort(null.max(1))[::-1][24])
    np.testing.assert_allclose(table["null_q95"], np.quantile(null, 0.95, axis=0))
    np.testing.assert_allclose(table["p_value"], (1 + (null >= obs).sum(0)) / 501)
    assert (table["null_fwer"] >= table["null_q95"]).all()


def test_the_family_wise_threshold_and_p_fwer_never_disagree():
    # small discrete nulls are where an interpolated quantile and the permutation p-value part ways
    rng = np.random.default_rng(3)
    for n in (19, 20, 39, 99, 100, 199, 1000):
        null = rng.integers(0, 12, size=(n, 6)) / 12.0  # many ties, as accuracies on few examples have
        obs = rng.integers(0, 13, size=6) / 12.0
        table = stats.null_table(obs, null)
        np.testing.assert_array_equal(table["value"] > table["null_fwer"], table["p_fwer"] <= 0.05, err_msg=str(n))
    # with fewer than 19 permutations no value can reach 5%: no threshold
    assert np.isnan(stats.null_table(obs, null[:18])["null_fwer"]).all()
    assert stats.critical_value(np.arange(19.0)) == 18.0 and stats.critical_value(np.arange(39.0)) == 37.0


def test_null_table_stays_silent_on_data_without_signal_at_the_nominal_rate():
    # 300 data sets without signal, 10 points each: a point above the family-wise threshold should
    # appear in about 5% of data sets (binomial sd 1.3%); the pointwise q95 would fire far more often.
    fired_fwer = fired_pointwise = 0
    n_sets = 300
    for seed in range(n_sets):
        rng = np.random.default_rng(seed)
        y = np.repeat([0, 1], 12)
        groups = np.repeat(np.arange(12), 2)  # sentence pairs share a sense
        x = rng.normal(size=(24, 10)) + rng.normal(size=(12, 10)).repeat(2, axis=0)  # correlated within group
        obs, null = stats.permuted_statistic(lambda lab: _class_mean_gap(x, lab), y, groups=groups,
                                             n_permutations=99, random_state=seed)
        table = stats.null_table(obs, null)
        fired_fwer += bool((table["value"] > table["null_fwer"]).any())
        fired_pointwise += bool((table["value"] > table["null_q95"]).any())
    assert fired_fwer / n_sets <= 0.05 + 3 * 0.0126, fired_fwer
    assert fired_pointwise / n_sets > 0.2, fired_pointwise  # why the max statistic is needed


def test_two_sided_null_table_flags_deviations_both_ways():
    rng = np.random.default_rng(2)
    obs = np.array([0.0, 3.0, -3.0, 0.1])
    null = rng.normal(size=(400, 4))
    table = stats.null_table(obs, null, alternative="two-sided")
    dev = np.abs(obs - null.mean(0))
    assert ((dev > table["null_fwer"] - table["null_mean"]).to_numpy() == [False, True, True, False]).all()


def test_holm_equals_its_definition_and_skips_nan():
    p = np.array([0.01, np.nan, 0.04, 0.03, 0.5])
    got = stats.holm(p)
    ok = ~np.isnan(p)
    vals = p[ok]
    order = np.argsort(vals)
    m = len(vals)
    want_sorted = np.maximum.accumulate([min(1.0, (m - i) * vals[order][i]) for i in range(m)])
    want = np.empty(m)
    want[order] = want_sorted
    np.testing.assert_allclose(got[ok], want)
    assert np.isnan(got[1])


def test_permutation_count_is_validated():
    with pytest.raises(ValueError, match="positive int"):
        stats.group_permutations([0, 1], n_permutations=0)
    with pytest.raises(ValueError, match="groups contain missing"):
        stats.group_permutations([0, 1], groups=[1, None], n_permutations=3)
