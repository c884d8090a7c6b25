"""Peak memory of streamed extraction does not grow with the number of examples.

Extracts N1 and N2 examples (default 2,000 and 20,000: the CoarseWSD-20 words from ``../shared`` or the
built-in set, repeated as needed) into a Zarr store, each run in its own process, and reports the peak
resident memory (VmHWM) of each run and the growth from N1 to N2. Target: less than 10% growth.

Usage: ``python benchmarks/memory.py [--model smollm2] [--sizes 2000,20000] [--components]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import _rss, examples  # noqa: E402  (same data and peak-RSS reading as the speed benchmark)


def run_one(model: str, words: str, n: int, components: bool, max_point: int | None) -> dict:
    import pandas as pd

    import trajgeo as tg

    lm = tg.load_model(model)
    base = examples(words, 10**9)
    df = pd.concat([base] * (n // len(base) + 1), ignore_index=True).iloc[:n].copy()
    df["example"] = range(len(df))
    df["group"] = df.index.astype(str)  # repeated sentences are distinct examples here
    rss_model = _rss("VmRSS")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        traj = tg.extract(lm, df, components=components, store=Path(tmp) / "m.zarr", max_point=max_point,
                          batch_size=32, chunk_size=256, progress=False, lazy=True)
        shape = traj.states.shape
    return {"examples": n, "seconds": time.perf_counter() - t0, "peak_rss_mb": _rss("VmHWM"),
            "model_rss_mb": rss_model, "states_mb": 4 * shape[0] * shape[1] * shape[2] / 2**20}


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--words", default="bank,spring,square")
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--components", action="store_true")
    parser.add_argument("--max-point", type=int, default=None,
                        help="stop after this block (faster; memory behaviour is the same)")
    parser.add_argument("--out", default="results/bench_memory.csv", type=Path)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.model, args.words, args.one, args.components, args.max_point)))
        return 0
    rows = []
    for n in map(int, args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--one", str(n), "--model", args.model, "--words", args.words]
        cmd += ["--components"] if args.components else []
        cmd += ["--max-point", str(args.max_point)] if args.max_point is not None else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    table = pd.DataFrame(rows)
    table["peak_vs_first"] = table["peak_rss_mb"] / table["peak_rss_mb"].iloc[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"memory benchmark: {args.model}, streamed to a Zarr store"
          f"{' with components' if args.components else ''}")
    print(table.round(3).to_string(index=False))
    growth = table["peak_vs_first"].iloc[-1] - 1
    print(f"peak RSS growth from {table['examples'].iloc[0]} to {table['examples'].iloc[-1]} examples: "
          f"{growth:+.1%} (target < 10%); the states alone would take {table['states_mb'].iloc[-1]:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
