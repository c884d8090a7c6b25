"""The demo's per-point table against brute-force references."""

import numpy as np
import pandas as pd

import trajgeo as tg
from trajgeo.demo import per_point_table


def test_loo_centroid_accuracy_matches_brute_force(brute_loo_centroid_accuracy):
    rng = np.random.default_rng(0)
    states = rng.normal(size=(24, 4, 6)).astype(np.float32)
    labels = np.array(["a", "b", "c"] * 8)
    states[labels == "a", 2:, 0] += 4.0  # senses separate from point 2 on
    states[labels == "b", 2:, 1] += 4.0
    meta = pd.DataFrame({"sense": labels, "word": "w"})
    table = per_point_table(tg.Trajectories(states, meta))
    np.testing.assert_allclose(table["loo_centroid_accuracy"], brute_loo_centroid_accuracy(states, labels))
    assert table["loo_centroid_accuracy"].iloc[3] > table["loo_centroid_accuracy"].iloc[0]


def test_identical_embeddings_are_a_tie_not_a_decision_and_cos_to_final_ends_at_one():
    rng = np.random.default_rng(1)
    states = rng.normal(size=(10, 3, 5)).astype(np.float32)
    states[:, 0] = states[0, 0]  # point 0 is shared by every context
    meta = pd.DataFrame({"sense": ["x", "y"] * 5, "word": "w"})
    table = per_point_table(tg.Trajectories(states, meta))
    assert np.isnan(table["loo_centroid_accuracy"].iloc[0])  # a tie decides nothing: undefined, not wrong
    np.testing.assert_allclose(table["mean_cos_to_final"].iloc[-1], 1.0, rtol=1e-6)
    np.testing.assert_allclose(table["mean_norm"], np.linalg.norm(states, axis=-1).mean(0), rtol=1e-6)


def test_accuracy_is_pooled_over_words_by_examples_and_skips_one_sense_words(brute_loo_centroid_accuracy):
    rng = np.random.default_rng(2)
    n_w, n_v, n_u = 24, 10, 4
    states = rng.normal(size=(n_w + n_v + n_u, 4, 6)).astype(np.float32)
    words = np.array(["w"] * n_w + ["v"] * n_v + ["u"] * n_u)
    labels = np.array(["a", "b", "c"] * 8 + ["x", "y"] * 5 + ["z"] * n_u)
    states[labels == "a", 1:, 0] += 3.0
    states[labels == "x", 2:, 1] += 3.0
    order = rng.permutation(len(words))  # words interleaved
    meta = pd.DataFrame({"sense": labels[order], "word": words[order]})
    table = per_point_table(tg.Trajectories(states[order], meta))
    # each word centred on its own mean (brute force per word), the one-sense word "u" has nothing to decide
    expect = sum(brute_loo_centroid_accuracy(states[words == w], labels[words == w]) * (words == w).sum()
                 for w in ("w", "v")) / (n_w + n_v)
    np.testing.assert_allclose(table["loo_centroid_accuracy"], expect)
