"""Steering on tiny random models: alpha 0 changes nothing (the steered pass from a cached residual reproduces the
unsteered margins to 1e-6), a steered run equals the same addition written as a plain hook, the frame's contract
and refusals. The planted dose-response and the silence on shuffled senses are in test_interventions_toy.py."""

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
    """This module's "bank" examples: 24 texts of 8 words (conftest's ``bank_examples``)."""
    return functools.partial(bank_examples, n=24, n_words=8)


def test_alpha_zero_changes_nothing(mixed_lm, examples):
    lm = mixed_lm
    res = iv.steer(lm, examples(), layer=1, alphas=(0.0, 3.0), cv=2, n_random=2, n_boot=20, progress=False,
                   return_result=True)
    m = res.margins
    zero = m[m["alpha"] == 0]
    assert len(zero) == 24 * 3  # every example, steered and two random draws
    scale = max(1.0, float(m["base_margin"].abs().max()))
    np.testing.assert_allclose(zero["margin"], zero["base_margin"], rtol=0, atol=1e-6 * scale)
    assert not zero["flipped"].any()
    f = res.frame.set_index(["alpha", "condition", "metric"])["value"]
    assert f.loc[(0.0, "steer", "flip_rate")] == 0 and f.loc[(0.0, "random", "flip_rate")] == 0
    # a real alpha moves the margins
    assert (m.loc[m["alpha"] == 3.0, "margin"] - m.loc[m["alpha"] == 3.0, "base_margin"]).abs().max() > 1e-3


def test_the_steered_margin_equals_the_same_addition_as_a_plain_hook(mixed_lm, examples):
    """Recompute one example's steered final vector with a forward hook on block 1 (no engine), and the margin
    from its effect: steered margin - base margin must equal the judge's change computed by hand."""
    lm = mixed_lm
    df = examples()
    res = iv.steer(lm, df, layer=1, alphas=(2.0,), cv=2, n_random=0, n_boot=0, progress=False, return_result=True)
    m = res.margins.set_index("example")
    traj = tg.extract(lm, df, progress=False)
    L = lm.n_layers
    r = traj.meta.iloc[5]
    ids = torch.as_tensor([lm.tokenizer(r["text"])["input_ids"][:r["n_tokens"]]])
    cols = [r["token_end"] - 1] if lm.adapter.causal else list(range(r["token_start"], r["token_end"]))

    # rebuild the example's fold as steer does (from extraction's states), and add its vector by hand
    from trajgeo.interventions.steering import _Fold
    from trajgeo.probes import make_splits

    y = traj.meta["sense"].to_numpy()
    g = traj.group_codes("group")
    g = np.arange(len(y)) if g is None else g
    x_l, x_L = traj.states[:, 1].astype(np.float64), traj.states[:, L].astype(np.float64)
    fold = None
    for train, test in make_splits(y, g, 2, random_state=0):
        if 5 in test:
            a, b = make_splits(y[train], g[train], 2, random_state=0)[0]
            fold = _Fold(x_l[train], x_L[train], y[train], a, b, "standardize")
    vec = torch.as_tensor(2.0 * fold.sigma[y[5]] * fold.u[y[5]], dtype=torch.float32)

    def add(module, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[0, cols] += vec
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    seen = {}

    def grab(module, args, out):
        seen["h"] = (out[0] if isinstance(out, tuple) else out)[0, cols].mean(0)

    handles = [lm.adapter.blocks[0].register_forward_hook(add), lm.adapter.blocks[L - 1].register_forward_hook(grab)]
    try:
        with torch.no_grad():
            lm.adapter.base(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    expect = fold.margin(seen["h"].double().numpy()[None], y[[5]])[0]
    got = m.loc[traj.meta["example"].iloc[5], "margin"]
    assert got == pytest.approx(expect, abs=1e-4 * max(1.0, abs(expect)))


def test_the_frame_follows_its_contract(mixed_lm, examples):
    lm = mixed_lm
    f = iv.steer(lm, examples(), layer=2, alphas=(0.0, 1.0, 4.0), cv=2, n_random=2, n_boot=30, progress=False)
    assert list(f.columns) == ["word", "layer", "alpha", "condition", "metric", "value", "ci_low", "ci_high", "n"]
    assert set(f["condition"]) == {"steer", "random"} and set(f["metric"]) == {"final_margin", "flip_rate"}
    assert (f["layer"] == 2).all() and sorted(set(f["alpha"])) == [0.0, 1.0, 4.0]
    flips = f[f["metric"] == "flip_rate"]["value"]
    assert ((flips >= 0) & (flips <= 1)).all()


def test_bad_options_are_refused(mixed_lm, examples):
    lm = mixed_lm
    df = examples()
    with pytest.raises(ValueError, match=r"layer must be in 1\.\.2"):
        iv.steer(lm, df, layer=3, progress=False)
    with pytest.raises(ValueError, match="at least 3"):
        iv.steer(lm, df.iloc[:4], layer=1, progress=False)
    with pytest.raises(ValueError, match="n_permutations"):
        iv.steer(lm, df, layer=1, n_permutations=-1, progress=False)


def test_too_few_prefix_groups_are_refused_before_any_forward_pass(tiny_model, wtok, examples, monkeypatch):
    from trajgeo.engine import Engine

    calls = []
    real = Engine.run
    monkeypatch.setattr(Engine, "run", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    lm = tg.load_model((tiny_model("llama", len(wtok)), wtok))
    with pytest.raises(ValueError, match=r"word 'bank', sense 'river' has 12 examples in 2 group\(s\)") as err:
        iv.steer(lm, examples(river_prefixes=2), layer=1, cv=2, n_random=0, n_boot=0,
                 progress=False)
    assert "at least 3 groups per sense" in str(err.value) and "causal" in str(err.value)
    assert "finance" not in str(err.value)
    assert calls == []  # not even the unsteered pass
    # three prefixes in two folds: a fold holds out two of them and leaves one to train on, for two halves
    with pytest.raises(ValueError, match=r"word 'bank': fold \d of 2 leaves sense 'river' 1 training group"):
        iv.steer(lm, examples(river_prefixes=3), layer=1, cv=2, n_random=0, n_boot=0, progress=False)
    assert calls == []
    # three folds of three prefixes are enough, and the counter sees the passes
    iv.steer(lm, examples(river_prefixes=3), layer=1, alphas=(1.0,), cv=3, n_random=0, n_boot=0,
             progress=False)
    assert len(calls) > 0
