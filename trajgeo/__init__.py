"""trajgeo: the geometry of transformer residual-stream trajectories.

Typical use::

    import trajgeo as tg
    model = tg.load_model("smollm2")
    examples = tg.datasets.builtin("bank")
    traj = tg.extract(model, examples, components=True)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from trajgeo.trajectories import Trajectories, concat, load  # noqa: E402
# Bound eagerly so that `tg.extract` is the function, not the submodule of the same name (neither imports torch).
from trajgeo.extract import extract  # noqa: E402
from trajgeo.models import load_model  # noqa: E402
from trajgeo.store import verify  # noqa: E402

# Submodules and heavy entry points load on first use: `import trajgeo` must stay fast (no torch).
_SUBMODULES = {
    "datasets", "geometry", "lens", "models", "plotting", "probes", "projections",
    "senses", "stats", "toy", "cli", "report", "store", "engine", "interventions",
}
_ATTRS: dict[str, tuple[str, str]] = {}

__all__ = ["Trajectories", "concat", "load", "load_model", "extract", "verify", *sorted(_SUBMODULES)]


def __getattr__(name: str) -> Any:
    if name in _ATTRS:
        mod, attr = _ATTRS[name]
        return getattr(importlib.import_module(mod), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"trajgeo.{name}")
    raise AttributeError(f"module 'trajgeo' has no attribute {name!r}")
