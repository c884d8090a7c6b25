"""The forward engine: reads equal extraction's on every family, edits do what they say (checked against
independent computations), the pass can start from a cached residual, gradients match finite differences,
and the hooks are gone after a run, even one that failed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import trajgeo as tg
from trajgeo.engine import Batch, Edit, Engine, HeadsUnavailable, Pool, Site

_HEADLESS = {"gemma2", "gemma3", "bert", "roberta"}
_TEXTS = [
    "i sat by the river bank and watched the water flow past the muddy shore",
    "she went to the bank to deposit her salary into a savings account",
    "the bank raised its interest rates on every loan this spring",
    "banks and riverbanks, money and water: unbelievable tokenization",
]


@pytest.fixture(scope="module")
def tok(family, trained_tokenizer):
    # sub-word tokenizers, so that targets split into several tokens and pooling is exercised
    return trained_tokenizer("wordpiece" if family in ("bert", "roberta") else "bpe")


@pytest.fixture(scope="module")
def lm(family, tiny_model, tok):
    return tg.load_model((tiny_model(family, len(tok)), tok))


@pytest.fixture(scope="module")
def engine(lm):
    return Engine(lm)


def _examples(span_frame):
    df = pd.concat([span_frame(_TEXTS[:3], "bank"), span_frame(_TEXTS[3:], "unbelievable"),
                    span_frame(_TEXTS[3:], "riverbanks")], ignore_index=True)
    df["sense"] = ["river", "finance", "finance", "x", "y"]
    return df


def _engine_inputs(lm, meta):
    """Token ids as extraction feeds them (causal: up to the target) and each target's pooled columns."""
    ids, cols = [], []
    for text, n, s, e in zip(meta["text"], meta["n_tokens"], meta["token_start"], meta["token_end"]):
        ids.append(lm.tokenizer(text)["input_ids"][:n])
        cols.append([e - 1] if lm.adapter.causal else list(range(s, e)))
    return ids, cols


def _hook_counts(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ============================================================== reads
def test_reads_equal_extract_states_and_components(lm, engine, span_frame):
    heads = engine.heads_available()
    traj = tg.extract(lm, _examples(span_frame), components=True, heads=heads, progress=False)
    assert (traj.meta["n_subtokens"] > 1).any()  # pooling is exercised
    ids, cols = _engine_inputs(lm, traj.meta)
    L = lm.n_layers
    sites = [Site.resid(p) for p in range(L + 1)] + [Site.attn(l) for l in range(1, L + 1)] \
        + [Site.mlp(l) for l in range(1, L + 1)] + [Site.block_input(1)]
    if heads:
        sites += [Site.head_write(l) for l in range(1, L + 1)]
    run = engine.run(engine.batch(ids), read=sites, pool=Pool.mean(cols))
    got = torch.stack([run[Site.resid(p)] for p in range(L + 1)], 1).numpy()
    np.testing.assert_allclose(got, traj.states, rtol=1e-5, atol=1e-5)
    for kind in ("attn", "mlp"):
        got = torch.stack([run[Site(kind, l)] for l in range(1, L + 1)], 1).numpy()
        np.testing.assert_allclose(got, traj.components[kind], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run[Site.block_input(1)].numpy(), traj.aux["block_input"], rtol=1e-5, atol=1e-5)
    if heads:
        got = torch.stack([run[Site.head_write(l)] for l in range(1, L + 1)], 1).numpy()
        np.testing.assert_allclose(got, traj.components["heads"], rtol=1e-5, atol=1e-5)


def test_reads_at_every_column_equal_pooled_reads_and_padding_sides(lm, engine):
    ids = [lm.tokenizer(t)["input_ids"][:n] for t, n in zip(_TEXTS, (7, 12, 4, 9))]
    cols = [[len(x) - 1] for x in ids]
    sites = [Site.resid(p) for p in range(lm.n_layers + 1)] + [Site.attn(1), Site.mlp(2)]
    right = engine.run(engine.batch(ids), read=sites)
    pooled = engine.run(engine.batch(ids), read=sites, pool=Pool.mean(cols))
    left_batch = engine.batch(ids, padding_side="left")
    off = left_batch.offsets.tolist()
    left = engine.run(left_batch, read=sites, pool=Pool.mean([[c[0] + o] for c, o in zip(cols, off)]))
    for s in sites:
        full = right[s][torch.arange(len(ids)), torch.tensor([c[0] for c in cols])]
        torch.testing.assert_close(pooled[s], full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(left[s], full, rtol=1e-4, atol=1e-5)


def test_heads_add_up_to_the_attention_write(lm, engine, family):
    if family in _HEADLESS:
        pytest.skip("no additive heads in this family")
    ids = [lm.tokenizer(t)["input_ids"] for t in _TEXTS[:2]]
    L = lm.n_layers
    run = engine.run(engine.batch(ids), read=[Site.head_write(l) for l in range(1, L + 1)]
                     + [Site.attn(l) for l in range(1, L + 1)])
    for l in range(1, L + 1):
        bias = getattr(lm.adapter.head_proj[l - 1], "bias", None)
        total = run[Site.head_write(l)].sum(-2) + (0 if bias is None else bias)
        torch.testing.assert_close(total, run[Site.attn(l)], rtol=1e-5, atol=1e-5)


def test_heads_are_refused_with_a_reason_where_not_additive(lm, engine, family):
    if family not in _HEADLESS:
        pytest.skip("heads are additive here")
    ids = [lm.tokenizer(_TEXTS[0])["input_ids"]]
    with pytest.raises(HeadsUnavailable, match=rf"{lm.adapter.family}.*(norm after attention|post-LN)"):
        engine.run(engine.batch(ids), read=[Site.head_write(1)])


def test_bad_sites_are_refused(lm, engine):
    batch = engine.batch([lm.tokenizer(_TEXTS[0])["input_ids"]])
    with pytest.raises(ValueError, match="points run 0"):
        engine.run(batch, read=[Site.resid(lm.n_layers + 1)])
    with pytest.raises(ValueError, match="layers run 1"):
        engine.run(batch, read=[Site.attn(0)])
    with pytest.raises(ValueError, match="site kind"):
        Site("residual", 1)


# ============================================================== edits
def test_replacing_the_embedding_everywhere_reproduces_the_other_run(lm, engine):
    a = lm.tokenizer(_TEXTS[1])["input_ids"][:10]
    b = lm.tokenizer(_TEXTS[2])["input_ids"][:10]
    sites = [Site.resid(p) for p in range(lm.n_layers + 1)]
    run_b = engine.run(engine.batch([b]), read=sites)
    patched = engine.run(engine.batch([a]), read=sites,
                         edits=[Edit.replace(Site.resid(0), run_b[Site.resid(0)])])
    for s in sites:
        torch.testing.assert_close(patched[s], run_b[s], rtol=1e-6, atol=1e-6)


def test_add_and_project_out_change_what_later_reads_see(lm, engine):
    ids = [lm.tokenizer(t)["input_ids"][:8] for t in _TEXTS[:3]]
    batch = engine.batch(ids)
    p = lm.n_layers // 2 + 1
    base = engine.run(batch, read=[Site.resid(p)])[Site.resid(p)]
    u = torch.randn(lm.d_model)
    v = torch.randn(lm.d_model)
    added = engine.run(batch, read=[Site.resid(p)], edits=[Edit.add(Site.resid(p), v, rows=[1], columns=[3])])
    expect = base.clone()
    expect[1, 3] += v
    torch.testing.assert_close(added[Site.resid(p)], expect)
    out = engine.run(batch, read=[Site.resid(p)], edits=[Edit.project_out(Site.resid(p), 5 * u)])[Site.resid(p)]
    unit = u / u.norm()
    torch.testing.assert_close(out @ unit, torch.zeros(out.shape[:2]), rtol=0, atol=1e-4)
    torch.testing.assert_close(out, base - (base @ unit)[..., None] * unit, rtol=1e-5, atol=1e-5)


def test_a_sublayer_edit_changes_the_residual_by_the_same_amount(lm, engine):
    # pre-LN and parallel blocks: the residual is a sum of writes; post-LN: the write is a difference, so
    # adding v to it adds v to the residual after the sublayer (the block's next norm then sees it)
    ids = [lm.tokenizer(_TEXTS[0])["input_ids"][:8]]
    batch = engine.batch(ids)
    l = lm.n_layers
    v = torch.randn(lm.d_model)
    edit = Edit.add(Site.mlp(l), v, rows=[0], columns=[5])
    base = engine.run(batch, read=[Site.resid(l), Site.mlp(l)])
    run = engine.run(batch, read=[Site.resid(l), Site.mlp(l)], edits=[edit])
    torch.testing.assert_close(run[Site.mlp(l)][0, 5], base[Site.mlp(l)][0, 5] + v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run[Site.resid(l)][0, 5] - base[Site.resid(l)][0, 5], v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(run[Site.resid(l)][0, :5], base[Site.resid(l)][0, :5])


def test_a_head_edit_through_z_equals_the_same_edit_of_its_write(lm, engine, family):
    if family in _HEADLESS:
        pytest.skip("no additive heads in this family")
    a = lm.tokenizer(_TEXTS[0])["input_ids"][:8]
    b = lm.tokenizer(_TEXTS[1])["input_ids"][:8]
    l, h = 2, 1
    src = engine.run(engine.batch([b]), read=[Site.z(l, h), Site.head_write(l, h)])
    via_z = engine.run(engine.batch([a]), read=[Site.resid(lm.n_layers)],
                       edits=[Edit.replace(Site.z(l, h), src[Site.z(l, h)][:, 4], rows=[0], columns=[4])])
    via_w = engine.run(engine.batch([a]), read=[Site.resid(lm.n_layers)],
                       edits=[Edit.replace(Site.head_write(l, h), src[Site.head_write(l, h)][:, 4], rows=[0],
                                           columns=[4])])
    plain = engine.run(engine.batch([a]), read=[Site.resid(lm.n_layers)])
    s = Site.resid(lm.n_layers)
    torch.testing.assert_close(via_z[s], via_w[s], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(via_z[s][0, 4:], plain[s][0, 4:])  # the patch did something
    torch.testing.assert_close(via_z[s][0, :4], plain[s][0, :4])  # ... only from position 4 on (causal)


def test_edits_refuse_values_of_the_wrong_shape(lm, engine):
    batch = engine.batch([lm.tokenizer(_TEXTS[0])["input_ids"][:6]])
    with pytest.raises(ValueError, match="does not fit"):
        engine.run(batch, read=[Site.resid(1)], edits=[Edit.replace(Site.resid(1), torch.zeros(3, lm.d_model + 1))])


# ============================================================== starting from a cached residual
def test_starting_after_a_block_from_its_residual_equals_the_full_pass(lm, engine):
    ids = [lm.tokenizer(t)["input_ids"][:n] for t, n in zip(_TEXTS, (6, 9, 4, 8))]
    batch = engine.batch(ids)
    L = lm.n_layers
    full = engine.run(batch, read=[Site.block_input(1)] + [Site.resid(p) for p in range(L + 1)])
    final = Site.resid(L)
    for start in range(0, L + 1):
        hidden = full[Site.block_input(1)] if start == 0 else full[Site.resid(start)]
        run = engine.run(batch, read=[final], start_after=(start, hidden))
        torch.testing.assert_close(run[final], full[final], rtol=1e-5, atol=1e-5)


def test_the_pass_stops_after_the_last_block_needed(lm, engine):
    ran = []  # the blocks whose forward completed
    handles = [b.register_forward_hook(lambda m, a, o, l=l: ran.append(l)) for l, b in enumerate(lm.adapter.blocks, 1)]
    batch = engine.batch([lm.tokenizer(_TEXTS[0])["input_ids"][:6]])
    try:
        for sites, expect in (([Site.resid(0)], []), ([Site.block_input(1)], []), ([Site.resid(1)], [1]),
                              ([Site.attn(2), Site.resid(0)], [1, 2]), ([Site.block_input(3)], [1, 2])):
            ran.clear()
            run = engine.run(batch, read=sites)
            assert ran == expect, sites
            assert set(run.reads) == set(sites)
    finally:
        for h in handles:
            h.remove()
    # reading the embedding alone calls no block, and equals the embedding module's output
    torch.testing.assert_close(engine.run(batch, read=[Site.resid(0)])[Site.resid(0)],
                               lm.adapter.embed(batch.input_ids))


def test_start_after_refuses_sites_in_skipped_blocks(lm, engine):
    batch = engine.batch([lm.tokenizer(_TEXTS[0])["input_ids"][:6]])
    h = torch.zeros(1, 6, lm.d_model)
    with pytest.raises(ValueError, match="skips blocks 1..2"):
        engine.run(batch, read=[Site.attn(2)], start_after=(2, h))
    with pytest.raises(ValueError, match=r"shape \(batch, T, d_model\)"):
        engine.run(batch, read=[Site.resid(3)], start_after=(2, torch.zeros(2, 6, lm.d_model)))


# ============================================================== gradients
def test_gradients_match_finite_differences(lm, family):
    import copy

    torch.manual_seed(0)
    # float64 copy of the model: central differences with steps of 3e-3 of the value's norm agree to ~1e-3
    # (RMS norms compute in float32 whatever the model's dtype, so much smaller steps drown in rounding)
    lm64 = tg.load_model((copy.deepcopy(lm.model).double(), lm.tokenizer))
    engine = Engine(lm64)
    ids = [lm.tokenizer(t)["input_ids"][:7] for t in _TEXTS[:2]]
    batch = engine.batch(ids)
    L = lm.n_layers
    sites = [Site.resid(0), Site.resid(1), Site.attn(2), Site.mlp(1), Site.resid(L)]
    if family not in _HEADLESS:
        sites += [Site.z(2, 1), Site.head_write(2, 3)]
    pool = Pool.mean([[6], [6]])
    w = torch.randn(lm.d_model, dtype=torch.float64)
    final = Site.resid(L)
    run = engine.run(batch, read=sites, pool=pool, grad=True)
    grads = run.backward(run[final] @ w)
    torch.testing.assert_close(run[final].detach(), engine.run(batch, read=[final], pool=pool)[final])
    for site in sites:
        g = grads[site]
        assert g.shape[:2] == batch.input_ids.shape
        row, col = 1, 3 if site != final else 6
        # a step small relative to the value there, or to the residual it is added to if that is larger
        near = [site] if site.kind == "z" else [site, Site.resid(site.block)]
        scale = max(float(v[row, col].norm()) for v in engine.run(batch, read=near).reads.values())
        # along the gradient plus a random part: the change is then well above rounding
        rand = torch.randn(g.shape[-1], dtype=torch.float64)
        direction = g[row, col] / g[row, col].norm() + rand / rand.norm()
        step = 3e-3 * scale * direction / direction.norm()
        moved = [engine.run(batch, read=[final], pool=pool, edits=[Edit.add(site, sign * step, rows=[row],
                                                                                columns=[col])])[final][row] @ w
                 for sign in (1, -1)]
        numeric = float(moved[0] - moved[1]) / 2
        analytic = float(g[row, col] @ step)
        assert abs(numeric - analytic) <= 1e-2 * abs(analytic) + 1e-12, (site, numeric, analytic)


# ============================================================== hooks are temporary
def test_hooks_and_skipped_blocks_are_restored_after_an_exception(lm, engine):
    model = lm.model
    ids = [lm.tokenizer(_TEXTS[0])["input_ids"][:6]]
    batch = engine.batch(ids)
    before = _hook_counts(model)
    reference = engine.run(batch, read=[Site.resid(lm.n_layers)])[Site.resid(lm.n_layers)]

    def boom(x):
        raise RuntimeError("inside a hook")

    hidden = engine.run(batch, read=[Site.resid(1)])[Site.resid(1)]
    with pytest.raises(RuntimeError, match="inside a hook"):
        engine.run(batch, read=[Site.resid(lm.n_layers)], start_after=(1, hidden),
                   edits=[Edit.apply(Site.mlp(lm.n_layers), boom)])
    assert _hook_counts(model) == before
    assert all("forward" not in vars(b) for b in lm.adapter.blocks)
    with torch.no_grad():
        out = lm.adapter.base(input_ids=batch.input_ids)
    h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    assert torch.isfinite(h).all()
    again = engine.run(batch, read=[Site.resid(lm.n_layers)])[Site.resid(lm.n_layers)]
    torch.testing.assert_close(again, reference, rtol=0, atol=0)


# ============================================================== attention patterns and values
def _eager_attentions(lm, ids):
    """The model's own attention probabilities, from a plain transformers forward with eager attention and
    output_attentions=True (no engine, no hooks): a tuple of (B, H, T, S) per layer."""
    model = lm.model
    old = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            out = model(input_ids=torch.as_tensor(ids), output_attentions=True)
    finally:
        model.config._attn_implementation = old
    return out.attentions


def test_patterns_equal_the_models_own_attentions_and_values_rebuild_z(lm, engine, family):
    if family in ("bert", "roberta"):
        with pytest.raises(HeadsUnavailable, match="decoder families only"):
            engine.run(engine.batch([lm.tokenizer(_TEXTS[0])["input_ids"]]), read=[Site.pattern(1)])
        return
    ids = [lm.tokenizer(t)["input_ids"][:9] for t in _TEXTS[:2]]
    L = lm.n_layers
    before = lm.model.config._attn_implementation
    sites = [Site.pattern(l) for l in range(1, L + 1)] + [Site.value(l) for l in range(1, L + 1)] \
        + [Site.z(l) for l in range(1, L + 1)] + [Site.resid(L)]
    run = engine.run(engine.batch(ids), read=sites)
    assert lm.model.config._attn_implementation == before  # the eager capture is switched off again
    reference = _eager_attentions(lm, ids)
    plain = engine.run(engine.batch(ids), read=[Site.resid(L)])
    torch.testing.assert_close(run[Site.resid(L)], plain[Site.resid(L)], rtol=1e-5, atol=1e-5)
    for l in range(1, L + 1):
        A, V = run[Site.pattern(l)], run[Site.value(l)]
        assert A.shape == (2, 9, lm.adapter.n_heads, 9) and V.shape == (2, 9, lm.adapter.n_heads, lm.adapter.head_dim)
        torch.testing.assert_close(A, reference[l - 1].transpose(1, 2), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(A.sum(-1), torch.ones(2, 9, lm.adapter.n_heads), rtol=1e-5, atol=1e-5)
        # causal: no weight on later sources
        assert float(torch.triu(A.permute(0, 2, 1, 3), diagonal=1).abs().max()) == 0.0
        torch.testing.assert_close(torch.einsum("bths,bshk->bthk", A, V), run[Site.z(l)], rtol=1e-5, atol=1e-6)


def test_pooled_patterns_average_the_pooled_queries_and_values_are_never_pooled(lm, engine, family):
    if family in ("bert", "roberta"):
        pytest.skip("no patterns read for post-LN encoders")
    ids = [lm.tokenizer(t)["input_ids"][:8] for t in _TEXTS[:2]]
    cols = [[2, 5], [7]]
    full = engine.run(engine.batch(ids), read=[Site.pattern(2), Site.value(2)])
    pooled = engine.run(engine.batch(ids), read=[Site.pattern(2), Site.value(2)], pool=Pool.mean(cols))
    for r, c in enumerate(cols):
        torch.testing.assert_close(pooled[Site.pattern(2)][r], full[Site.pattern(2)][r, c].mean(0))
    torch.testing.assert_close(pooled[Site.value(2)], full[Site.value(2)])
    with pytest.raises(ValueError, match="read-only"):
        engine.run(engine.batch(ids), edits=[Edit.replace(Site.pattern(2), 0.0)])


def test_head_weights_give_each_heads_write_from_z(lm, engine, family):
    if family in _HEADLESS:
        pytest.skip("no additive heads in this family")
    ids = [lm.tokenizer(_TEXTS[1])["input_ids"][:7]]
    run = engine.run(engine.batch(ids), read=[Site.z(2), Site.head_write(2)])
    W = engine.head_weights(2)
    assert W.shape == (lm.d_model, lm.adapter.n_heads, lm.adapter.head_dim)
    torch.testing.assert_close(torch.einsum("bthk,dhk->bthd", run[Site.z(2)], W), run[Site.head_write(2)],
                               rtol=1e-5, atol=1e-6)


# ============================================================== skipping blocks
def test_a_skipped_block_passes_its_input_on_as_a_hand_written_identity_hook_does(lm, engine):
    ids = [lm.tokenizer(t)["input_ids"][:8] for t in _TEXTS[:2]]
    L = lm.n_layers
    sites = [Site.resid(p) for p in range(L + 1)]
    run = engine.run(engine.batch(ids), read=sites, skip=[2])
    torch.testing.assert_close(run[Site.resid(2)], run[Site.resid(1)], rtol=0, atol=0)

    # the same by hand: block 2's forward hook returns its input (no engine)
    block = lm.adapter.blocks[1]

    def identity(module, args, kwargs, out):
        h = args[0] if args else kwargs["hidden_states"]
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    seen = {}
    handles = [block.register_forward_hook(identity, with_kwargs=True),
               lm.adapter.blocks[L - 1].register_forward_hook(
                   lambda m, a, o: seen.setdefault("h", (o[0] if isinstance(o, tuple) else o).clone()))]
    try:
        with torch.no_grad():
            lm.adapter.base(**engine._inputs(engine.batch(ids)))
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(run[Site.resid(L)], seen["h"], rtol=1e-5, atol=1e-6)
    assert all("forward" not in vars(b) for b in lm.adapter.blocks)  # restored
    with pytest.raises(ValueError, match="inside skipped blocks"):
        engine.run(engine.batch(ids), read=[Site.attn(2)], skip=[2])
    with pytest.raises(ValueError, match="skip names blocks"):
        engine.run(engine.batch(ids), read=[Site.resid(1)], skip=[L + 1])


def test_a_batch_refuses_empty_rows():
    with pytest.raises(ValueError, match="row 1"):
        Batch.from_ids([[1, 2], []], pad_id=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "minilm"])
def test_reads_equal_extract_on_the_shipped_models(name, request):
    lm = request.getfixturevalue(name)
    engine = Engine(lm)
    df = tg.datasets.builtin("bank").groupby("sense").head(3).reset_index(drop=True)
    traj = tg.extract(lm, df, components=True, progress=False)
    ids, cols = _engine_inputs(lm, traj.meta)
    L = lm.n_layers
    sites = [Site.resid(p) for p in range(L + 1)] + [Site.attn(l) for l in range(1, L + 1)] \
        + [Site.mlp(l) for l in range(1, L + 1)]
    run = engine.run(engine.batch(ids), read=sites, pool=Pool.mean(cols))
    got = torch.stack([run[Site.resid(p)] for p in range(L + 1)], 1).numpy()
    # relative to each point's scale: SmolLM2's residual norms reach ~10^3
    scale = np.abs(traj.states).max(axis=(0, 2), keepdims=True)
    np.testing.assert_allclose(got / scale, traj.states / scale, rtol=0, atol=1e-5)
    for kind in ("attn", "mlp"):
        got = torch.stack([run[Site(kind, l)] for l in range(1, L + 1)], 1).numpy()
        ref = traj.components[kind]
        s = np.abs(ref).max(axis=(0, 2), keepdims=True)
        np.testing.assert_allclose(got / s, ref / s, rtol=0, atol=1e-5)


def test_extracted_writes_equal_module_outputs_caught_by_hand(lm, span_frame):
    """Extraction reads through the engine; its sublayer and head writes equal the modules' outputs caught
    with plain PyTorch hooks on unpadded single-text passes of the model (not the engine), pooled by hand."""
    a = lm.adapter
    heads = Engine(lm).heads_available()
    traj = tg.extract(lm, _examples(span_frame), components=True, heads=heads, progress=False)
    ids, cols = _engine_inputs(lm, traj.meta)
    L = lm.n_layers

    def first(x):
        return x[0] if isinstance(x, tuple) else x

    for r, (x, c) in enumerate(zip(ids, cols)):
        caught = {}

        def keep(name, l, pre=False):
            if pre:
                return lambda m, args, kwargs: caught.__setitem__((name, l), args[0] if args else
                                                                  kwargs["hidden_states"])
            return lambda m, args, out: caught.__setitem__((name, l), first(out))

        handles = []
        for l in range(L):
            handles.append(a.blocks[l].register_forward_pre_hook(keep("in", l, pre=True), with_kwargs=True))
            handles.append(a.blocks[l].register_forward_hook(keep("out", l)))
            handles.append(a.attn_out[l].register_forward_hook(keep("attn", l)))
            handles.append(a.mlp_out[l].register_forward_hook(keep("mlp", l)))
            if heads:
                handles.append(a.head_proj[l].register_forward_pre_hook(
                    lambda m, args, l=l: caught.__setitem__(("z", l), args[0])))
        try:
            with torch.no_grad():
                lm.model(input_ids=torch.tensor([x]))
        finally:
            for h in handles:
                h.remove()

        def pooled(name, l):
            return caught[(name, l)][0, c].mean(0).numpy()

        for l in range(L):
            if a.post_ln:  # writes are differences of consecutive residuals
                attn = pooled("attn", l) - pooled("in", l)
                mlp = pooled("out", l) - pooled("attn", l)
            else:
                attn, mlp = pooled("attn", l), pooled("mlp", l)
            np.testing.assert_allclose(traj.components["attn"][r, l], attn, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(traj.components["mlp"][r, l], mlp, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(traj.states[r, l + 1], pooled("out", l), rtol=1e-4, atol=1e-5)
            if heads:
                w = a.head_proj[l].weight.detach()
                w = w.t() if type(a.head_proj[l]).__name__ == "Conv1D" else w
                z = pooled("z", l).reshape(a.n_heads, a.head_dim)
                want = np.einsum("hk,dhk->hd", z, w.reshape(w.shape[0], a.n_heads, a.head_dim).numpy())
                np.testing.assert_allclose(traj.components["heads"][r, l], want, rtol=1e-4, atol=1e-5)
