"""Extraction: the decomposition identity per adapter, invariances, alignment, errors, storage, resume."""

from __future__ import annotations

import importlib
import os

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import trajgeo as tg
from trajgeo.extract import AlignmentError, align_targets
from trajgeo.models import load_model

TEXTS = [
    "i sat by the river bank and watched the water flow past the muddy shore",
    "she went to the bank to deposit her salary into a savings account",
    "the bank raised its interest rates on every loan this spring",
    "fishermen lined the grassy bank of the slow brown river at dawn",
]


@pytest.fixture(scope="module")
def bank_examples(span_frame) -> pd.DataFrame:
    return span_frame(TEXTS, "bank")


@pytest.fixture(scope="module")
def family_model(family, wtok, tiny_model):
    return family, load_model((tiny_model(family, len(wtok)), wtok))


def _hf_hidden(lm, text: str, pos: int) -> np.ndarray:
    enc = lm.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        hs = lm.model(**enc, output_hidden_states=True).hidden_states
    return torch.stack([h[0, pos] for h in hs]).numpy()


def test_components_sum_to_residual_for_every_adapter(family_model, bank_examples):
    family, lm = family_model
    heads = family in ("gpt2", "llama", "mistral", "qwen2", "gpt_neox")
    traj = tg.extract(lm, bank_examples, components=True, heads=heads, progress=False)
    s, attn, mlp = traj.states, traj.components["attn"], traj.components["mlp"]
    # block_output[l] = block_input[l] + attn[l] + mlp[l], block_input[1] = embedding (+ position)
    recon = traj.aux["block_input"][:, None] + np.cumsum(attn + mlp, axis=1)
    assert np.abs(recon - s[:, 1:]).max() <= 1e-4 * np.abs(s[:, 1:]).max()
    if heads:
        # heads add up to the attention write minus the output projection's bias
        proj = lm.adapter.head_proj[0]
        bias = proj.bias.detach().numpy() if getattr(proj, "bias", None) is not None else 0.0
        assert np.allclose(traj.components["heads"][:, 0].sum(1) + bias, attn[:, 0], atol=1e-5)


def test_point0_is_the_scaled_token_embedding_row(family_model, bank_examples):
    _, lm = family_model
    traj = tg.extract(lm, bank_examples, progress=False)
    row = lm.adapter.embed.weight[lm.tokenizer.convert_tokens_to_ids("bank")].detach().numpy()
    np.testing.assert_allclose(traj.states[:, 0], np.broadcast_to(row * lm.adapter.embed_scale, traj.states[:, 0].shape),
                               rtol=1e-6, atol=1e-6)


def test_intermediate_points_match_hugging_face_hidden_states(family_model, bank_examples):
    family, lm = family_model
    traj = tg.extract(lm, bank_examples.iloc[:1], progress=False, final_norm=lm.adapter.final_norm is not None)
    pos = int(traj.meta["token_start"][0])
    hf = _hf_hidden(lm, TEXTS[0], pos)
    np.testing.assert_allclose(traj.states[0, 1:-1], hf[1:-1], rtol=1e-4, atol=1e-5)
    if lm.adapter.final_norm is not None:
        # HF's last hidden state is final-normed: we keep the raw residual, and offer the normed view
        np.testing.assert_allclose(traj.aux["final_normed"][0], hf[-1], rtol=1e-4, atol=1e-5)
        assert not np.allclose(traj.states[0, -1], hf[-1], atol=1e-3)
    else:
        np.testing.assert_allclose(traj.states[0, -1], hf[-1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_states_do_not_depend_on_batch_companions(family_model, bank_examples, padding_side, span_frame, corpus):
    _, lm = family_model
    alone = tg.extract(lm, bank_examples.iloc[[2]], progress=False, components=True)
    long_texts = [" ".join(corpus[:3]) + " the bank", TEXTS[2], " ".join(corpus) + " the bank"]
    batch = span_frame(long_texts, "bank", occurrence=-1)
    batch.loc[1] = bank_examples.iloc[2]
    together = tg.extract(lm, batch, progress=False, components=True, batch_size=3, padding_side=padding_side)
    scale = np.abs(alone.states).max()
    assert np.abs(together.states[1] - alone.states[0]).max() <= 1e-4 * scale
    assert np.abs(together.components["mlp"][1] - alone.components["mlp"][0]).max() <= 1e-4 * scale


def test_causal_truncation_leaves_states_unchanged(decoder_family, wtok, bank_examples, tiny_model):
    lm = load_model((tiny_model(decoder_family, len(wtok)), wtok))
    cut = tg.extract(lm, bank_examples, progress=False)
    full = tg.extract(lm, bank_examples, progress=False, truncate=False)
    assert (cut.meta["n_tokens"] < full.meta["n_tokens"]).all()
    np.testing.assert_allclose(cut.states, full.states, rtol=1e-5, atol=1e-5)


def test_max_point_stops_after_that_block(wtok, bank_examples, tiny_model):
    lm = load_model((tiny_model("llama", len(wtok), n_layers=4), wtok))
    full = tg.extract(lm, bank_examples, progress=False, components=True)
    part = tg.extract(lm, bank_examples, progress=False, components=True, max_point=2)
    assert part.states.shape[1] == 3 and part.components["attn"].shape[1] == 2
    np.testing.assert_allclose(part.states, full.states[:, :3], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("style", ["bpe", "sentencepiece", "wordpiece"])
def test_alignment_single_and_multi_token_targets(style, corpus, trained_tokenizer):
    tok = trained_tokenizer(style)
    texts = [corpus[0], corpus[7], corpus[7]]
    df = pd.DataFrame({"text": texts})
    targets = ["bank", "unbelievable", "riverbanks"]
    df["char_start"] = [t.index(w) for t, w in zip(texts, targets)]
    df["char_end"] = df["char_start"] + [len(w) for w in targets]
    df["example"] = range(3)
    aligned, _ = align_targets(tok, df, causal=True)
    for a, w in zip(aligned, targets):
        assert tok.decode(a.target_ids).strip().lower() == w
    # the rare word splits into several tokens with this small vocabulary
    assert len(aligned[1].target_ids) > 1


@pytest.mark.parametrize("pool", ["first", "last", "mean"])
def test_multi_token_pooling(pool, tiny_model, corpus, trained_tokenizer):
    tok = trained_tokenizer("bpe")
    lm = load_model((tiny_model("gpt2", len(tok)), tok))
    df = pd.DataFrame({"text": [corpus[7]], "char_start": [corpus[7].index("unbelievable")]})
    df["char_end"] = df["char_start"] + len("unbelievable")
    traj = tg.extract(lm, df, pool=pool, progress=False)
    start, end = int(traj.meta["token_start"][0]), int(traj.meta["token_end"][0])
    ids = tok(corpus[7])["input_ids"]
    hf = np.stack([_hf_hidden(lm, corpus[7], p) for p in range(start, end)])  # (k, points, d)
    expected = {"first": hf[0], "last": hf[-1], "mean": hf.mean(0)}[pool]
    np.testing.assert_allclose(traj.states[0, 1:-1], expected[1:-1], rtol=1e-4, atol=1e-5)
    emb = lm.adapter.embed.weight.detach().numpy()[ids[start:end]]
    np.testing.assert_allclose(traj.states[0, 0], {"first": emb[0], "last": emb[-1], "mean": emb.mean(0)}[pool],
                               rtol=1e-6, atol=1e-6)


def test_misaligned_span_raises_naming_the_example(wtok, span_frame, tiny_model):
    lm = load_model((tiny_model("gpt2", len(wtok)), wtok))
    # without a target column validation cannot catch it: the alignment check must
    df = span_frame(TEXTS, "bank").drop(columns="target")
    df.loc[1, "char_end"] = df.loc[1, "char_start"] + 3  # "ban": part of a token
    with pytest.raises(AlignmentError, match="example 1.*'ban'"):
        tg.extract(lm, df, progress=False)


def test_span_on_whitespace_covers_no_token(wtok):
    df = pd.DataFrame({"example": [7], "text": ["the  bank"], "char_start": [3], "char_end": [5]})
    with pytest.raises(AlignmentError, match="example 7.*covers no token"):
        align_targets(wtok, df, causal=True)


def test_long_texts_are_windowed_with_a_warning(wtok, span_frame, tiny_model):
    lm = load_model((tiny_model("llama", len(wtok)), wtok))
    texts = [" ".join(["the river"] * 40) + " bank", "the bank"]
    df = span_frame(texts, "bank")
    with pytest.warns(UserWarning, match="1 example"):
        traj = tg.extract(lm, df, progress=False, max_length=16)
    assert traj.meta["n_tokens"].tolist() == [16, 2] and traj.meta["windowed"].tolist() == [True, False]
    # the window ends at the target: the same as extracting the last 16 words directly
    direct = tg.extract(lm, span_frame([" ".join(texts[0].split()[-16:])], "bank"), progress=False)
    np.testing.assert_allclose(traj.states[0], direct.states[0], rtol=1e-5, atol=1e-5)


def test_encoder_window_is_centred_on_the_target(wtok, span_frame, tiny_model):
    lm = load_model((tiny_model("bert", len(wtok)), wtok))
    text = " ".join(["river"] * 30) + " bank " + " ".join(["water"] * 30)
    with pytest.warns(UserWarning):
        traj = tg.extract(lm, span_frame([text], "bank"), progress=False, max_length=11)
    # [CLS] + 9 words + [SEP]? the word tokenizer adds no specials: 11 words centred on the target
    assert int(traj.meta["token_start"][0]) == 5


def test_examples_as_records_are_validated_like_a_frame(wtok, bank_examples, tiny_model):
    lm = load_model((tiny_model("gpt2", len(wtok)), wtok))
    from_frame = tg.extract(lm, bank_examples, progress=False)
    from_records = tg.extract(lm, bank_examples.to_dict("records"), progress=False)
    np.testing.assert_array_equal(from_records.states, from_frame.states)
    pd.testing.assert_frame_equal(from_records.meta, from_frame.meta)
    # the target given as a word, not a span: datasets.validate resolves it before alignment
    by_word = tg.extract(lm, [{"text": t, "target": "bank"} for t in TEXTS], progress=False)
    np.testing.assert_array_equal(by_word.states, from_frame.states)
    with pytest.raises(ValueError, match="no examples"):
        tg.extract(lm, bank_examples.iloc[:0], progress=False)


def test_unsupported_arguments_give_clear_errors(wtok, bank_examples, tiny_model):
    lm = load_model((tiny_model("gemma3", len(wtok)), wtok))
    with pytest.raises(ValueError, match="per-head writes are not available for the 'gemma'"):
        tg.extract(lm, bank_examples, heads=True, progress=False)
    with pytest.raises(ValueError, match="pool must be"):
        tg.extract(lm, bank_examples, pool="max", progress=False)
    with pytest.raises(ValueError, match="max_point must be in 0..3"):
        tg.extract(lm, bank_examples, max_point=9, progress=False)


def test_store_round_trip_equals_memory(tmp_path, wtok, bank_examples, tiny_model):
    lm = load_model((tiny_model("gpt2", len(wtok)), wtok))
    # one example per batch: in memory batches are sorted over the whole set, in a store within each chunk,
    # and batch composition changes float32 rounding; alone, every example must come back bit for bit
    mem = tg.extract(lm, bank_examples, components=True, heads=True, batch_size=1, progress=False)
    path = tmp_path / "bank.zarr"
    stored = tg.extract(lm, bank_examples, components=True, heads=True, store=path, chunk_size=3, batch_size=1,
                        progress=False)
    back = tg.load(path)
    for t in (stored, back):
        np.testing.assert_array_equal(t.states, mem.states)
        np.testing.assert_array_equal(t.components["heads"], mem.components["heads"])
        np.testing.assert_array_equal(t.aux["block_input"], mem.aux["block_input"])
        pd.testing.assert_frame_equal(t.meta, mem.meta)
    assert back.model_info["n_layers"] == 3 and back.model_info["architecture"] == "gpt2"
    assert not (tmp_path / "bank.zarr.partial").exists()
    # float16 storage is within half-precision rounding
    half = tg.extract(lm, bank_examples, store=tmp_path / "half.zarr", storage_dtype="float16", chunk_size=3,
                      progress=False)
    np.testing.assert_allclose(half.states, mem.states, rtol=2e-3, atol=2e-3)


def test_interrupted_run_resumes_and_leaves_nothing_complete_looking(tmp_path, wtok, monkeypatch, span_frame,
                                                                    tiny_model):
    ex_mod = importlib.import_module("trajgeo.extract")  # `tg.extract` is the function

    lm = load_model((tiny_model("llama", len(wtok)), wtok))
    df = span_frame(TEXTS * 3, "bank")
    path = tmp_path / "run.zarr"
    calls = {"n": 0}
    real = ex_mod._run_batch

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ex_mod, "_run_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        tg.extract(lm, df, store=path, chunk_size=4, batch_size=2, progress=False)
    assert not path.exists() and (tmp_path / "run.zarr.partial").exists()
    with pytest.raises(FileNotFoundError, match="resume"):
        tg.load(path)
    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(ex_mod, "_run_batch", counting)
    resumed = tg.extract(lm, df, store=path, chunk_size=4, batch_size=2, progress=False)
    assert counted["n"] == 4  # chunk 0 (2 batches) was done; chunks 1 and 2 remain
    fresh = tg.extract(lm, df, chunk_size=4, batch_size=2, progress=False)
    np.testing.assert_array_equal(resumed.states, fresh.states)


def test_existing_store_is_returned_or_refused(tmp_path, wtok, bank_examples, tiny_model):
    lm = load_model((tiny_model("gpt2", len(wtok)), wtok))
    path = tmp_path / "s.zarr"
    first = tg.extract(lm, bank_examples, store=path, progress=False)
    again = tg.extract(lm, bank_examples, store=path, progress=False)  # same job: the store is reused
    np.testing.assert_array_equal(first.states, again.states)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tg.extract(lm, bank_examples.iloc[:2], store=path, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smollm2", "minilm"])
def test_real_models_resolve_bank_from_chance(which, request, balanced_bank, brute_loo_centroid_accuracy):
    lm = request.getfixturevalue(which)
    df = balanced_bank(per_sense=20)
    traj = tg.extract(lm, df, components=True, progress=False)
    s, a, m = traj.states, traj.components["attn"], traj.components["mlp"]
    recon = traj.aux["block_input"][:, None] + np.cumsum(a + m, 1)
    assert np.abs(recon - s[:, 1:]).max() <= 1e-4 * np.abs(s).max()
    acc = brute_loo_centroid_accuracy(s, df["sense"].to_numpy())
    assert acc[0] <= 0.6  # every context shares the embedding: nothing to tell senses apart
    assert acc[1:].max() >= 0.8


def test_target_at_the_first_position_is_flagged_for_causal_models_only(wtok, tiny_model):
    texts = ["bank of the river", "the bank was closed"]
    df = pd.DataFrame({"text": texts, "char_start": [0, 4], "char_end": [4, 8]})
    causal = load_model((tiny_model("llama", len(wtok)), wtok))
    with pytest.warns(UserWarning, match=r"1 target\(s\) are the first token.*examples \[0\]"):
        traj = tg.extract(causal, df, progress=False)
    assert traj.meta["at_sequence_start"].tolist() == [True, False]
    encoder = load_model((tiny_model("bert", len(wtok)), wtok))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an encoder's first word has context on both sides: no warning
        traj = tg.extract(encoder, df, progress=False)
    assert traj.meta["at_sequence_start"].tolist() == (traj.meta["token_start"] == 0).tolist()


# ============================================================== options checked at the boundary
@pytest.mark.parametrize("option, value, error, message", [
    ("batch_size", -1, ValueError, "batch_size must be positive, got -1"),  # ran and stored all-zero states
    ("batch_size", 0, ValueError, "batch_size must be positive, got 0"),
    ("batch_size", 2.5, TypeError, "batch_size must be an int, got float 2.5"),
    ("batch_size", 4.0, TypeError, "batch_size must be an int, got float 4.0"),
    ("batch_size", "3", TypeError, "batch_size must be an int, got str '3'"),
    ("batch_size", True, TypeError, "batch_size must be an int, got bool True"),
    ("chunk_size", 0, ValueError, "chunk_size must be positive"),
    ("chunk_size", 2.5, TypeError, "chunk_size must be an int"),
    ("max_point", 2.5, TypeError, "max_point must be an int or None, got float 2.5"),
    ("max_point", "3", TypeError, "max_point must be an int or None, got str '3'"),
    ("max_point", -1, ValueError, "max_point must be >= 0, got -1"),
    ("max_length", 0, ValueError, "max_length must be positive"),
    ("max_length", 16.0, TypeError, "max_length must be an int or None"),
    ("rank", "0", TypeError, "rank must be an int"),
    ("world_size", 0, ValueError, "world_size must be positive"),
])
def test_numeric_options_are_checked_before_any_work(tmp_path, bank_examples, option, value, error, message):
    path = tmp_path / "s.zarr"
    # the model would fail to load: the option is refused before it is even tried
    with pytest.raises(error, match=message):
        tg.extract(tmp_path / "no-model", bank_examples, store=path, progress=False, **{option: value})
    assert os.listdir(tmp_path) == []


def test_numpy_integers_are_ints(wtok, bank_examples, tiny_model):
    lm = load_model((tiny_model("gpt2", len(wtok)), wtok))
    a = tg.extract(lm, bank_examples, batch_size=np.int64(2), max_point=np.int32(2), progress=False)
    b = tg.extract(lm, bank_examples, batch_size=2, max_point=2, progress=False)
    np.testing.assert_array_equal(a.states, b.states)


# ============================================================== a store knows what it holds
@pytest.fixture
def counting(monkeypatch):
    """Counts the model's forward passes (batches) from here on."""
    ex_mod = importlib.import_module("trajgeo.extract")
    real, calls = ex_mod._run_batch, {"n": 0}

    def count(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(ex_mod, "_run_batch", count)
    return calls


def _chunk_files(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and "/c/" in str(p.relative_to(path)) or p.parent.name == "manifest"}


def test_changed_labels_rewrite_only_the_metadata(tmp_path, wtok, span_frame, tiny_model, counting, capsys):
    lm = load_model((tiny_model("llama", len(wtok)), wtok))
    df = span_frame(TEXTS * 2, "bank")
    df["sense"] = ["river", "money", "money", "river"] * 2
    df["group"] = [f"g{i}" for i in range(8)]
    path = tmp_path / "s.zarr"
    first = tg.extract(lm, df, store=path, chunk_size=3, progress=False)
    before, n_batches = _chunk_files(path), counting["n"]
    fingerprint = tg.load(path, lazy=True).fingerprint()
    fixed = df.assign(sense=["shore", "finance", "finance", "shore"] * 2, word="bank.n",
                      group=[f"s{i // 2}" for i in range(8)], example=np.arange(100, 108), note="checked")
    again = tg.extract(lm, fixed, store=path, chunk_size=3)
    assert counting["n"] == n_batches  # the model did not run
    assert "only the metadata changed: meta.parquet rewritten" in capsys.readouterr().err
    for got in (again, tg.load(path), tg.load(path, lazy=True)):
        assert got.meta["sense"].tolist() == fixed["sense"].tolist()  # the caller's, never the stored ones
        assert got.meta["word"].tolist() == ["bank.n"] * 8 and got.meta["example"].tolist() == list(range(100, 108))
        assert got.meta["group"].tolist() == fixed["group"].tolist() and (got.meta["note"] == "checked").all()
        np.testing.assert_array_equal(np.asarray(got.states), first.states)
    assert _chunk_files(path) == before  # every chunk and manifest bit for bit
    assert tg.verify(path).ok
    assert tg.load(path, lazy=True).fingerprint() != fingerprint  # the example ids are part of it
    tg.extract(lm, fixed, store=path, chunk_size=3)
    assert "holds this extraction already" in capsys.readouterr().err and counting["n"] == n_batches


@pytest.mark.parametrize("change, message", [
    ("texts", r"4 examples, this run 2"),
    ("spans", r"4 examples with other texts or spans than this run's"),
    ("model", r"model .*\(weights [0-9a-f]+\), this run .*\(weights [0-9a-f]+\)"),
    ("options", r"max_point=None, this run 2"),
])
def test_a_store_of_other_work_is_refused_naming_what_differs(tmp_path, wtok, bank_examples, tiny_model, change,
                                                              message, counting):
    lm = load_model((tiny_model("gpt2", len(wtok)), wtok))
    path = tmp_path / "s.zarr"
    tg.extract(lm, bank_examples, store=path, progress=False)
    n, kw, df = counting["n"], {}, bank_examples
    if change == "texts":
        df = bank_examples.iloc[:2]
    elif change == "spans":  # the same texts, another target ("the") in each
        starts = [t.index("the") for t in TEXTS]
        df = bank_examples.assign(char_start=starts, char_end=[s + 3 for s in starts], target="the")
    elif change == "model":
        lm = load_model((tiny_model("gpt2", len(wtok), seed=1), wtok))
    else:
        kw = {"max_point": 2}
    with pytest.raises(FileExistsError, match=rf"a store already exists at .*s\.zarr, holding another extraction "
                                              rf"\(it has {message}.*\); pass overwrite=True to replace it"):
        tg.extract(lm, df, store=path, progress=False, **kw)
    assert counting["n"] == n
    tg.extract(lm, df, store=path, progress=False, overwrite=True, **kw)
    assert tg.verify(path).ok and tg.load(path).n_examples == len(df)


def _interrupt_after_first_chunk(monkeypatch, batches_per_chunk: int) -> None:
    ex_mod = importlib.import_module("trajgeo.extract")
    real, calls = ex_mod._run_batch, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == batches_per_chunk + 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ex_mod, "_run_batch", flaky)


def test_a_resumed_run_says_so_with_counts(tmp_path, wtok, span_frame, tiny_model, monkeypatch, capsys):
    lm = load_model((tiny_model("llama", len(wtok)), wtok))
    df = span_frame(TEXTS * 3, "bank")
    path = tmp_path / "run.zarr"
    _interrupt_after_first_chunk(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        tg.extract(lm, df, store=path, chunk_size=4, batch_size=2, progress=False)
    assert not (tmp_path / "run.zarr.lock").exists()  # released on the way out
    monkeypatch.undo()
    capsys.readouterr()
    tg.extract(lm, df, store=path, chunk_size=4, batch_size=2)
    err = capsys.readouterr().err
    assert f"resuming the unfinished extraction in {path}.partial: 1 of 3 chunks (4 of 12 examples) are done, " \
           "2 to go" in err
    assert tg.verify(path).ok


def test_resuming_with_another_model_is_refused_before_any_work(tmp_path, wtok, span_frame, tiny_model, monkeypatch):
    lm = load_model((tiny_model("llama", len(wtok)), wtok))
    other = load_model((tiny_model("llama", len(wtok), seed=3), wtok))
    df = span_frame(TEXTS * 3, "bank")
    path = tmp_path / "run.zarr"
    _interrupt_after_first_chunk(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        tg.extract(lm, df, store=path, chunk_size=4, batch_size=2, progress=False)
    monkeypatch.undo()
    with pytest.raises(tg.store.StoreError, match=r"run\.zarr\.partial holds an unfinished extraction of other work "
                                                  r"\(it has model .*, this run .*\), 1 of 3 chunks done: run that "
                                                  r"extraction again to finish it, or pass overwrite=True"):
        tg.extract(other, df, store=path, chunk_size=4, batch_size=2, progress=False)
    assert len(os.listdir(path.with_name("run.zarr.partial") / "manifest")) == 1  # the unfinished work is kept
    done = tg.extract(other, df, store=path, chunk_size=4, batch_size=2, progress=False, overwrite=True)
    np.testing.assert_allclose(done.states, tg.extract(other, df, progress=False, chunk_size=4, batch_size=2).states,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_extract_never_overwrites_what_is_not_a_store(tmp_path, wtok, bank_examples, tiny_model, counting, kind):
    lm = load_model((tiny_model("gpt2", len(wtok)), wtok))
    out = tmp_path / "myproj"
    if kind == "file":
        out.write_text("results")
    else:
        out.mkdir()
        (out / "notes.md").write_text("results")
    with pytest.raises(FileExistsError, match="not a trajgeo store.*nothing was written or deleted"):
        tg.extract(lm, bank_examples, store=out, overwrite=True, progress=False)
    assert counting["n"] == 0 and sorted(os.listdir(tmp_path)) == ["myproj"]
    assert (out if kind == "file" else out / "notes.md").read_text() == "results"


def test_a_store_of_the_previous_format_is_reused_and_its_metadata_fixed(tmp_path, wtok, bank_examples, tiny_model,
                                                                        counting):
    import json
    import shutil

    import zarr

    ex_mod = importlib.import_module("trajgeo.extract")
    lm = load_model((tiny_model("gpt2", len(wtok)), wtok))
    path = tmp_path / "s.zarr"
    df = bank_examples.assign(sense=["river", "money", "money", "river"])
    first = tg.extract(lm, df, store=path, progress=False)
    # what trajgeo 0.1 left: no marker or manifests, format 1, its resume key (which hashed the example ids)
    checked = tg.datasets.validate(df)
    opts = ex_mod._Options.resolve(lm.adapter, pool=None, padding_side="right", max_point=None, components=False,
                                   heads=False, final_norm=False, batch_size=16, max_length=None,
                                   storage_dtype="float32")
    group = zarr.open_group(str(path), mode="r+")
    info = dict(group.attrs["model_info"], resume_key=ex_mod._legacy_key(lm, checked, opts.record()))
    group.attrs.update({"format_version": 1, "model_info": info, "fingerprint": "0" * 24})
    (path / "trajgeo.json").unlink()
    shutil.rmtree(path / "manifest")
    assert tg.store.store_format(path) == 1
    n = counting["n"]
    with pytest.warns(UserWarning, match="store format 1"):
        again = tg.extract(lm, df.assign(sense=["shore", "bank", "bank", "shore"]), store=path, progress=False)
    assert counting["n"] == n and again.meta["sense"].tolist() == ["shore", "bank", "bank", "shore"]
    np.testing.assert_array_equal(again.states, first.states)
    assert json.loads((path / "zarr.json").read_text())["attributes"]["format_version"] == 1
