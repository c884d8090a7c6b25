"""analyses/cue_position.py on tiny random models: its tables, its cache, and the causal blind spot it measures."""

from __future__ import annotations


import numpy as np
import pandas as pd
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


def test_a_second_run_reuses_the_stores_without_extracting(result, cue, models, monkeypatch, capsys):
    out, tables = result

    def no_extract(*args, **kwargs):
        raise AssertionError("extract was called although the store holds these examples")

    monkeypatch.setattr(tg, "extract", no_extract)
    capsys.readouterr()
    again = cue.run(models, out, words=["bank"], n_boot=100, probe_boot=20)
    assert again["margin"].equals(tables["margin"])
    # the models were done with these examples and options: kept, and the log says so
    assert capsys.readouterr().out.count("done in an earlier run with these examples and options: kept") == 2
    # without their records they are recomputed from the stores, which hold these examples
    for name in models:
        (out / "models" / name / "status.json").unlink()
    again = cue.run(models, out, words=["bank"], n_boot=100, probe_boot=20)
    assert again["margin"].equals(tables["margin"])
    pd.testing.assert_frame_equal(again["summary"], tables["summary"])
    # other examples do not silently reuse a store built for different ones: extract is called (and
    # here fails, which is recorded against the model)
    other = cue.run({"tiny-llama": models["tiny-llama"]}, out, words=["bass"], n_boot=100, probe_boot=20)
    status = other["status"].set_index("model")
    assert status.loc["tiny-llama", "status"] == "failed"
    assert "extract was called" in status.loc["tiny-llama", "reason"]


def _few_bank(drop_river_after: bool = False) -> pd.DataFrame:
    """A dozen bank sentences: 3 per sense and cue position (or 1 river sentence with the cue after)."""
    df = tg.datasets.builtin(["bank"])
    parts = []
    for (sense, cond), g in df.groupby(["sense", "cue_position"]):
        parts.append(g.head(1 if drop_river_after and (sense, cond) == ("river", "after") else 3))
    return pd.concat(parts).sort_index().reset_index(drop=True).assign(example=lambda d: range(len(d)))


def test_a_failing_model_is_recorded_and_an_interrupted_run_keeps_the_models_done(cue, models, tmp_path,
                                                                                  monkeypatch, capsys):
    examples = _few_bank()
    real_margin = cue.margin_table

    def killed_on_bert(traj, **kwargs):
        if traj_model[0] is models["tiny-bert"]:
            raise KeyboardInterrupt
        return real_margin(traj, **kwargs)

    traj_model = [None]
    real_load = cue._load

    def remember(spec):
        lm = real_load(spec)
        traj_model[0] = lm
        return lm

    monkeypatch.setattr(cue, "_load", remember)
    monkeypatch.setattr(cue, "margin_table", killed_on_bert)
    run_models = {"tiny-llama": models["tiny-llama"], "tiny-bert": models["tiny-bert"],
                  "missing": str(tmp_path / "no-such-model")}
    with pytest.raises(KeyboardInterrupt):
        cue.run(run_models, tmp_path, examples=examples, n_boot=50, probe_boot=10)
    kept = pd.read_parquet(tmp_path / "margin.parquet")
    assert set(kept["model"]) == {"tiny-llama"}  # the model done before the kill is on disk
    computed = []

    def counting_margin(traj, **kwargs):
        computed.append(traj_model[0] is models["tiny-bert"])
        return real_margin(traj, **kwargs)

    monkeypatch.setattr(cue, "margin_table", counting_margin)
    tables = cue.run(run_models, tmp_path, examples=examples, n_boot=50, probe_boot=10)
    assert computed == [True]  # only tiny-bert was computed: tiny-llama kept, 'missing' fails to load
    status = tables["status"].set_index("model")
    assert status["status"].to_dict() == {"tiny-llama": "done", "tiny-bert": "done", "missing": "failed"}
    assert status.loc["missing", "reason"]  # the load error, named
    assert set(tables["margin"]["model"]) == {"tiny-llama", "tiny-bert"}
    assert set(pd.read_parquet(tmp_path / "summary.parquet")["model"]) == {"tiny-llama", "tiny-bert"}
    assert pd.read_parquet(tmp_path / "status.parquet").equals(tables["status"])


def test_a_condition_whose_sense_has_one_sentence_gets_no_probes_and_a_note(cue, models, tmp_path):
    examples = _few_bank(drop_river_after=True)
    tables = cue.run({"tiny-llama": models["tiny-llama"]}, tmp_path, examples=examples, n_boot=50, probe_boot=10)
    s = tables["summary"].set_index("cue_position")
    assert s.loc["after", "note"] == ("no probes: sense 'bank:river' has 1 sentence with the cue after the target "
                                      "(cross-validation needs 2); words without 2 senses of 2 sentences each with "
                                      "the cue after the target, not read against the null: bank")
    assert s.loc["after", "words_tested"] == 0 and s.loc["before", "words_tested"] == 1
    assert np.isnan(s.loc["after", "accuracy_last"]) and set(tables["probes"]["cue_position"]) == {"before"}
    # before: 3 sentences per sense, fewer than the 5 folds: the probe ran with 3, and says so
    assert s.loc["before", "note"] == "probe folds 5 -> 3: sense 'bank:finance' has 3 sentences"
    before = tables["probes"]
    assert set(before.loc[before["fold"] >= 0, "fold"]) == {0, 1, 2}


def test_main_parses_its_arguments(cue, tmp_path, monkeypatch):
    seen = {}

    def fake_run(models, out, words=None, max_examples=None, **kw):
        seen.update(models=models, out=out, words=words, max_examples=max_examples)
        raise SystemExit(0)

    monkeypatch.setattr(cue, "run", fake_run)
    with pytest.raises(SystemExit):
        cue.main(["--models", "smollm2,minilm", "--out", str(tmp_path), "--words", "bank,bass", "--max-examples", "40"])
    assert seen == {"models": ["smollm2", "minilm"], "out": tmp_path, "words": ["bank", "bass"], "max_examples": 40}


def test_significance_reads_each_word_against_its_own_null_and_the_summary_counts_it(result):
    out, tables = result
    sg = tables["significance"]
    assert set(zip(sg.model, sg.cue_position)) == {(m, c) for m in ("tiny-llama", "tiny-bert")
                                                   for c in ("before", "after")}
    assert (out / "significance.parquet").exists()
    # one word (bank) per condition: its row is word_significance of a sweep run here with the same options
    traj = tg.load(out / "tiny-llama.zarr")
    sub = traj[traj.meta["cue_position"].to_numpy() == "before"]
    row = sg[(sg.model == "tiny-llama") & (sg.cue_position == "before")].iloc[0]
    scores = tg.probes.layerwise(sub, labels="sense", word="word", cv=int(row.folds), n_boot=0,
                                 n_permutations=1000, random_state=0, progress=False)
    want = tg.probes.word_significance(scores, metric="balanced_accuracy").iloc[0]
    assert row.peak_point == want.peak_point and np.isclose(row.peak_value, want.peak_value)
    assert np.isclose(row.null_fwer, want.null_fwer) and np.isclose(row.p_fwer, want.p_fwer)
    assert np.isclose(row.peak_minus_null, row.peak_value - row.null_fwer)
    assert row.resolved == (row.peak_value > row.null_fwer)
    assert row.p_holm == row.p_fwer  # Holm over a single word leaves its p-value
    s = tables["summary"].set_index(["model", "cue_position"])
    for (model, cond), g in sg.groupby(["model", "cue_position"]):
        assert s.loc[(model, cond), "words_tested"] == len(g)
        assert s.loc[(model, cond), "words_resolved"] == int(g.resolved.sum())
    assert "selectivity_last" not in s.columns
