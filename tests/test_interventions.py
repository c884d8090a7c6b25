"""Activation and attribution patching over minimal pairs: the identities of issue 15 on tiny random models of
every family, the same patch written by hand with plain torch hooks, the readouts against independent
computations, resuming from a store, and the same-sense null on planted frames."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

import trajgeo as tg
from trajgeo import datasets
from trajgeo import interventions as iv
from trajgeo.engine import HeadsUnavailable

_HEADLESS = {"gemma2", "gemma3", "bert", "roberta"}
_SENSE_WORDS = {"bank": {"river": ["water", "shore", "muddy"], "finance": ["money", "loan", "account"]}}


# ============================================================== pairs (every word one token of `wtok`)
def _pair(pair, text, counterfactual, sense, cf_sense, target="bank"):
    return dict(pair=pair, word="bank", text=text, counterfactual=counterfactual, target=target, sense=sense,
                counterfactual_sense=cf_sense, kind="flip" if sense != cf_sense else "same")


_PAIRS = [
    _pair(0, "i sat by the river bank and watched the water", "i sat by the savings bank and watched the water",
          "river", "finance"),
    _pair(1, "she went to the muddy bank to deposit her salary", "she went to the savings bank to deposit her salary",
          "river", "finance"),
    _pair(2, "fishermen lined the grassy bank of the slow brown river", "fishermen lined the savings bank of the "
          "slow brown river", "river", "finance"),
    _pair(3, "i sat by the river bank and watched the water", "i sat by the muddy bank and watched the water",
          "river", "river"),
]


def _token_aligner(tokenizer, pairs):
    """Token-level alignment without tg.datasets' minimal-pair checks: the self-patch identity patches a run
    into itself, a "pair" whose two texts are identical, which the datasets contract rightly refuses."""
    rows = []
    for r in pairs.itertuples():
        enc = [tokenizer(t, return_offsets_mapping=True) for t in (r.text, r.counterfactual)]
        spans = []
        for t, e in zip((r.text, r.counterfactual), enc):
            m = re.search(rf"\b{re.escape(r.target)}\b", t)
            pos = [i for i, (a, b) in enumerate(e["offset_mapping"]) if m and b > a and a < m.end() and b > m.start()]
            spans.append((pos[0], pos[-1] + 1) if pos else None)
        ids = [e["input_ids"] for e in enc]
        reason = ""
        if len(ids[0]) != len(ids[1]):
            reason = f"token counts differ ({len(ids[0])} vs {len(ids[1])})"
        elif spans[0] is None or spans[0] != spans[1]:
            reason = "the target is not at the same tokens"
        cue = tuple(i for i, (a, b) in enumerate(zip(*ids)) if a != b) if not reason else ()
        s = spans[0] or (0, 0)
        rows.append({"pair": r.pair, "aligned": not reason, "n_tokens": len(ids[0]), "target_start": s[0],
                     "target_end": s[1], "cue_positions": cue, "reason": reason})
    return pd.DataFrame(rows)


@pytest.fixture
def pairs():
    return pd.DataFrame(_PAIRS)


@pytest.fixture(scope="module")
def lm(family, tiny_lm):
    return tiny_lm(family)


@pytest.fixture(scope="module")
def linear(lm, corpus):
    """A linear readout h @ w (a torch function, so attribution patching can use it), with |w| = 1 / the final
    residual's typical norm: readouts are O(1), so float32 rounding of a pass is ~1e-7 of them."""
    from trajgeo.engine import Engine, Site

    eng = Engine(lm)
    final = Site.resid(lm.n_layers)
    h = eng.run(eng.batch([lm.tokenizer(corpus[0])["input_ids"]]), read=[final])[final][0]
    u = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1))
    w = u / u.norm() / h.norm(dim=-1).median()
    return lambda h: h @ w.to(h.dtype)


def _atol(readouts):
    """1e-6 of the readouts' scale (at least 1): float32 rounding of one pass against another batch shape."""
    return 1e-6 * max(1.0, float(np.abs(readouts[["base", "source"]].to_numpy()).max()))


def _sweep_sites(family):
    return ["resid", "attn", "mlp"] + ([] if family in _HEADLESS else ["head"])


# ============================================================== identities
def test_patching_a_run_into_itself_changes_nothing(lm, linear, family, pairs, monkeypatch):
    monkeypatch.setattr(datasets, "align_pairs", _token_aligner)
    same = pairs.assign(counterfactual=pairs["text"], counterfactual_sense=pairs["sense"], kind="same")
    for site in _sweep_sites(family):
        some = {"layers": [2]} if site == "head" else {}  # every head of one layer: the other layers are alike
        res = iv.patch(lm, same, site=site, readout=linear, direction="both", progress=False, batch_size=5,
                       return_result=True, **some)
        assert len(res.effects) > 0
        assert res.effects["effect"].abs().max() <= _atol(res.readouts), site
        assert res.effects["normalized_effect"].isna().all()  # the readout does not move: no ratio
        assert (res.readouts["difference"] == 0).all()


def test_patching_the_embedding_at_the_cue_reproduces_the_counterfactual(lm, linear, pairs):
    # the cue is the only position whose embedding differs, so this is patching every position of point 0
    res = iv.patch(lm, pairs, readout=linear, points=[0], positions="cue", direction="both", progress=False,
                   return_result=True)
    assert (res.effects["role"] == "cue").all() and len(res.effects) == 2 * len(pairs)
    np.testing.assert_allclose(res.effects["normalized_effect"], 1.0, rtol=0, atol=1e-5)
    merged = res.effects.merge(res.readouts, on=["pair", "direction"])
    np.testing.assert_allclose(merged["effect"], merged["difference"], rtol=0, atol=1e-6)


def test_patching_the_last_point_at_the_target_gives_the_counterfactual_readout(lm, linear, pairs):
    L = lm.n_layers
    res = iv.patch(lm, pairs, readout=linear, points=[L], direction="both", progress=False, return_result=True)
    e = res.effects
    at_target = e[e["role"] == "target"]
    assert len(at_target) == 2 * len(pairs)
    np.testing.assert_allclose(at_target["normalized_effect"], 1.0, rtol=0, atol=1e-5)
    # only the target's final vector is read
    assert (e.loc[e["role"] != "target", "effect"].abs() <= _atol(res.readouts)).all()


def test_every_point_and_position_is_one_row_with_the_documented_columns(lm, linear, pairs):
    e = iv.patch(lm, pairs, readout=linear, progress=False)
    assert list(e.columns) == ["pair", "point", "position", "site", "effect", "normalized_effect", "direction",
                               "kind", "word", "role"]
    n_tokens = pd.Series({p["pair"]: len(lm.tokenizer(p["text"])["input_ids"]) for p in _PAIRS})
    if lm.adapter.causal:  # a causal model's input ends at the target
        n_tokens = pd.Series({p["pair"]: p["text"].split().index("bank") + 1 for p in _PAIRS})
    got = e.groupby("pair").size()
    pd.testing.assert_series_equal(got, n_tokens * (lm.n_layers + 1), check_names=False)
    assert set(e["kind"]) == {"flip", "same"}
    cue = e[e["role"] == "cue"].groupby("pair")["position"].unique().map(list).to_dict()
    assert cue == {p["pair"]: [p["text"].split().index("bank") - 1] for p in _PAIRS}  # the word before the target


@pytest.mark.parametrize("site", ["resid", "attn", "mlp", "head"])
def test_patch_agrees_with_the_same_patch_written_by_hand(lm, linear, family, pairs, site):
    """Plain torch hooks on the model's own modules, a full forward per patch, no engine."""
    if site == "head" and family in _HEADLESS:
        pytest.skip("no additive heads in this family")
    a = lm.adapter
    L = lm.n_layers
    layer, head, col = 2, 1, 4
    kw = {"points": [layer]} if site == "resid" else {"layers": [layer]}
    if site == "head":
        kw["heads"] = [head]
    got = iv.patch(lm, pairs, site=site, readout=linear, positions=[col], direction="denoise", progress=False, **kw)
    if site == "resid":
        module = a.blocks[layer - 1]
    elif site == "head":
        module = a.head_proj[layer - 1]
    else:
        module = (a.attn_out if site == "attn" else a.mlp_out)[layer - 1]

    def value(args, out):
        """What the site holds: the output, a post-LN write's difference, or one head's slice of z."""
        if site == "head":
            return args[0][0, col].reshape(a.n_heads, a.head_dim)[head].clone()
        o = out[0] if isinstance(out, tuple) else out
        if a.post_ln and site in ("attn", "mlp"):
            return (o - args[0 if site == "attn" else 1])[0, col].clone()
        return o[0, col].clone()

    def forward(ids, patch_in=None):
        seen = {}

        def grab_final(mod, args, out):
            seen["final"] = (out[0] if isinstance(out, tuple) else out)[0].clone()

        def at_site(mod, args, out=None):
            if site == "head":  # a pre-hook on the output projection: its input is z
                seen["value"] = value(args, None)
                if patch_in is not None:
                    z = args[0].clone()
                    z[0, col, head * a.head_dim:(head + 1) * a.head_dim] = patch_in
                    return (z,) + args[1:]
                return None
            seen["value"] = value(args, out)
            if patch_in is None:
                return None
            o = out[0] if isinstance(out, tuple) else out
            new = o.clone()
            if a.post_ln and site in ("attn", "mlp"):
                new[0, col] = args[0 if site == "attn" else 1][0, col] + patch_in
            else:
                new[0, col] = patch_in
            return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new

        handles = [a.blocks[L - 1].register_forward_hook(grab_final),
                   (module.register_forward_pre_hook if site == "head" else module.register_forward_hook)(at_site)]
        try:
            with torch.no_grad():
                a.base(input_ids=torch.as_tensor([ids]))
        finally:
            for h in handles:
                h.remove()
        return seen

    for p in _PAIRS:
        clean = lm.tokenizer(p["text"])["input_ids"]
        corrupt = lm.tokenizer(p["counterfactual"])["input_ids"]
        t = p["text"].split().index("bank")
        if a.causal:
            clean, corrupt = clean[:t + 1], corrupt[:t + 1]
        src = forward(clean)["value"]
        base = linear(forward(corrupt)["final"][t][None])[0]
        patched = linear(forward(corrupt, patch_in=src)["final"][t][None])[0]
        row = got[got["pair"] == p["pair"]]
        assert len(row) == 1
        np.testing.assert_allclose(row["effect"].iloc[0], float(patched - base), rtol=1e-5, atol=1e-5)


def test_head_patching_is_refused_with_a_reason_where_heads_do_not_add_up(lm, linear, family, pairs):
    if family not in _HEADLESS:
        pytest.skip("heads add up here")
    with pytest.raises(HeadsUnavailable, match="per-head writes are not available"):
        iv.patch(lm, pairs, site="head", readout=linear, progress=False)


def test_a_cue_after_the_target_gives_no_effect_and_no_ratio_in_a_causal_model(lm, linear, family):
    if not lm.adapter.causal:
        pytest.skip("an encoder sees the whole text")
    late = pd.DataFrame([_pair(0, "the bank of the river", "the bank of the money", "river", "finance")])
    res = iv.patch(lm, late, readout=linear, direction="both", progress=False, return_result=True)
    assert (res.effects["effect"].abs() <= _atol(res.readouts)).all()
    assert res.effects["normalized_effect"].isna().all()
    assert (res.readouts["n_visible_cues"] == 0).all()


# ============================================================== bad input
def test_a_misaligned_pair_is_named_or_skipped(lm, linear, pairs):
    # one word before the target becomes two: the counts differ and the target moves
    bad = pd.concat([pairs, pd.DataFrame([_pair(9, "the river bank", "the savings account bank", "river",
                                                "finance")])], ignore_index=True)
    with pytest.raises(ValueError, match=r"do not align.*9 .*lengths differ"):
        iv.patch(lm, bad, readout=linear, points=[1], progress=False)
    with pytest.warns(UserWarning, match=r"skipped 1 pair.*9"):
        e = iv.patch(lm, bad, readout=linear, points=[1], progress=False, on_misaligned="skip")
    assert 9 not in set(e["pair"]) and set(e["pair"]) == {0, 1, 2, 3}


def test_missing_columns_and_repeated_pairs_are_named(lm, linear, pairs):
    with pytest.raises(KeyError, match="counterfactual_sense"):
        iv.patch(lm, pairs.drop(columns="counterfactual_sense"), readout=linear, progress=False)
    with pytest.raises(ValueError, match="repeated"):
        iv.patch(lm, pd.concat([pairs, pairs.iloc[:1]]), readout=linear, progress=False)
    with pytest.raises(ValueError, match="kind 'same' must mean"):
        iv.patch(lm, pairs.assign(kind="same"), readout=linear, progress=False)


def test_without_the_datasets_aligner_the_error_says_what_is_missing(lm, linear, pairs, monkeypatch):
    monkeypatch.delattr(datasets, "align_pairs", raising=False)
    with pytest.raises(ImportError, match="align_pairs"):
        iv.patch(lm, pairs, readout=linear, progress=False)


def test_points_and_layers_belong_to_their_sites(lm, linear, pairs):
    with pytest.raises(ValueError, match="layers="):
        iv.patch(lm, pairs, site="attn", points=[1], readout=linear, progress=False)
    with pytest.raises(ValueError, match="points="):
        iv.patch(lm, pairs, site="resid", layers=[1], readout=linear, progress=False)
    with pytest.raises(ValueError, match="points run 0"):
        iv.patch(lm, pairs, points=[lm.n_layers + 1], readout=linear, progress=False)


# ============================================================== resuming
def test_a_sweep_resumes_from_its_store_and_refuses_another_sweeps_store(lm, linear, pairs, tmp_path, monkeypatch):
    from trajgeo.interventions import patching

    store = tmp_path / "sweep"
    full = iv.patch(lm, pairs, readout=linear, store=store, chunk_size=1, progress=False)
    # one chunk per pair or one for all: the same rows, equal up to float rounding of other batch shapes
    whole = iv.patch(lm, pairs, readout=linear, progress=False, return_result=True)
    pd.testing.assert_frame_equal(full.drop(columns=["effect", "normalized_effect"]),
                                  whole.effects.drop(columns=["effect", "normalized_effect"]))
    np.testing.assert_allclose(full["effect"], whole.effects["effect"], rtol=0, atol=_atol(whole.readouts))
    (store / "effects-00002.parquet").unlink()  # as if interrupted before the third chunk was done
    runs = []
    real = patching._Sweep

    class Counting(real):
        def __init__(self, engine, plan, items, *args, **kw):
            runs.append([it.pair for it in items])
            super().__init__(engine, plan, items, *args, **kw)

    monkeypatch.setattr(patching, "_Sweep", Counting)
    resumed = iv.patch(lm, pairs, readout=linear, store=store, chunk_size=1, progress=False)
    assert runs == [[2]]  # only the missing chunk ran
    pd.testing.assert_frame_equal(resumed, full)
    assert not [p for p in store.iterdir() if p.name.startswith(".")]  # no temporary file left
    with pytest.raises(FileExistsError, match="another patching sweep"):
        iv.patch(lm, pairs, readout=linear, points=[0], store=store, chunk_size=1, progress=False)
    other = iv.patch(lm, pairs, readout=linear, points=[0], store=store, chunk_size=1, progress=False,
                     overwrite=True)
    assert set(other["point"]) == {0}


# ============================================================== attribution patching
def test_attribution_is_exact_where_the_readout_is_linear_in_the_site(lm, linear, pairs):
    L = lm.n_layers
    exact = iv.patch(lm, pairs, readout=linear, points=[L], direction="both", progress=False)
    approx = iv.attribution_patch(lm, pairs, readout=linear, points=[L], direction="both", progress=False,
                                  return_result=True)
    m = exact.merge(approx.effects, on=["pair", "point", "position", "direction", "site"], suffixes=("", "_a"))
    assert len(m) == len(exact) == len(approx.effects)
    np.testing.assert_allclose(m["effect_a"], m["effect"], rtol=1e-4, atol=_atol(approx.readouts))


def test_attribution_at_the_embedding_equals_a_plain_autograd_computation(lm, linear, pairs):
    """Without hooks: the base model fed ``inputs_embeds`` (point 0 for every family) with autograd."""
    approx = iv.attribution_patch(lm, pairs, readout=linear, points=[0], direction="both", progress=False)
    a = lm.adapter
    for p in _PAIRS:
        t = p["text"].split().index("bank")
        end = t + 1 if a.causal else None
        ids = {role: torch.as_tensor([lm.tokenizer(p[col])["input_ids"][:end]])
               for role, col in (("clean", "text"), ("corrupt", "counterfactual"))}
        for direction, base, source in (("denoise", "corrupt", "clean"), ("noise", "clean", "corrupt")):
            emb = a.embed(ids[base]).detach().requires_grad_(True)
            seen = {}  # the raw residual after the last block (the base model's output may be final-normed)
            handle = a.blocks[-1].register_forward_hook(lambda m, i, o, seen=seen: seen.__setitem__("h", o))
            try:
                a.base(inputs_embeds=emb)
            finally:
                handle.remove()
            h = seen["h"][0] if isinstance(seen["h"], tuple) else seen["h"]
            (grad,) = torch.autograd.grad(linear(h[0, t][None]).sum(), emb)
            with torch.no_grad():
                delta = a.embed(ids[source]) - a.embed(ids[base])
            expect = (delta * grad).sum(-1)[0].numpy()
            got = approx[(approx["pair"] == p["pair"]) & (approx["direction"] == direction)]
            np.testing.assert_allclose(got.sort_values("position")["effect"], expect, rtol=1e-4, atol=1e-6)


def test_agreement_is_the_correlation_over_matched_cells(lm, linear, pairs):
    exact = iv.patch(lm, pairs, readout=linear, progress=False)
    approx = iv.attribution_patch(lm, pairs, readout=linear, progress=False)
    table = iv.agreement(exact, approx)
    assert list(table.columns) == ["site", "pair", "n_cells", "pearson", "spearman", "mean_abs_difference",
                                   "mean_abs_exact"]
    for pair, row in table.set_index("pair").iterrows():
        a = exact[exact["pair"] == pair].sort_values(["point", "position"])["effect"].to_numpy()
        b = approx[approx["pair"] == pair].sort_values(["point", "position"])["effect"].to_numpy()
        assert row["n_cells"] == len(a)
        np.testing.assert_allclose(row["pearson"], np.corrcoef(a, b)[0, 1], rtol=1e-9)
        np.testing.assert_allclose(row["mean_abs_difference"], np.abs(a - b).mean(), rtol=1e-9)
    per_site = iv.agreement(exact, approx, by=("site",))
    assert len(per_site) == 1 and per_site["n_cells"].iloc[0] == len(exact)


def test_attribution_refuses_a_readout_without_gradients(lm, pairs):
    w = np.ones(lm.d_model, dtype=np.float32)
    numpy_only = lambda h: np.asarray(h) @ w  # noqa: E731
    exact = iv.patch(lm, pairs, readout=numpy_only, points=[1], progress=False)  # exact patching takes it
    assert np.isfinite(exact["effect"]).all()
    with pytest.raises(ValueError, match="differentiable"):
        iv.attribution_patch(lm, pairs, readout=numpy_only, points=[1], progress=False)


# ============================================================== readouts
def test_logit_readout_is_the_models_own_log_odds(lm, pairs, family):
    if not lm.adapter.causal:
        with pytest.raises(ValueError, match="causal LM"):
            iv.patch(lm, pairs, readout=iv.LogitReadout(_SENSE_WORDS), progress=False)
        return
    res = iv.patch(lm, pairs, readout=iv.LogitReadout(_SENSE_WORDS), points=[0], direction="denoise",
                   progress=False, return_result=True)
    tok = lm.tokenizer
    ids = {s: [tok.convert_tokens_to_ids(w) for w in ws] for s, ws in _SENSE_WORDS["bank"].items()}
    for p in _PAIRS:
        t = p["text"].split().index("bank")
        for role, col in (("source", "text"), ("base", "counterfactual")):
            with torch.no_grad():  # the whole model with its head: an independent path to the logits
                logits = lm.model(input_ids=torch.as_tensor([tok(p[col])["input_ids"][: t + 1]])).logits[0, -1]
            logp = torch.log_softmax(logits.double(), -1)
            other = "finance" if p["sense"] == "river" else "river"
            expect = torch.logsumexp(logp[ids[p["sense"]]], 0) - torch.logsumexp(logp[ids[other]], 0)
            got = res.readouts.set_index("pair").loc[p["pair"], role]
            np.testing.assert_allclose(got, float(expect), rtol=1e-4, atol=1e-5)


def _bank_trajectories(lm, span_frame, corpus):
    texts = [
        "i sat by the river bank and watched the water flow",
        "fishermen lined the grassy bank of the slow brown river at dawn",
        "the muddy bank of the river",
        "she went to the bank to deposit her salary",
        "the bank raised its interest rates on every loan",
        "a savings account at the bank",
    ]
    df = span_frame(texts, "bank")
    df["sense"] = ["river"] * 3 + ["finance"] * 3
    return tg.extract(lm, df, progress=False)


def test_sense_readout_is_the_standardised_margin_computed_by_hand(lm, pairs, span_frame, corpus):
    from sklearn.preprocessing import StandardScaler

    traj = _bank_trajectories(lm, span_frame, corpus)
    ro = iv.SenseReadout().fit(traj)
    x = traj.states[:, -1].astype(np.float64)
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    senses = traj.meta["sense"].to_numpy()
    m_r, m_f = z[senses == "river"].mean(0), z[senses == "finance"].mean(0)
    u = (m_r - m_f) / np.linalg.norm(m_r - m_f)
    h = np.random.default_rng(0).normal(size=(5, lm.d_model)) * x.std(0) + x.mean(0)
    expect = (scaler.transform(h) - (m_r + m_f) / 2) @ u  # river pair: positive on the river side
    fake = pairs.assign(text=[f"t{i}" for i in range(4)], counterfactual=[f"c{i}" for i in range(4)])
    fn = ro.bind(lm, fake)
    got = fn(torch.as_tensor(h, dtype=torch.float32), torch.zeros(5, dtype=torch.long)).numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)
    # the same-sense pair (3) is contrasted with the word's other sense: the same margin
    got_same = fn(torch.as_tensor(h, dtype=torch.float32), torch.full((5,), 3, dtype=torch.long)).numpy()
    np.testing.assert_allclose(got_same, expect, rtol=1e-4, atol=1e-4)
    flipped = fake.assign(sense="finance", counterfactual_sense="river", kind="flip")
    got_f = ro.bind(lm, flipped)(torch.as_tensor(h, dtype=torch.float32), torch.zeros(5, dtype=torch.long)).numpy()
    np.testing.assert_allclose(got_f, -expect, rtol=1e-4, atol=1e-4)


def test_sense_readout_refuses_pairs_it_was_fitted_on_and_other_models(lm, pairs, span_frame, corpus, tiny_model,
                                                                         wtok, family):
    traj = _bank_trajectories(lm, span_frame, corpus)
    ro = iv.SenseReadout().fit(traj)
    leaky = pairs.iloc[:1].assign(text="the muddy bank of the river", counterfactual="the savings bank of the river")
    with pytest.raises(ValueError, match="fitted on"):
        iv.patch(lm, leaky, readout=ro, progress=False)
    other = tg.load_model((tiny_model(family, len(wtok), seed=1), wtok))
    with pytest.raises(ValueError, match="another model"):
        iv.patch(other, pairs, readout=ro, progress=False)
    e = iv.patch(lm, pairs, readout=ro, points=[lm.n_layers], progress=False)
    np.testing.assert_allclose(e.loc[e["role"] == "target", "normalized_effect"], 1.0, atol=1e-5)


# ============================================================== the same-sense null
def _planted_frame(rng, n_flip=12, n_same=12, signal=0.0):
    rows = []
    for p in range(n_flip + n_same):
        kind = "flip" if p < n_flip else "same"
        for point in range(6):
            for role, n_pos in (("cue", 1), ("other", 3), ("target", 1)):
                for _ in range(n_pos):
                    planted = signal if (kind == "flip" and point == 3 and role == "cue") else 0.0
                    rows.append({"pair": p, "point": point, "site": "resid", "role": role, "kind": kind,
                                 "direction": "denoise", "effect": planted + rng.normal(scale=0.3)})
    return pd.DataFrame(rows)


def test_kind_contrast_finds_a_planted_flip_effect_and_only_there():
    rng = np.random.default_rng(0)
    table = iv.kind_contrast(_planted_frame(rng, signal=1.5), n_permutations=500)
    assert {"null_mean", "null_q95", "null_fwer", "p_value", "p_fwer"} <= set(table.columns)
    hit = (table["point"] == 3) & (table["role"] == "cue")
    assert table.loc[hit, "p_fwer"].iloc[0] < 0.01
    assert (table.loc[~hit, "p_fwer"] > 0.05).mean() > 0.9
    np.testing.assert_allclose(table.loc[hit, "value"].iloc[0],
                               table.loc[hit, "flip_mean"].iloc[0] - table.loc[hit, "same_mean"].iloc[0])


def test_kind_contrast_stays_silent_without_a_signal():
    hits = 0
    for seed in range(20):
        table = iv.kind_contrast(_planted_frame(np.random.default_rng(seed)), n_permutations=200, random_state=seed)
        hits += bool((table["p_fwer"] <= 0.05).any())
    assert hits <= 3  # family-wise 5%: about 1 in 20 runs


def test_kind_contrast_averages_within_pairs_first():
    df = pd.DataFrame({"pair": [0, 0, 0, 1, 2, 3], "kind": ["flip"] * 3 + ["flip", "same", "same"],
                       "point": 1, "site": "resid", "role": "other", "direction": "denoise",
                       "effect": [3.0, 3.0, 3.0, 1.0, 0.0, 1.0]})
    table = iv.kind_contrast(df, n_permutations=10)
    assert table["flip_mean"].iloc[0] == 2.0 and table["same_mean"].iloc[0] == 0.5
    assert table["n_flip"].iloc[0] == 2 and table["n_same"].iloc[0] == 2


# ============================================================== the shipped models
@pytest.mark.slow
def test_smollm2_patching_identities_with_the_real_unembedding(smollm2):
    lm = smollm2
    real = pd.DataFrame([
        dict(pair=0, word="bank", text="We fished from the river bank all day.",
             counterfactual="We fished from the money bank all day.", target="bank", sense="river",
             counterfactual_sense="finance", kind="flip"),
    ])
    al = datasets.align_pairs(lm.tokenizer, real)
    assert al["aligned"].all(), al["reason"].tolist()
    L = lm.n_layers
    res = iv.patch(lm, real, readout="logit", points=[0, L], direction="both", progress=False, return_result=True)
    e = res.effects
    np.testing.assert_allclose(e.loc[(e["point"] == L) & (e["role"] == "target"), "normalized_effect"], 1.0,
                               atol=1e-4)
    np.testing.assert_allclose(e.loc[(e["point"] == 0) & (e["role"] == "cue"), "normalized_effect"], 1.0, atol=1e-4)
    assert res.readouts.loc[res.readouts["direction"] == "denoise", "difference"].iloc[0] > 0  # river > money


@pytest.mark.slow
def test_minilm_has_no_next_token_readout(minilm):
    pairs = pd.DataFrame([_PAIRS[0]])
    with pytest.raises(ValueError, match="no unembedding"):
        iv.patch(minilm, pairs, readout="logit", progress=False)


def test_kind_contrast_warns_when_groups_mix_kinds_and_why():
    import warnings

    df = _planted_frame(np.random.default_rng(0), signal=1.5)
    hit = lambda t: t.loc[(t["point"] == 3) & (t["role"] == "cue"), "p_fwer"].iloc[0]  # noqa: E731
    # each group holds flip pair p and same-sense pair p + 12: every group carries the label vector (flip, same),
    # so every permutation returns the observed labelling and even the planted effect gets p = 1
    mixed = df.assign(sentence=df["pair"] % 12)
    with pytest.warns(UserWarning, match=r"12 of 12 groups of 'sentence' hold both flip and same-sense pairs"):
        table = iv.kind_contrast(mixed, groups="sentence", n_permutations=200)
    assert hit(table) == 1.0 and (table["p_value"] == 1.0).all()  # exact ties, not broken by rounding
    np.testing.assert_allclose(table["null_mean"], table["value"], rtol=0, atol=1e-12)
    # groups that keep the kinds apart (three flip groups, three same groups): no warning, the effect is found
    pure = df.assign(sentence=df["pair"] // 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = iv.kind_contrast(pure, groups="sentence", n_permutations=200)
        assert hit(iv.kind_contrast(df, n_permutations=200)) < 0.01
    # 6 groups of 4 pairs, 3 of each kind: C(6, 3) = 20 labellings, the observed one and its mirror at the top
    assert hit(table) <= 2 / 20 + 0.05
    # one mixed group among pure ones is counted
    one = df.assign(sentence=np.where(df["pair"].isin([0, 12]), 100, df["pair"]))
    with pytest.warns(UserWarning, match=r"1 of 23 groups"):
        iv.kind_contrast(one, groups="sentence", n_permutations=20)
