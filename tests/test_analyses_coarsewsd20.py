"""analyses/coarsewsd20.py on a tiny random encoder and a planted CoarseWSD-20 folder: every word's tables are
written as it finishes, rare senses are kept (one example per fold), dropped or lower the folds with a note,
a word that cannot be analysed is skipped with the reason, a failing word is recorded and the study goes on,
and an interrupted run resumes without redoing the words already done."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import trajgeo as tg
from trajgeo.models import load_model

CONTEXT = ["money", "salary", "deposit", "savings", "account", "loan", "river", "water", "shore", "muddy",
           "grassy", "fishermen", "struck", "light", "candle", "tennis", "lemonade", "steel"]
# word -> {sense name: examples (train, test)}; the class map numbers senses in this order
PLANTED = {
    "bank": {"bank": (6, 2), "geography": (6, 2)},
    # the reported failure: a sense of 3 in 27, whose share of a 12-example sample is 1 (< 3 folds)
    "match": {"fire": (20, 4), "sport": (2, 1)},
    "crane": {"bird": (6, 2), "machine": (6, 2), "toy": (1, 0)},   # 'toy' has one sentence: dropped
    "pitcher": {"jug": (6, 2), "player": (1, 1)},                  # 'player' has 2: folds 3 -> 2
    "spring": {"season": (6, 2), "coil": (1, 0)},                  # one sense left: skipped
    "ball": {"sphere": (6, 2), "dance": (6, 2)},                   # a gold label outside the class map: fails
}
WORDS = list(PLANTED)
ARGS = ["--max-per-word", "12", "--folds", "3", "--quiet"]


def _write_planted(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    serial = 0
    for word, senses in PLANTED.items():
        folder = root / word
        folder.mkdir(parents=True)
        (folder / "classes_map.txt").write_text(json.dumps({str(i): f"{word}_{word}_({s})"
                                                            for i, s in enumerate(senses)}))
        for k, split in enumerate(("train", "test")):
            data, gold = [], []
            for i, counts in enumerate(senses.values()):
                for _ in range(counts[k]):
                    ctx = list(rng.choice(CONTEXT, size=3, replace=False))
                    serial += 1  # every sentence its own: the group (sentence) counts are the example counts
                    data.append(f"2\t{ctx[0]} {ctx[1]} {word} {ctx[2]} n{serial}")
                    gold.append(str(i))
            if word == "ball" and split == "train":
                gold[-1] = "7"
            (folder / f"{split}.data.txt").write_text("\n".join(data) + "\n")
            (folder / f"{split}.gold.txt").write_text("\n".join(gold) + "\n")
    return root


@pytest.fixture(scope="module")
def script(load_analysis):
    return load_analysis("coarsewsd20")


@pytest.fixture(scope="module")
def models(wtok, tiny_model):
    return {"tiny-bert": load_model((tiny_model("bert", len(wtok), n_layers=2, seed=4), wtok))}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return _write_planted(tmp_path_factory.mktemp("coarsewsd20"))


@pytest.fixture(scope="module")
def runs(script, models, planted, tmp_path_factory):
    """A first run killed while on 'crane', then a second run that resumes; what each left and printed."""
    out = tmp_path_factory.mktemp("study")
    argv = ["--data", str(planted), "--out", str(out), "--words", ",".join(WORDS), *ARGS]
    real_analyse, real_extract = script.analyse_word, tg.extract
    with pytest.MonkeyPatch.context() as mp:
        def killed_on_crane(traj, folds, random_state, **options):
            if traj.meta["word"].iloc[0] == "crane":
                raise KeyboardInterrupt
            return real_analyse(traj, folds, random_state, **options)

        mp.setattr(script, "analyse_word", killed_on_crane)
        with pytest.raises(KeyboardInterrupt):
            script.main(argv, models=models)
    after_kill = pd.read_parquet(out / "summary.parquet")
    recorded = sorted(p.parent.name for p in (out / "words" / "tiny-bert").glob("*/status.json"))
    extracted = []
    with pytest.MonkeyPatch.context() as mp:
        def counting_extract(model, df, **kwargs):
            extracted.append(df["word"].iloc[0])
            return real_extract(model, df, **kwargs)

        mp.setattr(tg, "extract", counting_extract)
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = script.main(argv[:-1], models=models)  # not --quiet: the log says what it keeps
    return {"out": out, "argv": argv, "after_kill": after_kill, "recorded": recorded, "extracted": extracted, "rc": rc,
            "printed": buf.getvalue(), "summary": pd.read_parquet(out / "summary.parquet").set_index("word")}


def test_an_interrupted_run_keeps_the_words_it_finished(runs):
    after_kill = runs["after_kill"]
    assert after_kill["word"].tolist() == ["bank", "match"]
    assert (after_kill["status"] == "done").all()
    for word in ("bank", "match"):
        folder = runs["out"] / "words" / "tiny-bert" / word
        assert {p.name for p in folder.iterdir()} == {"summary.parquet", "probes.parquet", "curves.parquet",
                                                       "status.json"}
    assert runs["recorded"] == ["bank", "match"]  # nothing recorded for the word it was killed on


def test_the_rerun_resumes_without_redoing_the_words_done(runs):
    # bank and match were done before the kill: not extracted again, and the log says they were kept
    assert runs["extracted"] == ["crane", "pitcher"]  # spring is skipped before extraction, ball fails reading
    for word in ("bank", "match"):
        assert f"{word}" in runs["printed"] and "done in an earlier run with these options: kept" in runs["printed"]


def test_every_word_has_a_status_and_the_study_names_what_it_skipped(runs):
    s = runs["summary"]
    assert s.index.tolist() == WORDS
    assert s["status"].to_dict() == {"bank": "done", "match": "done", "crane": "done", "pitcher": "done",
                                     "spring": "skipped", "ball": "failed"}
    assert "fewer than 2 senses" in s.loc["spring", "reason"] and "'coil' (1 sentence)" in s.loc["spring", "reason"]
    assert "sense number 7 is not in" in s.loc["ball", "reason"] and "train.gold.txt" in s.loc["ball", "reason"]
    assert runs["rc"] == 1  # a word failed
    printed = runs["printed"]
    assert "skipped 1 of 6: tiny-bert spring (fewer than 2 senses" in printed
    assert "failed 1 of 6: tiny-bert ball (ValueError:" in printed
    assert s.loc[["bank", "match", "crane", "pitcher"], "reason"].isna().all()


def test_a_rare_sense_keeps_one_example_per_fold(runs, planted, script):
    traj = tg.load(runs["out"] / "tiny-bert" / "match.zarr")
    # all 3 'sport' examples are in the 12-example sample; its share alone (12 * 3 / 27) would keep 1,
    # which is the reported failure: fewer examples than folds
    assert traj.meta["sense"].value_counts().to_dict() == {"fire": 9, "sport": 3}
    full = tg.datasets.read_coarsewsd20(planted, "match", split="all")
    share_only = tg.datasets.stratified_sample(full, 12, strata="sense")
    assert (share_only["sense"] == "sport").sum() == 1
    s = runs["summary"]
    assert s.loc["match", "folds"] == 3 and pd.isna(s.loc["match", "note"])


def test_rare_senses_are_dropped_or_lower_the_folds_with_a_note(runs):
    s = runs["summary"]
    probes = pd.read_parquet(runs["out"] / "probes.parquet")
    crane = tg.load(runs["out"] / "tiny-bert" / "crane.zarr")
    assert set(crane.meta["sense"]) == {"bird", "machine"}
    assert "dropped sense(s) 'toy' (1 sentence)" in s.loc["crane", "note"]
    assert s.loc["pitcher", "note"] == "folds 3 -> 2: sense 'player' has 2 sentences"
    for word, k in {"bank": 3, "match": 3, "crane": 3, "pitcher": 2}.items():
        assert s.loc[word, "folds"] == k
        folds = set(probes.loc[(probes["word"] == word) & (probes["fold"] >= 0), "fold"])
        assert folds == set(range(k)), word  # the probes really ran with that many folds
    assert "note: tiny-bert crane: dropped sense(s) 'toy'" in runs["printed"]


def test_combined_tables_are_the_union_of_the_per_word_tables(runs):
    out = runs["out"]
    for name in ("probes", "curves"):
        combined = pd.read_parquet(out / f"{name}.parquet")
        parts = [pd.read_parquet(out / "words" / "tiny-bert" / w / f"{name}.parquet")
                 for w in ("bank", "match", "crane", "pitcher")]
        pd.testing.assert_frame_equal(combined, pd.concat(parts, ignore_index=True))
    s = runs["summary"]
    probes = pd.read_parquet(out / "probes.parquet")
    for word in ("bank", "match", "crane", "pitcher"):
        traj = tg.load(out / "tiny-bert" / f"{word}.zarr")
        counts = traj.meta["sense"].value_counts()
        assert s.loc[word, "n_examples"] == traj.n_examples
        assert s.loc[word, "majority_baseline"] == pytest.approx(counts.max() / counts.sum())
        acc = probes[(probes["word"] == word) & (probes["fold"] == -1) & (probes["metric"] == "accuracy")]
        assert s.loc[word, "peak_accuracy"] == pytest.approx(acc["value"].max())
    assert pd.read_csv(out / "summary.csv")["word"].tolist() == WORDS


def test_a_rerun_retries_only_the_failed_word(runs, script, models, planted, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "copy"  # a copy: the other tests read the module's results
    shutil.copytree(runs["out"], out)
    argv = ["--data", str(planted), "--out", str(out), "--words", ",".join(WORDS), *ARGS]
    extracted = []
    real_extract = tg.extract

    def counting_extract(model, df, **kwargs):
        extracted.append(df["word"].iloc[0])
        return real_extract(model, df, **kwargs)

    monkeypatch.setattr(tg, "extract", counting_extract)
    gold = planted / "ball" / "train.gold.txt"
    original = gold.read_text()
    try:
        gold.write_text(original.replace("\n7\n", "\n1\n"))  # the user fixes the file
        assert script.main(argv, models=models) == 0
    finally:
        gold.write_text(original)
    assert extracted == ["ball"]
    s = pd.read_parquet(out / "summary.parquet").set_index("word")
    assert s.index.tolist() == WORDS
    assert s.loc["ball", "status"] == "done" and s.loc["spring", "status"] == "skipped"
    # other options are another run: --random-state 1 recomputes (here, one word); its sample is another, so
    # the store of the first sample is refused, then replaced
    extracted.clear()
    assert script.main(["--data", str(planted), "--out", str(out), "--words", "bank", *ARGS, "--random-state", "1"],
                       models=models) == 0
    assert extracted == ["bank", "bank"]
    full = tg.datasets.read_coarsewsd20(planted, "bank", split="all")
    want = tg.datasets.stratified_sample(full, 12, strata="sense", min_per_cell=3, random_state=1)
    assert tg.load(out / "tiny-bert" / "bank.zarr").meta["text"].tolist() == want["text"].tolist()


@pytest.mark.parametrize("bad", [["--folds", "1"], ["--max-per-word", "-3"], ["--max-per-word", "2.5"]])
def test_main_rejects_bad_numbers(script, planted, tmp_path, bad):
    with pytest.raises(SystemExit):
        script.main(["--data", str(planted), "--out", str(tmp_path), *bad], models={})


def test_each_word_is_read_against_its_null_and_the_surface_cue_with_holm_across_words(runs):
    s = runs["summary"]
    probes = pd.read_parquet(runs["out"] / "probes.parquet")
    done = ["bank", "match", "crane", "pitcher"]
    assert "selectivity_at_peak" not in s.columns
    for word in done:
        bal = probes[(probes["word"] == word) & (probes["fold"] == -1) & (probes["metric"] == "balanced_accuracy")]
        best = bal.loc[bal["value"].idxmax()]
        assert s.loc[word, "peak_balanced_accuracy"] == pytest.approx(best["value"])
        assert s.loc[word, "null_fwer"] == pytest.approx(best["null_fwer"])  # one threshold per word
        assert s.loc[word, "p_fwer"] == pytest.approx(bal["p_fwer"].min())
        assert s.loc[word, "peak_minus_null"] == pytest.approx(best["value"] - best["null_fwer"])
        assert s.loc[word, "resolved"] == (best["value"] > best["null_fwer"])
        if not s.loc[word, "resolved"]:
            assert np.isnan(s.loc[word, "resolution_point"])  # a word below its null has no resolution point
        # the surface baseline, recomputed on the stored examples with the same splits and null
        traj = tg.load(runs["out"] / "tiny-bert" / f"{word}.zarr")
        surf = tg.probes.surface_baseline(traj, cv=int(s.loc[word, "folds"]), n_permutations=1000, progress=False)
        surf = surf[(surf["fold"] == -1) & (surf["metric"] == "balanced_accuracy")].iloc[0]
        assert s.loc[word, "surface_balanced_accuracy"] == pytest.approx(surf["value"])
        assert s.loc[word, "peak_minus_surface"] == pytest.approx(best["value"] - surf["value"])
    np.testing.assert_allclose(s.loc[done, "p_holm"], tg.stats.holm(s.loc[done, "p_fwer"].to_numpy()))
    assert s.loc[["spring", "ball"], "p_holm"].isna().all()
