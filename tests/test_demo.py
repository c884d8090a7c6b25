"""The demo's per-point table against brute-force references."""

import numpy as np
import pandas as pd

import trajgeo as tg
from trajgeo.demo import per_point_table

from conftest import brute_loo_centroid_accuracy


def test_loo_centroid_accuracy_matches_brute_force():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(24, 4, 6)).astype(np.float32)
    labels = np.array(["a", "b", "c"] * 8)
    states[labels == "a", 2:, 0] += 4.0  # senses separate from point 2 on
    states[labels == "b", 2:, 1] += 4.0
    meta = pd.DataFrame({"sense": labels, "word": "w"})
    table = per_point_table(tg.Trajectories(states, meta))
    np.testing.assert_allclose(table["loo_centroid_accuracy"], brute_loo_centroid_accuracy(states, labels))
    assert table["loo_centroid_accuracy"].iloc[3] > table["loo_centroid_accuracy"].iloc[0]


def test_identical_embeddings_give_no_credit_and_cos_to_final_ends_at_one():
    rng = np.random.default_rng(1)
    states = rng.normal(size=(10, 3, 5)).astype(np.float32)
    states[:, 0] = states[0, 0]  # point 0 is shared by every context
    meta = pd.DataFrame({"sense": ["x", "y"] * 5, "word": "w"})
    table = per_point_table(tg.Trajectories(states, meta))
    assert table["loo_centroid_accuracy"].iloc[0] == 0.0
    np.testing.assert_allclose(table["mean_cos_to_final"].iloc[-1], 1.0, rtol=1e-6)
    np.testing.assert_allclose(table["mean_norm"], np.linalg.norm(states, axis=-1).mean(0), rtol=1e-6)
