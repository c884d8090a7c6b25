"""Erasing a sense inside the forward pass with LEACE (EleutherAI's ``concept-erasure``), and its controls.

LEACE (Belrose et al. 2023) is the least-squares affine edit ``x -> x - W^+ P W (x - mean)`` (``W`` the
whitening of the fitted states, ``P`` the orthogonal projection on the whitened cross-covariance of the
states with the one-hot senses) after which no linear classifier beats a constant one on the fitting data:
every sense's mean equals the overall mean. :func:`erase` fits it at one point on some groups and applies
it inside the forward pass to the others, then asks what the rest of the network does without that
information.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from trajgeo.engine import Edit, Engine, Pool, Site
from trajgeo.interventions._directions import own_sense_functionals
from trajgeo.interventions._examples import (batches, check_int, check_sense_groups, column, example_carrier, prepare,
                                             run_rows, target_cells, token_losses, words_and_groups)
from trajgeo.normalization import DEFAULT_NORMALIZE
from trajgeo.trajectories import Trajectories

__all__ = ["erase", "leace_eraser", "SenseEraser", "ErasureResult", "ERASE_CONDITIONS", "ERASE_METRICS"]

ERASE_CONDITIONS = ("none", "leace", "leace_permuted", "random")
ERASE_METRICS = ("separability", "mlp_write_projection", "lm_loss")
FRAME_COLUMNS = ("word", "layer", "point", "condition", "metric", "value", "ci_low", "ci_high", "rank_erased")


# ============================================================== the eraser
@dataclass(eq=False)
class SenseEraser:
    """An affine erasure ``x -> x - ((x - bias) @ right.T) @ left.T`` (float64), as LEACE stores it.

    Attributes
    ----------
    left, right : ndarray of shape (d_model, k)
        ``left = W^+ U``, ``right = W U`` for LEACE (``U``: the kept whitened directions).
    bias : ndarray of shape (d_model,)
        The fitted mean (the edit keeps it).
    rank : int
        Directions erased: whitened cross-covariance singular values above ``svd_tol``.
    singular_values : ndarray
        All singular values of the whitened cross-covariance (the erased ones are those above ``svd_tol``).
    whitening, unwhitening : ndarray of shape (d_model, d_model)
        ``W`` and ``W^+`` (for the matched random control).
    """

    left: np.ndarray
    right: np.ndarray
    bias: np.ndarray
    rank: int
    singular_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    whitening: np.ndarray | None = None
    unwhitening: np.ndarray | None = None

    def __call__(self, x: Any) -> Any:
        """Apply to a torch tensor or an array of shape (..., d_model) (same type and dtype back)."""
        import torch

        if torch.is_tensor(x):
            t = {k: torch.as_tensor(getattr(self, k), device=x.device) for k in ("left", "right", "bias")}
            xd = x.double()
            return (xd - ((xd - t["bias"]) @ t["right"]) @ t["left"].T).to(x.dtype)
        xd = np.asarray(x, dtype=np.float64)
        return (xd - ((xd - self.bias) @ self.right) @ self.left.T).astype(np.asarray(x).dtype)

    def random_like(self, random_state: Any = None) -> "SenseEraser":
        """The matched control: a uniformly random subspace of the same rank in whitened coordinates, erased the
        same oblique way, so it removes the same whitened variance (its rank) as this eraser."""
        if self.whitening is None:
            raise ValueError("this eraser keeps no whitening; fit it with leace_eraser")
        rng = np.random.default_rng(random_state)
        # the whitened space is the range of W (all of it with shrinkage)
        vals, vecs = np.linalg.eigh(self.whitening)
        basis = vecs[:, np.abs(vals) > np.abs(vals).max() * 1e-10]
        g = rng.standard_normal((basis.shape[1], self.rank))
        q = basis @ np.linalg.qr(g)[0] if self.rank else np.zeros((len(basis), 0))
        return SenseEraser(self.unwhitening @ q, self.whitening @ q, self.bias.copy(), self.rank,
                           whitening=self.whitening, unwhitening=self.unwhitening)


def leace_eraser(states: Any, labels: Any, *, svd_tol: float = 1e-5, shrinkage: bool = True) -> SenseEraser:
    """Fit LEACE (``concept_erasure.LeaceFitter``) on states and sense labels.

    Parameters
    ----------
    states : array-like of shape (n_examples, d_model)
    labels : array-like of shape (n_examples,)
        Any hashable labels (one-hot encoded; two or more values).
    svd_tol : float
        Whitened cross-covariance singular values at or below it are not erased. The package's default,
        0.01, is in whitened units (sense mean differences in standard deviations of the states, times
        the label spread): weak but real sense signals fall below it and nothing is erased; 1e-5 only
        drops the numerically null direction (one-hot labels give a rank K - 1 cross-covariance).
    shrinkage : bool
        Shrink the covariance estimate (the package's default; needed with fewer examples than
        dimensions). The guarantee, equal class means on the fitting data, does not depend on it.

    Notes
    -----
    The package's ``constrain_cov_trace`` (on by default there) mixes the edit with an orthogonal projection
    when the oblique one would raise the states' total variance; that mix breaks the guarantee, so it is
    off here: the edit is the plain LEACE one.
    """
    import torch
    from concept_erasure import LeaceFitter

    x = torch.as_tensor(np.asarray(states, dtype=np.float64))
    y = pd.factorize(np.asarray(labels))[0]
    k = int(y.max()) + 1 if len(y) else 0
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"states must have shape (n_examples, d_model) with one label each; got {tuple(x.shape)} "
                         f"and {len(y)} labels")
    if k < 2:
        raise ValueError("LEACE needs at least two senses among the fitted examples")
    z = torch.nn.functional.one_hot(torch.as_tensor(y), k).double()
    fitter = LeaceFitter(x.shape[1], k, dtype=torch.float64, shrinkage=shrinkage, svd_tol=float(svd_tol),
                         constrain_cov_trace=False)
    fitter.update(x, z)
    er = fitter.eraser
    # the whitening, as the package computes it (for the matched random control)
    lam, vec = torch.linalg.eigh(fitter.sigma_xx)
    mask = lam > lam[-1] * lam.shape[-1] * torch.finfo(lam.dtype).eps
    lam = lam.clamp_min(0.0)
    W = (vec * torch.where(mask, lam.rsqrt(), 0.0)) @ vec.T
    W_inv = (vec * torch.where(mask, lam.sqrt(), 0.0)) @ vec.T
    s = torch.linalg.svdvals(W @ fitter.sigma_xz)
    keep = s > svd_tol
    left = er.proj_left[:, : len(s)][:, keep].numpy()  # columns zeroed by the tolerance are dropped
    right = er.proj_right[: len(s)][keep].T.numpy()
    return SenseEraser(left, right, er.bias.numpy().copy(), int(keep.sum()), s.numpy(), W.numpy(), W_inv.numpy())


# ============================================================== the experiment
@dataclass
class ErasureResult:
    """``frame``: the tidy table :func:`erase` returns. ``erasers``: one row per (word, fold, condition) with
    ``word, fold, condition, rank, train_examples`` (example ids it was fitted on) and ``eraser``
    (:class:`SenseEraser`). ``states``: condition -> :class:`~trajgeo.Trajectories` of every example at points
    ``layer..L`` (each example edited by the eraser of the fold that held it out)."""

    frame: pd.DataFrame
    erasers: pd.DataFrame
    states: dict


def _mean_ci(values: np.ndarray, units: np.ndarray, n_boot: int, ci: float, random_state: int | None
             ) -> tuple[float, float, float]:
    from trajgeo.stats import bootstrap_ci

    ok = np.isfinite(values)
    if not ok.any():
        return np.nan, np.nan, np.nan
    df = pd.DataFrame({"value": values[ok], "unit": units[ok], "cell": 0})
    if n_boot < 1:
        return float(df["value"].mean()), np.nan, np.nan
    row = bootstrap_ci(df, value="value", by="cell", unit="unit", n_boot=n_boot, ci=ci, random_state=random_state)
    return float(row["mean"].iloc[0]), float(row["ci_low"].iloc[0]), float(row["ci_high"].iloc[0])


def erase(
    model: Any,
    examples: Any,
    *,
    layer: int,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    cv: int = 5,
    conditions: Sequence[str] = ERASE_CONDITIONS,
    svd_tol: float = 1e-5,
    shrinkage: bool = True,
    normalize: str | None = DEFAULT_NORMALIZE,
    n_boot: int = 1000,
    ci: float = 0.95,
    pool: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    random_state: int | None = 0,
    return_result: bool = False,
) -> pd.DataFrame | ErasureResult:
    """Erase the sense at point ``layer`` inside the forward pass on held-out groups, and measure what follows.

    Per word, the examples are split into ``cv`` grouped, stratified folds (:func:`trajgeo.probes.make_splits`).
    For each fold LEACE is fitted on the other folds' vectors at point ``layer`` (the raw residual after block
    ``layer``, at the target: extraction's pooled vector) and applied, inside the pass, to the held-out fold's
    target position(s) at that point (with several pooled target tokens, to each of them: LEACE is affine,
    so the pooled vector is then exactly the erased pooled vector); the rest of the network runs on. Every
    example is thus edited once, by an eraser that never saw its group.

    Conditions: ``"none"`` (no edit), ``"leace"``, ``"leace_permuted"`` (LEACE fitted on the training folds
    with the senses permuted among groups: erases as many directions, none of them the sense) and
    ``"random"`` (a uniformly random subspace of the same rank in LEACE's whitened coordinates, erased the
    same oblique way: it removes the same whitened variance; a random *raw* direction would remove about
    1/d_model of the variance and be weaker by construction).

    Metrics (one row per word, point and condition):

    * ``"separability"``: at every point ``layer..L``, the cross-validated balanced accuracy of the ridge
      probe on the (edited) vectors (:func:`trajgeo.probes.layerwise`, ``probe="ridge"``, summary rows, with
      their cluster-bootstrap interval). At ``point == layer`` after LEACE it is the held-out probe accuracy
      left by the erasure (a measurement: the guarantee holds on the fitting data only); above it, whether
      the network re-derives the sense from the context.
    * ``"mlp_write_projection"``: for each block m > ``layer`` (``point = m``, the residual its write
      enters), the mean projection of the MLP write at the target on the example's own-sense direction,
      fitted on the unedited run at its last point as :func:`trajgeo.senses.attribution` fits it
      (leave-group-out prototypes, ``normalize``'d, pulled back): does the reinforcement shrink without the
      earlier nudge?
    * ``"lm_loss"`` (causal LMs with a head, texts with tokens after the target): the mean next-token loss
      (nats) over the tokens after the target, per example, averaged; ``point`` is L (read at the last point).

    Intervals of the last two: cluster bootstrap over groups (:func:`trajgeo.stats.bootstrap_ci`).

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
    examples : DataFrame
        As :func:`trajgeo.extract` takes them.
    layer : int
        The point erased, 1..L.
    labels, word, groups : str or array
        As in every analysis (meta column names or per-example arrays); senses are erased per word.
    cv : int
        Folds per word, for the erasers and for the separability probes. Every sense of a word with several
        senses needs at least ``cv`` groups (on a causal model, texts identical up to the end of the target
        are one group): checked before the model runs, a ValueError naming the word and the sense otherwise.
    conditions : sequence of str
        Which of :data:`ERASE_CONDITIONS` to run.
    svd_tol, shrinkage : see :func:`leace_eraser`
    normalize : {None, "center", "standardize", "whiten"}
        For the probes and the MLP write direction.
    n_boot, ci : int, float
    pool : {"last", "first", "mean"}, optional
    batch_size : int
    progress : bool
    random_state : int or None
        Seeds the folds, the permuted labels, the random subspaces, the probes and the bootstraps.
    return_result : bool
        Return an :class:`ErasureResult` (frame, the fitted erasers, the edited states).

    Returns
    -------
    DataFrame
        Columns ``word, layer, point, condition, metric, value, ci_low, ci_high, rank_erased``:
        ``layer`` is the point erased (constant), ``rank_erased`` the mean rank erased over the word's folds
        (0 for ``"none"``; a warning names any fold where LEACE erased nothing).
    """
    import torch
    from tqdm.auto import tqdm

    from trajgeo.lens._readout import _Readout
    from trajgeo.probes import layerwise, make_splits
    from trajgeo.stats import group_permutations

    engine = Engine(model)
    lm = engine.lm
    L = engine.n_layers
    layer = check_int("layer", layer, 1, L)
    conditions = list(conditions)
    bad = [c for c in conditions if c not in ERASE_CONDITIONS]
    if bad or "none" not in conditions:
        raise ValueError(f"conditions must be among {ERASE_CONDITIONS} and include 'none'; got {conditions}")
    with_loss = lm.adapter.causal and lm.adapter.unembed is not None
    inputs = prepare(lm, examples, pool=pool, full=with_loss)
    meta = inputs.meta
    n = len(inputs)
    info, probe_traj = example_carrier(lm, meta, L)
    senses = probe_traj.labels(labels)
    words, _, g = words_and_groups(meta, probe_traj, word, groups)
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise ValueError(f"cv must be an int of at least 2 folds, got {cv!r}")
    # the folds below and the probes after the passes split on these groups: refuse now, not after the passes
    check_sense_groups(senses, words, g, int(cv), what=f"erase with cv={int(cv)} folds", causal=lm.adapter.causal,
                       fix=f"use fewer folds (now cv={int(cv)}; at most the fewest groups of a sense)")
    head = _Readout(lm) if with_loss else None
    points = list(range(layer, L + 1))
    read = [Site.resid(p) for p in points] + [Site.mlp(m) for m in range(layer + 1, L + 1)]
    dev = lm.device

    def run(rows: list[int], fn: Any) -> dict:
        """Pooled reads (and losses) of rows, edited at point ``layer`` by ``fn`` (None: no edit)."""
        def edits(batch: Any, rr: list[int]) -> list[Edit]:
            if fn is None:
                return []
            r, c = target_cells(inputs, rr, dev)
            return [Edit.apply(Site.resid(layer), fn, rows=r, columns=c)]

        out: dict = {"states": np.zeros((len(rows), len(points), lm.d_model), np.float32),
                     "mlp": np.zeros((len(rows), L - layer, lm.d_model), np.float32),
                     "loss": np.full(len(rows), np.nan)}
        where = {i: k for k, i in enumerate(rows)}
        for bt in batches(inputs, batch_size, rows):
            k = [where[i] for i in bt]
            res = run_rows(engine, inputs, bt, read=read, edits=edits, pooled=False)
            pool = Pool.mean([inputs.pool[i] for i in bt])
            out["states"][k] = torch.stack([pool.gather(res[Site.resid(p)]) for p in points], 1).float().cpu().numpy()
            if L > layer:
                out["mlp"][k] = torch.stack([pool.gather(res[Site.mlp(m)]) for m in range(layer + 1, L + 1)],
                                            1).float().cpu().numpy()
            if with_loss:
                out["loss"][k] = token_losses(head, res[Site.resid(L)], inputs, bt, after_target=True)
        return out

    n_passes = 1 + (len(conditions) - 1)
    bar = tqdm(total=n * n_passes, disable=not progress, desc=f"erase point {layer} ({lm.name})", unit="example")
    base = run(list(range(n)), None)
    bar.update(n)
    result = {c: {"states": base["states"].copy(), "mlp": base["mlp"].copy(), "loss": base["loss"].copy()}
              for c in conditions}
    er_rows = []
    rng = np.random.default_rng(random_state)
    for wi, w in enumerate(pd.unique(words)):
        rows = np.flatnonzero(words == w)
        y = senses[rows]
        if len(pd.unique(y)) < 2:
            warnings.warn(f"word {w!r} has one sense: nothing to erase; its rows keep the unedited run", stacklevel=2)
            continue
        folds = make_splits(y, g[rows], int(cv), random_state=random_state)
        for f, (train, test) in enumerate(folds):
            x_train = base["states"][rows[train], 0].astype(np.float64)
            fitted = {"leace": leace_eraser(x_train, y[train], svd_tol=svd_tol, shrinkage=shrinkage)}
            if "leace_permuted" in conditions:
                perm = group_permutations(y[train], groups=g[rows][train], n_permutations=1,
                                          random_state=int(rng.integers(2**31)))[0]
                fitted["leace_permuted"] = leace_eraser(x_train, y[train][perm], svd_tol=svd_tol, shrinkage=shrinkage)
            if "random" in conditions:
                fitted["random"] = fitted["leace"].random_like(int(rng.integers(2**31)))
            if fitted["leace"].rank == 0:
                warnings.warn(f"word {w!r}, fold {f}: LEACE erased nothing (every whitened singular value <= "
                              f"svd_tol={svd_tol}); lower svd_tol", stacklevel=2)
            for cond in conditions[1:] if conditions[0] == "none" else [c for c in conditions if c != "none"]:
                er = fitted[cond]
                part = run(list(rows[test]), er)
                for key in ("states", "mlp", "loss"):
                    result[cond][key][rows[test]] = part[key]
                bar.update(len(test))
                er_rows.append({"word": w, "fold": f, "condition": cond, "rank": er.rank,
                                "train_examples": meta["example"].to_numpy()[rows[train]].tolist(), "eraser": er})
    bar.close()
    erasers = pd.DataFrame(er_rows, columns=["word", "fold", "condition", "rank", "train_examples", "eraser"])

    # ---------------------------------------------------------- measurements
    frames = []
    has_word = column(meta, word, "word", "word") is not None
    ranks = erasers.groupby(["word", "condition"])["rank"].mean() if len(erasers) else pd.Series(dtype=float)
    states_out = {}
    clean_w = _own_directions(base["states"][:, -1], meta, labels, word, groups, normalize, info, random_state)
    # one-sense words (warned about above) have no separability to measure: the probes see the others only
    several = np.isin(words, [w for w in pd.unique(words) if len(pd.unique(senses[words == w])) > 1])

    def probed(v: Any) -> Any:
        return v if v is None or isinstance(v, str) or several.all() else np.asarray(v)[several]

    for cond in conditions:
        traj = Trajectories(result[cond]["states"], meta, points=points, model_info=info)
        states_out[cond] = traj
        if several.any():
            sub = traj if several.all() else Trajectories(traj.states[several], meta[several], points=points,
                                                          model_info=info)
            sep = layerwise(sub, labels=probed(labels), word=probed(word) if has_word else None, groups=probed(groups),
                            normalize=normalize, probe="ridge", cv=cv, n_boot=n_boot, ci=ci, random_state=random_state,
                            progress=False)
            sep = sep[(sep["fold"] == -1) & (sep["metric"] == "balanced_accuracy")]
            for r in sep.itertuples(index=False):
                frames.append({"word": getattr(r, "word", None) if has_word else None, "point": int(r.point),
                               "condition": cond, "metric": "separability", "value": r.value, "ci_low": r.ci_low,
                               "ci_high": r.ci_high})
        for w in pd.unique(words):
            rows = np.flatnonzero(words == w)
            for j, m in enumerate(range(layer + 1, L + 1)):
                proj = np.einsum("nd,nd->n", result[cond]["mlp"][rows, j].astype(np.float64), clean_w[rows])
                v, lo, hi = _mean_ci(proj, g[rows], n_boot, ci, random_state)
                frames.append({"word": w if has_word else None, "point": m, "condition": cond,
                               "metric": "mlp_write_projection", "value": v, "ci_low": lo, "ci_high": hi})
            if with_loss and np.isfinite(result[cond]["loss"][rows]).any():
                v, lo, hi = _mean_ci(result[cond]["loss"][rows], g[rows], n_boot, ci, random_state)
                frames.append({"word": w if has_word else None, "point": L, "condition": cond, "metric": "lm_loss",
                               "value": v, "ci_low": lo, "ci_high": hi})
    frame = pd.DataFrame(frames)
    frame["layer"] = layer
    frame["rank_erased"] = [0.0 if c == "none" else float(ranks.get((w if has_word else 0, c), np.nan))
                            for w, c in zip(frame["word"], frame["condition"])]
    if not has_word:
        frame["word"] = None
    frame = frame[list(FRAME_COLUMNS)]
    return ErasureResult(frame, erasers, states_out) if return_result else frame


def _own_directions(final: np.ndarray, meta: pd.DataFrame, labels: Any, word: Any, groups: Any,
                    normalize: str | None, info: dict, random_state: int | None) -> np.ndarray:
    """Each example's own-sense functional at the unedited last point (leave-group-out prototypes): (n, d)."""
    traj = Trajectories(final[:, None], meta, model_info=info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-sense words: NaN rows, already warned about
        return np.nan_to_num(own_sense_functionals(traj, method="prototype", labels=labels, word=word, groups=groups,
                                                   reference="last", normalize=normalize, cv=5,
                                                   random_state=random_state))
