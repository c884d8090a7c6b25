"""The ``trajgeo`` command: the extract command gives what the library gives; user errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import trajgeo as tg
from trajgeo.cli import build_parser, main
from trajgeo.models import load_model


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory, corpus, span_frame):
    df = span_frame([c for c in corpus if " the " in f" {c} "], "the")
    df["sense"] = ["a", "b"] * (len(df) // 2) + ["a"] * (len(df) % 2)
    path = tmp_path_factory.mktemp("data") / "the.jsonl"
    with open(path, "w") as f:
        for r in df.itertuples():
            f.write(json.dumps({"text": r.text, "target": "the", "sense": r.sense, "word": "the"}) + "\n")
    return path, df


def test_extract_command_writes_the_store_the_library_would(tmp_path, saved_model, jsonl, capsys):
    path, df = jsonl
    out = tmp_path / "the.zarr"
    rc = main(["extract", "--model", str(saved_model), "--dataset", str(path), "--out", str(out),
               "--components", "--quiet"])
    assert rc == 0
    assert f"{len(df)} trajectories" in capsys.readouterr().out
    got = tg.load(out)
    want = tg.extract(load_model(saved_model), tg.datasets.read_jsonl(path), components=True, progress=False)
    np.testing.assert_allclose(got.states, want.states, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.components["attn"], want.components["attn"], rtol=1e-5, atol=1e-6)
    assert got.meta["sense"].tolist() == want.meta["sense"].tolist()


def test_max_examples_extracts_the_stratified_sample(tmp_path, saved_model, jsonl):
    path, df = jsonl
    out = tmp_path / "few.zarr"
    n = len(df) - 2
    assert main(["extract", "--model", str(saved_model), "--dataset", str(path), "--out", str(out),
                 "--max-examples", str(n), "--quiet"]) == 0
    want = tg.datasets.stratified_sample(tg.datasets.read_jsonl(path), n, random_state=0)
    got = tg.load(out).meta
    assert len(got) < len(df) and got["text"].tolist() == want["text"].tolist()
    assert got["sense"].value_counts().to_dict() == want["sense"].value_counts().to_dict()


def _one_line_error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    # the error is the last line (a model-loading progress bar may come before it), with no traceback
    last = err.splitlines()[-1]
    assert last.startswith("trajgeo: error: ") and "Traceback" not in err
    return last


def test_missing_store_is_one_clear_line(tmp_path, capsys):
    err = _one_line_error(["analyze", str(tmp_path / "nowhere.zarr")], capsys)
    assert "no store at" in err and "nowhere.zarr" in err


def test_missing_tables_folder_is_one_clear_line(tmp_path, capsys):
    err = _one_line_error(["figures", str(tmp_path / "nothing")], capsys)
    assert "no tables folder" in err


def test_unknown_builtin_word_is_one_clear_line(tmp_path, capsys):
    err = _one_line_error(["extract", "--dataset", "builtin:notaword", "--out", str(tmp_path / "x.zarr"),
                           "--model", "nowhere/not-a-model"], capsys)
    assert "notaword" in err


def test_lens_on_a_model_without_lm_head_is_one_clear_line(tmp_path, wtok, capsys):
    from transformers import BertConfig, BertModel

    enc = tmp_path / "encoder"
    BertModel(BertConfig(vocab_size=len(wtok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(enc)
    wtok.save_pretrained(enc)
    store = tmp_path / "s.zarr"
    tg.Trajectories(np.zeros((2, 3, 16), np.float32)).save(store)
    err = _one_line_error(["analyze", str(store), "--model", str(enc)], capsys)
    assert "LM head" in err and "lens" in err


def test_every_command_has_help_naming_its_options():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"extract", "analyze", "figures", "report"}
    assert "--dataset" in sub.choices["extract"].format_help()
    assert "--model" in sub.choices["report"].format_help()


def test_console_script_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "trajgeo.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "extract" in proc.stdout and "report" in proc.stdout
