"""Logit lens and tuned lens: the readout reproduces the model's own logits, metrics against brute force,
top-1 saturation point, sense-word read-out and its shuffled-set null, next-token scores against the model's
own loss and a brute-force loop, model checks (no LM head), and the tuned lens (KL, identity start, early
stopping, save/load and the cache without pickle)."""

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
        old = L.top1_saturation_point(llama, traj, False)
    pd.testing.assert_frame_equal(old, L.top1_saturation_point(llama, traj, normalize_final=False))


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


def test_top1_saturation_point_matches_a_brute_force_loop(llama, corpus):
    examples = _every_word(corpus[:6])
    traj = tg.extract(llama, examples, progress=False)
    depth = L.top1_saturation_point(llama, traj, batch_size=7)
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
    np.testing.assert_array_equal(depth["top1_saturation_point"].to_numpy(), expected)
    assert list(depth.columns) == ["example", "word", "top1_saturation_point"]
    assert len(set(expected)) > 1  # the examples do settle at different depths


def test_top1_saturation_point_uses_original_point_indices(llama, bank_examples):
    traj = tg.extract(llama, bank_examples, progress=False)
    sub = traj.select_points([0, 2, 4])
    depth = L.top1_saturation_point(llama, sub)
    assert set(depth["top1_saturation_point"]) <= {0, 2, 4}


def test_prediction_depth_is_a_deprecated_alias_with_its_old_column(llama, bank_examples):
    traj = tg.extract(llama, bank_examples, progress=False)
    new = L.top1_saturation_point(llama, traj)
    with pytest.warns(DeprecationWarning, match="not Baldock.*top1_saturation_point"):
        old = L.prediction_depth(llama, traj)
    assert list(old.columns) == ["example", "word", "sense", "prediction_depth"]
    np.testing.assert_array_equal(old["prediction_depth"], new["top1_saturation_point"])
    with pytest.warns(DeprecationWarning, match="normalize_final.*by position"):
        older = L.prediction_depth(llama, traj, False)
    np.testing.assert_array_equal(older["prediction_depth"],
                                  L.top1_saturation_point(llama, traj, normalize_final=False)["top1_saturation_point"])


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


def test_encoder_without_lm_head_raises_clearly(wtok, bank_examples, corpus, llama):
    import transformers as tf

    cfg = tf.BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                        vocab_size=len(wtok))
    lm = load_model((tf.BertModel(cfg).eval(), wtok))
    assert not L.has_lm_head(lm) and L.has_lm_head(llama)
    traj = tg.extract(lm, bank_examples, progress=False)
    for call in (lambda: L.logit_lens(lm, traj), lambda: L.top_tokens(lm, traj),
                 lambda: L.top1_saturation_point(lm, traj), lambda: L.sense_readout(lm, traj, sense_tokens=SENSE_WORDS),
                 lambda: L.next_token_scores(lm, corpus[:2], progress=False),
                 lambda: L.TunedLens(progress=False, add_corpus=False).fit(lm, corpus)):
        with pytest.raises(L.LensUnavailable, match="needs an unembedding.*BertModel") as err:
            call()
        assert isinstance(err.value, ValueError)  # code that caught the former ValueError still does


def test_masked_lm_encoders_have_a_lens_but_no_next_token(family_lm, corpus):
    family, lm = family_lm
    assert L.has_lm_head(lm)
    if lm.adapter.causal:
        return
    with pytest.raises(ValueError, match="needs a causal LM.*encoder"):
        L.next_token_scores(lm, corpus[:2], progress=False)


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
    words = sorted(w for w in tok.get_vocab() if not w.startswith("["))  # get_vocab's order varies by process
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
    return L.TunedLens(max_epochs=2, lr=3e-3, batch_size=32, progress=False, random_state=0, validation_fraction=0,
                       add_corpus=False).fit(llama, texts)


def test_residuals_equal_extracted_points(llama, bank_examples):
    # the corpus residuals are trajgeo's points (raw last point, scaled embedding at point 0)
    traj = tg.extract(llama, bank_examples.iloc[[1]], progress=False)
    h = _residuals(llama, [bank_examples["text"][1]], max_length=64, batch_size=1)
    pos = int(traj.meta["token_start"][0])
    np.testing.assert_allclose(h[pos], traj.states[0], rtol=1e-5, atol=1e-5)


def test_tuned_lens_lowers_held_out_kl_below_the_logit_lens(sharp):
    lens = L.TunedLens(max_epochs=2, lr=3e-3, progress=False, validation_fraction=0, add_corpus=False)
    lens.fit(sharp, _random_texts(sharp.tokenizer, 100, 12, seed=0))
    assert lens.n_steps_ == 2 * int(np.ceil(lens.n_train_positions_ / 32))  # no held-out texts: every epoch
    held_out = _every_word(_random_texts(sharp.tokenizer, 12, 10, seed=1))  # other random texts
    traj = tg.extract(sharp, held_out, progress=False)
    kl_logit = _wide(L.logit_lens(sharp, traj), "kl_to_final", len(traj))[:, :-1].mean(0)
    kl_tuned = _wide(lens.lens(sharp, traj), "kl_to_final", len(traj))[:, :-1].mean(0)
    assert kl_tuned.mean() < 0.75 * kl_logit.mean(), (kl_tuned, kl_logit)  # about 0.5 with these seeds
    assert np.all(kl_tuned < kl_logit)  # at every point before the last
    assert lens.loss_history_[-10:].mean() < lens.loss_history_[:3].mean()


def test_tuned_lens_starts_as_the_logit_lens(llama, bank_examples, corpus):
    # with a zero learning rate the translators stay at the identity: the tuned lens is the logit lens
    lens = L.TunedLens(max_epochs=1, lr=0.0, progress=False, add_corpus=False).fit(llama, corpus)
    np.testing.assert_array_equal(lens.weight_, np.broadcast_to(np.eye(32), lens.weight_.shape))
    assert not lens.bias_.any()
    traj = tg.extract(llama, bank_examples, progress=False)
    pd.testing.assert_frame_equal(L.logit_lens(llama, traj), lens.lens(llama, traj),
                                  check_exact=False, rtol=1e-5, atol=1e-5)  # float32 KL: ~1e-6 absolute


def test_early_stopping_with_a_zero_learning_rate_stops_at_once(sharp):
    # planted: nothing can improve, so the first measurements after the start end the training
    texts = _random_texts(sharp.tokenizer, 40, 12, seed=0)
    lens = L.TunedLens(max_epochs=50, lr=0.0, batch_size=16, validation_interval=2, n_iter_no_change=2,
                       add_corpus=False, progress=False).fit(sharp, texts)
    assert lens.stopped_early_ and lens.n_steps_ == 4 and lens.best_step_ == 0
    np.testing.assert_array_equal(lens.validation_steps_, [0, 2, 4])
    assert np.all(lens.validation_kl_ == lens.validation_kl_[0])
    assert lens.held_out_kl_ == lens.logit_held_out_kl_ > 0
    np.testing.assert_array_equal(lens.weight_, np.broadcast_to(np.eye(32), lens.weight_.shape))


def test_early_stopping_stops_when_the_held_out_kl_stops_improving(sharp):
    train = _random_texts(sharp.tokenizer, 40, 12, seed=0)
    held_out = _random_texts(sharp.tokenizer, 12, 10, seed=1)
    tol, patience, max_epochs = 1e-3, 3, 40
    lens = L.TunedLens(max_epochs=max_epochs, lr=3e-2, batch_size=16, validation_interval=5, n_iter_no_change=patience,
                       tol=tol, add_corpus=False, progress=False).fit(sharp, train, validation_texts=held_out)
    # it stopped before its epochs ran out (a high learning rate on 40 texts overfits) ...
    assert lens.stopped_early_ and lens.n_steps_ < max_epochs * int(np.ceil(lens.n_train_positions_ / 16))
    # ... exactly where the rule says, replayed on the recorded held-out KL
    kl = lens.validation_kl_
    best, best_i, bad, stop_i = kl[0], 0, 0, None
    for i in range(1, len(kl)):
        if kl[i] < best - tol:
            best, best_i, bad = kl[i], i, 0
        else:
            bad += 1
        if bad >= patience:
            stop_i = i
            break
    assert stop_i == len(kl) - 1 and lens.validation_steps_[-1] == lens.n_steps_
    assert lens.best_step_ == lens.validation_steps_[best_i] > 0
    assert kl[-patience:].min() > kl[best_i] - tol  # the last measurements did not improve
    # the held-out KLs it reports are the logit lens's and the kept translators', recomputed independently
    traj = tg.extract(sharp, _every_word(held_out), progress=False)
    kl_logit = _wide(L.logit_lens(sharp, traj), "kl_to_final", len(traj))[:, :-1].mean()
    kl_tuned = _wide(lens.lens(sharp, traj), "kl_to_final", len(traj))[:, :-1].mean()
    assert lens.logit_held_out_kl_ == pytest.approx(kl_logit, rel=1e-4) and kl[0] == lens.logit_held_out_kl_
    assert lens.held_out_kl_ == pytest.approx(kl_tuned, rel=1e-4) and lens.held_out_kl_ == kl[best_i]
    assert lens.held_out_kl_ < 0.8 * lens.logit_held_out_kl_
    assert lens.held_out_kl_per_point_[:-1].mean() == pytest.approx(lens.held_out_kl_, rel=1e-9)
    assert lens.held_out_kl_per_point_[-1] == 0


def test_bad_training_settings_are_refused(llama, corpus):
    with pytest.raises(ValueError, match="validation_fraction"):
        L.TunedLens(validation_fraction=1.0, add_corpus=False).fit(llama, corpus)
    with pytest.raises(ValueError, match="n_iter_no_change"):
        L.TunedLens(n_iter_no_change=0, add_corpus=False).fit(llama, corpus)
    with pytest.raises(ValueError, match="at least 2 texts"):
        L.TunedLens(add_corpus=False, progress=False).fit(llama, corpus[:1])
    with pytest.raises(ValueError, match="no non-empty texts"):
        L.TunedLens(add_corpus=False).fit(llama, [" "])
    with pytest.warns(DeprecationWarning, match="'n_epochs' is deprecated.*max_epochs"):
        assert L.TunedLens(n_epochs=3).max_epochs == 3


def test_training_texts_are_the_corpus_plus_the_users(llama, corpus):
    lens = L.TunedLens(progress=False)
    assert lens._texts(corpus[:3]) == tg.datasets.corpus() + corpus[:3]
    assert L.TunedLens(add_corpus=False)._texts(pd.DataFrame({"text": corpus[:2]})) == corpus[:2]


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


def _assert_same_lens(a, b) -> None:
    """Every learned array bit for bit (dtype included) and every scalar attribute equal."""
    assert a.get_params() == b.get_params()
    fitted = sorted(k for k in vars(a) if k.endswith("_"))
    assert fitted == sorted(k for k in vars(b) if k.endswith("_"))
    for k in fitted:
        x, y = getattr(a, k), getattr(b, k)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), k
        else:
            assert type(x) is type(y) and (x == y or (x != x and y != y)), k  # NaN == NaN here


def test_save_load_round_trip_gives_identical_outputs(llama, tuned, tmp_path, bank_examples):
    path = tuned.save(tmp_path / "lens.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["lens.safetensors"]  # no temporary file left behind
    back = L.TunedLens.load(path)
    _assert_same_lens(back, tuned)
    traj = tg.extract(llama, bank_examples, progress=False)
    pd.testing.assert_frame_equal(back.lens(llama, traj, sense_tokens=SENSE_WORDS),
                                  tuned.lens(llama, traj, sense_tokens=SENSE_WORDS))


def test_lenses_saved_by_0_1_as_npz_still_load(tuned, tmp_path):
    import json

    meta = {"params": {**{k: v for k, v in tuned.get_params().items() if k == "lr"}, "n_epochs": 2},
            "model_name": tuned.model_name_, "model_fingerprint": tuned.model_fingerprint_,
            "n_train_positions": 5, "fit_seconds": 1.5}
    with open(tmp_path / "old.npz", "wb") as f:
        np.savez(f, weight=tuned.weight_, bias=tuned.bias_, loss_history=tuned.loss_history_,
                 meta=np.array(json.dumps(meta)))
    back = L.TunedLens.load(tmp_path / "old.npz")
    assert back.max_epochs == 2 and back.lr == tuned.lr
    np.testing.assert_array_equal(back.weight_, tuned.weight_)
    np.testing.assert_array_equal(back.bias_, tuned.bias_)


def test_cache_round_trips_bit_for_bit_without_pickle(llama, wtok, tiny_model, tmp_path, monkeypatch):
    import json
    import pickle
    import struct

    monkeypatch.setenv("TRAJGEO_CACHE", str(tmp_path))
    assert L.TunedLens.cached(llama) is None  # nothing trained yet
    refuse = lambda *a, **k: (_ for _ in ()).throw(AssertionError("pickle was used"))  # noqa: E731
    for name in ("load", "loads", "dump", "dumps", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    texts = _random_texts(llama.tokenizer, 30, 10, seed=2)
    lens = L.train_tuned_lens(llama, texts, add_corpus=False, max_epochs=2, lr=3e-3, batch_size=16,
                              validation_interval=3, progress=False)
    path = tmp_path / "tuned_lens" / f"{llama.fingerprint()}.safetensors"
    assert L.TunedLens.cache_path(llama) == path and path.exists()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    back = L.TunedLens.cached(llama)
    _assert_same_lens(back, lens)
    assert np.isfinite(back.held_out_kl_) and back.validation_kl_.size > 1
    # plain safetensors: an 8-byte header length, then JSON naming the arrays and holding the description
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert {"weight_", "bias_"} <= set(header) and "trajgeo.TunedLens/2" in header["__metadata__"]
    # another model's weights find no lens
    other = load_model((tiny_model("llama", len(wtok), n_layers=4, seed=1), wtok))
    assert L.TunedLens.cached(other) is None


def test_the_training_command_caches_a_lens_the_model_finds(saved_model, tmp_path, monkeypatch, capsys):
    import json

    from trajgeo.lens.train import main

    monkeypatch.setenv("TRAJGEO_CACHE", str(tmp_path / "cache"))
    lm = load_model(str(saved_model))
    (tmp_path / "texts.txt").write_text("\n".join(_random_texts(lm.tokenizer, 20, 8, seed=6)) + "\n\n")
    assert main(["--model", str(saved_model), "--texts", str(tmp_path / "texts.txt"), "--no-corpus",
                 "--max-epochs", "1", "--validation-interval", "2", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    lens = L.TunedLens.cached(lm)
    assert summary["cache"] == str(L.TunedLens.cache_path(lm)) and lens is not None
    assert lens.n_texts_ == 20 and summary["held_out_kl_logit"] == round(lens.logit_held_out_kl_, 4)
    with pytest.raises(SystemExit, match="no such file"):
        main(["--model", str(saved_model), "--texts", str(tmp_path / "absent.txt")])


def test_an_interrupted_save_leaves_nothing_behind(tuned, tmp_path, monkeypatch):
    import os

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        tuned.save(tmp_path / "lens.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_unreadable_lens_files_are_refused_naming_the_file(tmp_path):
    from safetensors.numpy import save_file

    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="junk.safetensors is not a readable tuned lens"):
        L.TunedLens.load(tmp_path / "junk.safetensors")
    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="other.safetensors is a safetensors file but not a trajgeo tuned lens"):
        L.TunedLens.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="no tuned lens"):
        L.TunedLens.load(tmp_path / "absent.safetensors")


def test_tuned_lens_refuses_another_model(wtok, tuned, bank_examples, tiny_model):
    other = load_model((tiny_model("llama", len(wtok), n_layers=4, seed=1), wtok))
    traj = tg.extract(other, bank_examples, progress=False)
    with pytest.raises(ValueError, match="trained for"):
        tuned.lens(other, traj)
    with pytest.raises(ValueError, match="not fitted"):
        L.TunedLens().transform(traj)


# ============================================================== next-token scores
def _greedy_texts(lm, prompts: list[str], n_new: int) -> list[str]:
    """Each prompt followed by the model's own greedy continuation (special tokens excluded): texts
    whose next token the last point predicts, so top-1 accuracy is far from 0."""
    tok = lm.tokenizer
    out = []
    for prompt in prompts:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        for _ in range(n_new):
            with torch.no_grad():
                logits = lm.model(torch.tensor([ids])).logits[0, -1]
            logits[:5] = -np.inf  # [PAD], [UNK], [CLS], [SEP], [MASK]
            ids.append(int(logits.argmax()))
        out.append(" ".join(tok.convert_ids_to_tokens(ids)))
    return out


@pytest.fixture(scope="module")
def next_texts(sharp):
    prompts = _random_texts(sharp.tokenizer, 4, 3, seed=3)
    return _greedy_texts(sharp, prompts, 6) + _random_texts(sharp.tokenizer, 3, 7, seed=4) + ["river"]


def _brute_next_token(lm, texts, lens=None):
    """Per text sums of CE, top-1 hits and KL to the final distribution per point, with loops over
    positions and points through the HF head, from extract's trajectories (each word is one token)."""
    examples = _every_word(texts)
    traj = tg.extract(lm, examples, progress=False)
    states = lens.transform(traj).states if lens is not None else traj.states
    sums = np.zeros((len(texts), traj.n_points, 3))
    counts = np.zeros(len(texts))
    for t, text in enumerate(texts):
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        rows = np.flatnonzero(examples["text"].to_numpy() == text)
        for pos in range(len(ids) - 1):
            i = rows[pos]
            final = _hf_head(lm, traj.states[i, -1])
            final = final - np.log(np.exp(final - final.max()).sum()) - final.max()
            for j in range(traj.n_points):
                z = _hf_head(lm, states[i, j])
                lp = z - np.log(np.exp(z - z.max()).sum()) - z.max()
                sums[t, j] += [-lp[ids[pos + 1]], float(np.argmax(z) == ids[pos + 1]),
                               (np.exp(final) * (final - lp)).sum()]
            counts[t] += 1
    return sums, counts


def test_next_token_cross_entropy_at_the_last_point_is_the_models_own_loss(sharp, next_texts):
    res = L.next_token_scores(sharp, next_texts, batch_size=3, progress=False, n_boot=50)  # ragged batches
    enc = sharp.tokenizer(next_texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = float(sharp.model(**enc, labels=labels).loss)
    ce = res[(res["metric"] == "cross_entropy") & (res["point"] == sharp.n_layers)]["value"].item()
    assert ce == pytest.approx(loss, abs=1e-5)
    assert list(res.columns) == ["point", "lens", "metric", "value", "ci_low", "ci_high"]
    assert set(res["lens"]) == {"logit"} and set(res["metric"]) == set(L.NEXT_TOKEN_METRICS)
    assert len(res) == (sharp.n_layers + 1) * 3


def test_next_token_scores_match_a_brute_force_loop(sharp, next_texts):
    lens = L.TunedLens(max_epochs=1, lr=3e-3, batch_size=16, validation_fraction=0, add_corpus=False,
                       progress=False).fit(sharp, _random_texts(sharp.tokenizer, 30, 10, seed=5))
    res = L.next_token_scores(sharp, next_texts, lens=lens, batch_size=4, progress=False, n_boot=200,
                              random_state=3)
    for name, lns in (("logit", None), ("tuned", lens)):
        sums, counts = _brute_next_token(sharp, next_texts, lns)
        got = res[res["lens"] == name].pivot(index="point", columns="metric", values="value")
        want = sums.sum(0) / counts.sum()  # (points, 3): pooled over every position
        for m, metric in enumerate(L.NEXT_TOKEN_METRICS):
            np.testing.assert_allclose(got[metric].to_numpy(), want[:, m], rtol=1e-4, atol=1e-6, err_msg=name + metric)
        # the interval: the same bootstrap of texts (the one-token text is no unit), pooled by brute force
        used = counts > 0
        w = tg.stats.bootstrap_weights(np.arange(used.sum()), 200, 3)
        reps = np.einsum("bt,tpm->bpm", w, sums[used]) / (w @ counts[used])[:, None, None]
        low, high = tg.stats.percentile_interval(reps)
        ci = res[res["lens"] == name]
        for m, metric in enumerate(L.NEXT_TOKEN_METRICS):
            rows = ci[ci["metric"] == metric].sort_values("point")
            np.testing.assert_allclose(rows["ci_low"], low[:, m], rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(rows["ci_high"], high[:, m], rtol=1e-6, atol=1e-9)
    acc = res[(res["lens"] == "logit") & (res["metric"] == "top1_accuracy")].set_index("point")["value"]
    assert acc[sharp.n_layers] > 0.25  # the greedy continuations: the test is not all zeros
    kl = res[res["metric"] == "kl_to_final"].set_index(["lens", "point"])["value"]
    assert kl[("logit", sharp.n_layers)] == 0 and kl[("tuned", sharp.n_layers)] == 0


def test_next_token_scores_take_a_subset_and_refuse_bad_texts(sharp, next_texts):
    a = L.next_token_scores(sharp, next_texts, max_texts=3, random_state=1, progress=False, n_boot=20)
    keep = np.sort(np.random.default_rng(1).choice(len(next_texts), 3, replace=False))
    b = L.next_token_scores(sharp, [next_texts[i] for i in keep], random_state=1, progress=False, n_boot=20)
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match=r"texts \[1\] are empty"):
        L.next_token_scores(sharp, ["river bank", " "], progress=False)
    with pytest.raises(ValueError, match="no next token"):
        L.next_token_scores(sharp, ["river"], progress=False)


# ============================================================== the sense read-out's null
def _vocab_words(tok, n: int, seed: int) -> list[str]:
    words = sorted(w for w in tok.get_vocab() if not w.startswith("[") and w.isalpha())
    return list(np.random.default_rng(seed).choice(words, n, replace=False))


def _planted_readout(lm, *, n: int, from_point: int | None, seed: int, strength: float = 3.0):
    """Trajectories whose points from ``from_point`` on point (through the unembedding) to their own
    sense's words; noise before, and everywhere when ``from_point`` is None."""
    words = _vocab_words(lm.tokenizer, 12, seed=0)
    sense_words = {"a": words[:6], "b": words[6:]}
    vocab = lm.tokenizer.get_vocab()
    w_u = lm.model.lm_head.weight.detach().numpy()
    rng = np.random.default_rng(seed)
    senses = np.array(["a", "b"] * (n // 2))
    x = rng.normal(size=(n, lm.n_layers + 1, lm.d_model)).astype(np.float32)
    if from_point is not None:
        for i, s in enumerate(senses):
            v = w_u[[vocab[w] for w in sense_words[s]]].mean(0)
            x[i, from_point:] += strength * v / np.linalg.norm(v) * np.sqrt(lm.d_model)
    meta = pd.DataFrame({"example": np.arange(n), "word": "bank", "sense": senses})
    return tg.Trajectories(x, meta), sense_words


def test_sense_readout_value_is_the_mean_sense_log_odds(llama, bank_examples):
    traj = tg.extract(llama, bank_examples, progress=False)
    res = L.sense_readout(llama, traj, sense_tokens=SENSE_WORDS, n_permutations=50)
    per_example = L.logit_lens(llama, traj, sense_tokens=SENSE_WORDS)
    want = per_example[per_example["metric"] == "sense_log_odds"].groupby("point")["value"].mean()
    np.testing.assert_allclose(res.set_index("point")["value"], want, rtol=1e-5, atol=1e-5)
    assert list(res.columns) == ["word", "point", "metric", "value", *tg.stats.NULL_COLUMNS]
    assert (res["word"] == "bank").all() and (res["metric"] == "sense_log_odds").all()


def test_sense_readout_finds_a_planted_read_out_from_its_point_on(llama):
    traj, sense_words = _planted_readout(llama, n=40, from_point=3, seed=1)
    res = L.sense_readout(llama, traj, sense_tokens=sense_words, n_permutations=500).set_index("point")
    assert (res.loc[3:, "value"] > res.loc[3:, "null_fwer"]).all() and (res.loc[3:, "p_fwer"] <= 0.05).all()
    assert (res.loc[:2, "p_fwer"] > 0.05).all()  # noise before the planted point: not called
    words = L.sense_readout(llama, traj, sense_tokens=sense_words, n_permutations=500, shuffle="words")
    assert (words.set_index("point").loc[3:, "p_fwer"] <= 0.05).all()


def test_sense_readout_null_is_centred_and_silent_without_sense_information(llama):
    # noise only: the shuffled-set null is centred near 0 and the family-wise rate of false calls is
    # about its nominal 5% over repeated data sets
    calls, centres, spreads = [], [], []
    for seed in range(20):
        traj, sense_words = _planted_readout(llama, n=40, from_point=None, seed=100 + seed)
        res = L.sense_readout(llama, traj, sense_tokens=sense_words, n_permutations=200, random_state=seed)
        calls.append((res["p_fwer"] <= 0.05).any())
        centres.append(res["null_mean"].to_numpy())
        spreads.append((res["null_q95"] - res["null_mean"]).to_numpy() / 1.645)  # about one null sd
    assert np.mean(calls) <= 0.2  # nominal 0.05; P(>= 4 of 20) is 1.6% at the nominal rate
    assert np.abs(np.mean(centres)) < 0.1 * np.mean(spreads)
    assert np.all(np.abs(np.array(centres)) < 0.5 * np.array(spreads))


def test_sense_readout_runs_per_word_and_pools_over_words(llama):
    traj, sense_words = _planted_readout(llama, n=40, from_point=3, seed=1)
    traj.meta["word"] = np.where(np.arange(40) < 20, "bank", "crane")
    res = L.sense_readout(llama, traj, sense_tokens=sense_words, n_permutations=100)
    assert set(res["word"].dropna()) == {"bank", "crane"} and res["word"].isna().sum() == traj.n_points
    pooled = res[res["word"].isna()].set_index("point")["value"]
    per_word = res.dropna(subset=["word"]).groupby("point")["value"].mean()
    np.testing.assert_allclose(pooled, per_word)
    plain = L.sense_readout(llama, traj, sense_tokens=sense_words, n_permutations=0)
    assert list(plain.columns) == ["word", "point", "metric", "value"]
    np.testing.assert_allclose(plain["value"], res["value"])


def test_sense_readout_refuses_and_warns_clearly(llama, bank_examples):
    traj = tg.extract(llama, bank_examples, progress=False)
    with pytest.raises(ValueError, match="shuffle must be one of"):
        L.sense_readout(llama, traj, sense_tokens=SENSE_WORDS, shuffle="tokens")
    with pytest.raises(KeyError, match=r"examples \[3\].*vault"):
        L.sense_readout(llama, tg.extract(llama, bank_examples.assign(sense=SENSES[:3] + ["vault"]), progress=False),
                        sense_tokens=SENSE_WORDS)
    one = tg.extract(llama, bank_examples.assign(sense="river"), progress=False)
    with pytest.warns(UserWarning, match="'bank'.*examples of 1 of them"), \
            pytest.raises(ValueError, match="nothing to read out"):
        L.sense_readout(llama, one, sense_tokens=SENSE_WORDS)


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
    lens = L.TunedLens(max_epochs=1, lr=1e-3, batch_size=24, max_tokens=288, max_length=32, progress=False,
                       validation_fraction=0, add_corpus=False)
    lens.fit(smollm2, train)
    traj = tg.extract(smollm2, bank_sentences.iloc[:12], progress=False)
    kl_logit = _wide(L.logit_lens(smollm2, traj), "kl_to_final", len(traj))[:, :-1].mean()
    kl_tuned = _wide(lens.lens(smollm2, traj), "kl_to_final", len(traj))[:, :-1].mean()
    print(f"\nSmolLM2 held-out mean KL to final (points 0..L-1): logit lens {kl_logit:.3f}, tuned lens "
          f"{kl_tuned:.3f} (trained on {lens.n_train_positions_} positions in {lens.fit_seconds_:.1f} s)")
    assert kl_tuned < kl_logit


@pytest.mark.slow
def test_minilm_has_no_unembedding(minilm, bank_sentences):
    assert not L.has_lm_head(minilm)
    traj = tg.extract(minilm, bank_sentences.iloc[:2], progress=False)
    with pytest.raises(L.LensUnavailable, match="needs an unembedding.*MiniLM"):
        L.logit_lens(minilm, traj)


@pytest.mark.slow
def test_smollm2_next_token_cross_entropy_is_its_own_loss(smollm2, bank_sentences):
    # the real readout (RMSNorm, tied embedding) over whole texts: the last point is the model's own loss
    texts = list(bank_sentences["text"].unique()[:6])
    res = L.next_token_scores(smollm2, texts, batch_size=4, progress=False, n_boot=100)
    enc = smollm2.tokenizer(texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = float(smollm2.model(**enc, labels=labels).loss)
    ce = res[res["metric"] == "cross_entropy"].set_index("point")["value"]
    assert ce[smollm2.n_layers] == pytest.approx(loss, abs=1e-4)
    acc = res[res["metric"] == "top1_accuracy"].set_index("point")["value"]
    print(f"\nSmolLM2 next-token CE through the logit lens: point 0 {ce[0]:.2f}, point 15 {ce[15]:.2f}, last "
          f"{ce[smollm2.n_layers]:.2f} nats (model loss {loss:.2f}); top-1 accuracy {acc[0]:.2f} / {acc[15]:.2f} / "
          f"{acc[smollm2.n_layers]:.2f}")
    assert ce[smollm2.n_layers] < ce[0]
