"""analyses/cue_position.py on tiny random models: its tables, its cache, and the causal blind spot it measures."""

from __future__ import annotations


import numpy as np
import pytest

import trajgeo as tg
from trajgeo.models import load_model


@pytest.fixture(scope="module")
def cue(load_analysis):
    return load_analysis("cue_position")


@pytest.fixture(scope="module")
def models(trained_tokenizer, tiny_model):
    tok = trained_tokenizer("bpe")  # byte-level: any built-in sentence tokenizes
    return {"tiny-llama": load_model((tiny_model("llama", len(tok), seed=1), tok)),
            "tiny-bert": load_model((tiny_model("bert", len(tok), seed=2), tok))}


@pytest.fixture(scope="module")
def result(cue, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("cue")
    return out, cue.run(models, out, words=["bank"], n_boot=100, probe_boot=20)


def test_tables_have_the_contract_columns_and_one_summary_row_per_model_and_condition(result):
    out, tables = result
    assert list(tables["margin"].columns) == ["model", "causal", "example", "point", "word", "sense",
                                              "cue_position", "cue_distance", "value"]
    assert {"model", "causal", "cue_position", "point", "fold", "metric", "value"} <= set(tables["probes"].columns)
    assert list(tables["margin_by_point"].columns) == ["model", "causal", "cue_position", "point", "mean",
                                                       "ci_low", "ci_high", "n"]
    s = tables["summary"]
    assert sorted(zip(s.model, s.cue_position)) == [("tiny-bert", "after"), ("tiny-bert", "before"),
                                                    ("tiny-llama", "after"), ("tiny-llama", "before")]
    assert dict(zip(s.model, s.causal)) == {"tiny-llama": True, "tiny-bert": False}
    n_bank = len(tg.datasets.builtin(["bank"]))
    assert s.n_examples.sum() == 2 * n_bank
    for key in ("margin", "margin_by_point", "probes", "summary"):
        assert (out / f"{key}.parquet").exists()
    # the summary's numbers are those of the long tables (independent recomputation)
    m = tables["margin"]
    top = m[(m.model == "tiny-llama") & (m.cue_position == "after") & (m.point == m.point.max())]["value"].mean()
    row = s[(s.model == "tiny-llama") & (s.cue_position == "after")].iloc[0]
    assert np.isclose(row.margin_last, top)
    mbp = tables["margin_by_point"]
    assert ((mbp.ci_low <= mbp["mean"] + 1e-12) & (mbp["mean"] <= mbp.ci_high + 1e-12)).all()
    # per cell: the mean and the example count of the long margin table
    cells = m.groupby(["model", "causal", "cue_position", "point"])["value"]
    check = mbp.set_index(["model", "causal", "cue_position", "point"])
    np.testing.assert_allclose(check["mean"], cells.mean().loc[check.index])
    assert (check["n"] == cells.size().loc[check.index]).all()


def test_causal_cue_after_states_equal_those_of_the_text_cut_after_the_target(result, models):
    """What the analysis measures: a causal model's state at the target never sees a later cue."""
    out, _ = result
    for name, lm in models.items():
        traj = tg.load(out / f"{name}.zarr")
        after = traj.meta["cue_position"].to_numpy() == "after"
        ex = traj.meta[after].reset_index(drop=True)
        cut = ex.assign(text=[t[:e] for t, e in zip(ex.text, ex.char_end)])
        # no causal truncation in the reference run: causality must come from the model's mask
        ref = tg.extract(lm, cut, truncate=False, progress=False).states
        stored = traj.states[after]
        if lm.adapter.causal:
            assert np.allclose(stored, ref, atol=1e-5)
        else:  # the encoder attends to the cue after the target: cutting it off changes the states
            assert np.abs(stored[:, 1:] - ref[:, 1:]).max() > 1e-3


def test_a_second_run_reuses_the_stores_without_extracting(result, cue, models, monkeypatch):
    out, tables = result

    def no_extract(*args, **kwargs):
        raise AssertionError("extract was called although the store holds these examples")

    monkeypatch.setattr(tg, "extract", no_extract)
    again = cue.run(models, out, words=["bank"], n_boot=100, probe_boot=20)
    assert again["margin"].equals(tables["margin"])
    # other examples do not silently reuse a store built for different ones
    with pytest.raises(AssertionError, match="extract was called"):
        cue.run({"tiny-llama": models["tiny-llama"]}, out, words=["bass"], n_boot=100, probe_boot=20)


def test_main_parses_its_arguments(cue, tmp_path, monkeypatch):
    seen = {}

    def fake_run(models, out, words=None, max_examples=None, **kw):
        seen.update(models=models, out=out, words=words, max_examples=max_examples)
        raise SystemExit(0)

    monkeypatch.setattr(cue, "run", fake_run)
    with pytest.raises(SystemExit):
        cue.main(["--models", "smollm2,minilm", "--out", str(tmp_path), "--words", "bank,bass", "--max-examples", "40"])
    assert seen == {"models": ["smollm2", "minilm"], "out": tmp_path, "words": ["bank", "bass"], "max_examples": 40}
