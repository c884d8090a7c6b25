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
    # the lens, next-token and patching figures need a model with an LM head; everything else is drawn
    assert names == set(report.FIGURES) - {"lens", "next_token", "patching"}
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


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per point (column of ``pred``), the mean recall over the classes of ``y``, by brute force."""
    return np.array([np.mean([(pred[y == k, j] == k).mean() for k in np.unique(y)]) for j in range(pred.shape[1])])


def test_resolution_is_the_probe_sweeps_resolution_point(analysed):
    traj, tables, _ = analysed
    res, s = tables["resolution"].set_index("word"), tables["summary"].set_index("word")
    assert set(res.index) == {"bank", "bass"}
    for word in ["bank", "bass"]:
        sub = traj[(traj.meta["word"] == word).to_numpy()]
        sweep = tg.probes.layerwise(sub, cv=3, random_state=0, progress=False, return_result=True, n_boot=200)
        # the same sweep as the word's probe rows (no second, different fit behind the resolution)
        pr = tables["probes"]
        mine = pr[pr["word"] == word].drop(columns="word").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, sweep.scores.drop(columns="word", errors="ignore")[mine.columns])
        # brute force: the first point whose pooled out-of-fold balanced accuracy (chance-corrected: the
        # resolution of an unbalanced word is not read off its majority sense) reaches 95% of its maximum
        acc = _balanced_accuracy(np.asarray(sweep.y), np.asarray(sweep.pred))
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
    want = tables["summary"].set_index("word").loc[["bass"]].reset_index(drop=True)
    # every column the word-less tables give is the word's row of the full summary, value for value
    assert {"peak_accuracy", "resolution_point", "commitment_median"} <= set(got.columns)
    pd.testing.assert_frame_equal(got.drop(columns="word"), want[got.columns.drop("word")])


def test_analyze_keeps_the_old_positional_model_and_out(tmp_path):
    traj = planted(n_per_sense=6, n_points=4, onset=2, seed=1)
    with pytest.warns(DeprecationWarning, match=r"model, out by position.*model=, out="):
        tables = report.analyze(traj, None, tmp_path / "t", probe_folds=2, progress=False)
    assert "lens" not in tables  # model=None
    back = report.read_tables(tmp_path / "t")
    assert set(back) == set(tables)
    pd.testing.assert_frame_equal(back["summary"], tables["summary"], check_dtype=False)


# ============================================================== the honest headline (issue 13)
def cued(n_per_sense: int = 12, n_points: int = 6, d: int = 12, onset: int = 2, seed: int = 0,
         signal_after: bool = False) -> tg.Trajectories:
    """A causal model's trajectories of two words whose examples carry a ``cue_position``: the senses move
    apart from point ``onset`` on when the cue comes before the target, and (unless ``signal_after``) not
    at all when it comes after it, as a causal model cannot read it there."""
    rng = np.random.default_rng(seed)
    rows, states = [], []
    for word in ["bank", "bass"]:
        start = rng.normal(size=d)
        dirs = rng.normal(size=(2, d)) * 3
        for cue in ["before", "after"]:
            for s, sense in enumerate(["a", "b"]):
                for i in range(n_per_sense):
                    path = np.repeat(start[None], n_points, 0) + rng.normal(scale=0.5, size=(n_points, d))
                    path[0] = start
                    if cue == "before" or signal_after:
                        path += np.clip(np.arange(n_points) - onset + 1, 0, None)[:, None] * dirs[s]
                    states.append(path)
                    # one context word of its own per example (no shared prefix, no surface cue), then the target
                    prefix = f"w{word}{cue}{sense}{i} the "
                    text = prefix + word + " ends here"
                    rows.append({"word": word, "sense": f"{word}-{sense}", "group": text, "cue_position": cue,
                                 "text": text, "char_start": len(prefix), "char_end": len(prefix) + len(word)})
    meta = pd.DataFrame(rows)
    meta["example"] = np.arange(len(meta))
    return tg.Trajectories(np.asarray(states, np.float32), meta,
                           model_info={"name": "planted-causal", "n_layers": n_points - 1, "causal": True})


@pytest.fixture(scope="module")
def cued_tables():
    return cued(), report.analyze(cued(), probe_folds=3, n_permutations=99, progress=False)


def test_separability_of_all_examples_is_senses_separability_with_its_null(analysed):
    traj, _, _ = analysed
    tables = report.analyze(traj, probe_folds=3, n_permutations=49, progress=False)
    sep = tables["separability"]
    assert set(sep["stratum"]) == {"all examples"}  # no cue_position column: one stratum
    want = tg.senses.separability(traj, cv=3, n_permutations=49, random_state=0, progress=False)
    got = sep.drop(columns="stratum")[want.columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_causal_headline_reads_the_cue_before_examples_and_the_after_stratum_stays_silent(cued_tables):
    traj, tables = cued_tables
    assert report.headline_stratum(traj) == "cue before target"
    s = tables["summary"].set_index("word")
    assert (s["separability_stratum"] == "cue before target").all()
    # the planted truth: separable from the onset (point 2) on, read against the family-wise threshold
    assert s["separability_separable"].all()
    assert (s["separability_first_point_above_null"] == 2).all()
    by = tables["summary_by_cue"].set_index(["stratum", "word"])
    assert set(by.index.get_level_values(0)) == {"all examples", "cue before target", "cue after target"}
    # no signal after the target: never called separable there
    assert not by.loc["cue after target", "separable"].any()
    for (stratum, word), r in by.iterrows():
        d = tables["separability"]
        d = d[(d["stratum"] == stratum) & (d["word"] == word)]
        # brute force from the curve: peak, peak minus the threshold, first point above it
        assert r["peak"] == pytest.approx(d["value"].max())
        assert r["peak_minus_null_fwer"] == pytest.approx(d["value"].max() - d["null_fwer"].iloc[0])
        above = d.loc[d["value"] > d["null_fwer"], "point"]
        assert (np.isnan(r["first_point_above_null"]) and above.empty) or r["first_point_above_null"] == above.min()


def test_headline_of_a_causal_model_without_cue_after_signal_uses_only_cue_before_examples(cued_tables):
    traj, tables = cued_tables
    before = traj[(traj.meta["cue_position"] == "before").to_numpy()]
    want = tg.senses.separability(before, cv=3, n_permutations=99, random_state=0, progress=False)
    got = tables["separability"]
    got = got[got["stratum"] == "cue before target"].drop(columns="stratum")[want.columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_no_signal_is_called_separable_for_no_word_and_the_page_says_so(tmp_path):
    traj = cued(signal_after=False)
    keep = (traj.meta["cue_position"] == "after").to_numpy()
    silent = traj[keep]  # every example without signal
    tables = report.analyze(silent, probe_folds=3, n_permutations=99, progress=False)
    s = tables["summary"]
    assert not s["separability_separable"].any() and s["separability_first_point_above_null"].isna().all()
    assert (s["separability_peak_minus_null_fwer"] <= 0).all()
    text = " ".join(report.headline_text(tables, 99))
    assert "0 of 2 words have a point whose separability exceeds" in text
    assert "Not separable against the null: bank, bass" in text


def test_summary_has_null_based_columns_instead_of_selectivity(cued_tables):
    _, tables = cued_tables
    s = tables["summary"]
    assert not any("selectivity" in c for c in s.columns)
    for c in ("separability_null_fwer", "separability_peak_minus_null_fwer", "separability_p_fwer",
              "separability_p_holm", "peak_kappa", "surface_balanced_accuracy"):
        assert c in s.columns and s[c].notna().all(), c
    # Holm across words, from the words' family-wise p-values
    np.testing.assert_allclose(s["separability_p_holm"], tg.stats.holm(s["separability_p_fwer"].to_numpy()))
    # the probes never fit the degenerate control task
    assert tables["probes"].loc[tables["probes"]["metric"] == "control_accuracy", "value"].isna().all()


def test_surface_baseline_is_the_probes_surface_baseline_on_the_headline_examples(cued_tables):
    traj, tables = cued_tables
    before = traj[(traj.meta["cue_position"] == "before").to_numpy()]
    sur = tables["surface"]
    for word in ["bank", "bass"]:
        sub = before[(before.meta["word"] == word).to_numpy()]
        want = tg.probes.surface_baseline(sub, cv=3, random_state=0, n_permutations=99, n_boot=200, progress=False)
        got = sur[sur["word"] == word]
        r = got[(got["fold"] == -1) & (got["metric"] == "balanced_accuracy")]["value"].iloc[0]
        w = want[(want["fold"] == -1) & (want["metric"] == "balanced_accuracy")]["value"].iloc[0]
        assert r == pytest.approx(w)
        assert tables["summary"].set_index("word").loc[word, "surface_balanced_accuracy"] == pytest.approx(w)


def test_reference_matrix_is_senses_reference_matrix(analysed):
    traj, tables, _ = analysed
    pd.testing.assert_frame_equal(tables["reference_matrix"].reset_index(drop=True),
                                  tg.senses.reference_matrix(traj).reset_index(drop=True))


# ============================================================== skipped, and said so (issue 14)
def test_what_the_data_cannot_support_is_skipped_with_a_reason_and_the_rest_is_drawn(tmp_path):
    traj = planted(n_per_sense=6, n_points=5, onset=2)
    meta = traj.meta.copy()
    # a third word with one sense: nothing to tell apart
    extra = tg.Trajectories(traj.states[:4], meta.iloc[:4].assign(word="lone", sense="only", group=list("wxyz"),
                                                                  example=np.arange(4) + len(meta)),
                            model_info=traj.model_info)
    both = tg.Trajectories(np.concatenate([traj.states, extra.states]),
                           pd.concat([meta, extra.meta], ignore_index=True), model_info=traj.model_info)
    tables = report.analyze(both, probe_folds=3, progress=False)
    sk = tables["skipped"]
    assert list(sk.columns) == list(report.SKIPPED_COLUMNS)
    reasons = {(r.analysis, r.word): r.reason for r in sk.itertuples()}
    assert "one sense only" in reasons[("sense analyses", "lone")]
    assert "no model given" in reasons[("lens", None)]
    assert "no text columns" in reasons[("surface", None)]
    assert "no attention/MLP writes" in reasons[("attribution", None)]
    assert set(tables["summary"]["word"]) == {"bank", "bass", "lone"}
    assert set(tables["separability"]["word"]) == {"bank", "bass"}  # the rest was computed
    paths = report.figures(tables, tmp_path / "figures")
    page = report.write_index(tmp_path, tables, paths, both, seconds={}).read_text()
    assert "<h2>Skipped</h2>" in page and "one sense only" in page and "no text columns" in page
    # figures that need a skipped analysis are named as not drawn, with the table they lack
    assert "attribution: no attribution table" in page and "lens: no lens, top_tokens table" in page


def test_one_word_skips_reinforcement_and_the_superposition_null(tmp_path):
    traj = planted(n_per_sense=6, n_points=5, onset=2)
    one = traj[(traj.meta["word"] == "bank").to_numpy()]
    tables = report.analyze(one, probe_folds=3, progress=False)
    reasons = dict(zip(tables["skipped"]["analysis"], tables["skipped"]["reason"]))
    assert "one word only" in reasons["reinforcement"] and "one word only" in reasons["superposition null"]
    assert "reinforcement" not in tables and len(tables["separability"])


def test_a_word_whose_sense_has_fewer_groups_than_folds_is_skipped_and_the_others_kept():
    traj = planted(n_per_sense=6, n_points=5, onset=2)
    meta = traj.meta.copy()
    # bass: two sentences only per sense, fewer groups than the 3 folds
    meta.loc[meta["word"] == "bass", "group"] = meta.loc[meta["word"] == "bass", "sense"] + \
        (np.arange((meta["word"] == "bass").sum()) % 2).astype(str)
    t = tg.Trajectories(traj.states, meta, components=traj.components, model_info=traj.model_info)
    tables = report.analyze(t, probe_folds=3, progress=False)
    sk = tables["skipped"]
    assert ((sk["analysis"] == "probes and separability") & (sk["word"] == "bass")).sum() == 1
    assert set(tables["separability"]["word"]) == {"bank"}


def test_analyze_refuses_a_model_of_another_width_before_any_analysis(tiny_model, wtok):
    from trajgeo.models import load_model

    lm = load_model((tiny_model("llama", len(wtok)), wtok))
    traj = planted(n_per_sense=4, n_points=4, d=16)  # d_model 16, the model's is 32
    with pytest.raises(ValueError, match="d_model 16 but model .* has 32"):
        report.analyze(traj, model=lm, progress=False)


def test_page_prose_matches_the_summary(cued_tables, tmp_path):
    traj, tables = cued_tables
    s = tables["summary"]
    text = report.headline_text(tables, 99)
    n_sep = int(s["separability_separable"].sum())
    assert text[0].startswith(f"Headline (cue before target): {n_sep} of 2 words")
    first = s["separability_first_point_above_null"].dropna()
    assert f"median {np.median(first):g}" in text[0]
    beat = int((s["separability_peak"] > s["surface_balanced_accuracy"]).sum())
    assert any(f"{beat} of 2 words' peak separability is above their surface-cue baseline" in t for t in text)
    page = report.write_index(tmp_path, tables, [], traj, seconds={}, n_permutations=99).read_text()
    assert "Separability by cue position" in page and "cue after target" in page


def test_sense_words_named_otherwise_than_the_data_skip_that_words_read_out_and_the_lens_still_runs(
        tiny_model, wtok, corpus, span_frame):
    from trajgeo.models import load_model

    lm = load_model((tiny_model("llama", len(wtok)), wtok))
    texts = [c for c in corpus if " the " in f" {c} "]
    df = span_frame(texts, "the")
    df["word"] = "bank"  # a built-in word whose built-in senses are finance and river
    df["sense"] = ["money", "river"] * (len(df) // 2) + ["money"] * (len(df) % 2)
    df["group"] = df["text"]
    traj = tg.extract(lm, df, progress=False)
    tables = report.analyze(traj, model=lm, probe_folds=2, progress=False)
    reasons = {(r.analysis, r.word): r.reason for r in tables["skipped"].itertuples()}
    why = reasons[("sense-word read-out", "bank")]
    assert "['finance', 'river']" in why and "['money'] without sense words" in why
    assert "sense_readout" not in tables
    lens = tables["lens"]  # the lens's own metrics, with no sense rows
    assert {"entropy", "kl_to_final"} <= set(lens["metric"]) and not (lens["metric"] == "sense_log_odds").any()
    assert set(lens["word"]) == {"bank"}
    # given sense words for the data's senses, the read-out runs (with its shuffled null)
    given = {"bank": {"money": ["savings", "money"], "river": ["river", "water"]}}
    tables = report.analyze(traj, model=lm, probe_folds=2, progress=False, sense_words=given, n_permutations=9)
    assert not any(a == "sense-word read-out" for a in tables["skipped"]["analysis"])
    assert "null_fwer" in tables["sense_readout"] and (tables["lens"]["metric"] == "sense_log_odds").any()


def test_light_pairs_are_the_first_cue_before_pairs_of_each_word_and_kind():
    got = report.light_pairs(["bank", "heron", "spring"], per_kind=2)
    assert set(got["word"]) == {"bank", "spring"}  # heron has no built-in pairs
    assert (got["cue_position"] == "before").all()
    assert got.groupby(["word", "kind"]).size().to_dict() == {(w, k): 2 for w in ("bank", "spring")
                                                              for k in ("flip", "same")}
    full = tg.datasets.minimal_pairs(["bank", "spring"], cue_position="before")
    want = full.groupby(["word", "kind"], sort=False).head(2)
    assert sorted(got["pair"]) == sorted(want["pair"])
    assert report.light_pairs(["heron"]).empty
