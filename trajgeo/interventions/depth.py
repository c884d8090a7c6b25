"""Depth as an intervention: skip a block or a range of blocks and measure what the target's final sense and
the model's loss keep."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from trajgeo.engine import Engine, Pool, Site
from trajgeo.interventions._examples import (batches, example_carrier, prepare, run_rows, token_losses,
                                             words_and_groups)
from trajgeo.normalization import DEFAULT_NORMALIZE
from trajgeo.trajectories import Trajectories

__all__ = ["skip_layers", "DEPTH_METRICS"]

DEPTH_METRICS = ("final_separability", "lm_loss")
FRAME_COLUMNS = ("word", "start", "stop", "metric", "value", "ci_low", "ci_high")


def _ranges(ranges: Any, L: int) -> list[tuple[int, int]]:
    if ranges is None:
        return [(l, l + 1) for l in range(1, L + 1)]
    out = []
    for r in ranges:
        if isinstance(r, (int, np.integer)) and not isinstance(r, bool):
            r = (int(r), int(r) + 1)
        try:
            start, stop = (int(x) for x in r)
        except (TypeError, ValueError):
            raise ValueError(f"a range is a block l or a pair (start, stop) of blocks, got {r!r}") from None
        if not 1 <= start < stop <= L + 1:
            raise ValueError(f"range ({start}, {stop}) must satisfy 1 <= start < stop <= {L + 1} (blocks start..stop-1 "
                             f"of 1..{L} are skipped)")
        out.append((start, stop))
    if not out:
        raise ValueError("ranges is empty")
    return out


def skip_layers(
    model: Any,
    examples: Any,
    *,
    ranges: Sequence[Any] | None = None,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    cv: int = 5,
    normalize: str | None = DEFAULT_NORMALIZE,
    loss_on: str = "after_target",
    n_boot: int = 1000,
    ci: float = 0.95,
    pool: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    random_state: int | None = 0,
) -> pd.DataFrame:
    """Skip blocks (each returns its input) and measure the final separability of the senses and the LM loss.

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
    examples : DataFrame
        As :func:`trajgeo.extract` takes them.
    ranges : sequence of int or (start, stop), optional
        The blocks skipped in each run: ``(start, stop)`` skips blocks ``start..stop-1`` (1-based, as
        ``layer``); an int ``l`` is ``(l, l + 1)``. Default: every single block.
    labels, word, groups : str or array
    cv, normalize : int, str
        The separability probe: :func:`trajgeo.probes.layerwise` with the ridge probe at the last point,
        ``cv`` grouped folds.
    loss_on : {"after_target", "all"}
        The tokens whose next-token loss is averaged per example: those after the target (predicted from the
        target's last token on, as :func:`erase` measures it) or every next token of the text.
    n_boot, ci : int, float
        Cluster bootstrap over groups (the probe's pooled out-of-fold predictions; the examples' losses).
    pool : {"last", "first", "mean"}, optional
    batch_size : int
    progress : bool
    random_state : int or None
        Seeds the folds, the probes and the bootstraps.

    Returns
    -------
    DataFrame
        Columns ``word, start, stop, metric, value, ci_low, ci_high``: ``"final_separability"`` (the ridge
        probe's cross-validated balanced accuracy at the last point, per word) and ``"lm_loss"`` (causal LMs
        with a head; for ``loss_on="after_target"`` texts with tokens after the target: the mean next-token
        loss in nats over the ``loss_on`` tokens of each whole text, averaged over the word's examples). Rows
        with ``start == stop == 0`` are the unskipped baseline. How much depth a
        word's resolution needs: the ranges whose skipping drops its separability toward chance.
    """
    from tqdm.auto import tqdm

    from trajgeo.interventions.erasure import _mean_ci
    from trajgeo.lens._readout import _Readout
    from trajgeo.probes import layerwise

    if loss_on not in ("after_target", "all"):
        raise ValueError(f"loss_on must be 'after_target' or 'all', got {loss_on!r}")
    engine = Engine(model)
    lm = engine.lm
    L = engine.n_layers
    runs = [(0, 0)] + _ranges(ranges, L)
    with_loss = lm.adapter.causal and lm.adapter.unembed is not None
    inputs = prepare(lm, examples, pool=pool, full=with_loss)
    meta = inputs.meta
    n = len(inputs)
    info, labelled = example_carrier(lm, meta, L)
    words, has_word, g = words_and_groups(meta, labelled, word, groups)
    head = _Readout(lm) if with_loss else None
    final = Site.resid(L)
    rows_out = []
    bar = tqdm(total=n * len(runs), disable=not progress, desc=f"skip blocks ({lm.name})", unit="example")
    for start, stop in runs:
        skip = list(range(start, stop))
        states = np.zeros((n, 1, lm.d_model), np.float32)
        loss = np.full(n, np.nan)
        for rows in batches(inputs, batch_size):
            res = run_rows(engine, inputs, rows, read=[final], pooled=False, skip=skip)
            states[rows, 0] = Pool.mean([inputs.pool[i] for i in rows]).gather(res[final]).float().cpu().numpy()
            if with_loss:
                loss[rows] = token_losses(head, res[final], inputs, rows, after_target=loss_on == "after_target")
            bar.update(len(rows))
        traj = Trajectories(states, meta, points=[L], model_info=info)
        sep = layerwise(traj, labels=labels, word=word if has_word else None, groups=groups, normalize=normalize,
                        probe="ridge", cv=cv, n_boot=n_boot, ci=ci, random_state=random_state, progress=False)
        sep = sep[(sep["fold"] == -1) & (sep["metric"] == "balanced_accuracy")]
        for r in sep.itertuples(index=False):
            rows_out.append({"word": getattr(r, "word", None), "start": start, "stop": stop,
                             "metric": "final_separability", "value": r.value, "ci_low": r.ci_low,
                             "ci_high": r.ci_high})
        if with_loss:
            for w in pd.unique(words):
                sel = words == w
                if not np.isfinite(loss[sel]).any():
                    continue
                v, lo, hi = _mean_ci(loss[sel], g[sel], n_boot, ci, random_state)
                rows_out.append({"word": w if has_word else None, "start": start, "stop": stop, "metric": "lm_loss",
                                 "value": v, "ci_low": lo, "ci_high": hi})
    bar.close()
    out = pd.DataFrame(rows_out)
    if not has_word:
        out["word"] = None
    return out[list(FRAME_COLUMNS)]
