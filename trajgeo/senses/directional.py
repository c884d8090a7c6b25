"""Along the sense directions: reinforcement (each point's projection on every sense direction of the
example's word, measured from a neutral origin) and attribution (which layer and head writes pushed
the example toward its sense)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from trajgeo._api import changed_signature
from trajgeo._arrays import compute, einsum, is_lazy, like
from trajgeo.normalization import DEFAULT_NORMALIZE
from trajgeo.senses._common import fixed_reference, frame_meta, keys, local_index, warn_one_sense
from trajgeo.normalization import PointNormalizer
from trajgeo.senses.estimator import SensePrototypes, _group_sums, _rows_in_memory
from trajgeo.stats import group_permutations, mixed_groups, null_table
from trajgeo.trajectories import Trajectories, as_trajectories

__all__ = ["reinforcement", "ReinforcementResult", "attribution"]

# permutations scored together: their one-hot labels form one (n_examples, batch * n_senses) matrix
_PERMUTATION_BATCH = 256


@dataclass
class ReinforcementResult:
    """What ``reinforcement(..., return_result=True)`` returns.

    Attributes
    ----------
    projections : DataFrame
        Per example, point and sense direction (what :func:`reinforcement` returns).
    summary : DataFrame
        Per word, point and metric: ``word, point, metric, value, n_examples, n_mixed_groups`` (with
        ``n_permutations > 0`` also ``null, null_mean, null_q95, null_fwer, p_value, p_fwer``; ``null``
        names the null of the row). Metrics:

        * ``"reinforcement"``: the mean over the word's examples of (correct-sense projection at the
          point minus at the baseline point), read against its value at the baseline: the null
          (``"sign_flip"``) flips the sign of each group's change (no change: symmetric about 0);
        * ``"attenuation"``: the mean over examples of (mean wrong-sense projection at the baseline
          minus at the point), against the same kind of null;
        * ``"separation"``: the mean of (correct-sense minus mean wrong-sense projection), against
          the group-respecting label-permutation null (``"label_permutation"``: the senses moved
          among groups, the directions recomputed for each permutation).

        "Incoherent components attenuate" at a point is the conjunction of ``attenuation`` and
        ``separation`` above their family-wise thresholds (``null_fwer``): the wrong-sense projection
        falls below its value at the embedding, and the senses' projections differ beyond chance, so
        neither a general shrinking of the word nor noise labels make the claim; "coherent
        components are reinforced" is likewise ``reinforcement`` and ``separation`` (a shift common
        to every projection, e.g. of the origin, moves both senses alike). (A label
        permutation is not a null for attenuation itself: a permuted "wrong" sense holds half the
        example's own sense, whose growth would read as attenuation of the true wrong one.)
        The column ``claimed`` (with a null) says where a row's claim holds: its value is above its
        ``null_fwer`` and, for reinforcement and attenuation, so is separation at that point.
        ``n_mixed_groups`` counts the word's groups that hold several senses (unresolvable: they
        move as a whole).
    """

    projections: pd.DataFrame
    summary: pd.DataFrame


@changed_signature(
    renamed={"by": "word"},
    positional=("labels", "reference", "normalize", "direction", "word", "cv", "random_state", "groups"),
)
def reinforcement(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    normalize: str | None = DEFAULT_NORMALIZE,
    n_permutations: int = 0,
    random_state: int | None = 0,
    return_result: bool = False,
    reference: int | str = "same",
    direction: str = "prototype",
    cv: int = 5,
) -> pd.DataFrame | ReinforcementResult:
    """Projection of each point on every sense direction of the example's word, from a neutral origin.

    At each point l and for each word w, the neutral origin ``o_w(l)`` is the mean of the *other*
    words' vectors at l (the word's own mean would make two senses' directions mirror images: with
    prototype differences "other" is exactly minus "correct"). Each sense s of w is represented by
    its prototype's displacement ``p_s(l) - o_w(l)``, the prototype built without the scored
    example's group (cross-fitted on held-out groups, as everywhere in :mod:`trajgeo.senses`). The
    projection of example i on sense s is

    ``(z_i(l) - o_w(l)) . (p_s(l) - o_w(l)) / |p_w(b) - o_w(b)|``,

    a dot product in one fixed unit per word: the distance of the word's mean from the origin at
    the baseline point b (the first point, point 0: the embedding, where every sense's prototype is
    the same vector, so every projection starts at the same value). The unit is the same at every
    point on purpose: a per-direction normalisation would make a wrong-sense projection fall
    whenever the wrong sense's prototype gains features the example lacks (e.g. the cue of the
    other sense), with the wrong-sense feature untouched. One number for the correct sense and one
    for each wrong sense, so that a wrong-sense feature present at the embedding and suppressed
    with depth ("incoherent components attenuate") can be seen, and so can its absence.

    Each projection is tracked against its baseline value and, with ``n_permutations > 0``,
    against a null (see :class:`ReinforcementResult`).

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
        At least two words (the origin of one word is the others' mean; words with one sense
        count there, and are otherwise skipped).
    labels, word
        As in :func:`~trajgeo.senses.curves`.
    groups : str, array-like of shape (n_examples,) or None
        Prototypes leave out the scored example's whole group; permutations move whole groups
        (default: the ``group`` column, with identical prefixes joined for causal models).
    normalize : {None, "center", "standardize", "whiten"}
        Scaling before the projections, with the statistics of the *last* point applied at every
        point (per-point scales would make a projection at one point incomparable with its value
        at point 0); centring changes nothing (the origin removes any shift), so ``None`` and
        ``"center"`` are the raw residual space.
    n_permutations : int
        Size of each null (0: none, fast): sign flips of the groups' changes, and group-respecting
        label permutations.
    random_state : int or None
        Seeds both nulls.
    return_result : bool
        Return a :class:`ReinforcementResult` (projections and the per-word summary) instead of
        the projections alone.
    reference, direction, cv
        Deprecated since 0.2: ``reference=<point>`` gives the 0.1 measure, projections on discriminative
        directions (prototype differences, LDA or probe) at one reference point, as columns
        ``metric`` "correct" / "other"; with two senses "other" is minus "correct" by construction.

    Returns
    -------
    DataFrame or ReinforcementResult
        ``projections``: columns ``example, point, word, sense, to_sense, is_correct, metric,
        value``, one row per example, point and sense of its word (``to_sense``, and ``is_correct``:
        whether it is the example's own sense), ``metric`` "projection". NaN where a sense has no
        example outside the scored example's group.

    Raises
    ------
    ValueError
        With fewer than two words: there is no neutral origin.
    """
    if not (isinstance(reference, str) and reference == "same"):
        warnings.warn(
            "reinforcement(reference=...) is the 0.1 measure (projections on discriminative directions at one "
            "reference point; with two senses 'other' is minus 'correct'), deprecated since 0.2; the default now "
            "projects on per-sense directions from a neutral origin, cross-fitted at each point",
            DeprecationWarning, stacklevel=3)
        return _at_reference(traj, labels=labels, word=word, groups=groups, reference=reference, normalize=normalize,
                             random_state=random_state, direction=direction, cv=cv)
    if direction != "prototype":
        raise ValueError(f"direction {direction!r}: reinforcement's per-sense directions are prototypes from a "
                         "neutral origin (a learned direction is discriminative: one sense against the others); "
                         "pass reference=<point> for the deprecated projection on learned directions")
    if isinstance(n_permutations, (bool, np.bool_)) or not isinstance(n_permutations, (int, np.integer)) \
            or n_permutations < 0:
        raise ValueError(f"n_permutations must be a non-negative int, got {n_permutations!r}")
    traj = as_trajectories(traj)
    words, senses, has_word = keys(traj, labels, word)
    word_uniq = pd.unique(words)
    if not has_word or len(word_uniq) < 2:
        raise ValueError(
            "reinforcement measures each sense's direction from a neutral origin, the mean of the other words' "
            f"vectors at each point; these trajectories hold {'one word' if has_word else 'no word column'} "
            f"({', '.join(map(repr, word_uniq[:3]))}): add examples of other words (any words: they only set the "
            "origin)")
    skipped = set(warn_one_sense(traj, labels, word, "reinforcement"))
    # one set of statistics for every point (the last one's): projections at different points, and their
    # change from point 0, are in the same units; a shift is irrelevant (the origin takes it out)
    z = PointNormalizer(normalize, shared_at=traj.n_points - 1).fit(traj.states).transform(traj.states)
    codes = traj.group_codes(groups)
    word_code = pd.Index(word_uniq).get_indexer(words)
    sums = _group_sums(z, word_code, len(word_uniq), None)[0]  # (n_words, P, d), float64
    total, counts = sums.sum(0), np.bincount(word_code, minlength=len(word_uniq))
    parts, summaries = [], []
    for k, w in enumerate(word_uniq):
        if w in skipped:
            continue
        rows = np.flatnonzero(word_code == k)
        origin = (total - sums[k]) / (traj.n_examples - counts[k])  # (P, d): the other words' mean
        g = np.arange(len(rows)) if codes is None else pd.factorize(codes[rows])[0]
        part, summary = _word_reinforcement(traj, z, w, rows, senses[rows], g, origin, n_permutations, random_state)
        parts.append(part)
        summaries.append(summary.assign(word=w))
    if not parts:
        raise ValueError("reinforcement: no word has two senses")
    projections = pd.concat(parts, ignore_index=True)
    if not return_result:
        return projections
    summary = pd.concat(summaries, ignore_index=True)
    first = ["word", "point", "metric", "value", "n_examples", "n_mixed_groups"] + (["null"] if n_permutations else [])
    return ReinforcementResult(projections, summary[first + [c for c in summary.columns if c not in first]])


def _word_reinforcement(traj: Trajectories, z: Any, w: Any, rows: np.ndarray, senses: np.ndarray, g: np.ndarray,
                        origin: np.ndarray, n_permutations: int, random_state: int | None
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Projections (rows of :func:`reinforcement`) and the summary of word ``w`` (its examples at
    positions ``rows``, their senses, group codes 0..G-1 and the origin (P, d) at every point)."""
    y, names = pd.factorize(senses)
    n, K, P = len(rows), len(names), traj.n_points
    geom = _Groups(g)
    zw = _rows_in_memory(z, rows)  # (n, P, d)
    # the unit: the distance of the word's mean from the origin at the baseline point (the embedding)
    unit = float(np.linalg.norm(zw[:, 0].astype(np.float64).mean(0) - origin[0]))
    unit = unit if unit > 0 else 1.0
    perms = None if not n_permutations else group_permutations(
        y, groups=g, n_permutations=int(n_permutations), random_state=random_state)
    # the true labelling first, then the permutations: scored by the same products, so that a permutation
    # equal to the truth gives bit-identical numbers (a tie with the observed value stays a tie)
    labellings = y[None] if perms is None else np.concatenate([y[None], y[perms]])
    proj = np.empty((n, P, K))
    seps = np.empty((len(labellings), P))
    for p in range(P):
        X = zw[:, p].astype(np.float64) - origin[p]
        gram = X @ X.T if n <= X.shape[1] else None
        for b in range(0, len(labellings), _PERMUTATION_BATCH):
            yb = labellings[b : b + _PERMUTATION_BATCH]  # (B, n)
            pr = geom.projections(X, _onehot(yb, K), gram) / unit
            seps[b : b + len(yb), p] = _separation(pr, yb)
            if b == 0:
                proj[:, p] = pr[:, 0]
    ex = traj.meta["example"].to_numpy()[rows]
    part = pd.DataFrame({
        "example": np.repeat(ex, P * K),
        "point": np.tile(np.repeat(traj.points, K), n),
        "word": w,
        "sense": np.repeat(senses, P * K),
        "to_sense": np.tile(np.asarray(names, dtype=object), n * P),
        "is_correct": (np.arange(K)[None, None] == y[:, None, None]).repeat(P, 1).reshape(-1),
        "metric": "projection",
        "value": proj.reshape(-1),
    })
    mine = np.arange(K)[None] == y[:, None]  # (n, K)
    correct = proj[np.arange(n), :, y]  # (n, P)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an example whose wrong senses are all NaN
        wrong = np.nanmean(np.where(mine[:, None, :], np.nan, proj), axis=-1)  # (n, P): mean over wrong senses
    changes = {"reinforcement": correct - correct[:, :1], "attenuation": wrong[:, :1] - wrong}
    sign_rng = np.random.default_rng(random_state)
    signs = None if perms is None else sign_rng.choice([-1.0, 1.0], size=(len(perms), int(g.max()) + 1))
    frames = []
    for metric, change in changes.items():
        if signs is None:
            frame = pd.DataFrame({"point": traj.points, "value": np.nanmean(change, axis=0)})
        else:  # against the point-0 value: each group's change is symmetric about 0 under no change
            per_group = np.zeros((signs.shape[1], P))
            np.add.at(per_group, g, np.nan_to_num(change))
            # the observed mean as the all-plus row of the same product (ties with it stay ties)
            flipped = np.concatenate([np.ones((1, signs.shape[1])), signs]) @ per_group
            flipped /= np.isfinite(change).sum(0).clip(min=1)
            frame = null_table(flipped[0], flipped[1:], points=traj.points)
            frame["null"] = "sign_flip"
        frames.append(frame.assign(metric=metric))
    if perms is None:
        frames.append(pd.DataFrame({"point": traj.points, "value": seps[0], "metric": "separation"}))
    else:
        frames.append(null_table(seps[0], seps[1:], points=traj.points).assign(metric="separation",
                                                                               null="label_permutation"))
    out = pd.concat(frames, ignore_index=True).assign(n_examples=n, n_mixed_groups=len(mixed_groups(y, g)))
    if perms is not None:  # a claim: beyond its own null, and the senses' projections differ beyond chance
        beyond = (out["value"] > out["null_fwer"]).to_numpy()
        separated = beyond[out["metric"].to_numpy() == "separation"]
        out["claimed"] = beyond & np.tile(separated, len(frames))
    return part, out


def _at_reference(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    reference: int | str = "last",
    normalize: str | None = DEFAULT_NORMALIZE,
    random_state: int | None = 0,
    direction: str = "prototype",
    cv: int = 5,
) -> pd.DataFrame:
    """The deprecated (0.2) reinforcement: projection of each point on the example's correct-sense
    direction and on the others', found at one reference point.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
    labels, word
        As in :func:`~trajgeo.senses.curves`.
    groups : str, array-like of shape (n_examples,) or None
        Cross-fitting groups (default: the ``group`` column, the sentence, when present); see
        :class:`~trajgeo.senses.SensePrototypes`.
    reference : "last" or int
        The point whose sense directions are used.
    normalize : {None, "center", "standardize", "whiten"}
        Projections are taken in normalised coordinates (statistics of the reference point).
    random_state : int or None
        Seeds the cross-fitting of learned directions.
    direction : {"prototype", "lda", "probe"}
        See :meth:`SensePrototypes.directions` (leave-one-out / cross-fitted).
    cv : int
        Folds for the cross-fitting of learned directions.

    Returns
    -------
    DataFrame
        Columns ``example, point, word, sense, metric, value``; metric ``"correct"`` is
        ``z_l . u_correct`` and ``"other"`` the mean of ``z_l . u_s`` over the word's other senses
        (with two senses and ``direction="prototype"``, other = -correct).
    """
    traj = as_trajectories(traj)
    fixed_reference(reference, "reinforcement")
    fitted = SensePrototypes(labels=labels, word=word, groups=groups, reference=reference, normalize=normalize)
    z = fitted._fit(traj)
    own = fitted._score_keys(traj, None)[0]
    n = traj.n_examples
    correct = np.full((n, traj.n_points), np.nan)
    other = np.full((n, traj.n_points), np.nan)
    for rows, gk, u in fitted._word_directions(traj, direction, None, cv, random_state):
        zw = z[rows] if is_lazy(z) else np.take(z, rows, axis=0)
        proj = np.asarray(compute(einsum("npd,nkd->npk", zw, like(u.astype(np.float32), zw))), np.float64)
        local, has_own = local_index(gk, own[rows])
        correct[rows] = np.where(has_own[:, None], proj[np.arange(len(rows)), :, local], np.nan)
        is_other = np.arange(len(gk))[None] != np.where(has_own, local, -1)[:, None]  # (n_w, K_w)
        other[rows] = (proj * is_other[:, None]).sum(-1) / is_other.sum(-1)[:, None]
    frame = Trajectories(np.empty((n, traj.n_points, 0), np.float32), frame_meta(traj, fitted), points=traj.points)
    return frame.to_frame({"correct": correct, "other": other}, meta_columns=("word", "sense"))


@changed_signature(
    renamed={"by": "word"},
    positional=("labels", "direction", "reference", "normalize", "word", "cv", "random_state", "groups"),
)
def attribution(
    traj: Any,
    *,
    labels: Any = "sense",
    word: Any = "word",
    groups: Any = "group",
    reference: int | str = "last",
    normalize: str | None = DEFAULT_NORMALIZE,
    random_state: int | None = 0,
    direction: str = "prototype",
    cv: int = 5,
    direction_point: str = "reference",
) -> pd.DataFrame:
    """Which layers (and heads) pushed each example toward its sense.

    Each layer's attention write, MLP write and (when extracted) each head's write is projected on
    the example's unit correct-sense direction (from :meth:`SensePrototypes.directions`), found at
    the point ``direction_point`` says: the reference point for every layer (default), or a point
    of the layer's own (``"same"``: point l for layer l, ``"previous"``: point l - 1, the input
    the layer read). Under the reference's direction the late layers look decisive partly by
    construction (the direction is made of the last vectors); a per-layer direction asks what
    each layer adds to the sense as it is represented where the layer writes.

    The direction is found in normalised coordinates (where cosines are trustworthy) and mapped
    back to the raw residual space as the linear functional ``w`` with
    ``normalise(x) . u = (x - mean) . w`` (``w = u / std`` for "standardize", ``W u`` for
    "whiten"; the statistics of the direction's point). Sublayer writes are raw vectors, and
    centring cancels in differences, so for a pre-LN model:

    * with the reference's direction (one ``w`` for every layer) the attributions of one example
      add up exactly to the change of its normalised projection from the block-1 input
      (``aux["block_input"]``) to the last point: ``sum_l (attn_l + mlp_l) . w = normalise(h_L) . u
      - normalise(block_input) . u``;
    * with per-layer directions ``w_l`` each layer's two writes add up exactly to the change of the
      projection on ``w_l`` across that block: ``(attn_l + mlp_l) . w_l = (h_l - h_{l-1}) . w_l``
      (``h_0`` the block-1 input). The layers no longer add up to one total: each has its own
      yardstick.

    With ``normalize=None`` this is the plain projection on the unit raw direction.

    Parameters
    ----------
    traj : Trajectories
        Extracted with ``components=True`` (``heads=True`` for head rows). With a per-layer
        ``direction_point``, the trajectories must hold every point a layer's direction is found at.
    labels, word, groups, reference, normalize, random_state, direction, cv
        As in :func:`reinforcement` (``reference`` is used only with ``direction_point="reference"``).
    direction_point : {"reference", "same", "previous"}
        Where the direction of layer l's writes is found: the reference point, point l, or point
        l - 1. Directions are leave-group-out prototypes (or cross-fitted, learned) at that point.

    Returns
    -------
    DataFrame
        Columns ``example, word, sense, layer, component, head, direction_point, attribution``;
        ``component`` in {"attn", "mlp", "head"}, ``head`` is -1 unless component is "head";
        ``layer`` is 1..L; ``direction_point`` is the point whose direction the row was projected
        on. NaN where that point is a tie for the word (``"previous"`` at layer 1: point 0 is one
        embedding per word, no direction tells its senses apart). Words with one sense are left
        out (one warning names them).
    """
    traj = as_trajectories(traj)
    if direction_point not in ("reference", "same", "previous"):
        raise ValueError(f"direction_point must be 'reference', 'same' or 'previous', got {direction_point!r}")
    if direction_point == "reference":
        fixed_reference(reference, "attribution")
    for name in ("attn", "mlp"):
        if name not in traj.components:
            raise KeyError(f"attribution needs components[{name!r}]; extract with components=True")
    skipped = warn_one_sense(traj, labels, word, "attribution")
    n_layers = int(traj.components["attn"].shape[1])
    layers = np.arange(1, n_layers + 1)
    if direction_point == "reference":
        fitted = SensePrototypes(labels=labels, word=word, groups=groups, reference=reference, normalize=normalize)
        fitted.fit(traj)
        w = _raw_directions(traj, fitted, fitted.reference_index_, direction, cv, random_state)
        w_layer, at = w[:, None, :], np.full(n_layers, int(traj.points[fitted.reference_index_]))
    else:
        at = layers - (1 if direction_point == "previous" else 0)
        pos = pd.Index(traj.points).get_indexer(at)
        if (pos < 0).any():
            raise ValueError(f"direction_point={direction_point!r} needs points {sorted(set(at[pos < 0].tolist()))}, "
                             f"which these trajectories do not hold (points {list(traj.points)})")
        fitted = SensePrototypes(labels=labels, word=word, groups=groups, reference="same", normalize=normalize)
        z = fitted._fit(traj)
        per_point = {}
        for p in np.unique(pos):
            est, _ = fitted._at_reference(traj, z, int(p))
            per_point[p] = _raw_directions(traj, est, int(p), direction, cv, random_state)
        w_layer = np.stack([per_point[p] for p in pos], axis=1)  # (n, L, d)
    meta = frame_meta(traj, fitted)
    frames = [_component_rows(traj.components[name], name, w_layer, at, meta)
              for name in ("attn", "mlp", "heads") if name in traj.components]
    out = pd.concat(frames, ignore_index=True)
    if skipped:
        out = out.iloc[:0] if not fitted.has_word_ else out[~out["word"].isin(skipped)]
    return out.reset_index(drop=True)


def _raw_directions(traj: Trajectories, fitted: SensePrototypes, position: int, direction: str, cv: int,
                    random_state: int | None) -> np.ndarray:
    """Each example's correct-sense direction at ``position`` as a raw-space functional, (n, d)
    float64 (NaN rows where there is none)."""
    own = fitted._score_keys(traj, None)[0]
    u_own = np.full((traj.n_examples, traj.d_model), np.nan)
    for rows, gk, u in fitted._word_directions(traj, direction, None, cv, random_state):
        local, ok = local_index(gk, own[rows])
        u_own[rows[ok]] = u[np.flatnonzero(ok), local[ok]]
    return fitted.normalizer_.pull_back(u_own, position).astype(np.float64)


def _component_rows(comp: Any, name: str, w: np.ndarray, at: np.ndarray, meta: pd.DataFrame) -> pd.DataFrame:
    """Rows of :func:`attribution` for one component: its writes ``comp`` of shape (n, L, d), or
    (n, L, H, d) for ``"heads"``, projected on the raw functionals ``w`` of shape (n, 1, d) (one per
    example) or (n, L, d) (one per example and layer), found at the points ``at`` (L,)."""
    wl = np.broadcast_to(w, (w.shape[0], comp.shape[1], w.shape[-1]))
    spec = "nlhd,nld->nlh" if name == "heads" else "nld,nld->nl"
    a = np.asarray(compute(einsum(spec, comp, like(np.ascontiguousarray(wl), comp))), dtype=np.float64)
    if name != "heads":
        a = a[..., None]
    n, n_layers, n_heads = a.shape
    rows = meta.loc[np.repeat(np.arange(n), n_layers * n_heads)].reset_index(drop=True)
    rows["layer"] = np.tile(np.repeat(np.arange(1, n_layers + 1), n_heads), n)
    rows["component"] = "head" if name == "heads" else name
    rows["head"] = np.tile(np.arange(n_heads), n * n_layers) if name == "heads" else -1
    rows["direction_point"] = np.tile(np.repeat(np.asarray(at, dtype=int), n_heads), n)
    rows["attribution"] = a.reshape(-1)
    return rows


class _Groups:
    """The group structure of one word's examples, for projections on leave-group-out prototypes.

    ``projections(X, Y)``: for displacements ``X`` (n, d) and labellings ``Y`` (n, B, K) one-hot, the
    dot product of each ``X_i`` with the mean of ``X_j`` over the examples of sense k outside i's
    group, for every labelling b: shape (n, B, K), NaN where no such example exists. It comes from
    ``X (X^T Y)`` and the dot products within groups, so a batch of labellings costs two
    (n, d) x (d, B K) products.
    """

    def __init__(self, g: np.ndarray) -> None:
        from scipy.sparse import csr_matrix

        n = len(g)
        self.n = n
        self.H = csr_matrix((np.ones(n), (np.arange(n), g)), shape=(n, int(g.max(initial=-1)) + 1))
        order = np.argsort(g, kind="stable")
        starts = np.searchsorted(g[order], np.arange(self.H.shape[1] + 1))
        pi, pj = [], []
        for a, b in zip(starts[:-1], starts[1:]):  # every ordered pair within a group, itself included
            members = order[a:b]
            pi.append(np.repeat(members, len(members)))
            pj.append(np.tile(members, len(members)))
        self.pi, self.pj = np.concatenate(pi), np.concatenate(pj)

    def _within(self, V: np.ndarray) -> np.ndarray:
        """Sum of ``V`` over each row's group: ``W V`` with W the same-group indicator."""
        return np.asarray(self.H @ (self.H.T @ V))

    def projections(self, X: np.ndarray, Y: np.ndarray, gram: np.ndarray | None = None) -> np.ndarray:
        from scipy.sparse import csr_matrix

        n, B, K = Y.shape
        Yf = Y.reshape(n, B * K)
        # (n, BK): X_i . (sum of X_j over the sense), for each labelling; through the Gram matrix X X^T
        # when it is given (fewer examples than dimensions: it is small, and shared by every batch)
        A = X @ (X.T @ Yf) if gram is None else gram @ Yf
        within = np.einsum("nd,nd->n", X[self.pi], X[self.pj]) if gram is None else gram[self.pi, self.pj]
        M_w = csr_matrix((within, (self.pi, self.pj)), shape=(n, n))
        inside = np.asarray(M_w @ Yf)  # X_i . (sum over i's own group in the sense)
        count = Yf.sum(0)[None] - self._within(Yf)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (A - inside) / count
        out[count <= 0] = np.nan
        return out.reshape(n, B, K)


def _onehot(y: np.ndarray, K: int) -> np.ndarray:
    """Labellings ``y`` of shape (B, n) as one-hot (n, B, K) float64."""
    B, n = y.shape
    out = np.zeros((n, B, K))
    out[np.arange(n)[:, None], np.arange(B)[None], y.T] = 1.0
    return out


def _separation(proj: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean over examples of (correct-sense projection - mean wrong-sense projection), per labelling:
    ``proj`` (n, B, K) under labellings ``y`` (B, n); returns (B,)."""
    n, B, K = proj.shape
    mine = np.zeros((n, B, K), dtype=bool)
    mine[np.arange(n)[:, None], np.arange(B)[None], y.T] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a labelling where every projection is NaN
        correct = np.nansum(np.where(mine, proj, 0.0), axis=2)
        wrong = np.nanmean(np.where(mine, np.nan, proj), axis=2)
        return np.nanmean(correct - wrong, axis=0)
