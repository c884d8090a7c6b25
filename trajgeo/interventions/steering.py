"""Steering the sense: add a multiple of the class-mean difference to the target's residual at one point and
read the final sense, against random directions of the same norm."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from trajgeo.engine import Edit, Engine, Pool, Site
from trajgeo.interventions._examples import (batches, check_int, check_sense_groups, example_carrier, permuted_labels,
                                             prepare, run_rows, sense_group_counts, words_and_groups)
from trajgeo.normalization import DEFAULT_NORMALIZE, PointNormalizer, check_method

__all__ = ["steer", "SteeringResult", "STEER_CONDITIONS", "STEER_METRICS"]

STEER_CONDITIONS = ("steer", "random")
STEER_METRICS = ("final_margin", "flip_rate")
# a held-out fold and two training halves (direction, judge): the fewest groups a sense can have
_MIN_GROUPS = 3
FRAME_COLUMNS = ("word", "layer", "alpha", "condition", "metric", "value", "ci_low", "ci_high", "n")


@dataclass
class SteeringResult:
    """``frame``: the table :func:`steer` returns. ``margins``: one row per (example, alpha, condition,
    draw) with the steered final ``margin``, the unsteered ``base_margin`` and ``flipped`` (draw: 0 for
    ``"steer"``, the random direction's index for ``"random"``). ``null`` (with ``n_permutations > 0``): the
    steered curves pooled over words, per ``alpha`` and metric, against the same procedure rerun with the
    senses permuted among groups within words: columns ``layer, alpha, metric, value, null_mean, null_q95,
    null_fwer, p_value, p_fwer`` (for ``final_margin`` the claim is a *lower* margin: its thresholds are lower
    band edges, ``p`` counts permutations at or below the observed curve)."""

    frame: pd.DataFrame
    margins: pd.DataFrame
    null: pd.DataFrame | None = None


class _Fold:
    """What one fold fits on its training groups: per sense, the unit steering direction toward the contrast
    (raw space, from half A of the groups) with its residual spread, and the final-point judge (half B)."""

    def __init__(self, x_l: np.ndarray, x_L: np.ndarray, y: np.ndarray, half_a: np.ndarray, half_b: np.ndarray,
                 normalize: str | None) -> None:
        self.senses = list(pd.unique(y))
        a_means = {s: x_l[half_a][y[half_a] == s].mean(0) for s in self.senses}
        self.u, self.sigma = {}, {}
        for s in self.senses:
            contrast = np.mean([a_means[t] for t in self.senses if t != s], axis=0)
            diff = contrast - a_means[s]
            norm = np.linalg.norm(diff)
            self.u[s] = diff / norm if norm > 0 else np.zeros_like(diff)
            # the spread of the residual along the direction (alpha's unit)
            self.sigma[s] = float(np.std(x_l[half_a] @ self.u[s], ddof=1)) if len(half_a) > 1 else 0.0
        self.norm = PointNormalizer(normalize).fit(x_L[half_b][:, None].astype(np.float32))
        z = self.norm.transform(x_L[half_b][:, None].astype(np.float32))[:, 0].astype(np.float64)
        self.means = {s: z[y[half_b] == s].mean(0) for s in self.senses}

    def margin(self, h: np.ndarray, own: np.ndarray) -> np.ndarray:
        """The judge: ``(z - (m_own + m_contrast) / 2) . unit(m_own - m_contrast)`` in normalised units,
        positive on the own sense's side."""
        z = self.norm.transform(h[:, None].astype(np.float32))[:, 0].astype(np.float64)
        out = np.empty(len(h))
        for s in self.senses:
            rows = own == s
            m_c = np.mean([self.means[t] for t in self.senses if t != s], axis=0)
            d = self.means[s] - m_c
            u = d / np.linalg.norm(d)
            out[rows] = (z[rows] - (self.means[s] + m_c) / 2) @ u
        return out


def steer(
    model: Any,
    examples: Any,
    *,
    layer: int,
    alphas: Sequence[float] = (0.0, 1.0, 2.0, 4.0, 8.0),
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    cv: int = 5,
    n_random: int = 4,
    n_permutations: int = 0,
    normalize: str | None = DEFAULT_NORMALIZE,
    n_boot: int = 1000,
    ci: float = 0.95,
    pool: str | None = None,
    batch_size: int = 64,
    progress: bool = True,
    random_state: int | None = 0,
    return_result: bool = False,
) -> pd.DataFrame | SteeringResult:
    """Add ``alpha`` standard deviations of the class-mean difference at point ``layer`` and read the final sense.

    Per word, the examples are split into ``cv`` grouped, stratified folds. On each fold's training groups
    (split again into two halves by group): the *steering direction* of sense s is the raw class-mean
    difference at point ``layer`` from s toward the mean of the word's other senses (half A), as a unit
    vector ``u_s``, with ``sigma_s`` the standard deviation of the training residuals along it; the *judge*
    is the margin of the final point along the standardised class-mean difference (half B; the same
    read-out as :class:`~trajgeo.interventions.SenseReadout`), positive on the example's own sense. The two
    halves keep the direction and the judge from sharing noise: with no sense in the data they are
    unrelated, and steering moves the judge no more than a random direction does.

    Each held-out example of sense s gets ``alpha * sigma_s * u_s`` added to its target's residual at point
    ``layer`` (to each pooled target token) inside the pass, which runs on from there; the control adds
    ``alpha * sigma_s * r`` for ``n_random`` random unit directions ``r`` (a random direction of the same norm).

    Metrics: ``"final_margin"``, the mean judge margin of the steered final vectors (it falls as the steering
    pushes away from the own sense); ``"flip_rate"``, among examples the judge gives their own sense
    unsteered (margin > 0), the share whose steered margin is below 0. At ``alpha == 0`` nothing changes.

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
    examples : DataFrame
    layer : int
        The point steered, 1..L-1 (the steered residual must go through at least one block).
    alphas : sequence of float
        Steering strengths, in standard deviations of the residual along the direction.
    labels, word, groups : str or array
    cv : int
        Folds per word (capped by the smallest sense's number of groups). Every sense of a word with several
        senses needs at least 3 groups (a held-out fold and two training halves; on a causal model, texts
        identical up to the end of the target are one group): checked before the model runs.
    n_random : int
        Random directions of the control (per fold).
    n_permutations : int
        With ``n > 0``, the whole procedure (folds, directions, judges, steered runs; no random control) is
        rerun with the senses permuted ``n`` times among groups within each word, and the pooled curves are
        read against it (``SteeringResult.null``; ``return_result=True``). The unit of chance here is the
        fitted direction, not the example: with labels that carry no sense, a class-mean difference still
        lies in the states' high-variance subspace, often along the real sense axis with a random sign, and
        steers the judge far more than a random direction; only refitting on permuted senses says how far.
    normalize : {None, "center", "standardize", "whiten"}
        How the judge normalises the final vectors.
    n_boot, ci : int, float
        Cluster bootstrap over groups of the per-example values (random directions averaged per example).
    pool : {"last", "first", "mean"}, optional
    batch_size : int
        Steered rows per forward pass (each runs only blocks ``layer+1..L``).
    progress : bool
    random_state : int or None
        Seeds the folds, the halves, the random directions and the bootstrap.
    return_result : bool
        Return a :class:`SteeringResult` (the frame and the per-example margins).

    Returns
    -------
    DataFrame
        Columns ``word, layer, alpha, condition, metric, value, ci_low, ci_high, n``; ``condition`` in
        ``"steer"``, ``"random"``; ``n`` the examples counted.
    """
    from tqdm.auto import tqdm

    engine = Engine(model)
    lm = engine.lm
    L = engine.n_layers
    if L < 2:
        raise ValueError("steering needs at least two blocks: one to steer after, one to run on")
    layer = check_int("layer", layer, 1, L - 1)
    check_method(normalize)
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise ValueError("alphas is empty")
    for name, v in (("n_random", n_random), ("n_permutations", n_permutations)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    inputs = prepare(lm, examples, pool=pool)
    meta = inputs.meta
    n, d = len(inputs), lm.d_model
    _, labelled = example_carrier(lm, meta, L)
    senses = labelled.labels(labels)
    words, has_word, g = words_and_groups(meta, labelled, word, groups)
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise ValueError(f"cv must be an int of at least 2 folds, got {cv!r}")
    # the folds split on these groups (permuted senses keep each sense's number of groups): refuse now, not after
    # the unsteered pass
    check_sense_groups(senses, words, g, _MIN_GROUPS, causal=lm.adapter.causal,
                       what="steer (a held-out fold and two training halves of groups)")
    for w in pd.unique(words):
        if len(pd.unique(senses[words == w])) < 2:
            warnings.warn(f"word {w!r} has one sense: nothing to steer toward; left out", stacklevel=2)
    # every fold and half, for the senses and for each permutation of them, is split now: no split fails late
    plan = _plan(senses, words, g, cv, random_state)
    perms = (permuted_labels(senses, words if has_word else None, g, int(n_permutations), random_state)
             if n_permutations else [])
    perm_plans = [_plan(p, words, g, cv, random_state, what=f" (senses permuted, permutation {k})")
                  for k, p in enumerate(perms)]

    # ---------------------------------------------------------- the unsteered run: point `layer` at every column
    cache: list[Any] = [None] * n
    x_l = np.zeros((n, d))
    x_L = np.zeros((n, d))
    for rows in batches(inputs, batch_size):
        res = run_rows(engine, inputs, rows, read=[Site.resid(layer), Site.resid(L)], pooled=False)
        pool_ = Pool.mean([inputs.pool[i] for i in rows])
        x_l[rows] = pool_.gather(res[Site.resid(layer)]).double().cpu().numpy()
        x_L[rows] = pool_.gather(res[Site.resid(L)]).double().cpu().numpy()
        for r, i in enumerate(rows):
            cache[i] = res[Site.resid(layer)][r, :len(inputs.ids[i])]

    opts = dict(inputs=inputs, engine=engine, layer=layer, alphas=alphas, groups=g, normalize=normalize, x_l=x_l,
                x_L=x_L, cache=cache, batch_size=batch_size)
    n_cells = n * len(alphas) * (1 + n_random + int(n_permutations))
    bar = tqdm(total=n_cells, disable=not progress, desc=f"steer point {layer} ({lm.name})", unit="run")
    margins = _margins(senses, plan=plan, n_random=n_random, random_state=random_state, bar=bar, **opts)
    null = None
    if n_permutations:
        curves = [_pooled(_margins(p, plan=pp, n_random=0, random_state=random_state, bar=bar, **opts))
                  for p, pp in zip(perms, perm_plans)]
        observed = _pooled(margins[margins["condition"] == "steer"])
        null = _null(observed, curves, alphas, layer)
    bar.close()
    margins.insert(0, "example", meta["example"].to_numpy()[margins["_row"].to_numpy()])
    margins.insert(1, "word", words[margins["_row"].to_numpy()] if has_word else None)
    frame = _frame(margins, layer, n_boot, ci, random_state, has_word)
    margins = margins.drop(columns=["_group", "_row"])
    return SteeringResult(frame, margins, null) if return_result else frame


def _plan(senses: np.ndarray, words: np.ndarray, groups: np.ndarray, cv: int, random_state: int | None, *,
          what: str = "") -> list[tuple[Any, np.ndarray, list[tuple[np.ndarray, ...]]]]:
    """Every word's folds and each fold's two training halves (``make_splits`` on the groups), before any pass:
    ``(word, rows, [(train, test, half_a, half_b), ...])`` per word with several senses (indices into ``rows``
    for ``train, test``, into ``train`` for the halves). One-sense words are left out (the caller warns)."""
    from trajgeo.probes import make_splits

    plan = []
    for w in pd.unique(words):
        rows = np.flatnonzero(words == w)
        y, g = senses[rows], groups[rows]
        if len(pd.unique(y)) < 2:
            continue
        n_groups = min(sense_group_counts(y, g).values())
        if n_groups < _MIN_GROUPS:  # checked before the passes; permuted senses keep the counts
            raise ValueError(f"word {w!r}: a sense has {n_groups} group(s); steering needs at least {_MIN_GROUPS} "
                             "(a held-out fold and two training halves)")
        folds = []
        for f, (train, test) in enumerate(make_splits(y, g, min(int(cv), n_groups), random_state=random_state)):
            short = {s: k for s, k in sense_group_counts(y[train], g[train]).items() if k < 2}
            if short or len(pd.unique(y[train])) < len(pd.unique(y)):
                s_, k_ = next(iter(short.items())) if short else (sorted(set(y) - set(y[train]))[0], 0)
                raise ValueError(f"word {w!r}{what}: fold {f} of {min(int(cv), n_groups)} leaves sense {s_!r} "
                                 f"{k_} training group(s); the direction and the judge need one each. Fix: more folds "
                                 f"(up to cv={n_groups}, the fewest groups of a sense: each fold then holds out "
                                 "fewer), more distinct contexts for the sense, or drop the word")
            half_a, half_b = make_splits(y[train], g[train], 2, random_state=random_state)[0]
            folds.append((train, test, half_a, half_b))
        plan.append((w, rows, folds))
    return plan


def _margins(senses: np.ndarray, *, plan: list, inputs: Any, engine: Engine, layer: int, alphas: list[float],
             groups: np.ndarray, normalize: str | None, x_l: np.ndarray, x_L: np.ndarray, cache: list, batch_size: int,
             n_random: int, random_state: int | None, bar: Any) -> pd.DataFrame:
    """Fit every fold with these sense labels, steer the held-out examples, and judge them: one row per
    (example, alpha, condition, draw)."""
    import torch

    lm, L = engine.lm, engine.n_layers
    d, dev = lm.d_model, lm.device
    rng = np.random.default_rng(random_state)
    cells = []  # (example, alpha, condition, draw, vector (d,))
    folds_of: dict[int, _Fold] = {}
    for w, rows, folds in plan:
        y = senses[rows]
        for train, test, half_a, half_b in folds:
            fold = _Fold(x_l[rows[train]], x_L[rows[train]], y[train], half_a, half_b, normalize)
            rand = rng.standard_normal((n_random, d))
            rand /= np.linalg.norm(rand, axis=1, keepdims=True)
            for i in rows[test]:
                folds_of[i] = fold
                s = senses[i]
                for a in alphas:
                    cells.append((i, a, "steer", 0, a * fold.sigma[s] * fold.u[s]))
                    for k in range(n_random):
                        cells.append((i, a, "random", k, a * fold.sigma[s] * rand[k]))

    # the steered runs, from point `layer` on
    final = np.zeros((len(cells), d))
    order = sorted(range(len(cells)), key=lambda c: len(inputs.ids[cells[c][0]]))
    for b in range(0, len(order), int(batch_size)):
        chunk = order[b:b + int(batch_size)]
        ex = [cells[c][0] for c in chunk]
        batch = engine.batch([inputs.ids[i] for i in ex])
        T = batch.input_ids.shape[1]
        hidden = torch.zeros((len(chunk), T, d), dtype=cache[ex[0]].dtype, device=dev)
        for r, i in enumerate(ex):
            hidden[r, :len(inputs.ids[i])] = cache[i]
        rr = [r for r, i in enumerate(ex) for _ in inputs.pool[i]]
        cc = [c for i in ex for c in inputs.pool[i]]
        vec = torch.as_tensor(np.stack([cells[c][4] for c, i in zip(chunk, ex) for _ in inputs.pool[i]]),
                              dtype=hidden.dtype, device=dev)
        edit = Edit.add(Site.resid(layer), vec, rows=torch.as_tensor(rr, device=dev),
                        columns=torch.as_tensor(cc, device=dev))
        run = engine.run(batch, read=[Site.resid(L)], pool=Pool.mean([inputs.pool[i] for i in ex]), edits=[edit],
                         start_after=(layer, hidden))
        final[chunk] = run[Site.resid(L)].double().cpu().numpy()
        bar.update(len(chunk))

    ex_idx = np.asarray([c[0] for c in cells], dtype=np.int64)
    base = np.zeros(len(senses))
    margin = np.zeros(len(cells))
    for i, fold in folds_of.items():
        base[i] = fold.margin(x_L[i][None], senses[[i]])[0]
    for fold in {id(f): f for f in folds_of.values()}.values():
        sel = np.flatnonzero([folds_of.get(i) is fold for i in ex_idx])
        margin[sel] = fold.margin(final[sel], senses[ex_idx[sel]])
    return pd.DataFrame({
        "alpha": [c[1] for c in cells], "condition": [c[2] for c in cells], "draw": [c[3] for c in cells],
        "margin": margin, "base_margin": base[ex_idx], "flipped": (base[ex_idx] > 0) & (margin < 0),
        "_group": groups[ex_idx], "_row": ex_idx,
    })


def _pooled(margins: pd.DataFrame) -> np.ndarray:
    """The steered curves pooled over words: (2, n_alphas) mean margin and flip rate, per alpha."""
    m = margins[margins["condition"] == "steer"]
    by = m.groupby("alpha", sort=True)
    flip = m[m["base_margin"] > 0].groupby("alpha", sort=True)["flipped"].mean().reindex(by.size().index)
    return np.stack([by["margin"].mean().to_numpy(), flip.to_numpy(dtype=np.float64)])


def _null(observed: np.ndarray, curves: list[np.ndarray], alphas: list[float], layer: int) -> pd.DataFrame:
    from trajgeo.stats import null_table

    alpha_sorted = np.asarray(sorted(set(alphas)))
    null = np.stack(curves)  # (K, 2, n_alphas)
    out = []
    for j, (metric, sign) in enumerate((("final_margin", -1.0), ("flip_rate", 1.0))):
        # a lower margin is the claim: read -margin as "greater"
        t = null_table(sign * observed[j], sign * null[:, j], alternative="greater").drop(columns="point")
        for col in ("value", "null_mean", "null_q95", "null_fwer"):
            t[col] = sign * t[col]
        out.append(t.assign(alpha=alpha_sorted, metric=metric))
    table = pd.concat(out, ignore_index=True)
    table["layer"] = layer
    return table[["layer", "alpha", "metric", "value", "null_mean", "null_q95", "null_fwer", "p_value", "p_fwer"]]


def _frame(margins: pd.DataFrame, layer: int, n_boot: int, ci: float, random_state: int | None,
           has_word: bool) -> pd.DataFrame:
    """Per (word, alpha, condition): the mean margin and the flip rate with cluster-bootstrap intervals."""
    from trajgeo.stats import bootstrap_ci

    per_ex = margins.groupby(["word", "alpha", "condition", "_row", "_group"], dropna=False).agg(
        margin=("margin", "mean"), flipped=("flipped", "mean"), base=("base_margin", "first")).reset_index()
    rows = []
    for metric, col, keep in (("final_margin", "margin", None), ("flip_rate", "flipped", "base")):
        df = per_ex if keep is None else per_ex[per_ex["base"] > 0]
        df = df.rename(columns={col: "value"})
        if not len(df):
            continue
        if n_boot > 0:
            t = bootstrap_ci(df, value="value", by=("word", "alpha", "condition"), unit="_group", n_boot=n_boot,
                             ci=ci, random_state=random_state)
        else:
            t = df.groupby(["word", "alpha", "condition"], dropna=False)["value"].agg(["mean", "size"]) \
                .reset_index().rename(columns={"size": "n"}).assign(ci_low=np.nan, ci_high=np.nan)
        rows.append(t.rename(columns={"mean": "value"}).assign(metric=metric))
    out = pd.concat(rows, ignore_index=True)
    out["layer"] = layer
    if not has_word:
        out["word"] = None
    return out[list(FRAME_COLUMNS)].sort_values(["word", "metric", "condition", "alpha"], kind="stable") \
        .reset_index(drop=True)
