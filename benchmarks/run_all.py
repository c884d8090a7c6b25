"""`make bench`: run every benchmark in this folder and print their tables (never run by the tests).

Each benchmark writes its CSV under ``results/``; a benchmark that fails is reported and the others go on.
Pass ``--quick`` for smaller sizes (a smoke run of the whole set).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (full arguments, quick arguments)
BENCHMARKS = {
    "extract.py": ([], ["--n", "64"]),
    "memory.py": ([], ["--sizes", "200,2000", "--max-point", "4"]),
    "metrics.py": ([], ["--quick"]),
    "probes.py": ([], ["--n", "400", "--points", "8"]),
    # SmolLM2 patching: 8 built-in pairs (about 2 minutes on 2 idle cores with the nnsight side-by-side)
    "interventions.py": ([], ["--quick"]),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=None, help="comma-separated benchmark files to run")
    args = parser.parse_args(argv)
    failed = []
    for name, (full, quick) in BENCHMARKS.items():
        if args.only and name not in args.only.split(","):
            continue
        if not (HERE / name).exists():
            continue
        print(f"\n=== {name} ===", flush=True)
        t0 = time.time()
        rc = subprocess.call([sys.executable, str(HERE / name), *(quick if args.quick else full)])
        print(f"({name}: {time.time() - t0:.0f} s, exit {rc})", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
