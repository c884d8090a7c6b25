"""Tests for trajgeo.datasets.pairs: the built-in minimal pairs, the pairs reader, alignment on tokenizers."""

from __future__ import annotations

import importlib.util
import json
import re
import string
from itertools import permutations

import numpy as np
import pandas as pd
import pytest

from trajgeo import datasets as ds


def _words(text: str) -> list[str]:
    return text.split()


def _bare(word: str) -> str:
    return word.strip(string.punctuation)


def _holds(word: str, cue: str) -> bool:
    """``cue`` is the whole of ``word`` but for punctuation and a possessive ("tree's" holds "tree")."""
    return re.fullmatch(rf"\W*{re.escape(cue)}(?:'s)?\W*", word) is not None


# ================================================================ the built-in set
def test_builtin_pairs_cover_every_builtin_word_with_senses_of_the_builtin_set():
    pairs = ds.minimal_pairs()
    assert sorted(pairs["word"].unique()) == ds.builtin_words()
    senses = ds.builtin().groupby("word")["sense"].agg(set)
    for word, grp in pairs.groupby("word"):
        assert set(grp["sense"]) | set(grp["counterfactual_sense"]) <= senses[word], word


def test_builtin_pairs_flip_in_every_direction_with_as_many_nulls():
    pairs = ds.minimal_pairs()
    sense_sets = ds.builtin().groupby("word")["sense"].agg(set)
    for word, grp in pairs.groupby("word"):
        before = grp[grp["cue_position"] == "before"]
        flips, nulls = before[before["kind"] == "flip"], before[before["kind"] == "same"]
        assert len(flips) >= 8, word
        assert abs(len(nulls) - len(flips)) <= 2, word
        directions = set(zip(flips["sense"], flips["counterfactual_sense"]))
        # every ordered pair of senses for two-sense words; every sense flipped to and from for more
        if len(sense_sets[word]) == 2:
            assert directions == set(permutations(sense_sets[word], 2)), word
        else:
            assert {a for a, _ in directions} == {b for _, b in directions} == sense_sets[word], word
        after = grp[grp["cue_position"] == "after"]
        assert 0 < (after["kind"] == "flip").sum() < len(flips), word  # a smaller set, for encoders


def test_flip_pairs_change_the_sense_and_null_pairs_keep_it():
    pairs = ds.minimal_pairs()
    flip = pairs["kind"] == "flip"
    assert set(pairs["kind"]) == {"flip", "same"}
    assert (pairs.loc[flip, "sense"] != pairs.loc[flip, "counterfactual_sense"]).all()
    assert (pairs.loc[~flip, "sense"] == pairs.loc[~flip, "counterfactual_sense"]).all()
    # the null swaps a cue for another word: no null pair is a flip pair in disguise
    assert (pairs["cue"] != pairs["counterfactual_cue"]).all()


def test_builtin_pairs_differ_in_one_cue_word_on_the_stated_side_of_the_target():
    pairs = ds.minimal_pairs()
    assert pairs["pair"].is_unique
    for r in pairs.itertuples():
        a, b = _words(r.text), _words(r.counterfactual)
        assert len(a) == len(b), r.pair
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        assert len(diff) == 1, r.pair  # one whitespace word swapped
        k = diff[0]
        assert _holds(a[k], r.cue) and _holds(b[k], r.counterfactual_cue), r.pair
        # the target once in each text, at the given spans, on the stated side of the cue
        t = [i for i, w in enumerate(a) if _bare(w) == r.target]
        assert t == [i for i, w in enumerate(b) if _bare(w) == r.target] and len(t) == 1, r.pair
        assert (k < t[0]) == (r.cue_position == "before"), r.pair
        assert r.text[r.char_start:r.char_end] == r.target == r.counterfactual[r.cf_char_start:r.cf_char_end]
        # a cue before the target shifts its characters by the difference in the cue's length
        shift = len(r.counterfactual_cue) - len(r.cue) if r.cue_position == "before" else 0
        assert r.cf_char_start == r.char_start + shift, r.pair


def test_minimal_pairs_selections_keep_the_pair_ids_and_rows():
    full = ds.minimal_pairs().set_index("pair")
    sel = ds.minimal_pairs("tie,bank", kind="flip", cue_position="before")
    assert list(dict.fromkeys(sel["word"])) == ["tie", "bank"]
    assert (sel["kind"] == "flip").all() and (sel["cue_position"] == "before").all()
    expected = full[(full["word"].isin(["tie", "bank"])) & (full["kind"] == "flip")
                    & (full["cue_position"] == "before")]
    assert sorted(sel["pair"]) == sorted(expected.index)
    pd.testing.assert_frame_equal(sel.set_index("pair").sort_index(), expected.sort_index())
    assert len(ds.minimal_pairs(["bank"], kind="same")) == (
        (full["word"] == "bank") & (full["kind"] == "same")).sum()


@pytest.mark.parametrize("kwargs, message", [
    (dict(words="banks"), "unknown minimal-pair word"),
    (dict(kind="flipped"), "kind must be None or one of"),
    (dict(cue_position="near"), "cue_position must be None or one of"),
])
def test_minimal_pairs_rejects_unknown_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ds.minimal_pairs(**kwargs)


# ================================================================ the reader
def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_read_pairs_round_trips_the_builtin_set(tmp_path):
    pairs = ds.minimal_pairs()
    full = _write_jsonl(tmp_path / "full.jsonl", pairs.drop(columns="source").to_dict("records"))
    back = ds.read_pairs(full)
    assert (back["source"] == str(full)).all()
    pd.testing.assert_frame_equal(back.drop(columns="source"), pairs.drop(columns="source"))

    # only what a user must write: ids, spans, cues and the cue's side are found again
    needed = ["text", "counterfactual", "target", "sense", "counterfactual_sense", "kind", "group"]
    lean = _write_jsonl(tmp_path / "lean.jsonl", pairs[needed].to_dict("records"))
    back = ds.read_pairs(lean)
    np.testing.assert_array_equal(back["pair"], np.arange(len(pairs)))
    pd.testing.assert_frame_equal(back.drop(columns=["pair", "source"]),
                                  pairs.drop(columns=["pair", "source"]))


def test_read_pairs_defaults_kind_to_flip_and_fills_a_null_pairs_sense(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [
        {"pair": 7, "text": "I sat on the river bank.", "counterfactual": "I sat on the savings bank.",
         "target": "bank", "sense": "river", "counterfactual_sense": "finance"},
        {"pair": 3, "text": "I sat on the river bank.", "counterfactual": "I sat on the muddy bank.",
         "target": "bank", "sense": "river", "kind": "same"},
    ])
    back = ds.read_pairs(path)
    assert back["pair"].tolist() == [7, 3]
    assert back["kind"].tolist() == ["flip", "same"]
    assert back["counterfactual_sense"].tolist() == ["finance", "river"]
    assert back["cue"].tolist() == ["river", "river"]
    assert back["counterfactual_cue"].tolist() == ["savings", "muddy"]
    assert back["word"].tolist() == ["bank", "bank"]
    assert back[["char_start", "char_end", "cf_char_start", "cf_char_end"]].values.tolist() == [
        [19, 23, 21, 25], [19, 23, 19, 23]]


_GOOD = {"text": "I sat on the river bank.", "counterfactual": "I sat on the savings bank.", "target": "bank",
         "sense": "river", "counterfactual_sense": "finance"}


@pytest.mark.parametrize("bad, message", [
    (dict(counterfactual="I sat on the savings bench."), "counterfactual.*target 'bank' does not occur"),
    (dict(text="I sat on the river bench."), "target 'bank' does not occur"),
    (dict(counterfactual_sense="river"), "kind 'flip' but sense and counterfactual_sense are both 'river'"),
    (dict(kind="same"), r"kind 'same' but the sense changes \('river' -> 'finance'\)"),
    (dict(kind="swap"), "kind must be 'flip' or 'same', got 'swap'"),
    (dict(counterfactual="I sat on the river bank."), "text and counterfactual are identical"),
    (dict(counterfactual="I sat on the river  bank."), "differ only in whitespace"),
    (dict(counterfactual_sense=None), "counterfactual_sense is missing"),
    (dict(cue="sat"), "cue 'sat' is not among the words of the text that differ \\('river'\\)"),
    (dict(counterfactual_cue="river"), "counterfactual_cue 'river' is not among the words of the "
                                       "counterfactual that differ"),
    (dict(cue_position="after"), "cue_position is 'after', but the texts differ before the target"),
    (dict(counterfactual="I sat on the savings bank today."), "not all on one side of the target 'bank'"),
    (dict(char_start=0, char_end=3), "span 0:3 covers 'I s', not the given target 'bank'"),
])
def test_read_pairs_names_the_bad_row_and_what_is_wrong(tmp_path, bad, message):
    rows = [dict(_GOOD, pair=10), dict(_GOOD, pair=11, **bad), dict(_GOOD, pair=12)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[:1]) + "\n\n"  # a blank line: line numbers count it
                    + "\n".join(json.dumps(r) for r in rows[1:]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as err:
        ds.read_pairs(path)
    assert f"{path}:3, pair 11" in str(err.value)  # the file line and the pair
    assert "pair 10" not in str(err.value) and "pair 12" not in str(err.value)


def test_read_pairs_rejects_duplicate_ids_missing_columns_and_bad_json(tmp_path):
    path = _write_jsonl(tmp_path / "dup.jsonl", [dict(_GOOD, pair=1), dict(_GOOD, pair=1)])
    with pytest.raises(ValueError, match="pair id 1 is not unique"):
        ds.read_pairs(path)
    path = _write_jsonl(tmp_path / "nocf.jsonl", [{k: v for k, v in _GOOD.items() if k != "counterfactual"}])
    with pytest.raises(KeyError, match="pairs lack the column 'counterfactual'"):
        ds.read_pairs(path)
    path = _write_jsonl(tmp_path / "half.jsonl", [dict(_GOOD, cf_char_start=21)])
    with pytest.raises(KeyError, match="cf_char_start but no cf_char_end"):
        ds.read_pairs(path)
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(_GOOD) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}:2: not valid JSON"):
        ds.read_pairs(path)
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no pairs"):
        ds.read_pairs(path)


# ================================================================ alignment
def _pairs(*rows) -> pd.DataFrame:
    return pd.DataFrame([dict(zip(("text", "counterfactual", "target", "sense", "counterfactual_sense"), r))
                         for r in rows])


def test_align_pairs_finds_planted_misalignments_with_the_right_reason(wtok):
    # wtok maps every whitespace word to one token (unknown words to [UNK]): positions are word indices
    pairs = _pairs(
        ("i sat by the river bank", "i sat by the muddy bank", "bank", "river", "river"),  # aligned
        ("i sat by the river bank", "i sat by the slow brown bank", "bank", "river", "river"),  # extra before
        ("she went to the bank to deposit her salary", "she went to the bank to deposit her savings account",
         "bank", "finance", "finance"),  # extra token after the target
        ("i sat by the zebra bank", "i sat by the giraffe bank", "bank", "x", "x"),  # both [UNK]
    ).assign(kind="same")
    out = ds.align_pairs(wtok, pairs)
    assert list(out.columns) == list(ds.pairs.ALIGN_COLUMNS)
    assert out["aligned"].tolist() == [True, False, False, False]
    assert out["n_tokens"].tolist() == [6, 6, 9, 6]
    assert out["target_start"].tolist() == [5, 5, 4, 5] and out["target_end"].tolist() == [6, 6, 5, 6]
    assert out["cue_positions"].tolist() == [(4,), (), (), ()]
    assert out["reason"].iat[0] == ""
    assert out["reason"].iat[1] == ("lengths differ (6 vs 7 tokens); target moved (tokens 5:6 in the text, "
                                    "6:7 in the counterfactual)")
    assert out["reason"].iat[2] == "lengths differ (9 vs 10 tokens)"  # the target stays where it was
    assert out["reason"].iat[3].startswith("no difference")


def test_align_pairs_reports_every_differing_position_and_the_target_tokens(trained_tokenizer):
    # small trained tokenizers split words into several tokens: check against the tokenizer's own output
    pairs = ds.minimal_pairs("bank,crane,match,pitcher", cue_position="before")
    for style in ("bpe", "sentencepiece", "wordpiece"):
        tok = trained_tokenizer(style)
        out = ds.align_pairs(tok, pairs)
        assert out["pair"].tolist() == pairs["pair"].tolist()
        assert out["aligned"].any() and not out["aligned"].all(), style  # both cases are exercised
        for r, p in zip(out.itertuples(), pairs.itertuples()):
            a = tok(p.text)["input_ids"]
            b = tok(p.counterfactual)["input_ids"]
            assert r.n_tokens == len(a)
            assert tok.decode(a[r.target_start:r.target_end]).strip().lower() == p.target
            if r.aligned:
                assert r.cue_positions == tuple(i for i in range(len(a)) if a[i] != b[i]) != ()
                assert r.cue_positions[-1] < r.target_start  # the cue is before the target
            else:
                assert r.cue_positions == () and (len(a) != len(b)) == ("lengths differ" in r.reason)


def test_align_pairs_checks_raw_pairs_and_needs_offsets(wtok):
    raw = _pairs(("i sat by the river bank", "i sat by the muddy bank", "bank", "river", "finance"))
    out = ds.align_pairs(wtok, raw)
    assert bool(out["aligned"].iat[0]) and out["pair"].tolist() == [0]
    with pytest.raises(ValueError, match="kind 'flip' but sense and counterfactual_sense"):
        ds.align_pairs(wtok, raw.assign(counterfactual_sense="river"))

    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="needs a fast tokenizer"):
        ds.align_pairs(Slow(), raw)


# ================================================================ the shipped tokenizers
@pytest.fixture(scope="module")
def gemma3_tokenizer():
    """Gemma 3's tokenizer alone, read from the shipped GGUF file (no weights de-quantised)."""
    import transformers as tf

    from trajgeo.models import SHIPPED_MODELS, shipped_model_path

    entry = SHIPPED_MODELS["gemma3-270m"]
    if any(importlib.util.find_spec(p) is None for p in [entry["package"], *entry["chunks"]]):
        pytest.skip("shipped Gemma 3 packages are not installed (make install installs them)")
    path = shipped_model_path("gemma3-270m")
    return tf.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "minilm", "gemma3_tokenizer"])
def test_every_builtin_pair_aligns_on_the_shipped_tokenizers_differing_in_the_cue_token_only(request, name):
    loaded = request.getfixturevalue(name)
    tok = loaded if name == "gemma3_tokenizer" else loaded.tokenizer
    pairs = ds.minimal_pairs()
    out = ds.align_pairs(tok, pairs)
    assert out["aligned"].all(), out.loc[~out["aligned"], ["pair", "reason"]].to_string()
    if loaded is not tok:  # a LoadedModel stands for its tokenizer
        pd.testing.assert_frame_equal(ds.align_pairs(loaded, pairs), out)
    bare = ds.align_pairs(tok, pairs, add_special_tokens=False)
    assert bare["aligned"].all()
    for r, b, p in zip(out.itertuples(), bare.itertuples(), pairs.itertuples()):
        enc = tok(p.text, return_offsets_mapping=True, return_special_tokens_mask=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        cf = tok(p.counterfactual)["input_ids"]
        assert len(ids) == len(cf) == r.n_tokens
        # one contiguous span of tokens differs, and it is the cue, on its side of the target
        diff = [i for i in range(len(ids)) if ids[i] != cf[i]]
        assert diff == list(r.cue_positions) == list(range(diff[0], diff[-1] + 1)), p.pair
        s, e = offsets[diff[0]][0], offsets[diff[-1]][1]
        assert p.text[s:e].strip() == p.cue, p.pair
        assert (e <= p.char_start) if p.cue_position == "before" else (s >= p.char_end), p.pair
        assert tok.decode(ids[r.target_start:r.target_end]).strip().lower() == p.target
        # the special tokens in front shift every position by the same amount
        lead = 0
        while enc["special_tokens_mask"][lead]:
            lead += 1
        assert (r.target_start - b.target_start, r.target_end - b.target_end) == (lead, lead)
        assert tuple(k - lead for k in r.cue_positions) == b.cue_positions
