"""Shared plumbing of the figure scripts: read an analysis's tables, draw one standard figure, save PDF + PNG.

Figure scripts never run a model: they read the parquet tables that the scripts in ``analyses/`` wrote
(``results/<analysis>/tables``) and fail with one clear line when those are missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
OUT = ROOT / "results" / "figures"


def parse(description: str, default_tables: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tables", type=Path, default=default_tables, help=f"default: {default_tables}")
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT}")
    parser.add_argument("--column", choices=["single", "double"], default="double")
    return parser.parse_args()


def need(path: Path, made_by: str) -> Path:
    if not path.exists():
        sys.exit(f"figures: {path} not found; run `python {made_by}` first")
    return path


def standard(name: str, analysis: str = "bank") -> int:
    """Draw the standard figure ``name`` (see trajgeo.report.FIGURES) from ``results/<analysis>/tables``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trajgeo import plotting, report

    needs, draw, caption = report.FIGURES[name]
    args = parse(caption, RESULTS / analysis / "tables")
    need(args.tables, f"analyses/{analysis}.py")
    tables = {k: v for k, v in report.read_tables(args.tables).items() if k in needs}
    missing = [k for k in needs if k not in tables]
    if missing:
        sys.exit(f"figures: {args.tables} has no {', '.join(missing)} table; run `python analyses/{analysis}.py`")
    with plotting.paper_style(column=args.column):
        fig = draw(tables, plotting)
        paths = plotting.savefig(fig, args.out / f"{analysis}_{name}")
        plt.close(fig)
    print("\n".join(map(str, paths)))
    return 0


def custom(name: str, description: str, table: Path, made_by: str, draw: Callable) -> int:
    """Draw a figure of one analysis-specific table with ``draw(df, plotting) -> Figure``; a ``draw`` that
    takes ``folder=`` gets the folder of ``--tables`` (where its sibling tables lie)."""
    import inspect

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from trajgeo import plotting

    args = parse(description, table)
    df = pd.read_parquet(need(args.tables, made_by))
    with plotting.paper_style(column=args.column):
        kw = {"folder": args.tables.parent} if "folder" in inspect.signature(draw).parameters else {}
        fig = draw(df, plotting, **kw)
        paths = plotting.savefig(fig, args.out / name)
        plt.close(fig)
    print("\n".join(map(str, paths)))
    return 0


CAUSAL = RESULTS / "causal"


def causal(name: str, description: str, tables: tuple[str, ...], draw: Callable) -> int:
    """Draw a figure of ``analyses/causal.py``'s tables with ``draw({model: {table: df}}, plotting) -> Figure``.

    Reads ``results/causal/full`` when it exists, else ``results/causal/quick`` (say which with ``--tables``);
    models lacking one of ``tables`` are left out (the analysis notes why), none at all is an error.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from trajgeo import plotting

    default = CAUSAL / "full" if (CAUSAL / "full").exists() else CAUSAL / "quick"
    args = parse(description, default)
    need(args.tables, "analyses/causal.py [--quick]")
    data = {}
    for folder in sorted(p for p in args.tables.iterdir() if p.is_dir()):
        if all((folder / f"{t}.parquet").exists() for t in tables):
            data[folder.name] = {t: pd.read_parquet(folder / f"{t}.parquet") for t in tables}
    if not data:
        sys.exit(f"figures: no model under {args.tables} has the {', '.join(tables)} table(s); "
                 "run `python analyses/causal.py` (add --quick for a light run)")
    with plotting.paper_style(column=args.column):
        fig = draw(data, plotting)
        paths = plotting.savefig(fig, args.out / name)
        plt.close(fig)
    print("\n".join(map(str, paths)))
    return 0
