"""Probes: planted signal, the control task (pooled words only, refused elsewhere), MDL, leakage
through duplicated sentences, split errors, determinism, brute-force references for 1-NN / prototype /
metrics, transfer, one sweep per word, the ProbeSweep result, old call forms, SmolLM2 on bank; the
ridge probe against scikit-learn; the permutation null against refitting per permutation, the
family-wise resolution point, Holm across words and the no-signal rate; the surface-cue baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, RidgeClassifier, RidgeClassifierCV
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score, log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import trajgeo as tg
from trajgeo import probes
from trajgeo.probes.ridge import shared_predictions

SIGNAL_POINTS = [3, 4, 5]


def planted(n: int = 240, n_points: int = 8, d: int = 16, points=SIGNAL_POINTS, strength: float = 1.5,
            seed: int = 0) -> tuple[tg.Trajectories, np.ndarray]:
    """Random trajectories with a two-class signal on dimension 0 at the given points only."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, n_points, d)).astype(np.float32)
    points = [p for p in points if p < n_points]
    x[:, points, 0] += ((2 * y - 1) * strength)[:, None]
    meta = pd.DataFrame({"sense": np.where(y == 1, "river", "finance"), "word": "bank"})
    return tg.Trajectories(x, meta), y


def summary(df: pd.DataFrame, metric: str) -> np.ndarray:
    return df[(df.fold == -1) & (df.metric == metric)].sort_values("point")["value"].to_numpy()


def per_fold(df: pd.DataFrame, metric: str) -> np.ndarray:
    """(n_folds, n_points) values of one metric."""
    d = df[(df.fold >= 0) & (df.metric == metric)]
    return d.pivot(index="fold", columns="point", values="value").to_numpy()


@pytest.fixture(scope="module")
def planted_result():
    traj, y = planted()
    return traj, y, probes.layerwise(traj, n_boot=200, progress=False)


def test_layerwise_returns_the_contract(planted_result):
    traj, _, df = planted_result
    # the planted data are one word ("bank"): its name leads every row
    assert list(df.columns) == ["word", "point", "fold", "metric", "value", "ci_low", "ci_high"]
    assert set(df.word) == {"bank"}
    assert list(pd.unique(df.metric)) == list(probes.METRICS)
    assert set(df.fold) == {-1, 0, 1, 2, 3, 4}
    assert df[df.fold >= 0][["ci_low", "ci_high"]].isna().all().all()
    # the control task is off by default: its rows are there, empty
    assert df[df.metric.isin(["control_accuracy", "selectivity"])]["value"].isna().all()
    s = df[(df.fold == -1) & ~df.metric.isin(["log_loss", "control_accuracy", "selectivity"])]
    assert s["value"].notna().all()
    assert (s.ci_low <= s.value + 1e-9).all() and (s.value <= s.ci_high + 1e-9).all()
    # summary value = mean of the fold rows
    assert np.allclose(summary(df, "accuracy"), per_fold(df, "accuracy").mean(0))


def test_probe_finds_exactly_the_planted_points(planted_result):
    _, _, df = planted_result
    acc = summary(df, "accuracy")
    off = [p for p in range(len(acc)) if p not in SIGNAL_POINTS]
    assert (acc[SIGNAL_POINTS] > 0.8).all()
    assert (acc[off] < 0.65).all()
    assert (summary(df, "macro_f1")[SIGNAL_POINTS] > 0.8).all()


def pooled_words(n_words: int = 8, per_word: int = 40, n_points: int = 8, d: int = 16, seed: int = 0
                 ) -> tg.Trajectories:
    """Several words pooled (the Hewitt and Liang setting): a two-sense signal on dimension 0 at
    SIGNAL_POINTS, the same sense names for every word, and states that do not encode the word."""
    traj, _ = planted(n=n_words * per_word, n_points=n_points, d=d, seed=seed)
    traj.meta["word"] = np.repeat([f"w{i}" for i in range(n_words)], per_word)
    return traj


def test_control_task_stays_at_chance_and_selectivity_is_positive_on_signal():
    # valid only for pooled words whose types recur in every fold: requested explicitly, word=None
    df = probes.layerwise(pooled_words(), word=None, control=True, n_boot=200, progress=False)
    ctrl = summary(df, "control_accuracy")
    assert (np.abs(ctrl - 0.5) < 0.12).all()
    sel = summary(df, "selectivity")
    assert (sel[SIGNAL_POINTS] > 0.25).all()
    assert np.allclose(sel, summary(df, "accuracy") - ctrl)


def test_control_task_is_refused_where_it_measures_nothing():
    # one word per sweep: its types would be surface cues (the previous word), not word identities
    with pytest.raises(ValueError, match=r"needs several words pooled in one sweep.*n_permutations.*surface_baseline"):
        probes.layerwise(pooled_words(), control=True, progress=False)
    with pytest.raises(ValueError, match="needs several words pooled"):
        probes.layerwise(planted()[0], word=None, control=True, progress=False)
    # pooled, but one word has 3 examples: it cannot be in all 5 folds, so its label cannot be memorised
    traj = pooled_words()
    word = traj.meta["word"].to_numpy().copy()
    word[:3] = "rare"
    traj.meta["word"] = word
    with pytest.raises(ValueError, match=r"1 of 9 control types do not recur in every fold \(e.g. \['rare'\]\)"):
        probes.layerwise(traj, word=None, control=True, progress=False)


def test_majority_baseline_is_the_training_folds_majority(planted_result):
    traj, y, df = planted_result
    splits = probes.make_splits(y, None, 5, random_state=0)
    expected = [np.mean(y[te] == np.bincount(y[tr]).argmax()) for tr, te in splits]
    base = per_fold(df, "majority_baseline")
    assert np.allclose(base, np.array(expected)[:, None])


def test_mdl_codelength_drops_where_the_signal_is():
    traj, y = planted(n=300)
    res = probes.mdl(traj, progress=False)
    assert list(res.columns) == ["word", "point", "codelength_bits", "uniform_bits", "compression"]
    assert np.allclose(res.uniform_bits, 300 * np.log2(2))
    bits = res.codelength_bits.to_numpy()
    off = [p for p in range(8) if p not in SIGNAL_POINTS]
    assert bits[SIGNAL_POINTS].max() < 0.7 * res.uniform_bits[0]
    assert bits[off].min() > 0.9 * res.uniform_bits[0]
    assert np.allclose(res.compression, res.uniform_bits / res.codelength_bits)


def test_mdl_first_block_is_sent_with_the_uniform_code():
    # labels independent of a constant input: every block is coded near the uniform rate, and the
    # first block (0.1% of 1000 = 1 example) costs exactly log2(K) bits: check the total is close
    rng = np.random.default_rng(1)
    x = np.zeros((1000, 1, 4), dtype=np.float32) + rng.normal(size=(1000, 1, 4)).astype(np.float32) * 1e-3
    y = rng.integers(0, 4, 1000)
    res = probes.mdl(x, labels=y, progress=False)
    assert res.uniform_bits[0] == pytest.approx(1000 * 2.0)
    assert res.codelength_bits[0] == pytest.approx(2000, rel=0.05)


def test_grouped_splits_prevent_duplicate_sentence_leakage():
    # 80 sentences with random labels and no signal, each appearing 3 times (near-identical vectors):
    # ungrouped folds put copies on both sides and 1-NN "recognises" them; grouped folds cannot.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(80, 3, 16)).astype(np.float32)
    labels = rng.integers(0, 2, 80)
    x = np.repeat(base, 3, axis=0) + rng.normal(scale=0.01, size=(240, 3, 16)).astype(np.float32)
    meta = pd.DataFrame({"sense": np.repeat(labels, 3), "group": np.repeat(np.arange(80), 3)})
    traj = tg.Trajectories(x, meta)
    kw = dict(probe="1nn", control=False, n_boot=10, progress=False)
    leaky = summary(probes.layerwise(traj, groups=None, **kw), "accuracy")
    grouped = summary(probes.layerwise(traj, **kw), "accuracy")
    assert (leaky > 0.95).all()
    assert (np.abs(grouped - 0.5) < 0.15).all()
    assert (leaky - grouped > 0.3).all()


def test_splits_never_share_a_group_and_stay_stratified():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(90), np.ones(30)].astype(int)
    g = rng.permutation(np.arange(120) // 2)
    for tr, te in probes.make_splits(y, g, 5, random_state=0):
        assert not set(g[tr]) & set(g[te])
        assert 3 <= y[te].sum() <= 9  # about a quarter of each test fold is class 1


def test_too_few_examples_or_groups_raise_naming_the_class():
    y = np.array(["common"] * 20 + ["rare"] * 3)
    x = np.zeros((23, 2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"class 'rare' has 3 examples, fewer than the cv=5 folds"):
        probes.layerwise(x, labels=y, progress=False)
    y = np.array(["common"] * 20 + ["rare"] * 6)
    groups = np.r_[np.arange(20), [100, 100, 100, 101, 101, 101]]
    with pytest.raises(ValueError, match=r"class 'rare' has 6 examples but only 2 groups"):
        probes.layerwise(np.zeros((26, 2, 4), dtype=np.float32), labels=y, groups=groups,
                         progress=False)
    with pytest.raises(KeyError, match="nope"):
        probes.layerwise(planted()[0], groups="nope", progress=False)
    with pytest.raises(ValueError, match="unknown probe"):
        probes.layerwise(planted()[0], probe="forest", progress=False)


def test_same_random_state_gives_identical_results_and_another_differs():
    traj, _ = planted(n=80, n_points=4)
    a = probes.layerwise(traj, n_boot=50, random_state=3, progress=False)
    b = probes.layerwise(traj, n_boot=50, random_state=3, progress=False)
    pd.testing.assert_frame_equal(a, b)
    c = probes.layerwise(traj, n_boot=50, random_state=4, progress=False)
    assert not np.allclose(a["value"], c["value"], equal_nan=True)


def test_n_jobs_does_not_change_results():
    traj, _ = planted(n=60, n_points=4)
    a = probes.layerwise(traj, n_boot=20, n_jobs=1, progress=False)
    b = probes.layerwise(traj, n_boot=20, n_jobs=2, progress=False)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_progress_bar_counts_points_x_folds_and_progress_false_is_silent(capsys, n_jobs):
    traj, _ = planted(n=60, n_points=3, d=4)
    loud = probes.layerwise(traj, probe="prototype", cv=4, control=False, n_boot=5, n_jobs=n_jobs)
    err = capsys.readouterr().err
    assert "layerwise" in err and "12/12" in err  # 3 points x 4 folds, all done
    quiet = probes.layerwise(traj, probe="prototype", cv=4, control=False, n_boot=5, n_jobs=n_jobs,
                             progress=False)
    assert capsys.readouterr().err == ""
    pd.testing.assert_frame_equal(loud, quiet)
    tr = probes.transfer(traj, probe="prototype", cv=4, n_jobs=n_jobs)
    assert "transfer" in capsys.readouterr().err
    pd.testing.assert_frame_equal(tr, probes.transfer(traj, probe="prototype", cv=4, progress=False))
    assert capsys.readouterr().err == ""
    probes.expected_layer(traj, probe="prototype", cv=4, mix="mean", n_jobs=n_jobs)
    assert "12/12" in capsys.readouterr().err
    # 4 blocks: the first is sent with the uniform code, the other 3 with a probe per point
    m = probes.mdl(traj, blocks=(0.25, 0.5, 0.75, 1.0), n_jobs=n_jobs)
    err = capsys.readouterr().err
    assert "mdl" in err and "9/9" in err  # 3 points x 3 probed blocks
    pd.testing.assert_frame_equal(m, probes.mdl(traj, blocks=(0.25, 0.5, 0.75, 1.0), progress=False))
    assert capsys.readouterr().err == ""


def _brute_standardize(x: np.ndarray, tr: np.ndarray) -> np.ndarray:
    mu = x[tr].mean(0)
    sd = np.maximum(x[tr].std(0), 1e-6)
    return (x - mu) / sd


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_1nn_and_prototype_match_a_brute_force_loop():
    traj, y = planted(n=60, n_points=3, d=6, strength=0.8)
    x = traj.states.astype(np.float64)
    splits = probes.make_splits(y, None, 3, random_state=0)
    kw = dict(cv=3, control=False, n_boot=5, progress=False)
    got_nn = per_fold(probes.layerwise(traj, probe="1nn", **kw), "accuracy")
    got_pr = per_fold(probes.layerwise(traj, probe="prototype", **kw), "accuracy")
    for f, (tr, te) in enumerate(splits):
        for p in range(3):
            z = _brute_standardize(x[:, p], tr)
            right_nn = right_pr = 0
            for i in te:
                sims = [_cos(z[i], z[j]) for j in tr]
                right_nn += y[tr][int(np.argmax(sims))] == y[i]
                protos = [z[tr][y[tr] == k].mean(0) for k in (0, 1)]
                right_pr += int(np.argmax([_cos(z[i], c) for c in protos])) == y[i]
            assert got_nn[f, p] == pytest.approx(right_nn / len(te))
            assert got_pr[f, p] == pytest.approx(right_pr / len(te))


def test_user_classifier_equals_a_scaler_pipeline_and_metrics_match_sklearn():
    traj, y = planted(n=150, n_points=3, d=8, strength=0.7)
    clf = LogisticRegression(C=0.3)
    df = probes.layerwise(traj, probe=clf, cv=4, control=False, n_boot=5, progress=False)
    assert not hasattr(clf, "coef_")  # the user's estimator is cloned, never fitted in place
    splits = probes.make_splits(y, None, 4, random_state=0)
    for f, (tr, te) in enumerate(splits):
        for p in range(3):
            pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.3)).fit(traj.states[tr, p], y[tr])
            pred, proba = pipe.predict(traj.states[te, p]), pipe.predict_proba(traj.states[te, p])
            row = df[(df.fold == f) & (df.point == p)].set_index("metric")["value"]
            assert row["accuracy"] == pytest.approx(np.mean(pred == y[te]))
            assert row["macro_f1"] == pytest.approx(f1_score(y[te], pred, average="macro"))
            assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y[te], pred))
            assert row["cohen_kappa"] == pytest.approx(cohen_kappa_score(y[te], pred))
            assert row["log_loss"] == pytest.approx(log_loss(y[te], proba, labels=[0, 1]), rel=1e-4)


def test_svm_and_mlp_probes_run_and_have_no_log_loss_without_probabilities():
    traj, _ = planted(n=120, n_points=8)
    svm = probes.layerwise(traj, probe="svm", control=False, n_boot=5, progress=False)
    assert summary(svm, "log_loss").tolist() == [] or np.isnan(summary(svm, "log_loss")).all()
    assert (summary(svm, "accuracy")[SIGNAL_POINTS] > 0.75).all()
    mlp = probes.layerwise(traj, probe="mlp", control=False, cv=3, n_boot=5, progress=False)
    assert np.isfinite(summary(mlp, "log_loss")).all()


def test_transfer_diagonal_equals_per_point_accuracy():
    traj, _ = planted(n=120, n_points=6)
    tr = probes.transfer(traj, probe="logistic", progress=False)
    assert list(tr.columns) == ["word", "train_point", "test_point", "accuracy"]
    assert len(tr) == 36
    diag = tr[tr.train_point == tr.test_point].sort_values("train_point")["accuracy"].to_numpy()
    lw = probes.layerwise(traj, probe="logistic", control=False, n_boot=5, progress=False)
    assert np.allclose(diag, summary(lw, "accuracy"))
    # a probe trained on one signal point works on the others, and not off them
    m = tr.pivot(index="train_point", columns="test_point", values="accuracy").to_numpy()
    assert m[3, 5] > 0.8 and m[3, 0] < 0.65
    # the default (ridge) probe: its diagonal is the sweep's accuracy too
    ridge = probes.transfer(traj, progress=False)
    diag = ridge[ridge.train_point == ridge.test_point].sort_values("train_point")["accuracy"].to_numpy()
    assert np.allclose(diag, summary(probes.layerwise(traj, n_boot=5, progress=False), "accuracy"))


def test_control_labels_are_fixed_per_type_with_the_task_distribution():
    rng = np.random.default_rng(0)
    prev = rng.choice(["the", "a", "river", "savings", "west", "his", "that", "my"], size=400)
    texts = [f"{w} bank is here" for w in prev]
    meta = pd.DataFrame({"text": texts, "char_start": [len(w) + 1 for w in prev], "word": "bank",
                         "sense": rng.choice(["finance", "river"], size=400, p=[0.7, 0.3])})
    traj = tg.Trajectories(np.zeros((400, 1, 2), dtype=np.float32), meta)
    ctrl = probes.control_labels(traj, random_state=0)
    per_type = pd.DataFrame({"t": prev, "c": ctrl}).groupby("t")["c"].nunique()
    assert (per_type == 1).all()  # one label per (word, previous word) type
    assert set(ctrl) <= {"finance", "river"}
    assert abs(np.mean(ctrl == "finance") - np.mean(meta.sense == "finance")) < 0.15
    assert not np.array_equal(ctrl, probes.control_labels(traj, random_state=1)) or len(set(prev)) < 3


def test_balance_subsamples_every_class_to_the_smallest():
    traj, y = planted(n=300, n_points=2)
    sense = np.where(np.arange(300) < 270, "finance", "river")
    kw = dict(labels=sense, control=False, n_boot=5, progress=False)
    base = summary(probes.layerwise(traj, **kw), "majority_baseline")
    bal = summary(probes.layerwise(traj, balance=True, **kw), "majority_baseline")
    assert base[0] == pytest.approx(0.9, abs=0.01)
    assert bal[0] == pytest.approx(0.5, abs=0.12)


def test_expected_layer_and_resolution_point_on_planted_onset():
    traj, _ = planted(n=120, n_points=7, d=8, points=[4, 5, 6], strength=2.0)
    expected, table = probes.expected_layer(traj, progress=False)
    assert list(table.columns) == ["word", "point", "score", "gain"]
    assert int(table["gain"].idxmax()) == 4  # the onset adds (nearly) everything
    assert table["gain"][4] > 0.4 and np.abs(table["gain"][1:4]).max() < 0.1
    assert 3.5 <= expected <= 5.0
    # the equal-weight mix dilutes the onset among the noise points: it still rises from there on
    _, mean_table = probes.expected_layer(traj, mix="mean", progress=False)
    assert mean_table["score"][4:].min() > mean_table["score"][:4].max()
    sweep = probes.layerwise(traj, control=False, n_boot=5, progress=False, return_result=True)
    rp = probes.resolution_point(sweep, fraction=0.9, n_boot=200)
    assert rp["resolution_point"].iloc[0] == 4
    assert rp["ci_low"].iloc[0] <= 4 <= rp["ci_high"].iloc[0]
    # the out-of-fold predictions travel in the result object, not in the frame
    assert sweep.scores.attrs == {}
    with pytest.raises(ValueError, match="carries no out-of-fold predictions"):
        probes.resolution_point(sweep.scores, fraction=0.9)
    rp2 = probes.resolution_point(traj, fraction=0.9, n_boot=200, progress=False)
    assert rp2["resolution_point"].iloc[0] == 4


def test_loureiro_1nn_matches_brute_force():
    rng = np.random.default_rng(0)
    n, n_points, d = 80, 7, 5  # points 0..6: the last four are 3..6
    x = rng.normal(size=(n, n_points, d)).astype(np.float32)
    words = np.repeat(["bank", "crane"], n // 2)
    senses = np.where(words == "bank", rng.choice(["finance", "river"], n),
                      rng.choice(["bird", "machine", "origami"], n))
    x[:, 3:, 0] += np.where(np.isin(senses, ["river", "machine"]), 1.0, -1.0)[:, None]
    meta = pd.DataFrame({"word": words, "sense": senses})
    traj = tg.Trajectories(x, meta)
    tr_idx, te_idx = np.arange(0, n, 2), np.arange(1, n, 2)
    res = probes.loureiro_1nn(traj[tr_idx], traj[te_idx])
    assert list(res["word"]) == ["bank", "crane", "mean"]
    v = x[:, 3:].sum(1).astype(np.float64)
    for w in ["bank", "crane"]:
        tr = [i for i in tr_idx if words[i] == w]
        te = [i for i in te_idx if words[i] == w]
        ss = sorted({senses[i] for i in tr})
        protos = {s: np.mean([v[i] for i in tr if senses[i] == s], axis=0) for s in ss}
        pred = [max(ss, key=lambda s: _cos(v[i], protos[s])) for i in te]
        truth = [senses[i] for i in te]
        row = res[res.word == w].iloc[0]
        assert row["accuracy"] == pytest.approx(np.mean(np.array(pred) == np.array(truth)))
        assert row["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    assert res.iloc[-1]["macro_f1"] == pytest.approx(res.iloc[:2]["macro_f1"].mean())
    with pytest.raises(ValueError, match="lack"):
        probes.loureiro_1nn(traj.select_points([0, 1, 2, 4, 5, 6]), traj, n_last=4)


def two_words(n: int = 120, n_points: int = 7, d: int = 8, seed: int = 0) -> tg.Trajectories:
    """Three words of n examples each: bank's senses part from point 2 on, crane's from point 5 on,
    and the senses of "null" never part; sentences (groups) of two examples."""
    onsets = {"bank": 2, "crane": 5, "null": n_points}
    rng = np.random.default_rng(seed)
    xs, metas = [], []
    for w, onset in onsets.items():
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, n_points, d)).astype(np.float32)
        x[:, onset:, 0] += ((2 * y - 1) * 2.0)[:, None]
        xs.append(x)
        metas.append(pd.DataFrame({"word": w, "sense": np.where(y == 1, f"{w}_a", f"{w}_b")}))
    meta = pd.concat(metas, ignore_index=True)
    meta["group"] = np.arange(len(meta)) // 2
    return tg.Trajectories(np.concatenate(xs), meta)


def one_word(traj: tg.Trajectories, w: str) -> tg.Trajectories:
    return traj[(traj.meta.word == w).to_numpy()]


def test_probe_sweep_holds_the_out_of_fold_predictions_behind_the_scores():
    traj = one_word(two_words(), "bank")
    sweep = probes.layerwise(traj, probe="prototype", cv=4, control=False, n_boot=300, progress=False,
                             return_result=True)
    assert isinstance(sweep, probes.ProbeSweep)
    n, P = traj.n_examples, traj.n_points
    assert sweep.correct.shape == (n, P) and sweep.correct.dtype == bool
    np.testing.assert_array_equal(sweep.points, traj.points)
    np.testing.assert_array_equal(sweep.example, traj.meta.example)
    np.testing.assert_array_equal(sweep.units, traj.group_codes())  # grouped: the sentence is the unit
    assert set(sweep.word) == {"bank"}
    pd.testing.assert_frame_equal(sweep.scores, probes.layerwise(traj, probe="prototype", cv=4, control=False,
                                                                 n_boot=300, progress=False))
    # each fold's accuracy is the mean out-of-fold correctness of its test examples
    y = pd.factorize(traj.meta.sense, sort=True)[0]
    for f, (_, te) in enumerate(probes.make_splits(y, traj.group_codes(), 4, random_state=0)):
        np.testing.assert_allclose(per_fold(sweep.scores, "accuracy")[f], sweep.correct[te].mean(0))
    # the summary interval is the stats bootstrap over sentences of those predictions
    w = tg.stats.bootstrap_weights(sweep.units, 300, random_state=0)
    boot = w @ sweep.correct / w.sum(1, keepdims=True)
    rows = sweep.scores[(sweep.scores.fold == -1) & (sweep.scores.metric == "accuracy")].sort_values("point")
    np.testing.assert_allclose(rows.ci_low, np.quantile(boot, 0.025, axis=0))
    np.testing.assert_allclose(rows.ci_high, np.quantile(boot, 0.975, axis=0))
    # ungrouped: every example is its own unit, named by its id
    ids = probes.layerwise(traj, groups=None, probe="prototype", cv=4, control=False, n_boot=5, progress=False,
                           return_result=True)
    np.testing.assert_array_equal(ids.units, traj.meta.example)


def test_senses_compete_within_a_word_each_word_finds_its_own_onset_and_none_pools():
    traj = two_words()
    kw = dict(probe="prototype", control=False, n_boot=20, progress=False)
    lw = probes.layerwise(traj, **kw)
    assert list(pd.unique(lw.word)) == ["bank", "crane", "null"]
    acc = {w: summary(lw[lw.word == w], "accuracy") for w in ("bank", "crane", "null")}
    assert (acc["bank"][2:] > 0.8).all() and (acc["bank"][:2] < 0.65).all()
    assert (acc["crane"][5:] > 0.8).all() and (acc["crane"][:5] < 0.65).all()
    assert (acc["null"] < 0.65).all()  # no signal: silent at every point
    # each word's rows are those of a sweep on that word alone
    for w in ("bank", "crane"):
        alone = probes.layerwise(one_word(traj, w), **kw).drop(columns="word")
        pd.testing.assert_frame_equal(lw[lw.word == w].drop(columns="word").reset_index(drop=True), alone)
    # word=None is one sweep over all examples, as if there were no word column
    pooled = probes.layerwise(traj, word=None, **kw)
    assert "word" not in pooled.columns
    no_word = tg.Trajectories(traj.states, traj.meta.drop(columns="word"))
    pd.testing.assert_frame_equal(pooled, probes.layerwise(no_word, **kw))
    # the resolution point, per word, from one sweep: the planted onsets
    sweep = probes.layerwise(traj, return_result=True, **kw)
    rp = probes.resolution_point(sweep, fraction=0.9, n_boot=200).set_index("word")
    assert rp.loc["bank", "resolution_point"] == 2 and rp.loc["crane", "resolution_point"] == 5
    assert rp.loc["bank", "ci_low"] <= 2 <= rp.loc["bank", "ci_high"]
    assert rp.loc["crane", "ci_low"] <= 5 <= rp.loc["crane", "ci_high"]
    pd.testing.assert_frame_equal(
        probes.resolution_point(sweep, fraction=0.9, n_boot=200)[lambda d: d.word == "crane"].drop(columns="word")
        .reset_index(drop=True),
        probes.resolution_point(one_word(traj, "crane"), fraction=0.9, n_boot=200, probe="prototype",
                                progress=False).drop(columns="word"))


def test_transfer_expected_layer_and_mdl_run_per_word():
    traj = two_words(n=80, n_points=6)
    two = traj[traj.meta.word.isin(["bank", "crane"]).to_numpy()]
    kw = dict(probe="prototype", progress=False)
    tr = probes.transfer(two, **kw)
    expected, table = probes.expected_layer(two, **kw)
    assert list(expected.index) == ["bank", "crane"] and expected.name == "expected_layer"
    # each word's largest gain is at its own onset, and the expected layer follows
    assert table.loc[table.gain.groupby(table.word).idxmax(), "point"].tolist() == [2, 5]
    assert 2 <= expected["bank"] <= 3.5 and 4 <= expected["crane"] <= 5
    code = probes.mdl(two, blocks=(0.25, 0.5, 1.0), progress=False)
    for w in ("bank", "crane"):
        alone = one_word(two, w)
        pd.testing.assert_frame_equal(tr[tr.word == w].reset_index(drop=True), probes.transfer(alone, **kw))
        e, t = probes.expected_layer(alone, **kw)
        assert expected[w] == e
        pd.testing.assert_frame_equal(table[table.word == w].reset_index(drop=True), t)
        pd.testing.assert_frame_equal(code[code.word == w].reset_index(drop=True),
                                      probes.mdl(alone, blocks=(0.25, 0.5, 1.0), progress=False))
    bits = code.pivot(index="point", columns="word", values="codelength_bits")
    assert bits.loc[3, "bank"] < 0.7 * code.uniform_bits.max() < bits.loc[3, "crane"]


def test_word_errors_name_the_word_and_the_missing_column():
    traj = two_words(n=40, n_points=3)
    sense = traj.meta.sense.to_numpy().copy()
    crane = np.flatnonzero(traj.meta.word == "crane")
    sense[crane[:37]], sense[crane[37:]] = "crane_b", "crane_a"  # crane_a has 3 examples
    with pytest.raises(ValueError, match=r"word 'crane': class 'crane_a' has 3 examples, fewer than the cv=5"):
        probes.layerwise(traj, labels=sense, probe="prototype", progress=False)
    with pytest.raises(KeyError, match="'lemma' not in meta; columns are"):
        probes.layerwise(traj, word="lemma", progress=False)
    with pytest.raises(ValueError, match="got 3 words for 120 examples"):
        probes.mdl(traj, word=["a", "b", "c"], progress=False)


def test_old_positional_and_renamed_calls_warn_and_give_the_same_results():
    traj = one_word(two_words(n=60, n_points=3), "bank")
    now = probes.layerwise(traj, labels="sense", probe="prototype", cv=4, control=False, n_boot=5, progress=False)
    with pytest.warns(DeprecationWarning, match="by position is deprecated"):
        old = probes.layerwise(traj, "sense", "prototype", 4, "group", False, "auto", "standardize", False, 5,
                               progress=False)
    pd.testing.assert_frame_equal(old, now)
    with pytest.warns(DeprecationWarning):
        old_t = probes.transfer(traj, "sense", "prototype", 4, progress=False)
    pd.testing.assert_frame_equal(old_t, probes.transfer(traj, probe="prototype", cv=4, progress=False))
    with pytest.warns(DeprecationWarning):
        old_c = probes.control_labels(traj, "sense", "auto", 3)
    np.testing.assert_array_equal(old_c, probes.control_labels(traj, random_state=3))
    sweep = probes.layerwise(traj, probe="prototype", cv=4, control=False, n_boot=5, progress=False,
                             return_result=True)
    with pytest.warns(DeprecationWarning, match="traj_or_frame"):
        old_r = probes.resolution_point(traj_or_frame=sweep, fraction=0.9, n_boot=50)
    pd.testing.assert_frame_equal(old_r, probes.resolution_point(sweep, fraction=0.9, n_boot=50))
    with pytest.raises(TypeError, match="already run"):
        probes.resolution_point(sweep, probe="prototype")
    half = np.arange(traj.n_examples) % 2 == 0
    with pytest.warns(DeprecationWarning, match="'train' is deprecated"):
        old_l = probes.loureiro_1nn(train=traj[half], test_traj=traj[~half], n_last=1)
    pd.testing.assert_frame_equal(old_l, probes.loureiro_1nn(traj[half], traj[~half], n_last=1))


def test_loureiro_1nn_old_dataframe_form_extracts_first_with_a_warning(wtok, tiny_model, corpus, span_frame):
    from trajgeo.models import load_model

    lm = load_model((tiny_model("bert", len(wtok), n_layers=4, seed=3), wtok))
    texts = [t for t in corpus if " bank " in f" {t} "]
    ex = span_frame(texts * 4, "bank").assign(word="bank", sense=["river", "finance", "finance", "river"] * 4)
    train, test = ex.iloc[:8].reset_index(drop=True), ex.iloc[8:].reset_index(drop=True)
    with pytest.warns(DeprecationWarning, match="extract first"):
        old = probes.loureiro_1nn(train, test, model=lm)
    now = probes.loureiro_1nn(tg.extract(lm, train, pool="mean", progress=False),
                              tg.extract(lm, test, pool="mean", progress=False))
    pd.testing.assert_frame_equal(old, now)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="pass model="):
        probes.loureiro_1nn(train, test)


@pytest.mark.slow
def test_smollm2_bank_sense_becomes_linearly_readable(smollm2, balanced_bank):
    examples = balanced_bank(per_sense=30)
    examples["group"] = pd.factorize(examples["text"])[0]
    traj = tg.extract(smollm2, examples, max_point=12, progress=False)
    df = probes.layerwise(traj, cv=3, n_boot=200, n_permutations=200, progress=False)
    acc = summary(df, "accuracy")
    bal = df[(df.fold == -1) & (df.metric == "balanced_accuracy")].sort_values("point")
    print("\nSmolLM2 bank accuracy per point:", np.round(acc, 3).tolist())
    print("null family-wise threshold:", round(float(bal["null_fwer"].iloc[0]), 3))
    assert abs(acc[0] - 0.5) < 0.15  # point 0 is the context-free embedding: chance
    assert acc[6:].max() > 0.85
    # above chance where it is read, with every point of the curve paid for; not at the embedding
    assert (bal["value"].to_numpy()[6:] > bal["null_fwer"].to_numpy()[6:]).any()
    assert bal["value"].iloc[0] <= bal["null_fwer"].iloc[0]
    # one word: the control task would be a previous-word probe, and is refused
    with pytest.raises(ValueError, match="needs several words pooled"):
        probes.layerwise(traj, cv=3, control=True, progress=False)


# ---------------------------------------------------------------- the closed-form ridge probe
def _classes(n: int, d: int, n_classes: int, seed: int, strength: float = 1.0, skew: float | None = None):
    """Training and test rows with a class signal on the first dimensions, string labels."""
    rng = np.random.default_rng(seed)
    p = None if skew is None else np.r_[skew, np.full(n_classes - 1, (1 - skew) / (n_classes - 1))]
    y = rng.choice(n_classes, size=n + 30, p=p)
    x = rng.normal(size=(n + 30, d))
    x[np.arange(n + 30), y % d] += strength
    names = np.array([f"s{k}" for k in range(n_classes)])
    return x[:n], names[y[:n]], x[n:], y[:n]


@pytest.mark.parametrize("n, d, n_classes", [(60, 8, 2), (40, 70, 2), (90, 12, 3), (50, 80, 4)])
def test_ridge_probe_with_a_fixed_penalty_is_sklearns_ridge_classifier(n, d, n_classes):
    # both forms (n > d: d x d covariance; n <= d: n x n Gram), two and several classes
    X, y, Xt, codes = _classes(n, d, n_classes, seed=n + d)
    for alpha in (0.5, 20.0):
        mine = probes.RidgeProbe(alpha=alpha, prior="fitted").fit(X, y)
        ref = RidgeClassifier(alpha=alpha).fit(X, y)
        np.testing.assert_allclose(mine.decision_function(Xt), ref.decision_function(Xt), atol=1e-10)
        np.testing.assert_allclose(mine.coef_, ref.coef_.reshape(mine.coef_.shape), atol=1e-10)
        np.testing.assert_array_equal(mine.predict(Xt), ref.predict(Xt))
        # one solve for many labellings: each column predicts what a fit on that labelling predicts
        rng = np.random.default_rng(0)
        many = np.column_stack([codes] + [rng.permutation(codes) for _ in range(6)])
        shared = shared_predictions(mine, X, Xt, many, n_classes)
        for j in range(many.shape[1]):
            np.testing.assert_array_equal(shared[:, j], RidgeClassifier(alpha=alpha).fit(X, many[:, j]).predict(Xt))


@pytest.mark.parametrize("n, d, n_classes", [(80, 10, 2), (40, 60, 3)])
def test_ridge_probe_leave_one_out_penalty_is_sklearns_ridge_classifier_cv(n, d, n_classes):
    X, y, Xt, codes = _classes(n, d, n_classes, seed=7, strength=1.5)
    grid = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
    mine = probes.RidgeProbe(alpha=grid, criterion="loo", prior="fitted").fit(X, y)
    ref = RidgeClassifierCV(alphas=grid).fit(X, y)
    assert mine.alpha_ == ref.alpha_
    np.testing.assert_allclose(mine.decision_function(Xt), ref.decision_function(Xt), atol=1e-8)
    # per labelling, the penalty is chosen again: the true labels and label noise choose differently
    rng = np.random.default_rng(1)
    many = np.column_stack([codes] + [rng.permutation(codes) for _ in range(6)])
    shared = shared_predictions(mine, X, Xt, many, n_classes)
    chosen = set()
    for j in range(many.shape[1]):
        ref_j = RidgeClassifierCV(alphas=grid).fit(X, many[:, j])
        chosen.add(ref_j.alpha_)
        np.testing.assert_array_equal(shared[:, j], ref_j.predict(Xt))
    assert len(chosen) > 1


def _brute_gcv_alpha(X: np.ndarray, Y: np.ndarray, grid) -> float:
    """argmin over the grid of ||(I - H) Y||^2 / (1 - tr(H) / n)^2, H the explicit hat matrix of
    ridge with an unpenalised intercept column."""
    n = len(X)
    X1 = np.c_[np.ones(n), X]
    scores = []
    for a in grid:
        pen = a * np.eye(X1.shape[1])
        pen[0, 0] = 0.0
        H = X1 @ np.linalg.solve(X1.T @ X1 + pen, X1.T)
        scores.append(((Y - H @ Y) ** 2).sum() / (1 - np.trace(H) / n) ** 2)
    return grid[int(np.argmin(scores))]


@pytest.mark.parametrize("n, d, n_classes", [(80, 10, 2), (40, 60, 2), (70, 9, 3)])
def test_ridge_probe_gcv_penalty_matches_an_explicit_hat_matrix(n, d, n_classes):
    X, y, Xt, codes = _classes(n, d, n_classes, seed=3, strength=1.2)
    grid = probes.RIDGE_ALPHAS
    rng = np.random.default_rng(2)
    many = np.column_stack([codes] + [rng.permutation(codes) for _ in range(5)])
    shared = shared_predictions(probes.RidgeProbe(alpha=grid, prior="fitted"), X, Xt, many, n_classes)
    chosen = set()
    for j in range(many.shape[1]):
        Y = (2.0 * (many[:, j, None] == np.arange(n_classes)) - 1)[:, 1:] if n_classes == 2 else \
            2.0 * (many[:, j, None] == np.arange(n_classes)) - 1
        a = _brute_gcv_alpha(X, Y, grid)
        chosen.add(a)
        np.testing.assert_array_equal(shared[:, j], RidgeClassifier(alpha=a).fit(X, many[:, j]).predict(Xt))
        if j == 0:
            assert probes.RidgeProbe(alpha=grid).fit(X, many[:, 0]).alpha_ == a
    assert len(chosen) > 1


@pytest.mark.parametrize("n_classes", [2, 3])
def test_ridge_probe_equal_prior_divides_the_fitted_indicator_by_the_class_share(n_classes):
    X, y, Xt, _ = _classes(120, 6, n_classes, seed=5, strength=0.8, skew=0.75)
    alpha = 5.0
    ref = RidgeClassifier(alpha=alpha).fit(X, y)
    d = ref.decision_function(Xt)
    share = pd.Series(y).value_counts(normalize=True).reindex(ref.classes_).to_numpy()
    fitted = (np.c_[-d, d] + 1) / 2 if n_classes == 2 else (d + 1) / 2  # the fitted class indicators
    want = ref.classes_[np.argmax(fitted / share, axis=1)]
    got = probes.RidgeProbe(alpha=alpha).fit(X, y).predict(Xt)
    np.testing.assert_array_equal(got, want)
    assert (got != ref.predict(Xt)).any()  # the rule matters on unbalanced classes
    with pytest.raises(ValueError, match="prior must be one of"):
        probes.RidgeProbe(prior="uniform").fit(X, y)
    with pytest.raises(ValueError, match="alpha must be a positive float"):
        probes.RidgeProbe(alpha=0.0).fit(X, y)


# ---------------------------------------------------------------- the permutation null
class _FixedSplits:
    """A splitter that returns the same folds whatever the labels (a statistic of the labels alone)."""

    def __init__(self, splits):
        self.splits = splits

    def split(self, X, y=None, groups=None):
        return iter(self.splits)


def grouped(traj: tg.Trajectories, size: int = 2) -> tg.Trajectories:
    """The same trajectories with sentences of ``size`` examples sharing one sense."""
    meta = traj.meta.copy()
    meta["group"] = np.arange(len(meta)) // size
    first = meta.groupby("group")["sense"].transform("first")
    meta["sense"] = first
    return tg.Trajectories(traj.states, meta)


def test_shared_ridge_null_equals_sklearn_refitted_for_every_permutation():
    # the null of the reported probe: the same statistic (mean over folds of balanced accuracy of a
    # standardised RidgeClassifier, refitted by scikit-learn on each permuted labelling, same folds)
    traj = grouped(planted(n=120, n_points=3, d=6, strength=0.6)[0])
    y = pd.factorize(traj.meta.sense, sort=True)[0]
    g = traj.meta.group.to_numpy()
    splits = probes.make_splits(y, g, 5, random_state=0)
    x = traj.states

    def statistic(lab: np.ndarray) -> np.ndarray:
        out = []
        for p in range(x.shape[1]):
            accs = []
            for tr, te in splits:
                pipe = make_pipeline(StandardScaler(), RidgeClassifier(alpha=5.0)).fit(x[tr, p], lab[tr])
                accs.append(balanced_accuracy_score(lab[te], pipe.predict(x[te, p])))
            out.append(np.mean(accs))
        return np.array(out)

    observed, null = tg.stats.permuted_statistic(statistic, y, groups=g, n_permutations=20, random_state=0)
    want = tg.stats.null_table(observed, null)
    df = probes.layerwise(traj, probe=probes.RidgeProbe(alpha=5.0, prior="fitted"), n_permutations=20, n_boot=0,
                          progress=False)
    got = df[(df.fold == -1) & (df.metric == "balanced_accuracy")].sort_values("point")
    for c in ("value",) + tg.stats.NULL_COLUMNS:
        np.testing.assert_allclose(got[c].to_numpy(), want[c].to_numpy(), atol=1e-10, err_msg=c)


@pytest.mark.parametrize("probe", ["ridge", probes.RidgeProbe(alpha=probes.RIDGE_ALPHAS), "prototype"],
                         ids=["ridge", "ridge_gcv", "prototype"])
def test_null_of_every_metric_equals_the_sweep_rerun_on_each_permutation(probe):
    # three senses, sentences of two: the batched null (ridge: one solve; prototype: the slow path)
    # equals running the sweep once per permuted labelling with the same folds
    rng = np.random.default_rng(4)
    n, P = 150, 3
    y = np.repeat(rng.integers(0, 3, n // 2), 2)
    x = rng.normal(size=(n, P, 5)).astype(np.float32)
    x[:, 1:, 0] += y[:, None] * 0.7
    meta = pd.DataFrame({"sense": np.array(["a", "b", "c"])[y], "group": np.arange(n) // 2, "word": "w"})
    traj = tg.Trajectories(x, meta)
    splits = probes.make_splits(y, meta.group.to_numpy(), 5, random_state=0)
    kw = dict(probe=probe, n_boot=0, progress=False)
    df = probes.layerwise(traj, n_permutations=25, **kw)
    for m in probes.NULL_METRICS:

        def statistic(lab: np.ndarray, m=m) -> np.ndarray:
            s = probes.layerwise(traj, labels=lab, cv=_FixedSplits(splits), **kw)
            return summary(s, m)

        observed, null = tg.stats.permuted_statistic(statistic, y, groups=meta.group, n_permutations=25,
                                                     random_state=0)
        want = tg.stats.null_table(observed, null)
        got = df[(df.fold == -1) & (df.metric == m)].sort_values("point")
        for c in ("value",) + tg.stats.NULL_COLUMNS:
            np.testing.assert_allclose(got[c].to_numpy(), want[c].to_numpy(), atol=1e-10, err_msg=f"{m} {c}")
    # only the summary rows of the classification metrics carry a null
    has = df[df[list(tg.stats.NULL_COLUMNS)].notna().any(axis=1)]
    assert set(has.fold) == {-1} and set(has.metric) == set(probes.NULL_METRICS)


def test_layerwise_null_columns_and_no_null_without_permutations(planted_result):
    traj, _, df = planted_result
    assert not set(tg.stats.NULL_COLUMNS) & set(df.columns)
    nul = probes.layerwise(traj, probe="ridge", n_permutations=50, n_boot=20, progress=False)
    assert list(nul.columns) == ["word", "point", "fold", "metric", "value", "ci_low", "ci_high",
                                 *tg.stats.NULL_COLUMNS]
    with pytest.raises(ValueError, match="n_permutations must be a non-negative int"):
        probes.layerwise(traj, n_permutations=-1, progress=False)


def test_resolution_point_reads_the_family_wise_threshold():
    traj = two_words(n=120, n_points=7)
    sweep = probes.layerwise(traj, probe="ridge", n_permutations=200, n_boot=5, progress=False, return_result=True)
    rp = probes.resolution_point(sweep, fraction=0.9, metric="balanced_accuracy", n_boot=200).set_index("word")
    assert list(rp.columns) == ["metric", "fraction", "max_value", "threshold", "resolution_point", "ci_low",
                                "ci_high", "null_fwer", "resolved"]
    assert rp.loc["bank", "resolution_point"] == 2 and rp.loc["crane", "resolution_point"] == 5
    assert rp.loc["bank", "resolved"] and rp.loc["crane", "resolved"]
    # no sense information: not resolved, no resolution point, no interval
    assert not rp.loc["null", "resolved"] and np.isnan(rp.loc["null", "resolution_point"])
    assert rp.loc["null", "max_value"] <= rp.loc["null", "null_fwer"]
    # the threshold is the upper 5% critical value (the 10th largest of 200) of the pooled out-of-fold
    # curve's maximum under the permutations
    rows = np.flatnonzero(sweep.word == "crane")
    null = sweep.null["crane"]["balanced_accuracy"]
    assert rp.loc["crane", "null_fwer"] == pytest.approx(np.sort(null.max(1))[::-1][9])
    curve = [balanced_accuracy_score(sweep.y[rows], sweep.pred[rows, p]) for p in range(7)]
    assert rp.loc["crane", "max_value"] == pytest.approx(max(curve))
    # a point must clear both the fraction of the peak and the threshold: with fraction 0.1 every point
    # reaches the fraction, so the first point above the null decides
    low = probes.resolution_point(sweep, fraction=0.1, metric="balanced_accuracy", n_boot=50).set_index("word")
    assert low.loc["crane", "resolution_point"] == 5
    default = probes.resolution_point(sweep, fraction=0.1, n_boot=10).set_index("word")
    assert default.loc["crane", "metric"] == "accuracy"


def test_word_significance_takes_each_words_best_point_and_holm_across_words():
    traj = two_words(n=120, n_points=7)
    df = probes.layerwise(traj, probe="ridge", n_permutations=200, n_boot=0, progress=False)
    sig = probes.word_significance(df).set_index("word")
    assert list(sig.index) == ["bank", "crane", "null"]
    ba = df[(df.fold == -1) & (df.metric == "balanced_accuracy")]
    for w, d in ba.groupby("word"):
        assert sig.loc[w, "peak_value"] == d["value"].max()
        assert sig.loc[w, "p_fwer"] == d["p_fwer"].min()
    np.testing.assert_allclose(sig["p_holm"], tg.stats.holm(sig["p_fwer"].to_numpy()))
    assert sig["resolved"].tolist() == [True, True, False]
    assert (sig.loc[["bank", "crane"], "p_holm"] < 0.05).all() and sig.loc["null", "p_holm"] > 0.05
    with pytest.raises(ValueError, match="no null"):
        probes.word_significance(probes.layerwise(traj, probe="prototype", n_boot=0, progress=False))


def _no_signal(seed: int) -> tg.Trajectories:
    """Labels independent of the states; sentences of two share their sense and most of their state."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(20, 4, 5))
    x = (np.repeat(base, 2, axis=0) + 0.3 * rng.normal(size=(40, 4, 5))).astype(np.float32)
    meta = pd.DataFrame({"sense": np.repeat(rng.choice(["a", "b"], 20), 2), "group": np.arange(40) // 2})
    return tg.Trajectories(x, meta)


def _resolved(traj: tg.Trajectories, **kw) -> bool:
    sweep = probes.layerwise(traj, probe="ridge", cv=4, n_permutations=99, n_boot=0, progress=False,
                             return_result=True, **kw)
    return bool(probes.resolution_point(sweep, metric="balanced_accuracy", n_boot=0)["resolved"].iloc[0])


def test_no_signal_words_are_resolved_at_most_at_the_family_wise_rate():
    hits = sum(_resolved(_no_signal(seed)) for seed in range(100))
    # nominal 5%: 11 or more of 100 has probability 0.011 under Binomial(100, 0.05)
    assert hits <= 10, hits
    # the groups matter: split apart (ungrouped folds and permutations), a sentence's copies teach the
    # probe their shared sense and the same sets look resolved (measured: 17 of 30)
    leaky = sum(_resolved(_no_signal(seed), groups=None) for seed in range(20))
    assert leaky >= 6, leaky


# ---------------------------------------------------------------- the surface-cue baseline
def cue_texts(n: int = 200, where: str = "before", shuffle: bool = False, seed: int = 0,
              causal: bool | None = True) -> tg.Trajectories:
    """Sentences about "bank" whose sense is given away by one cue word (river / money) placed
    before or after the target, in sentences of two examples; states carry nothing."""
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, 2, n // 2), 2)
    fill = np.array(["the", "a", "old", "new", "big", "small", "red", "blue", "my", "his", "that"])
    cue = np.where(y == 1, "river", "money")
    texts = []
    for c in cue:
        a, b = " ".join(rng.choice(fill, 3)), " ".join(rng.choice(fill, 3))
        texts.append(f"{a} {c} {b} bank was there" if where == "before" else f"{a} {b} bank was there {c}")
    texts = np.array(texts, dtype=object)
    if shuffle:
        texts = rng.permutation(texts)
    start = np.array([t.index("bank") for t in texts])
    meta = pd.DataFrame({"text": texts, "char_start": start, "char_end": start + 4, "word": "bank",
                         "sense": np.where(y == 1, "river", "finance"), "group": np.arange(n) // 2})
    info = {} if causal is None else {"causal": causal}
    return tg.Trajectories(np.zeros((n, 2, 3), dtype=np.float32), meta, model_info=info)


def _baseline(df: pd.DataFrame, metric: str = "balanced_accuracy") -> pd.Series:
    return df[(df.fold == -1) & (df.metric == metric)].iloc[0]


def test_surface_baseline_finds_a_planted_cue_word_and_is_at_chance_without_one():
    kw = dict(n_permutations=200, n_boot=200, progress=False)
    cue = probes.surface_baseline(cue_texts(), **kw)
    assert list(cue.columns) == ["word", "fold", "metric", "value", "ci_low", "ci_high", *tg.stats.NULL_COLUMNS]
    assert list(pd.unique(cue.metric)) == [*probes.NULL_METRICS, "majority_baseline"]
    row = _baseline(cue)
    assert row["value"] > 0.9 and row["value"] > row["null_fwer"] and row["p_value"] < 0.01
    # texts shuffled against the senses: the words give nothing away
    row = _baseline(probes.surface_baseline(cue_texts(shuffle=True), **kw))
    assert abs(row["value"] - 0.5) < 0.1 and row["value"] <= row["null_fwer"]
    # a cue after the target: a causal model cannot see it, an encoder can (the text without the target)
    after = _baseline(probes.surface_baseline(cue_texts(where="after"), **kw))
    assert after["value"] <= after["null_fwer"]
    enc = _baseline(probes.surface_baseline(cue_texts(where="after", causal=False), **kw))
    assert enc["value"] > 0.9
    forced = _baseline(probes.surface_baseline(cue_texts(where="after"), context="around", **kw))
    assert forced["value"] == enc["value"]


def test_surface_baseline_uses_the_folds_of_the_probe_sweep_and_reads_the_visible_context():
    traj = cue_texts(n=60)
    base = probes.surface_baseline(traj, cv=3, n_boot=5, progress=False)
    sweep = probes.layerwise(traj, cv=3, probe="prototype", n_boot=5, progress=False)
    want = sweep[(sweep.metric == "majority_baseline") & (sweep.point == 0)].drop(columns="point")
    got = base[base.metric == "majority_baseline"]
    np.testing.assert_array_equal(got[["fold", "value"]].to_numpy(), want[["fold", "value"]].to_numpy())
    t = traj.meta.text[0]
    assert probes.context_texts(traj)[0] == t[: t.index("bank")]
    assert probes.context_texts(traj, context="around")[0] == t[: t.index("bank")] + " " + t[t.index("bank") + 4:]
    with pytest.raises(ValueError, match="lack; pass context='before'"):
        probes.surface_baseline(cue_texts(causal=None), progress=False)
    with pytest.raises(ValueError, match=r"missing \['char_end'\]"):
        probes.surface_baseline(tg.Trajectories(traj.states, traj.meta.drop(columns="char_end"),
                                                model_info={"causal": True}), progress=False)
    with pytest.raises(ValueError, match="context must be one of"):
        probes.context_texts(traj, context="left")


@pytest.mark.parametrize("normalize", [None, "center", "standardize", "whiten"])
@pytest.mark.parametrize("d", [6, 200])
def test_ridge_sweep_equals_the_probe_fitted_fold_by_fold(normalize, d):
    # the point-major ridge sweep (scatter blocks shared across folds when n_train > d, each fold's
    # standardisation from the same sums) predicts what the estimator fitted on each fold's
    # normalised states predicts (a Pipeline is not a RidgeProbe: it takes the generic path)
    traj, _ = planted(n=150, n_points=3, d=d, strength=0.8)
    traj.states[:] += 50.0  # a large offset: the scatter must not cancel it away
    kw = dict(normalize=normalize, n_boot=0, progress=False, return_result=True)
    fast = probes.layerwise(traj, probe="ridge", **kw)
    slow = probes.layerwise(traj, probe=make_pipeline(probes.RidgeProbe()), **kw)
    np.testing.assert_array_equal(fast.pred, slow.pred)
