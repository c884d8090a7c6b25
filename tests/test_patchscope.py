"""The patchscope read-out on tiny random causal models: at the last point with the placeholder ending the prompt
it is the example's own next-token log-odds (a plain forward's logits); at a middle point it equals the same patch
written as a plain hook; encoders and bad prompts are refused. The planted read-out and its silence on shuffled
senses are in test_interventions_toy.py."""

from __future__ import annotations

import functools

import pytest
import torch

import trajgeo as tg
from trajgeo import interventions as iv

_SENSE_WORDS = {"bank": {"river": ["water", "shore", "muddy"], "finance": ["salary", "loan", "account"]}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def examples(bank_examples):
    """This module's "bank" examples: 12 texts of 8 words (conftest's ``bank_examples``)."""
    return functools.partial(bank_examples, n=12, n_words=8)


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma2"])
def lm(request, tiny_lm):
    return tiny_lm(request.param)


def _log_odds(logits, lm, sense):
    ids = tg.lens.sense_token_ids(lm.tokenizer, _SENSE_WORDS["bank"])
    other = "finance" if sense == "river" else "river"
    return float(torch.logsumexp(logits[ids[sense]], 0) - torch.logsumexp(logits[ids[other]], 0))


def test_at_the_last_point_a_final_placeholder_reads_the_examples_own_next_token(lm, examples):
    df = examples()
    f = iv.patchscope(lm, df, prompt="the river X", sense_words=_SENSE_WORDS, points=[lm.n_layers], progress=False)
    traj = tg.extract(lm, df, progress=False)
    for r, got in zip(traj.meta.itertuples(), f["value"]):
        ids = torch.as_tensor([lm.tokenizer(r.text)["input_ids"][:r.token_end]])
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0, -1].float()
        assert got == pytest.approx(_log_odds(logits, lm, r.sense), abs=1e-4)


def test_a_middle_point_equals_the_same_patch_as_a_plain_hook(lm, examples):
    df = examples(n=4)
    prompt = "i sat by the X and watched the"
    f = iv.patchscope(lm, df, prompt=prompt, sense_words=_SENSE_WORDS, points=[0, 2], progress=False)
    traj = tg.extract(lm, df, progress=False)
    p_ids = lm.tokenizer(prompt)["input_ids"]
    ph = prompt.split().index("X") + (len(p_ids) - len(prompt.split()))  # a BOS token shifts the words
    for r in traj.meta.itertuples():
        for p in (0, 2):
            vec = torch.as_tensor(traj.states[r.Index, p])

            def put(module, args, out, vec=vec):
                h = (out[0] if isinstance(out, tuple) else out).clone()
                h[0, ph] = vec
                return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

            module = lm.adapter.embed if p == 0 else lm.adapter.blocks[p - 1]
            handle = module.register_forward_hook(put)
            try:
                with torch.no_grad():
                    logits = lm.model(input_ids=torch.as_tensor([p_ids])).logits[0, -1].float()
            finally:
                handle.remove()
            got = f.query("example == @r.example and point == @p")["value"].iloc[0]
            assert got == pytest.approx(_log_odds(logits, lm, r.sense), abs=1e-4)


def test_the_frame_and_its_null_columns(lm, examples):
    df = examples()
    f = iv.patchscope(lm, df, prompt="the X", sense_words=_SENSE_WORDS, n_permutations=20, progress=False)
    assert list(f.columns[:6]) == ["example", "point", "word", "sense", "metric", "value"]
    assert sorted(set(f["point"])) == list(range(lm.n_layers + 1))  # the placeholder ends the prompt: L too
    for col in ("null_mean", "null_q95", "null_fwer", "p_value", "p_fwer"):
        assert f[col].notna().all()
    # with two senses a permuted label reads the same logits from the other side: the null is centred near 0
    assert (f.groupby("point")["null_mean"].first().abs() <= f.groupby("point")["value"].apply(
        lambda v: v.abs().max())).all()


def test_encoders_and_bad_prompts_are_refused(lm, examples, tiny_model, wtok):
    df = examples(n=4)
    bert = tg.load_model((tiny_model("bert", len(wtok)), wtok))
    with pytest.raises(ValueError, match="encoder"):
        iv.patchscope(bert, df, prompt="the X", sense_words=_SENSE_WORDS, progress=False)
    with pytest.raises(ValueError, match="once as a whole word"):
        iv.patchscope(lm, df, prompt="the river bank", sense_words=_SENSE_WORDS, progress=False)
    with pytest.raises(ValueError, match="once as a whole word"):
        iv.patchscope(lm, df, prompt="X the X", sense_words=_SENSE_WORDS, progress=False)
    with pytest.raises(ValueError, match="no entry for word"):
        iv.patchscope(lm, df, prompt="the X", sense_words={"crane": {"a": ["water"]}}, progress=False)
