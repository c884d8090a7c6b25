"""analyses/loureiro.py on a tiny random encoder and a planted CoarseWSD-20 folder: its tables, its caps,
its cache, and the 1-NN protocol recomputed by brute force from the stores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import trajgeo as tg
from trajgeo.models import load_model


# Each sense of bank and match has its own context words (all in the word tokenizer's vocabulary), so
# the sense is recoverable from the context even through a random encoder. Unbalanced so that the
# majority sense is well defined.
PLANTED = {
    "bank": {
        "classes": {"0": "bank_bank", "1": "bank_bank_(geography)"},
        "senses": {0: ["money", "salary", "deposit", "savings", "account", "loan", "interest", "rates"],
                   1: ["river", "water", "shore", "muddy", "grassy", "fishermen", "slow", "brown"]},
        "counts": {"train": {0: 9, 1: 5}, "test": {0: 9, 1: 5}},
    },
    "match": {
        "classes": {"0": "match_match_(fire)", "1": "match_match_(sport)"},
        "senses": {0: ["struck", "light", "candle", "lifted", "steel", "beams"],
                   1: ["tennis", "pitcher", "threw", "fast", "ball", "lemonade"]},
        "counts": {"train": {0: 5, 1: 9}, "test": {0: 5, 1: 9}},
    },
    # both senses draw on the same context words: not recoverable, so the 1-NN makes errors and the
    # brute-force comparison checks which ones
    "crane": {
        "classes": {"0": "crane_crane_(bird)", "1": "crane_crane_(machine)"},
        "senses": {0: ["lifted", "steel", "beams", "waded", "marsh", "water"],
                   1: ["lifted", "steel", "beams", "waded", "marsh", "water"]},
        "counts": {"train": {0: 6, 1: 8}, "test": {0: 7, 1: 7}},
        "position": 0,  # the target opens the sentence: no token before it
    },
}
RECOVERABLE = ("bank", "match")
FILLERS = ["the", "a", "and", "to", "of", "by", "on", "in", "at", "its"]


def _write_planted(root: Path, seed: int = 0, planted: dict | None = None) -> Path:
    """A CoarseWSD-20-layout folder: <word>/classes_map.txt and {train,test}.{data,gold}.txt."""
    rng = np.random.default_rng(seed)
    for word, spec in (PLANTED if planted is None else planted).items():
        folder = root / word
        folder.mkdir(parents=True)
        (folder / "classes_map.txt").write_text(json.dumps(spec["classes"]))
        for split, counts in spec["counts"].items():
            data, gold = [], []
            for sense, n in counts.items():
                for _ in range(n):
                    # the sense's context words in a random order around the target, one neutral filler
                    ctx = list(rng.permutation(spec["senses"][sense])[:4])
                    pos = spec.get("position", 2)
                    toks = ctx[:pos] + [word] + ctx[pos:] + [str(rng.choice(FILLERS))]
                    data.append(f"{pos}\t{' '.join(toks)}")
                    gold.append(str(sense))
            order = rng.permutation(len(data))
            gold = [spec.get("bad_gold", {}).get(split, g) if k == 0 else g for k, g in enumerate(gold)]
            end = "\n" if data else ""
            (folder / f"{split}.data.txt").write_text("\n".join(data[i] for i in order) + end)
            (folder / f"{split}.gold.txt").write_text("\n".join(gold[i] for i in order) + end)
    return root


@pytest.fixture(scope="module")
def script(load_analysis):
    return load_analysis("loureiro")


@pytest.fixture(scope="module")
def models(wtok, tiny_model):
    # 4 layers: the protocol sums points 1..4, so the embedding (point 0) is left out as in the paper
    return {"tiny-bert": load_model((tiny_model("bert", len(wtok), n_layers=4, seed=3), wtok))}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return _write_planted(tmp_path_factory.mktemp("coarsewsd20"))


@pytest.fixture(scope="module")
def result(script, models, planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("loureiro")
    # cap training at 10 of 14 (stratified), test in full
    assert script.main(["--data", str(planted), "--out", str(out), "--max-train", "10", "--max-test", "0"],
                       models=models) == 0
    return out


def _brute_force_1nn(train: tg.Trajectories, test: tg.Trajectories,
                     standardize: bool = False) -> tuple[float, float]:
    """Accuracy and macro F1 of the 1-NN protocol, with plain loops over examples and senses."""
    def token_vector(states: np.ndarray) -> np.ndarray:  # sum of the last 4 points
        v = np.zeros(states.shape[-1])
        for p in range(states.shape[0] - 4, states.shape[0]):
            v += states[p]
        return v

    xs = [token_vector(x) for x in np.asarray(train.states, dtype=np.float64)]
    ys = [token_vector(x) for x in np.asarray(test.states, dtype=np.float64)]
    if standardize:  # per dimension, with the training vectors' mean and (population) std
        mu = sum(xs) / len(xs)
        sd = np.sqrt(sum((x - mu) ** 2 for x in xs) / len(xs))
        xs, ys = [(x - mu) / sd for x in xs], [(y - mu) / sd for y in ys]
    y_tr, y_te = train.meta["sense"].tolist(), test.meta["sense"].tolist()
    senses = sorted(set(y_tr))
    protos = {}
    for s in senses:
        members = [xs[i] for i in range(len(xs)) if y_tr[i] == s]
        protos[s] = sum(members) / len(members)
    pred = []
    for v in ys:
        cos = {s: v @ c / (np.linalg.norm(v) * np.linalg.norm(c)) for s, c in protos.items()}
        pred.append(max(senses, key=lambda s: cos[s]))
    acc = sum(p == t for p, t in zip(pred, y_te)) / len(y_te)
    f1s = []
    for s in sorted(set(y_te) | set(pred)):
        tp = sum(p == s and t == s for p, t in zip(pred, y_te))
        fp = sum(p == s and t != s for p, t in zip(pred, y_te))
        fn = sum(p != s and t == s for p, t in zip(pred, y_te))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return acc, float(np.mean(f1s))


def test_tables_have_the_contract_columns_and_are_written(script, result):
    per_word = pd.read_parquet(result / "per_word.parquet")
    summary = pd.read_parquet(result / "summary.parquet")
    assert list(per_word.columns) == script.PER_WORD_COLUMNS
    assert list(summary.columns) == script.SUMMARY_COLUMNS
    assert sorted(per_word.word) == sorted(PLANTED)
    assert (per_word.model == "tiny-bert").all()
    assert pd.read_csv(result / "per_word.csv").shape == per_word.shape
    # the paper's figures sit next to the model's
    paper = summary[summary.model == script.PAPER_NAME].iloc[0]
    assert (paper.mean_macro_f1, paper.mean_accuracy) == (0.910, 0.957)
    for name in ("minilm", "smollm2"):
        assert name not in set(summary.model)  # models= replaced --models: nothing shipped was loaded


def test_accuracy_and_f1_equal_a_brute_force_1nn_from_the_stores(result):
    per_word = pd.read_parquet(result / "per_word.parquet").set_index("word")
    for word in PLANTED:
        train = tg.load(result / "tiny-bert" / f"{word}-train.zarr")
        test = tg.load(result / "tiny-bert" / f"{word}-test.zarr")
        assert train.states.shape[1] == 5  # all points extracted: embedding + 4 layers
        acc, f1 = _brute_force_1nn(train, test)
        row = per_word.loc[word]
        assert row.accuracy == pytest.approx(acc, abs=1e-9)
        assert row.macro_f1 == pytest.approx(f1, abs=1e-9)
        acc, f1 = _brute_force_1nn(train, test, standardize=True)
        assert row.accuracy_standardize == pytest.approx(acc, abs=1e-9)
        assert row.macro_f1_standardize == pytest.approx(f1, abs=1e-9)
        # the sentence-initial targets are counted (the word tokenizer adds no special token)
        at_start = PLANTED[word].get("position", 2) == 0
        assert (row.n_train_at_start, row.n_test_at_start) == ((row.n_train, row.n_test) if at_start else (0, 0))
        if word in RECOVERABLE:  # the planted sense is recoverable: well above the majority baseline
            assert row.accuracy >= 0.8 > row.majority_baseline


def test_caps_are_stratified_and_the_majority_baseline_is_the_training_mfs(result):
    per_word = pd.read_parquet(result / "per_word.parquet").set_index("word")
    summary = pd.read_parquet(result / "summary.parquet").set_index("model")
    for word, spec in PLANTED.items():
        row = per_word.loc[word]
        assert (row.n_train_full, row.n_test_full) == (14, 14)
        assert (row.n_train, row.n_test) == (10, 14)
        train = tg.load(result / "tiny-bert" / f"{word}-train.zarr")
        # stratified: each sense keeps its share of 10 of 14 (rounded)
        want = sorted(round(n * 10 / 14) for n in spec["counts"]["train"].values())
        assert sorted(train.meta["sense"].value_counts().tolist()) == want
        mfs = max(spec["counts"]["train"], key=spec["counts"]["train"].get)
        assert row.majority_baseline == pytest.approx(spec["counts"]["test"][mfs] / 14)
    s = summary.loc["tiny-bert"]
    assert s.mean_macro_f1 == pytest.approx(per_word.macro_f1.mean())
    assert s.mean_accuracy_standardize == pytest.approx(per_word.accuracy_standardize.mean())
    assert s.pooled_accuracy == pytest.approx((per_word.accuracy * per_word.n_test).sum() / per_word.n_test.sum())
    assert (s.max_train, s.max_test, s.n_words) == (10, 0, len(PLANTED))


def test_a_rerun_keeps_the_words_done_reuses_the_stores_and_another_cap_reextracts(script, models, planted, result,
                                                                                    monkeypatch, tmp_path, capsys):
    out = tmp_path / "copy"  # a copy: the other tests read the module's results
    shutil.copytree(result, out)
    before = pd.read_parquet(out / "per_word.parquet").set_index("word")
    real_extract = tg.extract
    calls = []

    def counting_extract(*args, **kwargs):
        calls.append(kwargs.get("overwrite", False))
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(tg, "extract", counting_extract)
    args = ["--data", str(planted), "--out", str(out), "--max-test", "0", "--words", "bank"]
    capsys.readouterr()
    assert script.main([*args, "--max-train", "10"], models=models) == 0
    # the word was done with these options: kept, nothing extracted, and the log says so
    assert calls == []
    assert "bank     done in an earlier run with these options: kept" in capsys.readouterr().out
    again = pd.read_parquet(out / "per_word.parquet").set_index("word")
    assert again.loc["bank", "accuracy"] == before.loc["bank", "accuracy"]
    # without its record the word is recomputed: without overwrite, tg.extract either returns a matching
    # store or raises, so these were reused, and the numbers are the same
    (out / "words" / "tiny-bert" / "bank.json").unlink()
    script.main([*args, "--max-train", "10"], models=models)
    assert calls == [False, False]
    again = pd.read_parquet(out / "per_word.parquet").set_index("word")
    assert again.loc["bank", "accuracy"] == before.loc["bank", "accuracy"]
    assert again.loc["bank", "macro_f1"] == before.loc["bank", "macro_f1"]
    # another cap means other training examples: the stale train store is replaced, the test store kept
    calls.clear()
    script.main([*args, "--max-train", "12"], models=models)
    assert calls == [False, True, False]
    assert tg.load(out / "tiny-bert" / "bank-train.zarr").n_examples == 12


# words the protocol cannot be run on, and one that fails: each is skipped or recorded, the others kept
TROUBLED = {
    "bank": PLANTED["bank"],
    "spring": {"classes": {"0": "spring_spring_(season)", "1": "spring_spring_(device)"},
               "senses": {0: ["river", "water", "shore", "muddy"], 1: ["steel", "beams", "lifted", "fast"]},
               "counts": {"train": {0: 6}, "test": {0: 3, 1: 2}}},               # one training sense
    "ball": {"classes": {"0": "ball_ball_(sphere)", "1": "ball_ball_(dance)"},
             "senses": {0: ["tennis", "threw", "fast", "pitcher"], 1: ["light", "candle", "slow", "brown"]},
             "counts": {"train": {0: 5, 1: 5}, "test": {0: 3, 1: 3}},
             "bad_gold": {"train": "7"}},                                          # a gold label outside the map
    "pitcher": {"classes": {"0": "pitcher_pitcher_(jug)", "1": "pitcher_pitcher_(player)"},
                "senses": {0: ["lemonade", "water", "empty", "slow"], 1: ["threw", "ball", "fast", "tennis"]},
                "counts": {"train": {0: 5, 1: 5}, "test": {}}},                    # no test examples
    "light": {"classes": {"0": "light_light_(lamp)", "1": "light_light_(weight)", "2": "light_light_(colour)"},
              "senses": {0: ["candle", "struck", "match", "lit"], 1: ["steel", "beams", "lifted", "slow"],
                         2: ["brown", "grassy", "muddy", "water"]},
              "counts": {"train": {0: 4, 1: 4, 2: 4}, "test": {0: 2, 1: 2, 2: 2}}},  # 3 senses, a test cap of 2
    "match": PLANTED["match"],
}


@pytest.fixture(scope="module")
def troubled(script, models, tmp_path_factory):
    """A first run killed while on 'match', then a rerun; what each left and printed."""
    import contextlib
    import io

    data = _write_planted(tmp_path_factory.mktemp("troubled"), planted=TROUBLED)
    out = tmp_path_factory.mktemp("troubled-out")
    argv = ["--data", str(data), "--out", str(out), "--words", ",".join(TROUBLED), "--max-train", "0",
            "--max-test", "2"]
    real_evaluate, real_extract = script.evaluate_word, tg.extract
    with pytest.MonkeyPatch.context() as mp:
        def killed_on_match(model, name, data, word, *args, **kwargs):
            if word == "match":
                raise KeyboardInterrupt
            return real_evaluate(model, name, data, word, *args, **kwargs)

        mp.setattr(script, "evaluate_word", killed_on_match)
        with pytest.raises(KeyboardInterrupt), contextlib.redirect_stdout(io.StringIO()):
            script.main(argv, models=models)
    after_kill = pd.read_parquet(out / "per_word.parquet")
    extracted = []
    with pytest.MonkeyPatch.context() as mp:
        def counting_extract(model, df, **kwargs):
            extracted.append(df["word"].iloc[0])
            return real_extract(model, df, **kwargs)

        mp.setattr(tg, "extract", counting_extract)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = script.main(argv, models=models)
    return {"after_kill": after_kill, "extracted": extracted, "rc": rc, "printed": buf.getvalue(),
            "per_word": pd.read_parquet(out / "per_word.parquet").set_index("word"),
            "summary": pd.read_parquet(out / "summary.parquet").set_index("model")}


def test_words_the_protocol_cannot_take_are_skipped_with_the_reason_and_a_failure_does_not_stop_it(troubled):
    pw = troubled["per_word"]
    assert pw.index.tolist() == list(TROUBLED)
    assert pw["status"].to_dict() == {"bank": "done", "spring": "skipped", "ball": "failed", "pitcher": "skipped",
                                      "light": "skipped", "match": "done"}
    assert "fewer than 2 training senses ('season')" in pw.loc["spring", "reason"]
    assert pw.loc["pitcher", "reason"].startswith("no test examples")
    assert pw.loc["light", "reason"] == "the test cap 2 is smaller than its 3 senses (a stratified cap keeps one of each)"
    assert pw.loc["ball", "reason"].startswith("ValueError: ") and "sense number 7 is not in" in pw.loc["ball", "reason"]
    assert pw.loc[["bank", "match"], "reason"].isna().all()
    assert troubled["rc"] == 1
    printed = troubled["printed"]
    assert "skipped 3 of 6: tiny-bert spring (fewer than 2 training senses" in printed
    assert "failed 1 of 6: tiny-bert ball (ValueError:" in printed
    # the summary averages the words done and counts the others
    s = troubled["summary"].loc["tiny-bert"]
    assert (s.n_words, s.n_skipped, s.n_failed) == (2, 3, 1)
    assert s.mean_accuracy == pytest.approx(pw.loc[["bank", "match"], "accuracy"].mean())


def test_an_interrupted_run_keeps_the_words_before_and_the_rerun_does_only_the_rest(troubled):
    after_kill = troubled["after_kill"]
    assert after_kill["word"].tolist() == ["bank", "spring", "ball", "pitcher", "light"]
    assert after_kill.set_index("word").loc["bank", "status"] == "done"
    # the rerun kept bank and the skips, retried ball (it fails reading, before extraction) and did match
    assert troubled["extracted"] == ["match", "match"]
    for word, status in (("bank", "done"), ("spring", "skipped"), ("pitcher", "skipped"), ("light", "skipped")):
        assert f"{word:8s} {status} in an earlier run with these options: kept" in troubled["printed"]


def test_main_rejects_a_negative_cap(script, planted, tmp_path):
    with pytest.raises(SystemExit):
        script.main(["--data", str(planted), "--out", str(tmp_path), "--max-train", "-1"], models={})
