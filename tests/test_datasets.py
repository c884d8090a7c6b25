"""Tests for trajgeo.datasets: target forms, readers, validation errors, the built-in set, CoarseWSD-20."""

from __future__ import annotations

import json
import re
import shutil
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trajgeo import datasets as ds

# (text, target, occurrence): the occurrence-th whole-word match is the planted target
PLANTED = [
    ("she sat on the bank by the river", "bank", 0),
    ("the bank near the bank of the river closed , bank holidays", "bank", 1),
    ("a bass , a bass guitar and a bass drum", "bass", 2),
    ("crane", "crane", 0),
    ("he lit one match before the match", "match", 1),
    ("the  star shone  over the star-lit field", "star", 0),  # double spaces, hyphenated decoy
]


def _planted_frame() -> pd.DataFrame:
    """Reference spans found independently: whitespace tokens, counting exact token matches."""
    rows = []
    for text, target, occ in PLANTED:
        tokens = text.split()
        k = [i for i, t in enumerate(tokens) if t == target][occ]
        # char offset of token k, walking the string (independent of the module's regex)
        pos = 0
        for i, t in enumerate(tokens):
            pos = text.index(t, pos)
            if i == k:
                break
            pos += len(t)
        rows.append({"text": text, "target": target, "occurrence": occ, "word_index": k,
                     "char_start": pos, "char_end": pos + len(target), "sense": "s"})
    return pd.DataFrame(rows)


# ================================================================ target forms and readers
def test_all_target_forms_give_the_same_spans(tmp_path):
    ref = _planted_frame()
    for text, s, e, t, k in zip(ref.text, ref.char_start, ref.char_end, ref.target, ref.word_index):
        assert text[s:e] == t and text.split()[k] == t  # the reference itself is right
    base = ref[["text", "sense"]]
    forms = {
        "char span": base.assign(char_start=ref.char_start, char_end=ref.char_end),
        "span str": base.assign(span=[f"{s}:{e}" for s, e in zip(ref.char_start, ref.char_end)]),
        "span pair": base.assign(span=[[s, e] for s, e in zip(ref.char_start, ref.char_end)]),
        "target+occurrence": base.assign(target=ref.target, occurrence=ref.occurrence),
        "word_index": base.assign(word_index=ref.word_index),
    }
    results = {name: ds.from_dataframe(df) for name, df in forms.items()}
    results["records"] = ds.from_records(forms["target+occurrence"].to_dict("records"))
    path = tmp_path / "ex.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in forms["word_index"].to_dict("records")) + "\n")
    results["jsonl"] = ds.read_jsonl(path)
    csv_path = tmp_path / "ex.csv"
    forms["span str"].to_csv(csv_path, index=False)
    results["csv"] = ds.read_csv(csv_path)
    for name, out in results.items():
        np.testing.assert_array_equal(out["char_start"], ref["char_start"], err_msg=name)
        np.testing.assert_array_equal(out["char_end"], ref["char_end"], err_msg=name)
        assert out["target"].tolist() == ref["target"].tolist(), name
        assert out["example"].tolist() == list(range(len(ref))), name


def test_target_search_is_whole_word_then_case_insensitive():
    df = ds.from_records([
        {"text": "Bank holidays are quiet.", "target": "bank", "sense": "finance"},
        {"text": "The Bank by the bank.", "target": "bank", "sense": "river"},
        {"text": "banks and embankments, then a bank", "target": "bank", "sense": "x"},
    ])
    assert df["char_start"].tolist() == [0, len("The Bank by the "), len("banks and embankments, then a ")]
    assert df["target"].tolist() == ["Bank", "bank", "bank"]
    assert df["word"].tolist() == ["bank"] * 3  # lemma defaults to the lower-cased target


def test_word_index_with_punctuation_narrows_to_target():
    df = ds.from_records([{"text": "we sat by the bank, then left", "word_index": 4, "target": "bank",
                           "sense": "river"}])
    assert (df.char_start[0], df.char_end[0]) == (14, 18)


def test_validate_fills_contract_columns_without_touching_input():
    raw = pd.DataFrame({"text": ["a bank here", "a bank here", "the bank"],
                        "char_start": [2, 2, 4], "char_end": [6, 6, 8]}, index=[10, 11, 12])
    before = raw.copy()
    out = ds.validate(raw)
    pd.testing.assert_frame_equal(raw, before)
    assert out["example"].tolist() == [0, 1, 2]
    assert out["target"].tolist() == ["bank"] * 3
    assert out["group"].tolist() == raw["text"].tolist()  # duplicates share a group
    assert list(out.columns[:7]) == ["example", "text", "char_start", "char_end", "target", "word", "group"]
    again = ds.validate(out)  # idempotent
    pd.testing.assert_frame_equal(again, out)


def test_from_dataframe_renames_columns():
    df = pd.DataFrame({"sentence": ["the crane lifted it"], "label": ["machine"], "lemma": ["crane"],
                       "target": ["crane"]})
    out = ds.from_dataframe(df, text="sentence", sense="label", word="lemma")
    assert out.loc[0, ["text", "sense", "word", "char_start", "char_end"]].tolist() == [
        "the crane lifted it", "machine", "crane", 4, 9]


def test_from_dataframe_positional_column_names_warn_and_match_keywords():
    df = pd.DataFrame({"sentence": ["the crane lifted it", "a crane waded"], "label": ["machine", "bird"],
                       "lemma": ["crane", "crane"], "target": ["crane", "crane"]})
    with pytest.warns(DeprecationWarning, match=r"text, sense, word by position.*text=, sense=, word="):
        old = ds.from_dataframe(df, "sentence", "label", "lemma")
    pd.testing.assert_frame_equal(old, ds.from_dataframe(df, text="sentence", sense="label", word="lemma"))
    with pytest.raises(TypeError, match="multiple values for argument 'text'"), pytest.warns(DeprecationWarning):
        ds.from_dataframe(df, "sentence", text="sentence")


# ================================================================ errors, one per kind
def _jsonl(tmp_path: Path, records: list) -> Path:
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return p


GOOD = {"text": "the river bank", "target": "bank", "sense": "river"}


def test_error_missing_text_column():
    with pytest.raises(KeyError, match="text"):
        ds.validate(pd.DataFrame({"char_start": [0], "char_end": [1]}))


def test_error_no_target_given():
    with pytest.raises(KeyError, match="no target"):
        ds.validate(pd.DataFrame({"text": ["abc"]}))


def test_error_row_without_any_target(tmp_path):
    p = _jsonl(tmp_path, [GOOD, {"text": "a bank", "sense": "x"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2 \(example 1, row 1\): no target given"):
        ds.read_jsonl(p)


def test_error_empty_text_names_line(tmp_path):
    p = _jsonl(tmp_path, [GOOD, GOOD | {"text": "   "}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2 .*text is empty"):
        ds.read_jsonl(p)


def test_error_span_out_of_range_names_example():
    df = pd.DataFrame({"example": [7, 8], "text": ["abc", "abcdef"], "char_start": [0, 4],
                       "char_end": [2, 9]})
    with pytest.raises(ValueError, match=r"^example 8 \(row 1\): span 4:9 is out of range"):
        ds.validate(df)


def test_error_empty_span():
    with pytest.raises(ValueError, match=r"row 0.*span 2:2 is out of range"):
        ds.validate(pd.DataFrame({"text": ["abc"], "char_start": [2], "char_end": [2]}))


def test_error_span_does_not_match_target(tmp_path):
    p = _jsonl(tmp_path, [GOOD, {"text": "the river bank", "span": "0:3", "target": "bank",
                                 "sense": "river"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2 .*covers 'the', not the given target 'bank'"):
        ds.read_jsonl(p)


def test_error_word_index_token_does_not_match_target():
    with pytest.raises(ValueError, match="covers 'river', not the given target 'bank'"):
        ds.from_records([{"text": "the river bank", "word_index": 1, "target": "bank", "sense": "r"}])


def test_error_missing_sense_names_line(tmp_path):
    p = _jsonl(tmp_path, [GOOD, GOOD, GOOD | {"sense": None}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:3 \(example 2, row 2\): sense is missing"):
        ds.read_jsonl(p)


def test_error_sense_column_missing():
    with pytest.raises(KeyError, match="sense=None"):
        ds.from_records([{"text": "a bank", "target": "bank"}])
    assert "sense" not in ds.from_records([{"text": "a bank", "target": "bank"}], sense=None)


def test_error_target_not_found():
    with pytest.raises(ValueError, match=r"row 0.*'bank' does not occur as a whole word"):
        ds.from_records([{"text": "the banks are closed", "target": "bank", "sense": "f"}])


def test_error_occurrence_too_large():
    with pytest.raises(ValueError, match="occurrence 2 of target 'bank' requested, but the text has only 1"):
        ds.from_records([{"text": "a bank", "target": "bank", "occurrence": 2, "sense": "f"}])


def test_error_word_index_out_of_range():
    with pytest.raises(ValueError, match="word_index 5 is out of range for a text of 2"):
        ds.from_records([{"text": "a bank", "word_index": 5, "sense": "f"}])


def test_error_bad_span_string():
    with pytest.raises(ValueError, match="span must be 'start:end'"):
        ds.from_records([{"text": "a bank", "span": "2-6", "sense": "f"}])


def test_error_non_integer_char_start():
    with pytest.raises(ValueError, match="row 0.*char_start must be an integer, got 'two'"):
        ds.validate(pd.DataFrame({"text": ["a bank"], "char_start": ["two"], "char_end": [6]}))


def test_error_duplicate_example_ids():
    df = pd.DataFrame({"example": [3, 3], "text": ["a b", "a b"], "char_start": [0, 0], "char_end": [1, 1]})
    with pytest.raises(ValueError, match="example id 3 is not unique"):
        ds.validate(df)


def test_error_bad_cue_position():
    with pytest.raises(ValueError, match="cue_position must be 'before' or 'after', got 'near'"):
        ds.from_records([GOOD | {"cue_position": "near"}])


def test_error_invalid_json_names_line(tmp_path):
    p = _jsonl(tmp_path, [GOOD, "{not json"])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        ds.read_jsonl(p)


def test_csv_error_names_line_after_multiline_text(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text('text,target,sense\n"a long\ntext with a bank",bank,finance\n"the bank",bank,\n')
    with pytest.raises(ValueError, match=r"bad\.csv:4 \(example 1, row 1\): sense is missing"):
        ds.read_csv(p)


# ================================================================ the contract's edges
@pytest.mark.parametrize("empty", [[], pd.DataFrame(), pd.DataFrame(columns=["text", "target", "sense"])])
def test_error_no_examples_says_so_before_any_column_check(empty):
    with pytest.raises(ValueError, match="no examples: the examples are empty"):
        ds.validate(empty)
    call = ds.from_records if isinstance(empty, list) else ds.from_dataframe
    with pytest.raises(ValueError, match="no examples: the examples are empty"):
        call(empty)


def test_empty_files_and_selections_give_clear_errors(tmp_path, coarsewsd_dir):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no examples"):
        ds.read_jsonl(p)
    c = tmp_path / "empty.csv"
    c.write_text("text,target,sense\n")
    with pytest.raises(ValueError, match=r"empty\.csv: no examples"):
        ds.read_csv(c)
    with pytest.raises(ValueError, match="no words given"):
        ds.builtin([])
    root = tmp_path / "cw"
    shutil.copytree(coarsewsd_dir / "yard", root / "yard")
    for name in ("test.data.txt", "test.gold.txt"):
        (root / "yard" / name).write_text("")
    with pytest.raises(ValueError, match=r"yard/test\.data\.txt: no examples \(the file is empty\)"):
        ds.read_coarsewsd20(root, "yard", "test")


def test_integer_sense_labels_are_converted_with_a_warning_naming_them(tmp_path):
    p = _jsonl(tmp_path, [GOOD | {"sense": 0}, GOOD | {"sense": "river"}, GOOD | {"sense": 1}])
    with pytest.warns(UserWarning, match=r"2 integer label\(s\) were converted to str \(.*bad\.jsonl:1 "
                                         r"\(example 0, row 0\): 0 -> '0'; .*bad\.jsonl:3 .*: 1 -> '1'\)"):
        df = ds.read_jsonl(p)
    assert df["sense"].tolist() == ["0", "river", "1"]
    assert all(isinstance(v, str) for v in df["sense"])
    with pytest.warns(UserWarning, match="integer label"):  # numpy integers are integers too
        assert ds.validate(pd.DataFrame({"text": ["a b"], "span": ["0:1"], "sense": np.array([3])}))[
            "sense"].tolist() == ["3"]


@pytest.mark.parametrize("label", [1.5, 2.0, True, ["a"]])
def test_non_integer_non_string_sense_labels_are_refused_naming_the_row(label):
    with pytest.raises(ValueError, match=r"^example 1 \(row 1\): sense must be a string label"):
        ds.from_records([GOOD, GOOD | {"sense": label}])


def test_string_senses_and_explicit_occurrences_give_no_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.from_records([GOOD, {"text": "the bank near the bank", "target": "bank", "occurrence": 0, "sense": "x"},
                         {"text": "the bank near the bank", "span": "18:22", "sense": "y"}])


def test_a_target_occurring_twice_without_occurrence_warns_naming_the_examples(tmp_path):
    p = _jsonl(tmp_path, [GOOD, {"text": "the bank near the bank", "target": "bank", "sense": "x"},
                          {"text": "a bass , a bass guitar", "target": "bass", "occurrence": None, "sense": "y"}])
    with pytest.warns(UserWarning, match=r"2 target\(s\) occur more than once .* first occurrence was taken: "
                                         r".*bad\.jsonl:2 \(example 1, row 1\): 'bank' occurs 2 times.*"
                                         r"bad\.jsonl:3 \(example 2, row 2\): 'bass' occurs 2 times") as rec:
        df = ds.read_jsonl(p)
    assert len(rec) == 1  # one warning for the whole set
    assert df["char_start"].tolist() == [10, 4, 2]  # the first occurrence, as before


@pytest.mark.parametrize("text,target,start", [
    ("我去银行取钱", "银行", 2),                 # Chinese: no spaces between words
    ("昨日、銀行に行きました", "銀行", 3),          # Japanese: kanji then kana
    ("ฉันไปธนาคารเมื่อวาน", "ธนาคาร", 5),      # Thai
    ("他在bank工作", "bank", 2),                # a Latin word between ideographs
    ("i sat by the bank", "bank", 13),          # spaced scripts unchanged
])
def test_targets_in_scripts_without_spaces_are_found_at_any_character_boundary(text, target, start):
    df = ds.from_records([{"text": text, "target": target, "sense": "s"}])
    assert (df.char_start[0], df.char_end[0]) == (start, start + len(target))
    assert text[start:start + len(target)] == target


def test_a_target_inside_a_longer_word_error_gives_the_span_to_use():
    with pytest.raises(ValueError, match=r"row 0\): target 'bank' does not occur as a whole word .* inside a "
                                         r"longer word at characters 4:8.*span \"4:8\".*char_start=4 and char_end=8"):
        ds.from_records([{"text": "the banks are closed", "target": "bank", "sense": "f"}])
    # and the span it suggests works
    out = ds.from_records([{"text": "the banks are closed", "span": "4:8", "sense": "f"}])
    assert out["target"].tolist() == ["bank"]
    with pytest.raises(ValueError, match=r"'bank' does not occur as a whole word .* does not occur in it at all"):
        ds.from_records([{"text": "the river shore", "target": "bank", "sense": "f"}])


# ================================================================ the built-in set
_PUNCT = string.punctuation + "\u2018\u2019\u201c\u201d"


def _word_tokens(text: str) -> list[str]:
    """Whitespace tokens with punctuation stripped, punctuation-only tokens dropped."""
    return [t for t in (w.strip(_PUNCT) for w in text.split()) if t]


@pytest.fixture(scope="module")
def builtin():
    return ds.builtin()


def test_builtin_meets_the_spec(builtin):
    words = ds.builtin_words()
    assert len(words) >= 12 and sorted(builtin["word"].unique()) == words
    per_sense = builtin.groupby(["word", "sense"]).size()
    assert per_sense.min() >= 20
    assert builtin.groupby("word")["sense"].nunique().min() >= 2
    assert set(builtin.loc[builtin.word == "bank", "sense"]) == {"finance", "river"}
    for (word, sense), g in builtin.groupby(["word", "sense"]):
        counts = g["cue_position"].value_counts()
        assert counts.get("before", 0) >= 5 and counts.get("after", 0) >= 5, (word, sense, counts)
    assert builtin["example"].tolist() == list(range(len(builtin)))
    assert not builtin["text"].duplicated().any()
    assert (builtin["source"] == "builtin").all()


def test_builtin_targets_are_the_lemma_once_per_sentence(builtin):
    for text, s, e, word in zip(builtin.text, builtin.char_start, builtin.char_end, builtin.word):
        assert text[s:e] == word
        assert len(re.findall(rf"\b{word}\b", text, flags=re.IGNORECASE)) == 1, text


def test_builtin_cue_distance_and_position_recomputed(builtin):
    for row in builtin.itertuples():
        toks = [t.lower() for t in _word_tokens(row.text)]
        t_idx = [i for i, t in enumerate(toks) if t == row.word]
        c_idx = [i for i, t in enumerate(toks) if t == row.cue.lower()]
        assert len(t_idx) == 1 and len(c_idx) == 1, row.text
        assert row.cue in row.text
        assert row.cue_distance == abs(t_idx[0] - c_idx[0]) - 1, row.text
        assert row.cue_position == ("before" if c_idx[0] < t_idx[0] else "after"), row.text


def test_builtin_selection_by_word(builtin):
    bank = ds.builtin("bank")
    assert set(bank.word) == {"bank"} and len(bank) == (builtin.word == "bank").sum()
    two = ds.builtin("bank,bass")
    pd.testing.assert_frame_equal(two, ds.builtin(["bank", "bass"]))
    assert two["word"].tolist() == ["bank"] * len(bank) + ["bass"] * (builtin.word == "bass").sum()
    assert two["example"].tolist() == list(range(len(two)))
    with pytest.raises(ValueError, match="unknown built-in word.*'banana'.*known words: bank, bass"):
        ds.builtin("bank,banana")


def test_sense_words_cover_every_builtin_sense(builtin):
    for word in ds.builtin_words():
        table = ds.sense_words(word)
        assert set(table) == set(builtin.loc[builtin.word == word, "sense"]), word
        for sense, signal in table.items():
            assert 5 <= len(signal) <= 10 and len(set(signal)) == len(signal), (word, sense)
            assert all(isinstance(w, str) and w and " " not in w and w != word for w in signal)
    assert {"river", "water"} <= set(ds.sense_words("bank")["river"])
    assert {"money", "loan"} <= set(ds.sense_words("bank")["finance"])
    with pytest.raises(ValueError, match="known words"):
        ds.sense_words("banana")


def test_corpus_is_large_and_separate_from_the_polysemy_set(builtin):
    sentences = ds.corpus()
    assert len(sentences) >= 400
    assert len(set(sentences)) == len(sentences)
    assert not set(sentences) & set(builtin["text"])
    assert all(len(s.split()) >= 4 for s in sentences)


# ================================================================ CoarseWSD-20
def _raw_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


@pytest.mark.parametrize("word", ["bank", "club", "yard", "spring"])
def test_coarsewsd20_matches_raw_files(coarsewsd_dir, word):
    classes = json.loads((coarsewsd_dir / word / "classes_map.txt").read_text())
    frames = []
    for split in ("train", "test"):
        df = ds.read_coarsewsd20(coarsewsd_dir, word, split)
        data = _raw_lines(coarsewsd_dir / word / f"{split}.data.txt")
        gold = _raw_lines(coarsewsd_dir / word / f"{split}.gold.txt")
        assert len(df) == len(data) == len(gold)
        assert (df["split"] == split).all() and (df["source"] == "coarsewsd20").all()
        assert df["sense_id"].tolist() == [int(g) for g in gold]
        for (text, s, e, target), line in zip(df[["text", "char_start", "char_end", "target"]].values, data):
            idx, sentence = line.split("\t", 1)
            assert text == sentence and text[s:e] == target == word
            assert sentence.split()[int(idx)] == word  # the token at word_index is the word
        names = {int(k): ds.coarsewsd20_sense_name(word, v) for k, v in classes.items()}
        assert df["sense"].tolist() == [names[int(g)] for g in gold]
        frames.append(df)
    both = ds.read_coarsewsd20(coarsewsd_dir, word, "all")
    assert len(both) == sum(map(len, frames))
    assert both["example"].tolist() == list(range(len(both)))
    assert both["text"].tolist() == pd.concat(frames)["text"].tolist()


def test_coarsewsd20_bank_sense_names(coarsewsd_dir):
    df = ds.read_coarsewsd20(coarsewsd_dir, "bank")
    assert set(df["sense"]) == {"bank", "geography"}
    assert "bank" in ds.coarsewsd20_words(coarsewsd_dir)


@pytest.mark.parametrize("raw,name", [
    ("bank_bank", "bank"), ("bank_bank_(geography)", "geography"), ("spring_spring_(season)", "season"),
    ("apple_apple_inc.", "apple_inc."), ("square_town_square", "town_square"),
])
def test_coarsewsd20_sense_name(raw, name):
    assert ds.coarsewsd20_sense_name(raw.split("_")[0], raw) == name


def test_coarsewsd20_errors(coarsewsd_dir, tmp_path):
    with pytest.raises(ValueError, match="no CoarseWSD-20 word 'banana'.*available words: apple, arm, bank"):
        ds.read_coarsewsd20(coarsewsd_dir, "banana")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ds.read_coarsewsd20(tmp_path / "nowhere", "bank")
    with pytest.raises(ValueError, match="split must be one of"):
        ds.read_coarsewsd20(coarsewsd_dir, "bank", "dev")
    root = tmp_path / "cw"
    shutil.copytree(coarsewsd_dir / "yard", root / "yard")
    gold = root / "yard" / "train.gold.txt"
    gold.write_text("\n".join(_raw_lines(gold)[:-2]) + "\n")
    with pytest.raises(ValueError, match=r"train\.data\.txt has 144 lines but .*train\.gold\.txt has 142"):
        ds.read_coarsewsd20(root, "yard")
    gold.write_text("\n".join(["0"] * 143 + ["7"]) + "\n")
    with pytest.raises(ValueError, match=r"train\.gold\.txt:144: sense number 7 is not in"):
        ds.read_coarsewsd20(root, "yard")


# ================================================================ specs
def test_load_dataset_specs(coarsewsd_dir, tmp_path):
    pd.testing.assert_frame_equal(ds.load_dataset("builtin"), ds.builtin())
    pd.testing.assert_frame_equal(ds.load_dataset("builtin:bank"), ds.builtin("bank"))
    pd.testing.assert_frame_equal(ds.load_dataset("builtin:bank,bass"), ds.builtin("bank,bass"))
    pd.testing.assert_frame_equal(ds.load_dataset(f"coarsewsd20:{coarsewsd_dir}:yard"),
                                  ds.read_coarsewsd20(coarsewsd_dir, "yard", "train"))
    pd.testing.assert_frame_equal(ds.load_dataset(f"coarsewsd20:{coarsewsd_dir}:yard:test"),
                                  ds.read_coarsewsd20(coarsewsd_dir, "yard", "test"))
    p = _jsonl(tmp_path, [GOOD, GOOD | {"text": "bank of the river"}])
    assert ds.load_dataset(str(p))["char_start"].tolist() == [10, 0]
    c = tmp_path / "ex.csv"
    pd.DataFrame([{"text": "a bank", "span": "2:6"}]).to_csv(c, index=False)
    assert ds.load_dataset(c)["target"].tolist() == ["bank"]
    with pytest.raises(ValueError, match=r"^unknown built-in word\(s\) 'bnak'; known words: bank, bass"):
        ds.load_dataset("builtin:bnak")
    with pytest.raises(ValueError, match="unknown dataset spec"):
        ds.load_dataset("imagenet")
    with pytest.raises(FileNotFoundError):
        ds.load_dataset(tmp_path / "missing.jsonl")


# ================================================================ sampling
def test_stratified_sample_keeps_every_cell():
    df = pd.DataFrame({"word": ["w"] * 100, "sense": ["a"] * 90 + ["b"] * 10, "example": range(100)})
    sub = ds.stratified_sample(df, 20, random_state=0)
    counts = sub["sense"].value_counts()
    assert counts["a"] == 18 and counts["b"] == 2
    assert sub["example"].tolist() == list(range(len(sub)))


def test_stratified_sample_cell_sizes_are_the_closest_shares_of_at_least_one_summing_to_n():
    # cells of 50, 30, 15, 4, 1 rows; n = 20 of 100: shares 10, 6, 3, 0.8, 0.2. Every cell keeps a row
    # (d and e get 1), so one row comes off the others: from the largest cell, where it matters least
    sizes = {"a": 50, "b": 30, "c": 15, "d": 4, "e": 1}
    df = pd.DataFrame({"sense": [s for s, k in sizes.items() for _ in range(k)], "row": range(100)})
    sub = ds.stratified_sample(df, 20, strata="sense", random_state=3)
    assert sub["sense"].value_counts().to_dict() == {"a": 9, "b": 6, "c": 3, "d": 1, "e": 1}
    assert len(sub) == 20
    assert sub["row"].is_monotonic_increasing and sub["row"].is_unique  # original order, no repeats
    # a str names one column, as a one-element tuple does; absent columns are ignored
    pd.testing.assert_frame_equal(sub, ds.stratified_sample(df, 20, strata=("sense", "word"), random_state=3))
    assert not sub.equals(ds.stratified_sample(df, 20, strata="sense", random_state=4))  # the seed draws


def test_stratified_sample_sizes_minimise_the_squared_deviation_from_the_shares_by_brute_force():
    import itertools

    rng = np.random.default_rng(0)
    for _ in range(150):
        sizes = rng.integers(1, 8, size=int(rng.integers(1, 5)))
        total = int(sizes.sum())
        n = int(rng.integers(len(sizes), total + 1))
        df = pd.DataFrame({"sense": np.repeat([f"s{i}" for i in range(len(sizes))], sizes)})
        got = ds.stratified_sample(df, n, strata="sense")["sense"].value_counts()
        counts = np.array([got.get(f"s{i}", 0) for i in range(len(sizes))])
        assert counts.sum() == n and (counts >= 1).all() and (counts <= sizes).all()
        share = n * sizes / total
        best = min(sum((np.array(c) - share) ** 2) for c in itertools.product(*[range(1, k + 1) for k in sizes])
                   if sum(c) == n)
        assert ((counts - share) ** 2).sum() == pytest.approx(best)


def test_stratified_sample_total_is_exactly_n_and_keeps_every_cell():
    # 4 word x sense cells of 2, 3, 7, 11 rows: every n from 4 to 22 gives n rows, every cell kept
    cells = [("bank", "river", 2), ("bank", "finance", 3), ("bass", "fish", 7), ("bass", "music", 11)]
    df = pd.DataFrame([{"word": w, "sense": s, "example": 0} for w, s, k in cells for _ in range(k)])
    df["example"] = range(len(df))
    for n in range(4, len(df)):
        sub = ds.stratified_sample(df, n, random_state=1)
        assert len(sub) == n, n
        assert sub.groupby(["word", "sense"]).size().min() >= 1 and sub.groupby(["word", "sense"]).ngroups == 4
    assert len(ds.stratified_sample(df, len(df))) == len(df) == len(ds.stratified_sample(df, 100))
    with pytest.raises(ValueError, match=r"n=3 is smaller than the 4 cells of word, sense.*give n >= 4"):
        ds.stratified_sample(df, 3)
    assert len(ds.stratified_sample(df, 3, strata=())) == 3  # unstratified: any n


def test_stratified_sample_min_per_cell_keeps_that_many_of_every_cell_closest_to_the_shares():
    import itertools

    # the CoarseWSD-20 failure: a sense of 31 in 9,238 gets 1 of 300 by its share; 5 folds need 5
    df = pd.DataFrame({"sense": ["common"] * 9207 + ["container"] * 31})
    assert ds.stratified_sample(df, 300, strata="sense")["sense"].value_counts()["container"] == 1
    sub = ds.stratified_sample(df, 300, strata="sense", min_per_cell=5)
    assert sub["sense"].value_counts().to_dict() == {"common": 295, "container": 5}
    # a cell smaller than min_per_cell keeps all of its rows
    small = pd.DataFrame({"sense": ["a"] * 20 + ["b"] * 3})
    assert ds.stratified_sample(small, 10, strata="sense", min_per_cell=5)["sense"].value_counts().to_dict() == {
        "a": 7, "b": 3}
    with pytest.raises(ValueError, match=r"n=7 .*keeps min_per_cell=5 rows \(or all\) of every cell: give n >= 8"):
        ds.stratified_sample(small, 7, strata="sense", min_per_cell=5)
    with pytest.raises(TypeError, match="min_per_cell must be a positive int"):
        ds.stratified_sample(small, 10, strata="sense", min_per_cell=2.0)
    rng = np.random.default_rng(1)  # brute force: the closest allocation within [min(m, size), size]
    for _ in range(100):
        sizes = rng.integers(1, 8, size=int(rng.integers(1, 4)))
        m = int(rng.integers(1, 5))
        low = np.minimum(sizes, m)
        n = int(rng.integers(low.sum(), sizes.sum() + 1))
        frame = pd.DataFrame({"sense": np.repeat([f"s{i}" for i in range(len(sizes))], sizes)})
        got = ds.stratified_sample(frame, n, strata="sense", min_per_cell=m)["sense"].value_counts()
        counts = np.array([got.get(f"s{i}", 0) for i in range(len(sizes))])
        share = n * sizes / sizes.sum()
        assert counts.sum() == n and (counts >= low).all() and (counts <= sizes).all()
        best = min(sum((np.array(c) - share) ** 2)
                   for c in itertools.product(*[range(lo, k + 1) for lo, k in zip(low, sizes)]) if sum(c) == n)
        assert ((counts - share) ** 2).sum() == pytest.approx(best)


def test_stratified_sample_keeps_rows_with_a_missing_stratum_as_a_cell_of_their_own():
    df = pd.DataFrame({"sense": ["a"] * 10 + [None] * 2, "row": range(12)})
    sub = ds.stratified_sample(df, 4, strata="sense")
    assert len(sub) == 4 and sub["sense"].isna().sum() >= 1


def test_stratified_sample_rejects_n_below_one():
    df = pd.DataFrame({"sense": ["a", "b"]})
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        ds.stratified_sample(df, 0)
    with pytest.raises(ValueError, match="n must be >= 1, got -5"):
        ds.stratified_sample(df, -5)


@pytest.mark.parametrize("n", [2.5, 3.0, "3", True, None])
def test_stratified_sample_refuses_an_n_that_is_not_an_int(n):
    df = pd.DataFrame({"sense": ["a", "b", "a", "b"]})
    with pytest.raises(TypeError, match=r"n must be a positive int .*got"):
        ds.stratified_sample(df, n)


def test_stratified_sample_takes_numpy_ints_and_refuses_an_empty_frame():
    df = pd.DataFrame({"sense": ["a", "b", "a", "b", "a"]})
    assert len(ds.stratified_sample(df, np.int64(3), strata="sense")) == 3
    with pytest.raises(ValueError, match="no examples to sample from"):
        ds.stratified_sample(df.iloc[:0], 3)


# ================================================================ the README's Data format example
README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_blocks(section: str) -> dict[str, str]:
    """The fenced blocks of one README section, by language (one block per language)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end > 0 else len(text)]
    blocks = re.findall(r"^```(\w+)\n(.*?)^```$", body, flags=re.MULTILINE | re.DOTALL)
    langs = [lang for lang, _ in blocks]
    assert len(set(langs)) == len(langs), langs
    return dict(blocks)


def test_the_readme_data_format_example_runs_and_gives_the_documented_spans(tmp_path, monkeypatch):
    blocks = _readme_blocks("Data format")
    assert set(blocks) == {"jsonl", "csv", "python"}
    (tmp_path / "bank.jsonl").write_text(blocks["jsonl"], encoding="utf-8")
    (tmp_path / "bank.csv").write_text(blocks["csv"], encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the documented example is one that needs no warning
        exec(compile(blocks["python"], "README.md (Data format)", "exec"), namespace)  # noqa: S102
    a, b = namespace["a"], namespace["b"]
    # independently: each JSONL record's target, found by plain string search
    records = [json.loads(line) for line in blocks["jsonl"].splitlines() if line.strip()]
    want = []
    for r in records:
        if "span" in r:
            s, e = map(int, r["span"].split(":"))
        elif "word_index" in r:
            token = r["text"].split()[r["word_index"]]
            s = r["text"].index(" " + token + " ") + 1 if r["word_index"] else 0
            e = s + len(token)
        else:
            s = -1
            for _ in range(r.get("occurrence", 0) + 1):
                s = r["text"].index(r["target"], s + 1)
            e = s + len(r["target"])
        want.append((s, e))
    assert list(zip(a["char_start"], a["char_end"])) == want
    assert list(zip(b["char_start"], b["char_end"])) == want  # the CSV says the same
    assert a["target"].tolist() == ["bank"] * 4 + ["银行"]
    assert a["word"].tolist() == ["bank"] * 5 and b["word"].tolist() == ["bank"] * 5
    assert a["sense"].tolist() == b["sense"].tolist() == [r["sense"] for r in records]
    # group defaults to the text where none is given; extra columns are kept
    assert a["group"].tolist() == b["group"].tolist() == [r.get("group", r["text"]) for r in records]
    assert a.loc[0, "annotator"] == b.loc[0, "annotator"] == "ana" and "annotator" in namespace["spans"]
    # the second example's target occurs twice and occurrence=1 chose the second
    assert a.loc[1, "char_start"] == a.loc[1, "text"].rindex("bank")
