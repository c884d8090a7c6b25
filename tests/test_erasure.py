"""LEACE erasure: the eraser's guarantee (equal class means on the fitting data) in numpy and inside the forward
pass, the rank it erases (the package's default tolerance can erase nothing), the matched random control, and
the frame's contract with its unedited condition checked against extraction and a plain forward's loss. The
planted effect and the silence on shuffled senses are in test_interventions_toy.py."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch

import trajgeo as tg
from trajgeo import interventions as iv
from trajgeo.engine import Edit, Engine, Pool, Site


pytestmark = pytest.mark.usefixtures("one_thread")


def _planted(n=90, d=20, k=3, shift=1.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n // k)
    x = rng.standard_normal((n, d)) * np.linspace(0.2, 3.0, d) + shift * rng.standard_normal((k, d))[y]
    return x, y


# ============================================================== the eraser
def test_leace_makes_the_class_means_equal_on_the_fitting_data():
    x, y = _planted()
    er = iv.leace_eraser(x, y)
    assert er.rank == 2  # one-hot labels of 3 senses: a rank-2 cross-covariance
    z = er(x)
    means = np.stack([z[y == k].mean(0) for k in range(3)])
    scale = np.abs(x).max()
    np.testing.assert_allclose(means, np.broadcast_to(z.mean(0), means.shape), rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(z.mean(0), x.mean(0), rtol=0, atol=1e-9 * scale)  # the overall mean is kept
    # before the edit they were far apart
    assert np.abs(np.stack([x[y == k].mean(0) for k in range(3)]) - x.mean(0)).max() > 0.3
    # torch in, torch out, same numbers
    zt = er(torch.as_tensor(x, dtype=torch.float64))
    np.testing.assert_allclose(zt.numpy(), z, rtol=0, atol=1e-12)


def test_the_package_default_tolerance_can_erase_nothing_and_the_rank_says_so():
    # the same 40 points in both senses, one sense shifted by 1e-3 of a standard deviation: a real but tiny signal
    base = np.random.default_rng(1).standard_normal((40, 20))
    x, y = np.concatenate([base, base + 1e-3]), np.repeat([0, 1], 40)
    default = iv.leace_eraser(x, y, svd_tol=0.01)
    assert default.rank == 0 and default.singular_values.max() < 0.01
    np.testing.assert_allclose(default(x), x, rtol=0, atol=0)  # it erased nothing
    ours = iv.leace_eraser(x, y)
    assert ours.rank == 1
    z = ours(x)
    np.testing.assert_allclose(z[y == 0].mean(0), z[y == 1].mean(0), rtol=0, atol=1e-10)


def test_the_random_control_removes_the_same_whitened_variance():
    x, y = _planted()
    er = iv.leace_eraser(x, y)
    rnd = er.random_like(0)
    assert rnd.rank == er.rank
    sigma = er.unwhitening @ er.unwhitening  # the (shrunk) covariance LEACE whitened with
    d = x.shape[1]

    def removed(e):
        P = np.eye(d) - e.left @ e.right.T  # the linear part of the edit
        W = e.whitening
        return np.trace(W @ sigma @ W) - np.trace(W @ P @ sigma @ P.T @ W)

    assert removed(er) == pytest.approx(er.rank, abs=1e-8)
    assert removed(rnd) == pytest.approx(er.rank, abs=1e-8)
    # and it is another subspace: the class means stay apart after it
    z = rnd(x)
    assert np.abs(np.stack([z[y == k].mean(0) for k in range(3)]) - z.mean(0)).max() > 0.3


def test_bad_labels_are_refused():
    x, _ = _planted()
    with pytest.raises(ValueError, match="two senses"):
        iv.leace_eraser(x, np.zeros(len(x)))
    with pytest.raises(ValueError, match="one label each"):
        iv.leace_eraser(x, np.zeros(3))


# ============================================================== inside the pass (tiny models)
@pytest.fixture(scope="module")
def examples(bank_examples):
    """This module's "bank" examples: 24 texts of 9 words (conftest's ``bank_examples``)."""
    return functools.partial(bank_examples, n=24, n_words=9)


@pytest.fixture(scope="module")
def erased(mixed_lm, examples):
    lm = mixed_lm
    df = examples()
    return df, iv.erase(lm, df, layer=1, cv=2, n_boot=50, progress=False, return_result=True)


def test_erasing_inside_the_pass_makes_the_class_means_equal_at_that_point(mixed_lm, erased):
    lm = mixed_lm
    df, res = erased
    eng = Engine(lm)
    traj = tg.extract(lm, df, progress=False)
    row = res.erasers[res.erasers["condition"] == "leace"].iloc[0]
    assert row["rank"] >= 1
    meta = traj.meta.set_index("example").loc[row["train_examples"]]
    full = lm.adapter.causal and lm.adapter.unembed is not None
    ids = [lm.tokenizer(t)["input_ids"] if full else lm.tokenizer(t)["input_ids"][:n]
           for t, n in zip(meta["text"], meta["n_tokens"])]
    cols = [[e - 1] if lm.adapter.causal else list(range(s, e)) for s, e in zip(meta["token_start"], meta["token_end"])]
    rows = torch.as_tensor([r for r, c in enumerate(cols) for _ in c])
    columns = torch.as_tensor([x for c in cols for x in c])
    run = eng.run(eng.batch(ids), read=[Site.resid(1)], pool=Pool.mean(cols),
                  edits=[Edit.apply(Site.resid(1), row["eraser"], rows=rows, columns=columns)])
    z = run[Site.resid(1)].double().numpy()
    y = meta["sense"].to_numpy()
    scale = np.abs(z).max()
    np.testing.assert_allclose(z[y == "river"].mean(0), z[y == "finance"].mean(0), rtol=0, atol=1e-5 * scale)
    before = traj.states[traj.meta.set_index("example").index.get_indexer(row["train_examples"]), 1]
    assert np.abs(before[y == "river"].mean(0) - before[y == "finance"].mean(0)).max() > 1e-3 * scale


def test_the_frame_follows_its_contract_and_reports_the_rank(mixed_lm, erased):
    lm = mixed_lm
    _, res = erased
    f = res.frame
    assert list(f.columns) == ["word", "layer", "point", "condition", "metric", "value", "ci_low", "ci_high",
                               "rank_erased"]
    L = lm.n_layers
    assert set(f["condition"]) == {"none", "leace", "leace_permuted", "random"} and (f["layer"] == 1).all()
    sep = f[f["metric"] == "separability"]
    assert sorted(set(sep["point"])) == list(range(1, L + 1))
    assert sorted(set(f.loc[f["metric"] == "mlp_write_projection", "point"])) == list(range(2, L + 1))
    has_loss = lm.adapter.causal and lm.adapter.unembed is not None
    assert ("lm_loss" in set(f["metric"])) == has_loss
    assert (f.loc[f["condition"] == "none", "rank_erased"] == 0).all()
    ranks = res.erasers.groupby("condition")["rank"].mean()
    for cond in ("leace", "leace_permuted", "random"):
        assert (f.loc[f["condition"] == cond, "rank_erased"] == ranks[cond]).all()
    assert (res.erasers.loc[res.erasers["condition"] == "random", "rank"].to_numpy()
            == res.erasers.loc[res.erasers["condition"] == "leace", "rank"].to_numpy()).all()
    ok = f.dropna(subset=["ci_low"])
    assert ((ok["ci_low"] <= ok["value"] + 1e-12) & (ok["value"] <= ok["ci_high"] + 1e-12)).all()


def test_the_unedited_condition_equals_extraction_and_a_plain_forwards_loss(mixed_lm, erased):
    lm = mixed_lm
    df, res = erased
    traj = tg.extract(lm, df, progress=False)
    none = res.states["none"]
    np.testing.assert_allclose(none.states, traj.states[:, 1:], rtol=1e-5, atol=1e-5)
    leace = res.states["leace"]
    assert np.abs(leace.states[:, 0] - traj.states[:, 1]).max() > 1e-4  # the erasure changed point 1
    if not (lm.adapter.causal and lm.adapter.unembed is not None):
        return
    losses = []
    for text, e in zip(traj.meta["text"], traj.meta["token_end"]):  # a plain forward of the whole text
        ids = torch.as_tensor([lm.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0]
        losses.append(float(torch.nn.functional.cross_entropy(logits[e - 1:-1], ids[0, e:])))
    got = res.frame.query("condition == 'none' and metric == 'lm_loss'")["value"].iloc[0]
    assert got == pytest.approx(np.mean(losses), rel=1e-5)


def test_bad_options_are_refused(mixed_lm, examples):
    lm = mixed_lm
    df = examples(n=8)
    with pytest.raises(ValueError, match="layer must be in 1"):
        iv.erase(lm, df, layer=0, progress=False)
    with pytest.raises(ValueError, match="include 'none'"):
        iv.erase(lm, df, layer=1, conditions=["leace"], progress=False)


# ============================================================== refused before the model runs
@pytest.fixture
def counted_passes(monkeypatch):
    """The number of engine passes run so far (every forward of erase and steer goes through Engine.run)."""
    calls = []
    real = Engine.run

    def run(self, *args, **kw):
        calls.append(1)
        return real(self, *args, **kw)

    monkeypatch.setattr(Engine, "run", run)
    return calls


def test_too_few_prefix_groups_are_refused_before_any_forward_pass(tiny_model, wtok, examples, counted_passes):
    lm = tg.load_model((tiny_model("llama", len(wtok)), wtok))
    blocks = []
    hook = lm.adapter.blocks[0].register_forward_pre_hook(lambda m, a: blocks.append(1))
    try:
        df = examples(n=16, river_prefixes=1)
        traj_groups = tg.Trajectories(np.zeros((len(df), 1, 1)), df.assign(example=range(len(df))),
                                      model_info={"causal": True}).group_codes("group")
        assert len(np.unique(traj_groups[df["sense"] == "river"])) == 1  # the grouping erase uses: one prefix
        with pytest.raises(ValueError, match=r"word 'bank', sense 'river' has 8 examples in 1 group\(s\)") as err:
            iv.erase(lm, df, layer=1, cv=2, n_boot=0, progress=False)
        assert "at least 2 groups per sense" in str(err.value) and "causal" in str(err.value)
        assert "finance" not in str(err.value)  # it has 8 distinct prefixes
        assert counted_passes == [] and blocks == []
        # two prefixes are enough for two folds: it runs, and the counters see its passes
        iv.erase(lm, examples(n=16, river_prefixes=2), layer=1, cv=2, conditions=("none", "leace"),
                 n_boot=0, progress=False)
        assert len(counted_passes) > 0 and len(blocks) > 0
        # ... but not three
        n_before = len(counted_passes)
        with pytest.raises(ValueError, match=r"cv=3.*sense 'river' has 8 examples in 2 group\(s\)"):
            iv.erase(lm, examples(n=16, river_prefixes=2), layer=1, cv=3, n_boot=0, progress=False)
        assert len(counted_passes) == n_before
    finally:
        hook.remove()


def test_a_one_sense_word_is_left_unedited_and_unprobed_instead_of_failing_after_the_passes(tiny_model, wtok, examples):
    lm = tg.load_model((tiny_model("llama", len(wtok)), wtok))
    df = pd.concat([examples(n=12), examples(n=6, seed=3).assign(word="other", sense="only")],
                   ignore_index=True)
    with pytest.warns(UserWarning, match="'other' has one sense"):
        res = iv.erase(lm, df, layer=1, cv=2, conditions=("none", "leace"), n_boot=0, progress=False,
                       return_result=True)
    f = res.frame
    assert set(f.loc[f["metric"] == "separability", "word"]) == {"bank"}
    assert set(f.loc[f["metric"] == "mlp_write_projection", "word"]) == {"bank", "other"}
    other = (df["word"] == "other").to_numpy()
    np.testing.assert_array_equal(res.states["leace"].states[other], res.states["none"].states[other])
    assert np.abs(res.states["leace"].states[~other, 0] - res.states["none"].states[~other, 0]).max() > 1e-4
