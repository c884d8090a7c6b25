"""A hand-wired causal model with a planted wrong-sense feature: the smallest model on which
"incoherent components attenuate" can be true or false by construction.

Each target word's embedding carries the features of both its senses (superposed). A cue token before
it fixes the sense. In every block, attention is uniform over the prefix (queries and keys are zero)
and the value map writes, from the cue, either *minus the wrong sense's feature* (``suppress=True``:
the network removes the wrong-sense feature layer by layer) or a copy of the cue's identity into
dimensions no sense feature uses (``suppress=False``: the sense becomes decodable, but the wrong-sense
feature simply persists). Filler tokens write small fixed context vectors, so examples of one sense
differ. MLPs write nothing. :func:`trajgeo.extract` and every analysis run on it unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from trajgeo.toy.language import word_tokenizer

__all__ = ["suppression_model", "SUPPRESSION_WORDS"]

# word -> (sense, cue) pairs; each word's two senses have one feature dimension each
SUPPRESSION_WORDS = {"bank": (("river", "shore"), ("money", "loan")),
                     "crane": (("bird", "marsh"), ("machine", "steel"))}
_N_FILLERS = 8


def _layout() -> tuple[list[str], dict[str, int], int]:
    """Vocabulary, the dimension of each named direction, and d_model."""
    tokens = ["[PAD]", "[UNK]", *SUPPRESSION_WORDS]
    dims: dict[str, int] = {}
    for word, senses in SUPPRESSION_WORDS.items():
        dims[word] = len(dims)
        for sense, cue in senses:
            dims[f"{word}/{sense}"] = len(dims)  # the sense's feature
            dims[cue] = len(dims)  # the cue's identity
            dims[f"copy/{cue}"] = len(dims)  # where the do-nothing model copies the cue
            tokens.append(cue)
    fillers = [f"f{i}" for i in range(_N_FILLERS)]
    tokens += fillers
    for f in fillers:
        dims[f] = len(dims)
    n_context = 6  # the fillers' context vectors live here
    for i in range(n_context):
        dims[f"context/{i}"] = len(dims)
    return tokens, dims, len(dims)


def suppression_model(
    *,
    suppress: bool = True,
    n_layers: int = 4,
    n_examples: int = 160,
    random_state: int = 0,
) -> tuple[Any, pd.DataFrame]:
    """A tiny Llama with hand-set weights, and examples of its two ambiguous words.

    Parameters
    ----------
    suppress : bool
        ``True``: every block writes, from the cue, minus the wrong sense's feature (it is about
        gone at the last point). ``False``: every block copies the cue's identity instead; the
        wrong-sense feature stays as it was at the embedding.
    n_layers : int
        Blocks.
    n_examples : int
        Examples, half per word, balanced over senses.
    random_state : int
        Seeds the filler contexts and the texts.

    Returns
    -------
    model : tuple
        ``(model, tokenizer)``, which :func:`trajgeo.load_model` and :func:`trajgeo.extract` accept.
    examples : DataFrame
        ``text, char_start, char_end, target, word, sense, group`` (the cue always precedes the
        target, which ends the text; ``group`` is the text).
    """
    import torch
    import transformers as tf

    tokens, dims, d = _layout()
    tokenizer = word_tokenizer(tokens)
    cfg = tf.LlamaConfig(vocab_size=len(tokens), hidden_size=d, intermediate_size=4, num_hidden_layers=n_layers,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=d, max_position_embeddings=64,
                         rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(random_state)
    model = tf.LlamaForCausalLM(cfg).eval()
    rng = np.random.default_rng(random_state)
    emb = np.zeros((len(tokens), d))
    value = np.zeros((d, d))  # value[out, in]: what the value map writes (after the output map, the identity)
    vocab = {t: i for i, t in enumerate(tokens)}
    # RMSNorm scales a one-hot token to sqrt(d); over a prefix of 3 to 6 tokens (4.5 on average) each layer removes
    # about 1 / n_layers of a unit feature
    step = 4.5 / (n_layers * np.sqrt(d))
    for word, senses in SUPPRESSION_WORDS.items():
        emb[vocab[word], dims[word]] = 1.0
        for sense, _ in senses:
            emb[vocab[word], dims[f"{word}/{sense}"]] = 1.0  # both senses' features: superposed
        for (sense, cue), (other, _) in zip(senses, senses[::-1]):
            emb[vocab[cue], dims[cue]] = 1.0
            if suppress:
                value[dims[f"{word}/{other}"], dims[cue]] = -step
            else:
                value[dims[f"copy/{cue}"], dims[cue]] = step
    context = [dims[f"context/{i}"] for i in range(6)]
    for i in range(_N_FILLERS):
        f = f"f{i}"
        emb[vocab[f], dims[f]] = 1.0
        value[context, dims[f]] = 0.5 * step * rng.normal(size=len(context))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight.copy_(torch.tensor(emb, dtype=torch.float32))
        model.lm_head.weight.copy_(torch.tensor(emb, dtype=torch.float32))
        model.model.norm.weight.fill_(1.0)
        eye = torch.eye(d)
        for block in model.model.layers:
            block.input_layernorm.weight.fill_(1.0)
            block.post_attention_layernorm.weight.fill_(1.0)
            block.self_attn.v_proj.weight.copy_(torch.tensor(value, dtype=torch.float32))
            block.self_attn.o_proj.weight.copy_(eye)
            # q, k and the MLP stay zero: uniform attention over the prefix, no MLP write
    return (model, tokenizer), _examples(n_examples, rng)


def _examples(n: int, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for i in range(n):
        word = list(SUPPRESSION_WORDS)[i % 2]
        sense, cue = SUPPRESSION_WORDS[word][(i // 2) % 2]
        before = [f"f{k}" for k in rng.integers(0, _N_FILLERS, size=rng.integers(1, 4))]
        after = [f"f{k}" for k in rng.integers(0, _N_FILLERS, size=rng.integers(0, 2))]
        text = " ".join([*before, cue, *after, word])
        rows.append({"text": text, "char_start": len(text) - len(word), "char_end": len(text), "target": word,
                     "word": word, "sense": sense, "group": text})
    return pd.DataFrame(rows)
