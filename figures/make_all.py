"""`make figures`: run every figure script in this folder (each reads the tables of an analysis)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    failed = []
    for script in sorted(HERE.glob("*.py")):
        if script.name.startswith("_") or script.name == "make_all.py":
            continue
        rc = subprocess.call([sys.executable, str(script)])
        if rc:
            failed.append(script.name)
    if failed:
        print(f"figures that could not be drawn: {', '.join(failed)}", file=sys.stderr)
    sys.exit(1 if failed else 0)
