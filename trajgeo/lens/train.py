"""Train a model's tuned lens once and cache it: ``python -m trajgeo.lens.train --model smollm2``.

The lens trains on the built-in corpus plus the texts of ``--texts`` (a ``.txt`` file with one text
per line, or a ``.csv``/``.jsonl``/``.parquet`` table with a ``text`` column) until its held-out KL
stops improving, and is written to ``trajgeo.models.cache_dir() / "tuned_lens"`` (``$TRAJGEO_CACHE``
moves it), where :meth:`trajgeo.lens.TunedLens.cached` finds it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

__all__ = ["main"]


def _read_texts(path: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"--texts: no such file {p}")
    suffix = p.suffix.lower()
    if suffix in (".txt", ""):
        return [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    readers = {".csv": pd.read_csv, ".jsonl": lambda f: pd.read_json(f, lines=True), ".parquet": pd.read_parquet}
    if suffix not in readers:
        raise SystemExit(f"--texts: give a .txt (one text per line), .csv, .jsonl or .parquet file, not {p.name}")
    df = readers[suffix](p)
    if "text" not in df.columns:
        raise SystemExit(f"--texts: {p.name} has no 'text' column; columns are {list(df.columns)}")
    return df["text"].astype(str).tolist()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trajgeo.lens.train", description=__doc__.split("\n\n")[1])
    ap.add_argument("--model", required=True, help="a shipped model name (smollm2, ...) or a local path")
    ap.add_argument("--texts", action="append", default=[], help="more texts to train on (repeatable)")
    ap.add_argument("--no-corpus", action="store_true", help="train on --texts only, not the built-in corpus")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--validation-interval", type=int, default=None)
    ap.add_argument("--random-state", type=int, default=0)
    ap.add_argument("--no-cache", action="store_true", help="train and report, but do not write the cache")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)

    from trajgeo.lens.tuned import TunedLens, train_tuned_lens
    from trajgeo.models import load_model

    texts = [t for f in args.texts for t in _read_texts(f)]
    params = {k: v for k, v in {"lr": args.lr, "max_epochs": args.max_epochs, "max_tokens": args.max_tokens,
                                "validation_interval": args.validation_interval}.items() if v is not None}
    lm = load_model(args.model)
    lens = train_tuned_lens(lm, texts or None, cache=not args.no_cache, progress=not args.quiet,
                            add_corpus=not args.no_corpus, random_state=args.random_state, **params)
    summary = {"model": lm.name, "fingerprint": lens.model_fingerprint_,
               "cache": None if args.no_cache else str(TunedLens.cache_path(lm)),
               "train_positions": lens.n_train_positions_, "held_out_positions": lens.n_validation_positions_,
               "steps": lens.n_steps_, "best_step": lens.best_step_, "stopped_early": lens.stopped_early_,
               "held_out_kl_tuned": round(lens.held_out_kl_, 4), "held_out_kl_logit": round(lens.logit_held_out_kl_, 4),
               "seconds": round(lens.fit_seconds_, 1)}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
