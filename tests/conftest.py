"""Shared fixtures: tiny random models of every supported family, tokenizers of the three styles
(byte-level BPE, SentencePiece-style unigram, WordPiece), the shipped real models and CoarseWSD-20.

Tests take everything here as fixtures; conftest is not a library to import from. Helpers that take
arguments are factory fixtures (the fixture is the function: ``tiny_model("llama", len(wtok))``), and the
model families are parametrised fixtures (``family``, ``decoder_family``)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COARSEWSD = SHARED / "data" / "coarsewsd20"

_CORPUS = [
    "i sat by the river bank and watched the water flow past the muddy shore",
    "she went to the bank to deposit her salary into a savings account",
    "the bank raised its interest rates on every loan this spring",
    "fishermen lined the grassy bank of the slow brown river at dawn",
    "a crane lifted steel beams while a crane waded in the marsh",
    "he struck a match to light the candle before the tennis match",
    "the pitcher threw a fast ball and the pitcher of lemonade was empty",
    "banks and riverbanks, money and water: unbelievable tokenization",
]

_DECODER_FAMILIES = ["gpt2", "llama", "mistral", "qwen2", "gemma2", "gemma3", "gpt_neox"]
_ENCODER_FAMILIES = ["bert", "roberta"]
_ALL_FAMILIES = _DECODER_FAMILIES + _ENCODER_FAMILIES


# ============================================================== helpers (reached through the fixtures below)
def _word_tokenizer():
    """A fast word-level tokenizer over the corpus's words (each word one token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for line in _CORPUS for w in line.replace(",", " ").replace(":", " ").split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]")


def _trained_tokenizer(style: str):
    """Tokenizers trained on the corpus, small enough that many words split into several tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "bpe":  # GPT-2 style byte-level BPE
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        kw = dict(pad_token="<pad>")
    elif style == "sentencepiece":  # Metaspace + unigram, as SentencePiece models
        tk = Tokenizer(models.Unigram())
        tk.pre_tokenizer = pre_tokenizers.Metaspace()
        tk.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "<unk>"], unk_token="<unk>")
        kw = dict(pad_token="<pad>", unk_token="<unk>")
    elif style == "wordpiece":  # BERT style, lower-cased
        tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tk.normalizer = normalizers.BertNormalizer(lowercase=True)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tk.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=150, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
        kw = dict(pad_token="[PAD]", unk_token="[UNK]")
    else:
        raise ValueError(style)
    tk.train_from_iterator(_CORPUS * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, **kw)


def _tiny_model(family: str, vocab_size: int, n_layers: int = 3, seed: int = 0):
    """A randomly initialised model of the given family (d_model 32, 4 heads)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(num_hidden_layers=n_layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                  vocab_size=vocab_size, max_position_embeddings=128)
    cfg = {
        "gpt2": lambda: tf.GPT2Config(n_layer=n_layers, n_embd=32, n_head=4, vocab_size=vocab_size, n_positions=128),
        "llama": lambda: tf.LlamaConfig(num_key_value_heads=2, **common),
        "mistral": lambda: tf.MistralConfig(num_key_value_heads=2, **common),
        "qwen2": lambda: tf.Qwen2Config(num_key_value_heads=2, **common),
        "gemma2": lambda: tf.Gemma2Config(num_key_value_heads=2, head_dim=8, **common),
        "gemma3": lambda: tf.Gemma3TextConfig(num_key_value_heads=2, head_dim=8, **common),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**common),
        "bert": lambda: tf.BertConfig(**common),
        "roberta": lambda: tf.RobertaConfig(pad_token_id=0, **{**common, "max_position_embeddings": 130}),
    }[family]()
    for attr in ("bos_token_id", "eos_token_id"):
        if getattr(cfg, attr, None) is not None and getattr(cfg, attr) >= vocab_size:
            setattr(cfg, attr, 0)
    if family in _ENCODER_FAMILIES:
        model = tf.AutoModelForMaskedLM.from_config(cfg)
    else:
        model = tf.AutoModelForCausalLM.from_config(cfg)
    # random init leaves biases at zero; perturb every parameter so bias terms are exercised too
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def _load_analysis(name: str):
    """Import a script of ``analyses/`` as a module (they are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "analyses" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"analysis_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _span_frame(texts: list[str], target: str, occurrence: int = 0) -> pd.DataFrame:
    """Examples with the char span of the occurrence-th whole-word match of target."""
    import re

    starts = []
    for t in texts:
        hits = [m.start() for m in re.finditer(rf"\b{re.escape(target)}\b", t)]
        starts.append(hits[occurrence])
    df = pd.DataFrame({"text": texts, "char_start": starts})
    df["char_end"] = df["char_start"] + len(target)
    df["target"] = target
    df["word"] = target
    return df


def _balanced_bank(coarsewsd_dir: Path, per_sense: int, split: str = "train", seed: int = 0) -> pd.DataFrame:
    """A class-balanced sample of CoarseWSD-20 `bank` examples, read straight from the raw files."""
    root = coarsewsd_dir / "bank"
    data = (root / f"{split}.data.txt").read_text().splitlines()
    gold = (root / f"{split}.gold.txt").read_text().split()
    rows = []
    for line, g in zip(data, gold):
        idx, sent = line.split("\t", 1)
        toks = sent.split(" ")
        start = len(" ".join(toks[: int(idx)])) + (1 if int(idx) > 0 else 0)
        rows.append({"text": sent, "char_start": start, "char_end": start + len(toks[int(idx)]),
                     "sense": "finance" if g == "0" else "river", "word": "bank"})
    df = pd.DataFrame(rows)
    rng = np.random.default_rng(seed)
    parts = [g.iloc[rng.permutation(len(g))[:per_sense]] for _, g in df.groupby("sense")]
    return pd.concat(parts, ignore_index=True)


def _brute_loo_centroid_accuracy(states: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Brute force: per point, classify each example by the nearest (cosine) centroid built without it."""
    acc = []
    for p in range(states.shape[1]):
        x = states[:, p] - states[:, p].mean(0)
        right = 0
        for i in range(len(x)):
            keep = np.arange(len(x)) != i
            cos = {}
            for s in np.unique(labels):
                c = x[keep & (labels == s)].mean(0)
                cos[s] = x[i] @ c / (np.linalg.norm(x[i]) * np.linalg.norm(c) + 1e-12)
            best = max(cos.values())
            winners = [s for s, v in cos.items() if np.isclose(v, best, atol=1e-6)]
            right += (winners == [labels[i]])  # a tie is no answer: chance, not credit
        acc.append(right / len(x))
    return np.array(acc)


def _bank_examples(n: int, n_words: int, *, seed: int = 0, river_prefixes: int | None = None,
                   cue: bool = False) -> pd.DataFrame:
    """``n`` random word sequences of ``n_words`` corpus words with "bank" at word 6 and the senses alternating
    (finance, river, ...); every word is one token of ``wtok``. With ``river_prefixes``, the "river" texts share
    one of that many prefixes up to the target (what follows differs), so a causal model sees only that many
    distinct inputs there: that many groups. With ``cue``, word 4 is marked as the cue (columns ``cue``,
    ``cue_position``)."""
    rng = np.random.default_rng(seed)
    words = sorted({w for line in _CORPUS for w in line.replace(",", " ").replace(":", " ").split()} - {"bank"})
    heads = [list(rng.choice(words, 6)) for _ in range(river_prefixes)] if river_prefixes else []
    rows = []
    for i in range(n):
        toks = list(rng.choice(words, n_words))
        river = i % 2 == 1
        if river and river_prefixes:
            toks[:6] = heads[(i // 2) % river_prefixes]
        toks[6] = "bank"
        start = len(" ".join(toks[:6])) + 1
        row = {"text": " ".join(toks), "char_start": start, "char_end": start + 4, "target": "bank",
               "word": "bank", "sense": "river" if river else "finance"}
        if cue:
            row.update(cue=toks[4], cue_position="before")
        rows.append(row)
    return pd.DataFrame(rows)


# ============================================================== fixtures
# Factories are fixtures under the helper's name whose value is the helper itself; the module keeps the
# helpers private so that no test module can import them.
@pytest.fixture(scope="session")
def corpus() -> list[str]:
    """The eight sentences the tiny tokenizers are built from: bank, crane, match and pitcher in two senses,
    and a line of words that split into several tokens."""
    return list(_CORPUS)  # a copy: the tokenizers are built from the original


# The family fixtures are module-scoped so that module-scoped fixtures can build one model per family (and
# each module runs its tests family by family); session scope would interleave the test modules.
@pytest.fixture(scope="module", params=_ALL_FAMILIES)
def family(request) -> str:
    """Every supported architecture family, decoders and encoders."""
    return request.param


@pytest.fixture(scope="module", params=_DECODER_FAMILIES)
def decoder_family(request) -> str:
    """Every supported causal (decoder-only) architecture family."""
    return request.param


@pytest.fixture(scope="session", name="tiny_model")
def _tiny_model_factory():
    """Factory: ``tiny_model(family, vocab_size, n_layers=3, seed=0)``, a new random model on each call."""
    return _tiny_model


@pytest.fixture(scope="session", name="trained_tokenizer")
def _trained_tokenizer_factory():
    """Factory: ``trained_tokenizer(style)`` for style "bpe", "sentencepiece" or "wordpiece", one per style."""
    return functools.cache(_trained_tokenizer)


@pytest.fixture(scope="session", name="span_frame")
def _span_frame_factory():
    """Factory: ``span_frame(texts, target, occurrence=0)``, examples spanning a whole-word target."""
    return _span_frame


@pytest.fixture(scope="session", name="load_analysis")
def _load_analysis_factory():
    """Factory: ``load_analysis(name)``, the script ``analyses/<name>.py`` imported as a module."""
    return _load_analysis


@pytest.fixture(scope="session", name="brute_loo_centroid_accuracy")
def _brute_loo_centroid_accuracy_factory():
    """``brute_loo_centroid_accuracy(states, labels)``: the leave-one-out nearest-centroid accuracy per point,
    by brute force (the reference the fast versions are tested against)."""
    return _brute_loo_centroid_accuracy


@pytest.fixture(scope="session", name="balanced_bank")
def _balanced_bank_factory(coarsewsd_dir):
    """Factory: ``balanced_bank(per_sense, split="train", seed=0)`` over CoarseWSD-20 (skips without it)."""
    return functools.partial(_balanced_bank, coarsewsd_dir)


@pytest.fixture(scope="session", name="bank_examples")
def _bank_examples_factory():
    """Factory: ``bank_examples(n, n_words, *, seed=0, river_prefixes=None, cue=False)``, "bank" examples of
    random corpus words for the tiny models (each word one token of ``wtok``)."""
    return _bank_examples


@pytest.fixture(scope="session", name="tiny_lm")
def _tiny_lm_factory(wtok):
    """Factory: ``tiny_lm(family)``, ``tiny_model(family, len(wtok))`` with ``wtok`` through ``tg.load_model``."""
    import trajgeo as tg

    return lambda family: tg.load_model((_tiny_model(family, len(wtok)), wtok))


@pytest.fixture(scope="module", params=["llama", "gpt2", "bert"])
def mixed_lm(request, tiny_lm):
    """A tiny random model of each kind the interventions treat apart: rotary decoder, GPT-2, encoder."""
    return tiny_lm(request.param)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and far faster than two on a busy machine); modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def wtok():
    """A word-level tokenizer over the corpus (each word one token)."""
    return _word_tokenizer()


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory, wtok):
    """A tiny random Llama and its tokenizer saved as a local model directory."""
    path = tmp_path_factory.mktemp("model")
    _tiny_model("llama", len(wtok)).save_pretrained(path)
    wtok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def coarsewsd_dir() -> Path:
    if not COARSEWSD.exists():
        pytest.skip(f"CoarseWSD-20 sample not found at {COARSEWSD} (CI places ../shared beside the repo)")
    return COARSEWSD


def _shipped(name: str):
    from trajgeo.models import SHIPPED_MODELS, load_model

    package = SHIPPED_MODELS[name]["package"]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"shipped model package {package} is not installed (make install installs it)")
    return load_model(name)


@pytest.fixture(scope="session")
def smollm2():
    return _shipped("smollm2")


@pytest.fixture(scope="session")
def minilm():
    return _shipped("minilm")
