"""The standard pipeline: every table and figure is written, the summary agrees with its sources, rebuilds are identical."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

import trajgeo as tg
from trajgeo import report


def planted(n_per_sense: int = 12, n_points: int = 7, d: int = 16, onset: int = 3, seed: int = 0) -> tg.Trajectories:
    """Two words x two senses; every path starts at its word's shared embedding and moves toward its
    sense's direction from point ``onset`` on. Components split each step in halves (attention, MLP)."""
    rng = np.random.default_rng(seed)
    rows, states = [], []
    for w, word in enumerate(["bank", "bass"]):
        start = rng.normal(size=d)
        dirs = rng.normal(size=(2, d)) * 3
        for s, sense in enumerate(["a", "b"]):
            for i in range(n_per_sense):
                path = np.repeat(start[None], n_points, 0) + rng.normal(scale=0.3, size=(n_points, d))
                path[0] = start
                ramp = np.clip(np.arange(n_points) - onset + 1, 0, None)[:, None]
                path += ramp * dirs[s]
                states.append(path)
                rows.append({"word": word, "sense": f"{word}-{sense}", "group": f"{word}{s}{i}"})
    x = np.asarray(states, dtype=np.float32)
    diffs = np.diff(x, axis=1)
    comps = {"attn": diffs / 2, "mlp": diffs / 2}
    return tg.Trajectories(x, pd.DataFrame(rows), components=comps, aux={"block_input": x[:, 0]},
                           model_info={"name": "planted", "n_layers": n_points - 1})


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    traj = planted()
    tables = report.analyze(traj, out=out, probe_folds=3, progress=False)
    return traj, tables, out


def test_every_table_is_written_and_reads_back_equal(analysed):
    traj, tables, out = analysed
    expected = {"path_metrics", "population", "cka", "rogue_dimensions", "curves", "commitment", "superposition",
                "reinforcement", "probes", "transfer", "coords", "attribution", "resolution", "summary", "timings"}
    assert expected <= set(tables)
    back = report.read_tables(out)
    assert set(back) == set(tables)
    pd.testing.assert_frame_equal(back["summary"], tables["summary"].reset_index(drop=True), check_dtype=False)
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_summary_agrees_with_the_tables_it_summarises(analysed):
    traj, tables, _ = analysed
    s = tables["summary"].set_index("word")
    assert list(s.index) == ["bank", "bass"]
    for word, m in traj.meta.groupby("word"):
        assert s.loc[word, "n_examples"] == len(m)
        assert s.loc[word, "majority_baseline"] == pytest.approx(m["sense"].value_counts().max() / len(m))
        pr = tables["probes"]
        acc = pr[(pr["word"] == word) & (pr["fold"] == -1) & (pr["metric"] == "accuracy")].set_index("point")["value"]
        assert s.loc[word, "peak_accuracy"] == pytest.approx(acc.max())
        assert s.loc[word, "peak_point"] == acc.idxmax()
        com = tables["commitment"]
        assert s.loc[word, "commitment_median"] == pytest.approx(com.loc[com["word"] == word, "commitment_point"].median())


def test_planted_onset_shows_in_the_summary(analysed):
    _, tables, _ = analysed
    s = tables["summary"].set_index("word")
    # the senses are indistinguishable before the onset (point 3) and far apart after it
    assert (s["accuracy_point0"] < 0.75).all()
    assert (s["peak_accuracy"] > 0.95).all()
    assert (s["resolution_point"] >= 2).all() and (s["resolution_point"] <= 4).all()


def test_probes_are_per_word(analysed):
    _, tables, _ = analysed
    pr = tables["probes"]
    assert set(pr["word"]) == {"bank", "bass"}
    # a word's probe never sees the other word's senses: its majority baseline is that of 2 balanced senses
    base = pr[pr["metric"] == "majority_baseline"]["value"]
    assert np.allclose(base, 0.5)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_figures_are_written_and_rebuild_byte_identically(analysed, tmp_path):
    _, _, out = analysed
    first = report.figures(out, tmp_path / "a")
    second = report.figures(out, tmp_path / "b")
    names = {p.stem for p in first}
    # lens figures need a model with an LM head; everything else is drawn
    assert names == set(report.FIGURES) - {"lens"}
    assert {p.suffix for p in first} == {".pdf", ".png"}
    assert [_digest(p) for p in first] == [_digest(p) for p in second]


def test_index_html_shows_every_figure(analysed, tmp_path):
    traj, tables, out = analysed
    paths = report.figures(out, tmp_path / "figures")
    index = report.write_index(tmp_path, tables, paths, traj, seconds={"total": 1.0})
    html = index.read_text()
    for p in paths:
        if p.suffix == ".png":
            assert f"figures/{p.name}" in html
    assert "<table" in html and "bass" in html


def test_unknown_focus_word_names_the_known_words():
    with pytest.raises(KeyError, match="unknown word 'heron'.*bank"):
        report.analyze(planted(n_per_sense=4), focus_word="heron", progress=False)


def test_stratified_sample_alias_warns_and_is_the_datasets_sample():
    df = pd.DataFrame({"word": ["w"] * 100, "sense": ["a"] * 90 + ["b"] * 10, "cue": ["x", "y"] * 50,
                       "example": range(100)})
    with pytest.warns(DeprecationWarning, match="trajgeo.datasets.stratified_sample"):
        sub = report.stratified_sample(df, 20, random_state=0)
    pd.testing.assert_frame_equal(sub, tg.datasets.stratified_sample(df, 20, random_state=0))
    # the old by= (keyword or third positional) is the new strata=
    want = tg.datasets.stratified_sample(df, 20, strata=("sense", "cue"), random_state=1)
    assert not want.equals(sub)
    for call, says in [(lambda: report.stratified_sample(df, 20, by=("sense", "cue"), random_state=1),
                        "the keyword 'by' is deprecated since trajgeo 0.2; use 'strata'"),
                       (lambda: report.stratified_sample(df, 20, ("sense", "cue"), 1),
                        "passing strata, random_state by position is deprecated")]:
        with pytest.warns(DeprecationWarning) as caught:
            pd.testing.assert_frame_equal(call(), want)
        messages = [str(w.message) for w in caught]
        assert any(says in m for m in messages) and any("trajgeo.datasets.stratified_sample" in m for m in messages)


def test_resolution_is_the_probe_sweeps_resolution_point(analysed):
    traj, tables, _ = analysed
    res, s = tables["resolution"].set_index("word"), tables["summary"].set_index("word")
    assert set(res.index) == {"bank", "bass"}
    for word in ["bank", "bass"]:
        sub = traj[(traj.meta["word"] == word).to_numpy()]
        sweep = tg.probes.layerwise(sub, cv=3, random_state=0, progress=False, return_result=True)
        # the same sweep as the word's probe rows (no second, different fit behind the resolution)
        pr = tables["probes"]
        mine = pr[pr["word"] == word].drop(columns="word").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, sweep.scores.drop(columns="word", errors="ignore")[mine.columns])
        # brute force: the first point whose pooled out-of-fold accuracy reaches 95% of its maximum
        acc = np.asarray(sweep.correct, dtype=float).mean(0)
        first = np.asarray(sweep.points)[np.flatnonzero(acc >= 0.95 * acc.max() - 1e-12)[0]]
        assert res.loc[word, "resolution_point"] == first == s.loc[word, "resolution_point"]
        assert res.loc[word, "ci_low"] <= first <= res.loc[word, "ci_high"]
        assert (s.loc[word, "resolution_ci_low"], s.loc[word, "resolution_ci_high"]) == (
            res.loc[word, "ci_low"], res.loc[word, "ci_high"])


def test_no_table_carries_attrs(analysed):
    # results are return values (architecture rule 5): nothing travels in DataFrame.attrs
    _, tables, _ = analysed
    assert {name: df.attrs for name, df in tables.items() if df.attrs} == {}


def test_summary_without_resolution_table_has_no_resolution_columns(analysed):
    traj, tables, _ = analysed
    full = tables["summary"]
    part = report.summarize({k: tables[k] for k in ("probes", "commitment", "superposition")}, traj.meta)
    assert not {"resolution_point", "resolution_ci_low", "resolution_ci_high"} & set(part.columns)
    pd.testing.assert_frame_equal(part, full[part.columns])


def test_summary_of_one_word_tables_without_word_column_is_that_words_row(analysed):
    traj, tables, _ = analysed
    meta = traj.meta[traj.meta["word"] == "bass"]
    one = {k: tables[k].loc[tables[k]["word"] == "bass"].drop(columns="word")
           for k in ("probes", "resolution", "commitment")}
    got = report.summarize(one, meta.drop(columns="word"))
    want = tables["summary"].set_index("word").loc[["bass"]].reset_index(drop=True).drop(columns="superposition_balance")
    pd.testing.assert_frame_equal(got.drop(columns="word"), want)


def test_analyze_keeps_the_old_positional_model_and_out(tmp_path):
    traj = planted(n_per_sense=6, n_points=4, onset=2, seed=1)
    with pytest.warns(DeprecationWarning, match=r"model, out by position.*model=, out="):
        tables = report.analyze(traj, None, tmp_path / "t", probe_folds=2, progress=False)
    assert "lens" not in tables  # model=None
    back = report.read_tables(tmp_path / "t")
    assert set(back) == set(tables)
    pd.testing.assert_frame_equal(back["summary"], tables["summary"], check_dtype=False)
