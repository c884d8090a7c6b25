"""Attention-source attribution on tiny random models of every family: the parts add up to each head's write and
the heads to the attention write; the summed sources equal tg.senses.attribution's head rows (an independent
path through extraction); explicit directions give plain projections; cues and relative positions land on the
right tokens; families without additive heads and bad options are refused. The planted cue and the silence on
shuffled senses are in test_interventions_toy.py."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch

import trajgeo as tg
from trajgeo import interventions as iv
from trajgeo.engine import Engine, HeadsUnavailable, Site

_HEADLESS = {"gemma2", "gemma3", "bert", "roberta"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def examples(bank_examples):
    """This module's "bank" examples: 16 texts of 9 words (conftest's ``bank_examples``)."""
    return functools.partial(bank_examples, n=16, n_words=9, cue=True)


@pytest.fixture(scope="module")
def lm(family, tiny_lm):
    return tiny_lm(family)


def test_source_parts_add_up_to_each_heads_write_and_heads_to_the_attention_write(lm, family, examples):
    df = examples()
    if family in _HEADLESS:
        with pytest.raises(HeadsUnavailable, match="additive per-head writes"):
            iv.source_attribution(lm, df, progress=False)
        return
    res = iv.source_attribution(lm, df, progress=False, return_result=True, batch_size=5)
    s, w = res.sources, res.writes
    assert list(s.columns) == ["example", "word", "sense", "layer", "head", "source_position", "source_token",
                               "relative_position", "is_cue", "value"]
    L, H = lm.n_layers, lm.adapter.n_heads
    assert len(w) == len(df) * L * H
    summed = s.groupby(["example", "layer", "head"])["value"].sum()
    merged = w.set_index(["example", "layer", "head"]).join(summed)
    scale = max(1.0, float(merged["head_write"].abs().max()))
    np.testing.assert_allclose(merged["value"], merged["head_write"], rtol=0, atol=1e-5 * scale)
    per_layer = w.groupby(["example", "layer"]).agg(heads=("head_write", "sum"), bias=("bias", "first"),
                                                    attn=("attn_write", "first"))
    np.testing.assert_allclose(per_layer["heads"] + per_layer["bias"], per_layer["attn"], rtol=0, atol=1e-5 * scale)
    # the output projection's bias is no head's: it is the attention write minus the heads
    has_bias = getattr(lm.adapter.head_proj[0], "bias", None) is not None
    assert (per_layer["bias"].abs().max() > 0) == has_bias


def test_summed_sources_equal_the_head_rows_of_senses_attribution(lm, family, examples):
    """The same own-sense directions (leave-group-out prototypes at the last point, standardised, pulled back),
    applied to heads written by extraction (another code path: no patterns, no values)."""
    if family in _HEADLESS:
        pytest.skip("no additive heads in this family")
    df = examples()
    src = iv.source_attribution(lm, df, progress=False)
    traj = tg.extract(lm, df, components=True, heads=True, progress=False)
    att = tg.senses.attribution(traj)
    heads = att[att["component"] == "head"].set_index(["example", "layer", "head"])["attribution"]
    summed = src.groupby(["example", "layer", "head"])["value"].sum()
    both = pd.concat([summed, heads], axis=1, join="inner")
    assert len(both) == len(summed) == len(heads)
    scale = max(1.0, float(both.abs().max().max()))
    np.testing.assert_allclose(both["value"], both["attribution"], rtol=0, atol=1e-5 * scale)


def test_an_explicit_direction_gives_plain_projections_of_the_head_writes(lm, family, examples):
    if family in _HEADLESS:
        pytest.skip("no additive heads in this family")
    df = examples(n=4)
    L, d = lm.n_layers, lm.d_model
    per_point = np.random.default_rng(3).standard_normal((L + 1, d))
    res = iv.source_attribution(lm, df, direction=per_point, layers=[1, 3], heads=[0, 2], progress=False,
                                return_result=True)
    assert set(res.sources["layer"]) == {1, 3} and set(res.sources["head"]) == {0, 2}
    # by hand: the engine's head writes at the target, projected on the vector of the layer's point
    eng = Engine(lm)
    traj = tg.extract(lm, df, progress=False)
    for r in traj.meta.itertuples():
        ids = lm.tokenizer(r.text)["input_ids"][:r.n_tokens]
        run = eng.run(eng.batch([ids]), read=[Site.head_write(1), Site.head_write(3)])
        for l in (1, 3):
            for h in (0, 2):
                expect = float(run[Site.head_write(l)][0, r.token_end - 1, h].double() @ torch.as_tensor(per_point[l]))
                got = res.sources.query("example == @r.example and layer == @l and head == @h")["value"].sum()
                assert got == pytest.approx(expect, abs=1e-5 * max(1.0, abs(expect)))
    one = iv.source_attribution(lm, df, direction=per_point[2], progress=False)
    assert one["value"].notna().all()


def test_sources_carry_the_cue_and_their_offset_from_the_target(lm, family, examples):
    if family in _HEADLESS:
        pytest.skip("no additive heads in this family")
    df = examples(n=3)
    s = iv.source_attribution(lm, df, direction=np.ones(lm.d_model), layers=[1], heads=[0], progress=False)
    for ex, part in s.groupby("example"):
        toks = df["text"].iloc[ex].split()
        # a causal model's input ends at the target: sources are the words up to it
        assert part["source_token"].str.strip().tolist() == toks[:7]
        assert part["relative_position"].tolist() == list(range(-6, 1))
        assert part.loc[part["is_cue"], "source_position"].tolist() == [4]


def test_bad_options_are_refused_with_a_reason(lm, family, examples):
    if family in _HEADLESS:
        pytest.skip("refused earlier for this family")
    df = examples(n=4)
    with pytest.raises(ValueError, match="explicit vector has no sense labels"):
        iv.source_attribution(lm, df, direction=np.ones(lm.d_model), n_permutations=5, progress=False)
    with pytest.raises(ValueError, match="direction must have shape"):
        iv.source_attribution(lm, df, direction=np.ones(lm.d_model + 1), progress=False)
    with pytest.raises(ValueError, match="by must be one of"):
        iv.source_attribution(lm, df, by="source_token", progress=False)
    with pytest.raises(ValueError, match="layers run 1"):
        iv.source_attribution(lm, df, layers=[0], progress=False)


def test_the_null_refits_the_directions_on_shuffled_senses(lm, family, examples):
    """The summary's observed cells equal the per-source frame grouped by hand, and the null columns are there."""
    if family != "llama":
        pytest.skip("one family suffices for the bookkeeping")
    df = examples()
    res = iv.source_attribution(lm, df, n_permutations=20, progress=False, return_result=True)
    s = res.sources
    by_hand = s.groupby(["layer", "head", "example", "is_cue"])["value"].sum().groupby(
        ["layer", "head", "is_cue"]).mean()
    got = res.summary.set_index(["layer", "head", "is_cue"])["value"]
    np.testing.assert_allclose(got.loc[by_hand.index], by_hand, rtol=1e-5, atol=1e-6)
    for col in ("null_mean", "null_q95", "null_fwer", "p_value", "p_fwer"):
        assert res.summary[col].notna().all()
    assert (res.summary["n"][res.summary["is_cue"]] == len(df)).all()
