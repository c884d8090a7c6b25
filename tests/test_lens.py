"""Logit lens and tuned lens: the readout reproduces the model's own logits, metrics against brute force,
prediction depth, sense-word read-out, model checks, and the tuned lens (KL, identity start, save/load)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

import trajgeo as tg
from trajgeo import lens as L
from trajgeo.lens._readout import _Readout
from trajgeo.lens.tuned import _residuals
from trajgeo.models import load_model

TEXTS = [
    "i sat by the river bank and watched the water flow past the muddy shore",
    "she went to the bank to deposit her salary into a savings account",
    "the bank raised its interest rates on every loan this spring",
    "fishermen lined the grassy bank of the slow brown river at dawn",
]
SENSES = ["river", "finance", "finance", "river"]
SENSE_WORDS = {"river": ["river", "water", "shore"], "finance": ["money", "loan", "account", "savings"]}


def _every_word(texts: list[str]) -> pd.DataFrame:
    """One example per word occurrence: many different targets, positions and lens outcomes."""
    rows = []
    for t in texts:
        for m in re.finditer(r"\S+", t):
            rows.append({"text": t, "char_start": m.start(), "char_end": m.end(), "word": m.group()})
    return pd.DataFrame(rows)


def _hf_head(lm, h: np.ndarray) -> np.ndarray:
    """Brute-force readout of one residual vector, written from the HF modules and config directly."""
    m = lm.model
    x = torch.from_numpy(h)[None]
    with torch.no_grad():
        if lm.adapter.causal:
            norm = {"gpt2": lambda: m.transformer.ln_f, "gpt_neox": lambda: m.gpt_neox.final_layer_norm}.get(
                m.config.model_type, lambda: m.model.norm)()
            logits = m.get_output_embeddings()(norm(x))
            cap = getattr(m.config, "final_logit_softcapping", None)
            if cap:
                logits = cap * torch.tanh(logits / cap)
        else:
            logits = (m.cls if hasattr(m, "cls") else m.lm_head)(x)
    return logits[0].double().numpy()


def _brute_metrics(lm, traj) -> dict[str, np.ndarray]:
    """Entropy, KL(final || lens), rank and probability of the final top-1, with loops and float64."""
    n, p = traj.n_examples, traj.n_points
    out = {k: np.zeros((n, p)) for k in ("entropy", "kl_to_final", "final_top1_rank", "final_top1_prob", "top1")}
    for i in range(n):
        logps = []
        for j in range(p):
            z = _hf_head(lm, traj.states[i, j])
            logps.append(z - np.log(np.exp(z - z.max()).sum()) - z.max())
        final = logps[-1]
        best = int(np.argmax(final))
        for j, lp in enumerate(logps):
            prob = np.exp(lp)
            out["entropy"][i, j] = -(prob * lp).sum()
            out["kl_to_final"][i, j] = (np.exp(final) * (final - lp)).sum()
            out["final_top1_rank"][i, j] = 1 + (lp > lp[best]).sum()
            out["final_top1_prob"][i, j] = prob[best]
            out["top1"][i, j] = np.argmax(lp)
    return out


def _wide(df: pd.DataFrame, metric: str, n: int) -> np.ndarray:
    return df[df["metric"] == metric].sort_values(["example", "point"])["value"].to_numpy().reshape(n, -1)


# ============================================================== fixtures
@pytest.fixture
def bank_examples(span_frame) -> pd.DataFrame:
    """The four bank sentences with their senses (a new frame per test)."""
    df = span_frame(list(TEXTS), "bank")
    df["sense"] = list(SENSES)
    return df


@pytest.fixture(scope="module")
def family_lm(family, wtok, tiny_model):
    return family, load_model((tiny_model(family, len(wtok)), wtok))


@pytest.fixture(scope="module")
def llama(wtok, tiny_model):
    return load_model((tiny_model("llama", len(wtok), n_layers=4), wtok))


@pytest.fixture(scope="module")
def gemma2(wtok, tiny_model):
    return load_model((tiny_model("gemma2", len(wtok)), wtok))


# ============================================================== logit lens
def test_last_point_reproduces_the_models_own_logits(family_lm, bank_examples):
    family, lm = family_lm
    traj = tg.extract(lm, bank_examples, progress=False)
    readout = _Readout(lm)
    for i, text in enumerate(TEXTS):
        enc = lm.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hf = lm.model(**enc).logits[0, int(traj.meta["token_start"][i])].numpy()
        with torch.no_grad():
            ours = readout(torch.from_numpy(traj.states[i, -1])).numpy()
        assert np.abs(ours - hf).max() <= 1e-4 * np.abs(hf).max(), family
    # and the public output agrees: the lens's last-point probabilities are softmax(model logits)
    k = lm.model.config.vocab_size
    top = L.top_tokens(lm, traj, example=0, top_k=k)
    last = top[top["point"] == traj.points[-1]].sort_values("token_id")
    enc = lm.tokenizer(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        hf = torch.softmax(lm.model(**enc).logits[0, int(traj.meta["token_start"][0])], -1).numpy()
    np.testing.assert_allclose(last["prob"].to_numpy(), hf, rtol=1e-4, atol=1e-7)


def test_gemma2_softcapping_is_part_of_the_readout(gemma2):
    # the tiny Gemma 2 config caps logits (30.0): without the cap the identity above would fail
    assert gemma2.model.config.final_logit_softcapping
    assert _Readout(gemma2).softcap == gemma2.model.config.final_logit_softcapping


@pytest.mark.parametrize("which", ["llama", "gemma2"])
def test_metrics_match_a_brute_force_float64_computation(which, request, bank_examples):
    lm = request.getfixturevalue(which)
    traj = tg.extract(lm, bank_examples, progress=False)
    # batches of 3 examples: a ragged last batch
    res, top = L.logit_lens(lm, traj, top_k=3, batch_size=3, return_top_tokens=True)
    brute = _brute_metrics(lm, traj)
    for metric in ("entropy", "kl_to_final", "final_top1_prob"):
        np.testing.assert_allclose(_wide(res, metric, len(traj)), brute[metric], rtol=1e-4, atol=1e-6,
                                   err_msg=metric)
    np.testing.assert_array_equal(_wide(res, "final_top1_rank", len(traj)), brute["final_top1_rank"])
    # KL to the final distribution is exactly 0 at the last point, positive before it
    kl = _wide(res, "kl_to_final", len(traj))
    assert np.all(kl[:, -1] == 0) and np.all(kl[:, :-1] > 0)
    assert np.all(_wide(res, "final_top1_rank", len(traj))[:, -1] == 1)
    assert (top.groupby(["example", "point"])["prob"].apply(lambda s: s.is_monotonic_decreasing)).all()
    first = top[top["rank"] == 1].sort_values(["example", "point"])["token_id"].to_numpy().reshape(len(traj), -1)
    np.testing.assert_array_equal(first, brute["top1"])


def test_top_tokens_are_returned_explicitly_and_agree_with_top_tokens(llama, bank_examples):
    traj = tg.extract(llama, bank_examples, progress=False)
    plain = L.logit_lens(llama, traj, sense_tokens=SENSE_WORDS)
    assert isinstance(plain, pd.DataFrame) and not plain.attrs  # no side channel
    result = L.logit_lens(llama, traj, sense_tokens=SENSE_WORDS, return_top_tokens=True, top_k=4)
    assert isinstance(result, L.LensResult) and not result.metrics.attrs
    pd.testing.assert_frame_equal(result.metrics, plain)  # the metrics do not depend on the option
    pd.testing.assert_frame_equal(result.top_tokens, L.top_tokens(llama, traj, top_k=4))
    assert list(result.top_tokens.columns) == ["example", "point", "rank", "token", "prob", "token_id"]
    assert len(result.top_tokens) == len(traj) * traj.n_points * 4


def test_old_positional_and_keyword_forms_still_work_with_a_warning(llama, bank_examples):
    traj = tg.extract(llama, bank_examples, progress=False)
    with pytest.warns(DeprecationWarning, match="top_k, sense_tokens.*by position"):
        old = L.logit_lens(llama, traj, 0, SENSE_WORDS)
    pd.testing.assert_frame_equal(old, L.logit_lens(llama, traj, sense_tokens=SENSE_WORDS))
    with pytest.warns(DeprecationWarning, match="'k' is deprecated.*use 'top_k'"):
        old = L.top_tokens(llama, traj, example=1, k=2)
    with pytest.warns(DeprecationWarning, match="by position"):
        older = L.top_tokens(llama, traj, 1, 2)
    new = L.top_tokens(llama, traj, example=1, top_k=2)
    pd.testing.assert_frame_equal(old, new)
    pd.testing.assert_frame_equal(older, new)
    with pytest.warns(DeprecationWarning, match="normalize_final.*by position"):
        old = L.prediction_depth(llama, traj, False)
    pd.testing.assert_frame_equal(old, L.prediction_depth(llama, traj, normalize_final=False))


def test_output_columns_and_rows(llama, bank_examples):
    traj = tg.extract(llama, bank_examples, progress=False)
    res = L.logit_lens(llama, traj, sense_tokens=SENSE_WORDS)
    assert list(res.columns) == ["example", "point", "word", "sense", "metric", "to_sense", "value"]
    counts = res["metric"].value_counts()
    n_rows = traj.n_examples * traj.n_points
    for m in ("entropy", "kl_to_final", "final_top1_rank", "final_top1_prob", "sense_log_odds"):
        assert counts[m] == n_rows
    assert counts["sense_prob"] == 2 * n_rows
    assert set(res.loc[res["metric"] == "sense_prob", "to_sense"]) == {"river", "finance"}
    assert res.loc[res["metric"] != "sense_prob", "to_sense"].isna().all()
    assert set(res["point"]) == set(traj.points)


def test_prediction_depth_matches_a_brute_force_loop(llama, corpus):
    examples = _every_word(corpus[:6])
    traj = tg.extract(llama, examples, progress=False)
    depth = L.prediction_depth(llama, traj, batch_size=7)
    top = L.top_tokens(llama, traj, top_k=1).sort_values(["example", "point"])
    ids = top["token_id"].to_numpy().reshape(len(traj), -1)
    top1 = ids == ids[:, -1:]
    expected = []
    for i in range(len(traj)):
        d = traj.points[-1]
        for j in range(traj.n_points - 1, -1, -1):  # walk back while the top-1 is the final top-1
            if not top1[i, j]:
                break
            d = traj.points[j]
        expected.append(d)
    np.testing.assert_array_equal(depth["prediction_depth"].to_numpy(), expected)
    assert list(depth.columns) == ["example", "word", "prediction_depth"]
    assert len(set(expected)) > 1  # the examples do settle at different depths


def test_prediction_depth_uses_original_point_indices(llama, bank_examples):
    traj = tg.extract(llama, bank_examples, progress=False)
    sub = traj.select_points([0, 2, 4])
    depth = L.prediction_depth(llama, sub)
    assert set(depth["prediction_depth"]) <= {0, 2, 4}


def test_sense_log_odds_match_a_manual_computation(llama, bank_examples):
    traj = tg.extract(llama, bank_examples, progress=False)
    res = L.logit_lens(llama, traj, sense_tokens=SENSE_WORDS)
    vocab = llama.tokenizer.get_vocab()
    ids = {s: [vocab[w] for w in ws] for s, ws in SENSE_WORDS.items()}
    odds = np.zeros((len(traj), traj.n_points))
    probs = {s: np.zeros((len(traj), traj.n_points)) for s in ids}
    for i in range(len(traj)):
        for j in range(traj.n_points):
            z = _hf_head(llama, traj.states[i, j])
            prob = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            for s in ids:
                probs[s][i, j] = prob[ids[s]].sum()
            correct = SENSES[i]
            other = [s for s in ids if s != correct][0]
            odds[i, j] = np.log(probs[correct][i, j]) - np.log(probs[other][i, j])
    np.testing.assert_allclose(_wide(res, "sense_log_odds", len(traj)), odds, rtol=1e-4, atol=1e-5)
    for s in ids:
        got = _wide(res[res["to_sense"] == s], "sense_prob", len(traj))
        np.testing.assert_allclose(got, probs[s], rtol=1e-4, atol=1e-8)


def test_sense_tokens_given_per_word_apply_to_that_words_examples(llama, bank_examples, span_frame, corpus):
    df = pd.concat([bank_examples, span_frame([corpus[4]], "crane").assign(sense="bird")], ignore_index=True)
    traj = tg.extract(llama, df, progress=False)
    per_word = {"bank": SENSE_WORDS, "crane": {"bird": ["marsh", "waded"], "machine": ["steel", "lifted"]}}
    res = L.logit_lens(llama, traj, sense_tokens=per_word)
    sp = res[res["metric"] == "sense_prob"]
    assert set(sp.loc[sp["word"] == "crane", "to_sense"]) == {"bird", "machine"}
    assert set(sp.loc[sp["word"] == "bank", "to_sense"]) == {"river", "finance"}
    assert (res["metric"] == "sense_log_odds").sum() == len(traj) * traj.n_points


def test_sense_without_a_token_set_raises_naming_the_example(llama, bank_examples):
    df = bank_examples.assign(sense=["river", "finance", "finance", "vault"])
    traj = tg.extract(llama, df, progress=False)
    with pytest.raises(KeyError, match=r"examples \[3\].*vault"):
        L.logit_lens(llama, traj, sense_tokens=SENSE_WORDS)


def test_shared_and_unknown_sense_words_are_dropped_with_a_warning(wtok):
    with pytest.warns(UserWarning, match="shared by several senses"):
        ids = L.sense_token_ids(wtok, {"a": ["river", "water"], "b": ["water", "money"]})
    assert ids == {"a": [wtok.get_vocab()["river"]], "b": [wtok.get_vocab()["money"]]}
    with pytest.warns(UserWarning, match="no known token"):
        ids = L.sense_token_ids(wtok, {"a": ["river", "zzzunknown"], "b": ["money"]})
    assert ids["a"] == [wtok.get_vocab()["river"]]
    with pytest.raises(ValueError, match=r"\['a'\] have no usable"):
        L.sense_token_ids(wtok, {"a": ["water"], "b": ["water", "money"]})


@pytest.mark.parametrize("style", ["bpe", "sentencepiece"])
def test_sense_words_map_to_their_word_initial_token(style, trained_tokenizer):
    tok = trained_tokenizer(style)
    ids = L.sense_token_ids(tok, {"r": ["river"], "f": ["money"]})
    piece = tok.convert_ids_to_tokens(ids["r"][0])
    assert piece[0] in ("Ġ", "▁") and "river".startswith(piece[1:])


def test_encoder_without_lm_head_raises_clearly(wtok, bank_examples, corpus):
    import transformers as tf

    cfg = tf.BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                        vocab_size=len(wtok))
    lm = load_model((tf.BertModel(cfg).eval(), wtok))
    traj = tg.extract(lm, bank_examples, progress=False)
    with pytest.raises(ValueError, match="needs an unembedding"):
        L.logit_lens(lm, traj)
    with pytest.raises(ValueError, match="needs an unembedding"):
        L.TunedLens(progress=False).fit(lm, corpus)


def test_trajectories_of_another_model_are_refused(wtok, llama, bank_examples, tiny_model):
    traj = tg.extract(llama, bank_examples, progress=False)
    gpt2 = load_model((tiny_model("gpt2", len(wtok), n_layers=4), wtok))
    with pytest.raises(ValueError, match="extracted with model 'LlamaForCausalLM'"):
        L.logit_lens(gpt2, traj)
    other_seed = load_model((tiny_model("llama", len(wtok), n_layers=4, seed=1), wtok))
    with pytest.warns(UserWarning, match="different weights"):
        L.logit_lens(other_seed, traj)
    three = load_model((tiny_model("llama", len(wtok), n_layers=3), wtok))
    with pytest.raises(ValueError, match="layers"):
        L.logit_lens(three, traj)


def test_trajectories_without_the_last_point_are_refused(llama, bank_examples):
    traj = tg.extract(llama, bank_examples, progress=False, max_point=2)
    with pytest.raises(ValueError, match="needs the last point"):
        L.logit_lens(llama, traj)


def test_plain_arrays_are_accepted(llama, bank_examples):
    traj = tg.extract(llama, bank_examples, progress=False)
    a = L.logit_lens(llama, traj.states)
    b = L.logit_lens(llama, traj)
    assert "word" not in a.columns and set(a["metric"]) == set(L.LENS_METRICS[:4])  # no word: no sense rows
    b = b[b["metric"].isin(L.LENS_METRICS[:4])]
    np.testing.assert_array_equal(a["value"].to_numpy(), b["value"].to_numpy())


# ============================================================== tuned lens
def _random_texts(tok, n: int, length: int, seed: int) -> list[str]:
    """Random sequences of the word tokenizer's words: an unlimited corpus for the tiny models."""
    words = [w for w in tok.get_vocab() if not w.startswith("[")]
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, length)) for _ in range(n)]


@pytest.fixture(scope="module")
def sharp(wtok, tiny_model):
    """The tiny llama with a 10x unembedding: random models otherwise predict an almost uniform
    distribution at every point, and every KL is near 0."""
    model = tiny_model("llama", len(wtok), n_layers=4)
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    return load_model((model, wtok))


@pytest.fixture(scope="module")
def tuned(llama):
    texts = _random_texts(llama.tokenizer, 100, 12, seed=0)
    return L.TunedLens(n_epochs=2, lr=3e-3, batch_size=32, progress=False, random_state=0).fit(llama, texts)


def test_residuals_equal_extracted_points(llama, bank_examples):
    # the corpus residuals are trajgeo's points (raw last point, scaled embedding at point 0)
    traj = tg.extract(llama, bank_examples.iloc[[1]], progress=False)
    h = _residuals(llama, [bank_examples["text"][1]], max_length=64, batch_size=1)
    pos = int(traj.meta["token_start"][0])
    np.testing.assert_allclose(h[pos], traj.states[0], rtol=1e-5, atol=1e-5)


def test_tuned_lens_lowers_held_out_kl_below_the_logit_lens(sharp):
    lens = L.TunedLens(n_epochs=2, lr=3e-3, progress=False).fit(sharp, _random_texts(sharp.tokenizer, 100, 12, seed=0))
    held_out = _every_word(_random_texts(sharp.tokenizer, 12, 10, seed=1))  # other random texts
    traj = tg.extract(sharp, held_out, progress=False)
    kl_logit = _wide(L.logit_lens(sharp, traj), "kl_to_final", len(traj))[:, :-1].mean(0)
    kl_tuned = _wide(lens.lens(sharp, traj), "kl_to_final", len(traj))[:, :-1].mean(0)
    assert kl_tuned.mean() < 0.75 * kl_logit.mean(), (kl_tuned, kl_logit)  # about 0.5 with these seeds
    assert np.all(kl_tuned < kl_logit)  # at every point before the last
    assert lens.loss_history_[-10:].mean() < lens.loss_history_[:3].mean()


def test_tuned_lens_starts_as_the_logit_lens(llama, bank_examples, corpus):
    # with a zero learning rate the translators stay at the identity: the tuned lens is the logit lens
    lens = L.TunedLens(n_epochs=1, lr=0.0, progress=False).fit(llama, corpus)
    np.testing.assert_array_equal(lens.weight_, np.broadcast_to(np.eye(32), lens.weight_.shape))
    assert not lens.bias_.any()
    traj = tg.extract(llama, bank_examples, progress=False)
    pd.testing.assert_frame_equal(L.logit_lens(llama, traj), lens.lens(llama, traj),
                                  check_exact=False, rtol=1e-5, atol=1e-5)  # float32 KL: ~1e-6 absolute


def test_tuned_lens_keeps_the_last_point(llama, tuned, bank_examples):
    np.testing.assert_array_equal(tuned.weight_[-1], np.eye(32))
    traj = tg.extract(llama, bank_examples, progress=False)
    res = tuned.lens(llama, traj, sense_tokens=SENSE_WORDS)
    assert (_wide(res, "kl_to_final", len(traj))[:, -1] == 0).all()
    assert not np.allclose(tuned.transform(traj).states[:, :-1], traj.states[:, :-1])


def test_transform_is_the_affine_map_per_point(llama, tuned, bank_examples):
    traj = tg.extract(llama, bank_examples, progress=False)
    out = tuned.transform(traj)
    for p in range(traj.n_points):
        np.testing.assert_allclose(out.states[:, p], traj.states[:, p] @ tuned.weight_[p].T + tuned.bias_[p],
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tuned.transform(traj.states), out.states)
    sub = traj.select_points([1, 3])  # subset points use their own translators
    np.testing.assert_allclose(tuned.transform(sub).states, out.states[:, [1, 3]], rtol=1e-6, atol=1e-6)


def test_save_load_round_trip_gives_identical_outputs(llama, tuned, tmp_path, bank_examples):
    path = tuned.save(tmp_path / "lens.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["lens.npz"]  # no temporary file left behind
    back = L.TunedLens.load(path)
    assert back.get_params() == tuned.get_params()
    traj = tg.extract(llama, bank_examples, progress=False)
    pd.testing.assert_frame_equal(back.lens(llama, traj, sense_tokens=SENSE_WORDS),
                                  tuned.lens(llama, traj, sense_tokens=SENSE_WORDS))


def test_tuned_lens_refuses_another_model(wtok, tuned, bank_examples, tiny_model):
    other = load_model((tiny_model("llama", len(wtok), n_layers=4, seed=1), wtok))
    traj = tg.extract(other, bank_examples, progress=False)
    with pytest.raises(ValueError, match="trained for"):
        tuned.lens(other, traj)
    with pytest.raises(ValueError, match="not fitted"):
        L.TunedLens().transform(traj)


# ============================================================== SmolLM2 (slow)
BANK_FALLBACK = [  # used until tg.datasets.builtin("bank") is available
    ("We had a picnic on the grassy bank of the river.", "river"),
    ("The children fished from the muddy bank all afternoon.", "river"),
    ("Reeds grew thick along the bank of the stream.", "river"),
    ("The canoe drifted toward the far bank of the lake.", "river"),
    ("She deposited her paycheck at the bank on Monday.", "finance"),
    ("The bank approved our mortgage application.", "finance"),
    ("He withdrew cash from the bank before the trip.", "finance"),
    ("The central bank raised interest rates again.", "finance"),
]


@pytest.fixture
def bank_sentences(span_frame) -> pd.DataFrame:
    try:
        df = tg.datasets.builtin("bank")
        if len(df):
            return df
    except Exception:  # the built-in set is not shipped yet
        pass
    df = span_frame([t for t, _ in BANK_FALLBACK], "bank")
    df["sense"] = [s for _, s in BANK_FALLBACK]
    return df


def _bank_sense_words() -> dict:
    try:
        return tg.datasets.sense_words("bank")
    except Exception:
        return {"river": ["river", "water", "shore", "stream", "fish", "mud", "lake"],
                "finance": ["money", "loan", "account", "deposit", "cash", "credit", "interest"]}


@pytest.mark.slow
def test_smollm2_last_point_reproduces_its_logits(smollm2, bank_sentences):
    df = bank_sentences.iloc[:6]
    traj = tg.extract(smollm2, df, progress=False)
    readout = _Readout(smollm2)
    for i, text in enumerate(df["text"]):
        enc = smollm2.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hf = smollm2.model(**enc).logits[0, int(traj.meta["token_end"][i]) - 1].numpy()
            ours = readout(torch.from_numpy(traj.states[i, -1])).numpy()
        assert np.abs(ours - hf).max() <= 1e-4 * np.abs(hf).max()
    kl = _wide(L.logit_lens(smollm2, traj), "kl_to_final", len(traj))
    assert (kl[:, -1] == 0).all()


@pytest.mark.slow
def test_smollm2_sense_log_odds_move_toward_the_correct_sense_with_depth(smollm2, bank_sentences):
    df = bank_sentences
    traj = tg.extract(smollm2, df, progress=False)
    sense_words = _bank_sense_words()
    res = L.logit_lens(smollm2, traj, sense_tokens=sense_words)
    odds = res[res["metric"] == "sense_log_odds"].groupby("point")["value"].mean()
    third = traj.n_points // 3
    early, late = odds.iloc[1:third + 1].mean(), odds.iloc[-third:].mean()  # point 0 is context-free
    print(f"\nSmolLM2 bank ({len(traj)} sentences): mean sense log-odds early (points 1-{third}) {early:.3f}, "
          f"late (points {traj.n_points - third}-{traj.n_points - 1}) {late:.3f}")
    assert late > early


@pytest.mark.slow
def test_smollm2_tuned_lens_lowers_held_out_kl(smollm2, coarsewsd_dir, bank_sentences):
    train = [line.split("\t", 1)[1] for line in
             (coarsewsd_dir / "apple" / "train.data.txt").read_text().splitlines()[:24]]
    lens = L.TunedLens(n_epochs=1, lr=1e-3, batch_size=24, max_tokens=288, max_length=32, progress=False)
    lens.fit(smollm2, train)
    traj = tg.extract(smollm2, bank_sentences.iloc[:12], progress=False)
    kl_logit = _wide(L.logit_lens(smollm2, traj), "kl_to_final", len(traj))[:, :-1].mean()
    kl_tuned = _wide(lens.lens(smollm2, traj), "kl_to_final", len(traj))[:, :-1].mean()
    print(f"\nSmolLM2 held-out mean KL to final (points 0..L-1): logit lens {kl_logit:.3f}, tuned lens "
          f"{kl_tuned:.3f} (trained on {lens.n_train_positions_} positions in {lens.fit_seconds_:.1f} s)")
    assert kl_tuned < kl_logit


@pytest.mark.slow
def test_minilm_has_no_unembedding(minilm, bank_sentences):
    traj = tg.extract(minilm, bank_sentences.iloc[:2], progress=False)
    with pytest.raises(ValueError, match="needs an unembedding"):
        L.logit_lens(minilm, traj)
