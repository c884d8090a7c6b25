"""Skipping blocks on tiny random models: the baseline loss equals a plain forward's, a skipped range's loss equals
the same skip written as identity hooks, skipping every block leaves the separability of the block-1 input, and
bad ranges are refused. How much depth the toy's resolution needs is in test_interventions_toy.py."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import trajgeo as tg
from trajgeo import interventions as iv


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def examples(bank_examples):
    """This module's "bank" examples: 20 texts of 9 words (conftest's ``bank_examples``)."""
    return functools.partial(bank_examples, n=20, n_words=9)


def _hand_loss(lm, texts, ends, skip=(), after_target=True):
    """Mean next-token loss per text from a plain forward whose skipped blocks return their input (hooks)."""
    def identity(module, args, kwargs, out):
        h = args[0] if args else kwargs["hidden_states"]
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    handles = [lm.adapter.blocks[b - 1].register_forward_hook(identity, with_kwargs=True) for b in skip]
    try:
        out = []
        for text, e in zip(texts, ends):
            ids = torch.as_tensor([lm.tokenizer(text)["input_ids"]])
            with torch.no_grad():
                logits = lm.model(input_ids=ids).logits[0]
            first = e - 1 if after_target else 0
            out.append(float(torch.nn.functional.cross_entropy(logits[first:-1], ids[0, first + 1:])))
    finally:
        for h in handles:
            h.remove()
    return float(np.mean(out))


def test_losses_equal_plain_forwards_with_the_same_blocks_skipped_by_hand(mixed_lm, examples):
    df = examples()
    f = iv.skip_layers(mixed_lm, df, ranges=[2, (1, 3)], n_boot=20, cv=2, progress=False)
    assert list(f.columns) == ["word", "start", "stop", "metric", "value", "ci_low", "ci_high"]
    assert sorted({(a, b) for a, b in zip(f["start"], f["stop"])}) == [(0, 0), (1, 3), (2, 3)]
    if not mixed_lm.adapter.causal:
        assert set(f["metric"]) == {"final_separability"}
        return
    traj = tg.extract(mixed_lm, df, progress=False)
    loss = f[f["metric"] == "lm_loss"].set_index(["start", "stop"])["value"]
    ends = traj.meta["token_end"]
    assert loss.loc[(0, 0)] == pytest.approx(_hand_loss(mixed_lm, df["text"], ends), rel=1e-5)
    assert loss.loc[(2, 3)] == pytest.approx(_hand_loss(mixed_lm, df["text"], ends, skip=[2]), rel=1e-5)
    assert loss.loc[(1, 3)] == pytest.approx(_hand_loss(mixed_lm, df["text"], ends, skip=[1, 2]), rel=1e-5)
    every = iv.skip_layers(mixed_lm, df, ranges=[(2, 3)], loss_on="all", n_boot=0, cv=2, progress=False)
    got = every.query("metric == 'lm_loss' and start == 2")["value"].iloc[0]
    assert got == pytest.approx(_hand_loss(mixed_lm, df["text"], ends, skip=[2], after_target=False), rel=1e-5)


def test_skipping_every_block_leaves_the_separability_of_the_block_input(mixed_lm, examples):
    df = examples()
    L = mixed_lm.n_layers
    f = iv.skip_layers(mixed_lm, df, ranges=[(1, L + 1)], n_boot=50, cv=2, progress=False)
    got = f.query("metric == 'final_separability' and start == 1")
    traj = tg.extract(mixed_lm, df, progress=False)
    block_input = tg.Trajectories(traj.aux["block_input"][:, None], traj.meta, model_info=traj.model_info)
    ref = tg.probes.layerwise(block_input, probe="ridge", cv=2, n_boot=50, progress=False)
    ref = ref[(ref["fold"] == -1) & (ref["metric"] == "balanced_accuracy")]
    assert got["value"].iloc[0] == pytest.approx(ref["value"].iloc[0])


def test_bad_ranges_are_refused(mixed_lm, examples):
    df = examples(n=8)
    L = mixed_lm.n_layers
    with pytest.raises(ValueError, match="1 <= start < stop"):
        iv.skip_layers(mixed_lm, df, ranges=[(0, 2)], progress=False)
    with pytest.raises(ValueError, match="1 <= start < stop"):
        iv.skip_layers(mixed_lm, df, ranges=[(2, L + 2)], progress=False)
    with pytest.raises(ValueError, match="a range is a block"):
        iv.skip_layers(mixed_lm, df, ranges=["x"], progress=False)
    with pytest.raises(ValueError, match="loss_on"):
        iv.skip_layers(mixed_lm, df, loss_on="some", progress=False)
