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
    assert set(sub.choices) == {"extract", "analyze", "figures", "report", "verify"}
    assert "--dataset" in sub.choices["extract"].format_help()
    assert "--model" in sub.choices["report"].format_help()


def test_console_script_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "trajgeo.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "extract" in proc.stdout and "report" in proc.stdout


# ============================================================== options checked as they are parsed
@pytest.mark.parametrize("option, value, message", [
    ("--max-examples", "0", "must be a positive integer, got 0"),  # gave 2 examples
    ("--max-examples", "-5", "must be a positive integer, got -5"),  # gave 2 examples
    ("--max-examples", "2.5", "must be an integer, got '2.5'"),
    ("--batch-size", "-4", "must be a positive integer, got -4"),  # stored all-zero states as complete
    ("--batch-size", "0", "must be a positive integer, got 0"),
    ("--max-point", "2.5", "must be an integer, got '2.5'"),
    ("--max-point", "-1", "must be an integer >= 0, got -1"),
])
def test_numeric_options_are_refused_when_parsed(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exc:
        main(["extract", "--out", str(tmp_path / "x.zarr"), option, value])
    assert exc.value.code == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_random_state_must_be_a_nonnegative_integer(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["analyze", str(tmp_path), "--random-state", "-1"])
    assert "argument --random-state: must be an integer >= 0, got -1" in capsys.readouterr().err


def test_max_examples_gives_exactly_that_many_and_refuses_fewer_than_the_cells(tmp_path, saved_model, jsonl, capsys):
    _, df = jsonl
    path = tmp_path / "four-senses.jsonl"  # 7 examples of 4 senses: 4 word x sense cells
    with open(path, "w") as f:
        for i, text in enumerate(df["text"]):
            f.write(json.dumps({"text": text, "target": "the", "occurrence": 0, "sense": "abcd"[i % 4],
                                "word": "the"}) + "\n")
    out = tmp_path / "five.zarr"
    assert main(["extract", "--model", str(saved_model), "--dataset", str(path), "--out", str(out),
                 "--max-examples", "5", "--quiet"]) == 0
    assert len(tg.load(out).meta) == 5
    # 3 examples cannot represent 4 cells: a one-line error, nothing written
    err = _one_line_error(["extract", "--model", str(saved_model), "--dataset", str(path), "--out",
                           str(tmp_path / "three.zarr"), "--max-examples", "3", "--quiet"], capsys)
    assert "n=3" in err and "4" in err and not (tmp_path / "three.zarr").exists()


# ============================================================== the output is checked before the model loads
def test_an_output_that_is_a_file_is_refused_before_the_model_loads(tmp_path, jsonl, capsys):
    path, _ = jsonl
    out = tmp_path / "results.csv"
    out.write_text("a,b\n")
    # the model does not exist: the output is refused first
    err = _one_line_error(["extract", "--model", str(tmp_path / "no-model"), "--dataset", str(path), "--out", str(out),
                           "--overwrite"], capsys)
    assert "results.csv is a file, not a trajgeo store; nothing was written or deleted" in err
    assert out.read_text() == "a,b\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_overwrite_refuses_a_project_folder(tmp_path, saved_model, jsonl, capsys):
    path, _ = jsonl
    proj = tmp_path / "myproj"
    (proj / "tables").mkdir(parents=True)
    (proj / "notes.md").write_text("my notes")
    err = _one_line_error(["extract", "--model", str(saved_model), "--dataset", str(path), "--out", str(proj),
                           "--overwrite", "--quiet"], capsys)
    assert "myproj is a directory that is not a trajgeo store (it holds notes.md, tables)" in err
    assert (proj / "notes.md").read_text() == "my notes" and sorted(p.name for p in proj.iterdir()) == \
        ["notes.md", "tables"]


def test_a_store_another_run_writes_is_one_clear_line(tmp_path, saved_model, jsonl, capsys):
    import json
    import socket

    path, _ = jsonl
    out = tmp_path / "s.zarr"
    (tmp_path / "s.zarr.lock").write_text(json.dumps({"host": "gpu-node-3", "pid": 77, "since": "yesterday"}))
    err = _one_line_error(["extract", "--model", str(saved_model), "--dataset", str(path), "--out", str(out),
                           "--quiet"], capsys)
    assert "s.zarr is locked by process 77 on host gpu-node-3 since yesterday" in err and "delete" in err
    assert socket.gethostname() != "gpu-node-3"


def test_quiet_prints_no_loading_bars(tmp_path, saved_model, jsonl, capfd):
    path, _ = jsonl
    out = tmp_path / "q.zarr"
    assert main(["extract", "--model", str(saved_model), "--dataset", str(path), "--out", str(out), "--quiet"]) == 0
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err and "%|" not in captured.err
    assert main(["extract", "--model", str(saved_model), "--dataset", str(path), "--out", str(out)]) == 0
    assert "holds this extraction already" in capfd.readouterr().err  # not quiet: it says what it did


# ============================================================== verify
def test_verify_reports_a_sound_store_and_names_every_bad_chunk(tmp_path, capsys):
    rng = np.random.default_rng(0)
    store = tg.Trajectories(rng.normal(size=(6, 3, 4)).astype(np.float32)).save(tmp_path / "v.zarr", chunk_size=2)
    assert main(["verify", str(store)]) == 0
    assert "v.zarr: ok" in capsys.readouterr().out
    (store / "states/c/1/0/0").unlink()
    f = store / "states/c/2/0/0"
    f.write_bytes(f.read_bytes()[:-3])
    assert main(["verify", str(store)]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s)" in out and "chunk 1 of 'states' (states/c/1/0/0): is missing" in out
    assert "chunk 2 of 'states' (states/c/2/0/0): does not match its checksum" in out
    err = _one_line_error(["analyze", str(store)], capsys)  # the analysis stops at the bad chunk, naming it
    assert "chunk 1 of array 'states'" in err or "chunk 2 of array 'states'" in err


def test_verify_of_what_is_not_a_store_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    err = _one_line_error(["verify", str(tmp_path / "notes")], capsys)
    assert "is a directory but not a trajgeo store" in err


# ============================================================== report on your own data (issue 14)
def test_report_takes_the_extraction_options_of_extract():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    report_opts = {o for a in sub.choices["report"]._actions for o in a.option_strings}
    extract_opts = {o for a in sub.choices["extract"]._actions for o in a.option_strings}
    assert extract_opts - {"--quiet"} <= report_opts  # (report has its own --overwrite and --quiet)
    assert {"--sense-words", "--permutations", "--no-heads", "--no-components"} <= report_opts
    args = parser.parse_args(["report", "--max-point", "3", "--storage-dtype", "float16", "--batch-size", "4",
                              "--no-heads"])
    assert (args.max_point, args.storage_dtype, args.batch_size, args.heads, args.components) == \
        (3, "float16", 4, False, True)
    assert parser.parse_args(["report"]).heads is None  # default: where the model family has them


@pytest.mark.parametrize("option, value, message", [
    ("--max-point", "2.5", "must be an integer, got '2.5'"),
    ("--batch-size", "0", "must be a positive integer, got 0"),
    ("--permutations", "-1", "must be an integer >= 0, got -1"),
])
def test_report_numeric_options_are_refused_when_parsed(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit):
        main(["report", "--out", str(tmp_path / "r"), option, value])
    assert f"argument {option}: {message}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("content, says", [
    ("{not json", "is not valid JSON"),
    ('["bat"]', "expected a JSON object"),
    ('{"bat": ["cave"]}', "word 'bat' must map to an object"),
    ('{"bat": {"animal": "cave"}}', "word 'bat', sense 'animal' must map to a non-empty list of words"),
])
def test_a_bad_sense_words_file_is_one_line_before_the_model_loads(tmp_path, capsys, content, says):
    f = tmp_path / "senses.json"
    f.write_text(content)
    err = _one_line_error(["report", "--model", str(tmp_path / "no-model"), "--dataset", "builtin:bat",
                           "--sense-words", str(f), "--out", str(tmp_path / "r")], capsys)
    assert says in err and "senses.json" in err
    assert not (tmp_path / "r").exists()


def test_report_into_a_file_is_refused_before_the_model_loads(tmp_path, capsys):
    out = tmp_path / "report.txt"
    out.write_text("mine")
    err = _one_line_error(["report", "--model", str(tmp_path / "no-model"), "--out", str(out)], capsys)
    assert "report.txt is a file, not a report folder" in err and out.read_text() == "mine"


def test_report_with_a_foreign_trajectories_folder_is_refused_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "r" / "trajectories.zarr").mkdir(parents=True)
    (tmp_path / "r" / "trajectories.zarr" / "notes.md").write_text("x")
    err = _one_line_error(["report", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "r")], capsys)
    assert "not a trajgeo store" in err
    assert (tmp_path / "r" / "trajectories.zarr" / "notes.md").read_text() == "x"


def test_analyze_with_a_model_of_another_width_fails_before_any_table(tmp_path, saved_model, capsys):
    store = tmp_path / "s.zarr"
    meta = __import__("pandas").DataFrame({"sense": ["a", "b"], "word": "w"})
    tg.Trajectories(np.zeros((2, 3, 16), np.float32), meta).save(store)
    err = _one_line_error(["analyze", str(store), "--model", str(saved_model), "--quiet"], capsys)
    assert "d_model 16" in err and "32" in err
    assert not (tmp_path / "s-tables").exists() or not list((tmp_path / "s-tables").glob("*.parquet"))


def test_figures_default_folder_sits_beside_the_tables_not_in_a_shared_parent(tmp_path):
    import sys as _sys
    _sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_report import planted

    from trajgeo import report

    tables = tmp_path / "bank-tables"
    report.analyze(planted(n_per_sense=4, n_points=4, onset=2), out=tables, probe_folds=2, progress=False)
    assert main(["figures", str(tables)]) == 0
    assert list((tmp_path / "bank-figures").glob("*.png"))
    assert not (tmp_path / "figures").exists()


def _bat_jsonl(path):
    animal = ["A bat flew out of the cave at dusk.", "The bat hung upside down from the branch.",
              "We saw a bat hunting moths near the lamp.", "The small bat slept in the attic all winter.",
              "A fruit bat ate the ripe figs.", "The bat used echoes to find insects in the dark."]
    sport = ["He swung the bat and hit the ball hard.", "She bought a new cricket bat for the match.",
             "The wooden bat cracked on the first pitch.", "He gripped the bat tightly at the plate.",
             "The coach handed him a heavier bat for practice.", "Her bat was signed by the whole team."]
    with open(path, "w") as f:  # "bat" is built in with senses "animal"/"sports": here the senses differ
        for text in animal:
            f.write(json.dumps({"text": text, "target": "bat", "word": "flyer", "sense": "animal"}) + "\n")
        for text in sport:
            f.write(json.dumps({"text": text, "target": "bat", "word": "flyer", "sense": "sport"}) + "\n")
    return path


def _skipped(out):
    import pandas as pd

    sk = pd.read_parquet(out / "tables" / "skipped.parquet")
    return {(r.analysis, None if r.word is None or r.word != r.word else r.word): r.reason for r in sk.itertuples()}


@pytest.mark.slow
def test_report_end_to_end_on_a_word_that_is_not_built_in_smollm2(tmp_path, smollm2, capfd):
    data = _bat_jsonl(tmp_path / "flyer.jsonl")
    senses = tmp_path / "senses.json"
    senses.write_text(json.dumps({"flyer": {"animal": ["cave", "wings", "night"], "sport": ["ball", "hit", "swing"]}}))
    out = tmp_path / "r"
    assert main(["report", "--model", "smollm2", "--dataset", str(data), "--out", str(out), "--quiet",
                 "--sense-words", str(senses), "--permutations", "20", "--next-token-texts", "3"]) == 0
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err and "%|" not in captured.err  # --quiet silences loading bars
    page = (out / "index.html").read_text()
    skipped = _skipped(out)
    assert "one word only" in skipped[("reinforcement", None)]
    assert "not the built-in set" in skipped[("causal trace", None)]
    for fig in ("separability", "reference_matrix", "lens", "next_token", "superposition"):
        assert (out / "figures" / f"{fig}.png").exists(), fig
    from trajgeo import report

    t = report.read_tables(out / "tables")
    assert set(t["sense_readout"]["word"].dropna()) == {"flyer"} and "null_fwer" in t["sense_readout"]
    assert "separability_null_fwer" in t["summary"] and "<h2>Skipped</h2>" in page
    got = tg.load(out / "trajectories.zarr")
    assert got.components and "heads" in got.components  # a llama: per-head writes by default


@pytest.mark.slow
def test_report_end_to_end_on_a_word_that_is_not_built_in_minilm_skips_the_lens_and_heads(tmp_path, minilm):
    data = _bat_jsonl(tmp_path / "flyer.jsonl")
    out = tmp_path / "r"
    assert main(["report", "--model", "minilm", "--dataset", str(data), "--out", str(out), "--quiet",
                 "--permutations", "20", "--max-point", "4", "--storage-dtype", "float16"]) == 0
    skipped = _skipped(out)
    assert "no LM head" in skipped[("lens", None)]
    assert "not a causal LM" in skipped[("causal trace", None)]
    got = tg.load(out / "trajectories.zarr")
    assert got.n_points == 5 and "heads" not in (got.components or {})  # no heads for the BERT family
    assert got.model_info["extraction"]["storage_dtype"] == "float16"
    page = (out / "index.html").read_text()
    assert "no LM head" in page and (out / "figures" / "separability.png").exists()
    assert not (out / "figures" / "lens.png").exists()
