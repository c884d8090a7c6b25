"""The ``trajgeo`` command: extract trajectories, analyse a store, draw its figures, build a report.

Examples
--------
::

    trajgeo extract --model smollm2 --dataset builtin:bank --out runs/bank.zarr
    trajgeo analyze runs/bank.zarr --model smollm2 --out runs/bank-tables
    trajgeo figures runs/bank-tables --out runs/bank-figures
    trajgeo report --model smollm2 --dataset builtin --out report
    trajgeo report --model minilm --dataset bat.jsonl --sense-words bat-senses.json --out bat-report
    trajgeo verify runs/bank.zarr

Errors that a user can fix (a missing store, an unknown word, a model without an LM head asked for
the lens, a store another run is writing) are printed as one line, ``trajgeo: error: ...``, with exit
status 2; numeric options are checked as they are parsed (a positive integer where one is needed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser", "read_sense_words"]

_EPILOG = "Run 'trajgeo <command> --help' for the options of one command."


def _int_type(minimum: int):
    """An argparse type: an integer >= ``minimum``, written as one (``2.5``, ``3.0`` and ``x`` are refused)."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be {'a positive integer' if minimum == 1 else f'an integer >= {minimum}'}, got {value}")
        return value

    parse.__name__ = "positive integer" if minimum == 1 else f"integer >= {minimum}"
    return parse


positive_int = _int_type(1)
nonnegative_int = _int_type(0)


def _add_extract_options(p: argparse.ArgumentParser, *, report: bool = False) -> None:
    p.add_argument("--model", default="smollm2",
                   help="shipped model name (smollm2, minilm, gemma3-270m), hub name, local directory or "
                        ".gguf file (default: smollm2)")
    p.add_argument("--dataset", default="builtin",
                   help="'builtin', 'builtin:bank[,bass...]', 'coarsewsd20:DIR:WORD[:SPLIT]', or a .jsonl/.csv "
                        "file with text, target (or char_start/char_end) and sense columns (default: builtin)")
    if report:
        p.add_argument("--components", action=argparse.BooleanOptionalAction, default=True,
                       help="store each block's attention and MLP write at the target, for the attribution figure "
                            "(default: on)")
        p.add_argument("--heads", action=argparse.BooleanOptionalAction, default=None,
                       help="store per-head attention writes (default: where the model family has them; not "
                            "BERT-style encoders such as minilm)")
    else:
        p.add_argument("--components", action="store_true",
                       help="also store each block's attention and MLP write at the target (for attribution)")
        p.add_argument("--heads", action="store_true",
                       help="also store per-head attention writes (implies --components)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="examples per forward pass (default: 16)")
    p.add_argument("--max-point", type=nonnegative_int, default=None,
                   help="stop after this block (default: all blocks)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="compute dtype of the model (default: float32)")
    p.add_argument("--storage-dtype", default="float32", choices=["float32", "float16"],
                   help="dtype of the arrays on disk (default: float32)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--max-examples", type=positive_int, default=None,
                   help="use at most this many examples (a stratified sample by word and sense)")


def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--permutations", type=nonnegative_int, default=200,
                   help="group-respecting label permutations of every null (probes, separability, surface-cue "
                        "baseline, sense-word read-out); 0: no null (default: 200)")
    p.add_argument("--sense-words", type=Path, default=None, metavar="FILE",
                   help="JSON file {word: {sense: [words, ...]}} of signal words for the lens's sense read-out; "
                        "words not in it use the built-in sense words where there are some, others are skipped")


def read_sense_words(path: str | Path) -> dict[str, dict[str, list[str]]]:
    """Read a ``--sense-words`` file: JSON ``{word: {sense: [words, ...]}}``; a clear error naming what is wrong."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no sense-words file at {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a JSON object {{word: {{sense: [words, ...]}}}}, got {type(data).__name__}")
    for word, table in data.items():
        if not isinstance(table, dict) or not table:
            raise ValueError(f"{path}: word {word!r} must map to an object {{sense: [words, ...]}}")
        for sense, words in table.items():
            if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
                raise ValueError(f"{path}: word {word!r}, sense {sense!r} must map to a non-empty list of words")
    return data


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``trajgeo`` command (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="trajgeo",
        description="Geometry of transformer residual-stream trajectories: how a target token's vector moves "
                    "from its context-free embedding to its resolved sense, layer by layer.",
        epilog=_EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    p = sub.add_parser("extract", help="extract target-token trajectories into a Zarr store",
                       description="Run the model over the examples and store each target token's residual "
                                   "vector at every point (0 = token embedding, l = after block l). An interrupted "
                                   "run resumes where it stopped.")
    _add_extract_options(p)
    p.add_argument("--out", required=True, type=Path, help="the Zarr store to write, e.g. runs/bank.zarr")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing trajgeo store (never a file or another folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines")

    p = sub.add_parser("analyze", help="run the standard metric suite on a saved store (parquet tables)",
                       description="Path geometry, population geometry, sense curves, commitment, superposition, "
                                   "attribution (if components were stored), probes, projections and, given "
                                   "--model, the logit lens. Writes one parquet table per analysis.")
    p.add_argument("store", type=Path, help="a store written by 'trajgeo extract'")
    p.add_argument("--out", type=Path, default=None, help="folder for the tables (default: <store>-tables)")
    p.add_argument("--model", default=None,
                   help="the model the store came from, needed for the logit lens (default: no lens); checked "
                        "against the store before any analysis")
    _add_analysis_options(p)
    p.add_argument("--random-state", type=nonnegative_int, default=0)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("figures", help="draw the standard figures from a folder of tables",
                       description="Reads the tables written by 'trajgeo analyze' and writes each figure as "
                                   "PDF and PNG. Never runs a model.")
    p.add_argument("tables", type=Path, help="a folder written by 'trajgeo analyze'")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the figures (default: beside the tables, <name>-figures for <name>-tables)")

    p = sub.add_parser("report", help="extract, analyse and draw everything into one folder with index.html",
                       description="The whole pipeline: extraction (cached in <out>/trajectories.zarr), the "
                                   "metric suite, every figure, a summary table and an index.html that shows them.")
    _add_extract_options(p, report=True)
    p.add_argument("--out", type=Path, default=Path("report"), help="report folder (default: report)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the report's cached trajectories.zarr when it holds another extraction")
    _add_analysis_options(p)
    p.add_argument("--next-token-texts", type=nonnegative_int, default=40,
                   help="texts of the data set on which the lens is scored against the next token (causal LMs; "
                        "0: none; default: 40)")
    p.add_argument("--causal-pairs", type=nonnegative_int, default=None,
                   help="built-in minimal pairs per word and kind for the light causal trace (causal LMs, built-in "
                        "words; default: 1 on the built-in set, else none)")
    p.add_argument("--random-state", type=nonnegative_int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress or loading bars")

    p = sub.add_parser("verify", help="check a store: every file against its checksum, every chunk present",
                       description="Reads every chunk of a store and compares it with the checksum recorded when "
                                   "it was written; lists every missing, truncated, changed or swapped file. Exit "
                                   "status 0 when the store is sound, 1 when it is not.")
    p.add_argument("store", type=Path, help="a store written by 'trajgeo extract' or Trajectories.save")
    p.add_argument("--upgrade", action="store_true",
                   help="for a store of trajgeo 0.1 (format 1, no checksums): check that every chunk reads, then "
                        "record checksums for it as it is now")
    return parser


def _examples(args: argparse.Namespace):
    from trajgeo import datasets

    df = datasets.load_dataset(args.dataset)
    if args.max_examples is not None and len(df) > args.max_examples:
        df = datasets.stratified_sample(df, args.max_examples, random_state=0)
    return df


def _say_skipped(tables: dict) -> None:
    """One line per skipped analysis (the page lists them too)."""
    skipped = tables.get("skipped")
    if skipped is None or not len(skipped):
        return
    print(f"skipped ({len(skipped)}):")
    for r in skipped.itertuples():
        print(f"  {r.analysis}{'' if r.word is None or r.word != r.word else f' [{r.word}]'}: {r.reason}")


def _run(args: argparse.Namespace) -> int:
    import trajgeo as tg

    if args.command == "verify":
        from trajgeo import store

        check = store.upgrade(args.store) if args.upgrade else store.verify(args.store)
        print(check)
        if check.ok and not check.verifiable:
            print(f"(written by trajgeo 0.1: no checksums; 'trajgeo verify --upgrade {args.store}' records them)")
        return 0 if check.ok else 1
    if args.command == "extract":
        from trajgeo import store

        store.check_target(args.out)  # a file, a foreign folder or no write access: before the model loads
        examples = _examples(args)  # a bad dataset fails before the model is loaded
        model = tg.load_model(args.model, dtype=args.dtype, device=args.device, progress=not args.quiet)
        traj = tg.extract(model, examples, components=args.components or args.heads, heads=args.heads,
                          store=args.out, batch_size=args.batch_size, max_point=args.max_point,
                          storage_dtype=args.storage_dtype, overwrite=args.overwrite, progress=not args.quiet)
        print(f"{traj.n_examples} trajectories of {traj.n_points} points (d_model {traj.d_model}) in {args.out}")
        return 0

    from trajgeo import report
    from trajgeo.report.tables import check_writable

    if args.command == "analyze":
        if not args.store.exists():
            raise FileNotFoundError(f"no store at {args.store} (write one with 'trajgeo extract')")
        out = args.out or args.store.with_name(args.store.name.removesuffix(".zarr") + "-tables")
        sense_words = read_sense_words(args.sense_words) if args.sense_words else None
        check_writable(out, what="a folder for tables")
        traj = tg.load(args.store)
        model = tg.load_model(args.model, progress=not args.quiet) if args.model else None
        if model is not None and model.adapter.unembed is None:
            raise ValueError(f"model {args.model!r} has no LM head: the logit lens needs an unembedding "
                             "(run analyze without --model to skip the lens)")
        if model is not None:
            report.check_model(model, traj)  # another width or depth: before any analysis
        tables = report.analyze(traj, model=model, out=out, random_state=args.random_state,
                                n_permutations=args.permutations, sense_words=sense_words, progress=not args.quiet)
        print(f"{len(tables)} tables in {out}: {', '.join(sorted(tables))}")
        _say_skipped(tables)
        return 0
    if args.command == "figures":
        if not args.tables.is_dir():
            raise FileNotFoundError(f"no tables folder at {args.tables} (write one with 'trajgeo analyze')")
        name = args.tables.resolve().name
        out = args.out or args.tables.resolve().with_name(
            (name.removesuffix("-tables") if name.endswith("-tables") else name) + "-figures")
        paths = report.figures(args.tables, out)
        print(f"{len({p.stem for p in paths})} figures (PDF and PNG) in {out}")
        return 0
    if args.command == "report":
        sense_words = read_sense_words(args.sense_words) if args.sense_words else None
        report.check_out(args.out)  # a file, no write access, a foreign trajectories.zarr: before the model loads
        examples = _examples(args)  # a bad dataset fails before the model is loaded
        index = report.build(args.model, examples, args.out, components=args.components, heads=args.heads,
                             dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                             max_point=args.max_point, storage_dtype=args.storage_dtype, overwrite=args.overwrite,
                             random_state=args.random_state, n_permutations=args.permutations,
                             sense_words=sense_words, next_token_texts=args.next_token_texts,
                             causal_pairs=args.causal_pairs, progress=not args.quiet)
        print(f"report: {index}")
        _say_skipped(report.read_tables(args.out / "tables"))
        return 0
    raise AssertionError(args.command)


def _one_line_warning(message: Any, category: type, *_args: Any, **_kwargs: Any) -> None:
    print(f"trajgeo: {category.__name__}: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trajgeo`` command; returns the exit status."""
    from trajgeo.store import StoreError

    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)

    if args.command is None:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():  # restores showwarning on the way out
            # a warning is one line that names itself, not a line of trajgeo's source under it
            warnings.showwarning = _one_line_warning
            return _run(args)
    except (OSError, KeyError, ValueError, ImportError, StoreError) as exc:
        # what the user can fix gets one line, not a traceback
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"trajgeo: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trajgeo: interrupted; run the same command again to resume the extraction", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
