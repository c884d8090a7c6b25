"""Reference-free separability: a planted onset is found at its point (and nowhere before it beyond
the family-wise rate), no-signal sets stay silent at the nominal rate, and the curve is the probe
sweep's ridge balanced accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import trajgeo as tg
from trajgeo import probes


def onset(k: int, n_points: int = 7, n_groups: int = 60, size: int = 2, d: int = 6, strength: float = 1.5,
          seed: int = 0) -> tg.Trajectories:
    """Sentences of ``size`` examples sharing a sense and a random state; the senses part along one
    dimension from point ``k`` on and are inseparable before it."""
    rng = np.random.default_rng(seed)
    sense = rng.integers(0, 2, n_groups)
    x = np.repeat(rng.normal(size=(n_groups, n_points, d)), size, axis=0)
    x += 0.5 * rng.normal(size=x.shape)
    y = np.repeat(sense, size)
    x[:, k:, 0] += ((2 * y - 1) * strength)[:, None]
    meta = pd.DataFrame({"word": "bank", "sense": np.where(y == 1, "river", "finance"),
                         "group": np.arange(len(y)) // size})
    return tg.Trajectories(x.astype(np.float32), meta)


def test_separability_is_the_ridge_sweeps_balanced_accuracy_with_its_null():
    traj = onset(3)
    sep = tg.senses.separability(traj, n_permutations=100, progress=False)
    assert list(sep.columns) == ["word", "point", "metric", "value", *tg.stats.NULL_COLUMNS]
    assert set(sep.metric) == {"balanced_accuracy"} and sep.point.tolist() == list(range(7))
    sweep = probes.layerwise(traj, probe="ridge", n_permutations=100, n_boot=0, progress=False)
    want = sweep[(sweep.fold == -1) & (sweep.metric == "balanced_accuracy")].reset_index(drop=True)
    pd.testing.assert_frame_equal(sep, want[sep.columns])
    # without permutations: no null columns; pooled: no word column
    assert list(tg.senses.separability(traj, progress=False).columns) == ["word", "point", "metric", "value"]
    assert "word" not in tg.senses.separability(traj, word=None, progress=False).columns


@pytest.mark.parametrize("k", [2, 4])
def test_planted_onset_is_separable_from_its_point_and_not_before(k):
    sep = tg.senses.separability(onset(k), n_permutations=200, progress=False)
    above = (sep["value"] > sep["null_fwer"]).to_numpy()
    assert above[k:].all() and not above[:k].any()
    # the null is centred on chance before the onset and the value rises at the onset
    assert np.abs(sep["null_mean"] - 0.5).max() < 0.03
    assert sep["value"][k] - sep["value"][: k].max() > 0.25
    sweep = probes.layerwise(onset(k), probe="ridge", n_permutations=200, n_boot=100, progress=False,
                             return_result=True)
    rp = probes.resolution_point(sweep, metric="balanced_accuracy", fraction=0.9, n_boot=100)
    assert rp["resolved"].iloc[0] and rp["resolution_point"].iloc[0] == k


def test_points_before_the_onset_cross_the_family_wise_threshold_at_most_at_the_nominal_rate():
    early = 0
    for seed in range(40):
        sep = tg.senses.separability(onset(3, n_points=5, n_groups=20, d=4, seed=seed), cv=4,
                                     n_permutations=99, progress=False)
        early += bool((sep["value"][:3] > sep["null_fwer"][:3]).any())
    # Binomial(40, 0.05): 6 or more has probability 0.014
    assert early <= 5, early


def test_no_signal_sets_are_separable_at_most_at_the_family_wise_rate():
    hits = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        traj = onset(4, n_points=4, n_groups=20, d=5, seed=seed)  # the onset is past the last point
        # senses independent of the states, ten sentences each
        traj.meta["sense"] = np.repeat(rng.permutation(np.repeat(["a", "b"], 10)), 2)
        sep = tg.senses.separability(traj, cv=4, n_permutations=99, progress=False)
        hits += bool((sep["value"] > sep["null_fwer"]).any())
    # nominal 5%: 11 or more of 100 has probability 0.011 under Binomial(100, 0.05)
    assert hits <= 10, hits


def test_separability_runs_per_word_and_names_the_word_in_errors():
    a, b = onset(2, n_groups=120, seed=1), onset(5, n_groups=120, seed=2)
    b.meta["word"] = "crane"
    b.meta["group"] += 1000
    both = tg.Trajectories(np.concatenate([a.states, b.states]), pd.concat([a.meta, b.meta], ignore_index=True))
    sep = tg.senses.separability(both, n_permutations=100, progress=False)
    assert list(pd.unique(sep.word)) == ["bank", "crane"]
    for w, k in (("bank", 2), ("crane", 5)):
        d = sep[sep.word == w].set_index("point")
        assert (d["value"][k:] > d["null_fwer"][k:]).all()  # separable from the word's own onset on
        assert d["value"][k] - d["value"][:k - 1].max() > 0.25
    sense = both.meta.sense.to_numpy().copy()
    sense[np.flatnonzero(both.meta.word == "crane")[:3]] = "rare"
    with pytest.raises(ValueError, match=r"word 'crane': class 'rare' has 3 examples"):
        tg.senses.separability(both, labels=sense, progress=False)
