"""Activation patching (causal tracing) over a whole set of minimal pairs, in a few large forward passes.

For a pair, the *clean* run reads ``text`` and the *corrupt* run ``counterfactual`` (the cue swapped).
Denoising runs the corrupt text and patches in the clean value at one (site, position); noising runs the
clean text and patches in the corrupt value. With ``base`` the run patched and ``source`` the run the
value comes from::

    effect            = readout(patched) - readout(base)
    normalized_effect = effect / (readout(source) - readout(base))

so that 1 means the patch carries the whole difference and 0 nothing. ``normalized_effect`` is NaN where
the two runs' readouts do not differ: ``|readout(source) - readout(base)| <= rtol * max(|readout(source)|,
|readout(base)|)`` (default ``rtol=1e-5``, a few float32 roundings; e.g. a causal model that cannot see a
cue placed after the target).

How it runs: every pair's clean and corrupt runs are read once (all sites needed, at every position)
and cached; then every (pair, position) of one site index is a row of a batch. A residual patch at point
l starts the pass after block l from the cached residual with the one cell replaced (exact: a block sees
only its input, the positions and the mask), so it runs L - l blocks, not L; point L needs no pass at all
(the patched final vector is known); point 0 (the embedding, before GPT-2's position embedding or BERT's
embedding norm) runs the whole model. A sublayer or head patch at layer l starts at block l from the
cached input of block l.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from trajgeo.engine import Edit, Engine, Pool, Site
from trajgeo.interventions._pairs import PairInputs, prepare_pairs
from trajgeo.interventions._store import ChunkStore, sweep_key
from trajgeo.interventions.readouts import as_readout

__all__ = ["patch", "PatchResult", "SITES", "DIRECTIONS"]

SITES = ("resid", "attn", "mlp", "head")
DIRECTIONS = ("denoise", "noise")
# direction -> (the run patched, the run the patched value comes from)
_ROLES = {"denoise": ("corrupt", "clean"), "noise": ("clean", "corrupt")}


@dataclass
class PatchResult:
    """``effects``: the tidy frame :func:`patch` returns; ``readouts``: one row per (pair, direction) with
    ``pair, direction, base, source, difference`` (source - base) and ``n_visible_cues`` (cue positions the
    model sees: a causal model only sees those before the target)."""

    effects: pd.DataFrame
    readouts: pd.DataFrame


# ============================================================== the plan of a sweep
@dataclass(frozen=True)
class _Plan:
    site: str
    units: tuple  # points (resid), layers (attn, mlp) or (layer, head) pairs
    positions: Any
    directions: tuple
    rtol: float

    @classmethod
    def make(cls, engine: Engine, site: str, positions: Any, points: Any, layers: Any, heads: Any,
             direction: Any, rtol: float) -> "_Plan":
        L = engine.n_layers
        if site not in SITES:
            raise ValueError(f"site must be one of {SITES}, got {site!r}")
        if site == "resid":
            if layers is not None or heads is not None:
                raise ValueError("residual sites are indexed by points=, not layers= or heads=")
            units = tuple(range(L + 1)) if points is None else tuple(sorted({int(p) for p in points}))
            for p in units:
                engine.check_site(Site.resid(p))
        else:
            if points is not None:
                raise ValueError(f"{site!r} sites are indexed by layers= (1..{L}), not points=")
            ls = tuple(range(1, L + 1)) if layers is None else tuple(sorted({int(l) for l in layers}))
            for l in ls:
                engine.check_site(Site(site, l))
            if site == "head":
                hs = tuple(range(engine.adapter.n_heads)) if heads is None else tuple(sorted({int(h) for h in heads}))
                for h in hs:
                    engine.check_site(Site.head_write(ls[0], h))
                units = tuple((l, h) for l in ls for h in hs)
            else:
                if heads is not None:
                    raise ValueError(f"heads= applies to site='head', not {site!r}")
                units = ls
        if not units:
            raise ValueError("nothing to patch: no points or layers given")
        directions = DIRECTIONS if direction == "both" else (direction,) if isinstance(direction, str) \
            else tuple(direction)
        bad = [d for d in directions if d not in DIRECTIONS]
        if bad or not directions:
            raise ValueError(f"direction must be 'denoise', 'noise' or 'both', got {direction!r}")
        if not isinstance(positions, str):
            positions = tuple(int(p) for p in positions)
        return cls(site, units, positions, directions, float(rtol))

    def record(self) -> dict:
        return {"site": self.site, "units": list(self.units), "positions": self.positions,
                "directions": list(self.directions), "rtol": self.rtol}

    def layer(self, unit: Any) -> int:
        return unit[0] if self.site == "head" else unit

    def start_site(self, unit: Any) -> Site:
        """Sublayer and head patches at layer l start from the input of block l."""
        l = self.layer(unit)
        return Site.block_input(1) if l == 1 else Site.resid(l - 1)

    def cache_sites(self, L: int) -> list[Site]:
        """What the clean and corrupt runs are read at (every position)."""
        if self.site == "resid":
            return [Site.resid(p) for p in sorted(set(self.units) | {L})]
        layers = sorted({self.layer(u) for u in self.units})
        value = [Site.z(l) if self.site == "head" else Site(self.site, l) for l in layers]
        starts = {self.start_site(l if self.site != "head" else (l, 0)) for l in layers}
        return value + sorted(starts, key=lambda s: (s.kind, s.index)) + [Site.resid(L)]


# ============================================================== runs
def _padded(rows: Sequence[Any], T: int) -> Any:
    """Stack (n_i, ...) tensors into (batch, T, ...) with zeros after each row's end."""
    import torch

    out = torch.zeros((len(rows), T) + tuple(rows[0].shape[1:]), dtype=rows[0].dtype, device=rows[0].device)
    for r, x in enumerate(rows):
        out[r, :len(x)] = x
    return out


def _pooled(item: PairInputs, h: Any) -> Any:
    """The target's vector from a (n, d) tensor of one pair's positions."""
    return h[item.pool].mean(0)


def _cache(engine: Engine, items: list[PairInputs], role: str, sites: list[Site], batch_size: int) -> list[dict]:
    """Each pair's run of ``role`` read at ``sites`` at every position: per pair, site -> (n, ...)."""
    out: list[dict] = [{} for _ in items]
    order = sorted(range(len(items)), key=lambda i: items[i].n)
    for b in range(0, len(order), batch_size):
        rows = order[b:b + batch_size]
        run = engine.run(engine.batch([items[i].ids(role) for i in rows]), read=sites)
        for r, i in enumerate(rows):
            out[i] = {s: run[s][r, :items[i].n].clone() for s in sites}
    return out


def _effects_frame(pairs: pd.DataFrame, plan: _Plan, direction: str, units: list, pair_rows: np.ndarray,
                   cols: np.ndarray, roles: list, effect: np.ndarray, norm: np.ndarray) -> pd.DataFrame:
    """The tidy rows of a set of cells: one per (unit, pair row, column)."""
    part: dict[str, Any] = {"pair": pairs["pair"].to_numpy()[pair_rows]}
    if plan.site == "resid":
        part["point"] = np.asarray(units, dtype=np.int64)
    else:
        part["layer"] = np.asarray([plan.layer(u) for u in units], dtype=np.int64)
        if plan.site == "head":
            part["head"] = np.asarray([u[1] for u in units], dtype=np.int64)
    part.update({"position": np.asarray(cols, dtype=np.int64), "site": plan.site, "effect": effect,
                 "normalized_effect": norm, "direction": direction})
    if "kind" in pairs.columns:
        part["kind"] = pairs["kind"].to_numpy()[pair_rows]
    part["word"] = pairs["word"].to_numpy()[pair_rows]
    part["role"] = roles
    return pd.DataFrame(part)


def _ratio(effect: np.ndarray, diff: np.ndarray, flat: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flat, np.nan, effect / diff)


class _Sweep:
    """The exact patches of one chunk of pairs."""

    def __init__(self, engine: Engine, plan: _Plan, items: list[PairInputs], fn: Any, batch_size: int,
                 bar: Any) -> None:
        import torch

        self.e, self.plan, self.items, self.fn, self.bs, self.bar = engine, plan, items, fn, batch_size, bar
        L = engine.n_layers
        self.final = Site.resid(L)
        sites = plan.cache_sites(L)
        self.cache = {role: _cache(engine, items, role, sites, batch_size) for role in ("clean", "corrupt")}
        idx = torch.as_tensor([it.index for it in items])
        self.readout = {role: fn(torch.stack([_pooled(it, c[self.final]) for it, c in zip(items, self.cache[role])])
                                 .float(), idx).detach() for role in ("clean", "corrupt")}

    def cells(self) -> list[tuple[int, int]]:
        """(item, column) of every cell, pairs in order of length (less padding per batch)."""
        order = sorted(range(len(self.items)), key=lambda i: self.items[i].n)
        return [(i, c) for i in order for c in self.items[i].columns(self.plan.positions)]

    def values(self, unit: Any, cells: list[tuple[int, int]], base: str, source: str) -> Any:
        """The readout of each cell's patched run (one batch)."""
        import torch

        e, plan, items = self.e, self.plan, self.items
        L = e.n_layers
        rows = [i for i, _ in cells]
        cols = torch.as_tensor([c for _, c in cells], device=e.lm.device)
        ar = torch.arange(len(cells), device=e.lm.device)
        idx = torch.as_tensor([items[i].index for i in rows])
        bc, sc = self.cache[base], self.cache[source]
        if plan.site == "resid" and unit == L:  # no pass: the final vector with one position replaced
            finals = []
            for i, c in cells:
                h = bc[i][self.final].clone()
                h[c] = sc[i][self.final][c]
                finals.append(_pooled(items[i], h))
            return self.fn(torch.stack(finals).float(), idx).detach()
        batch = e.batch([items[i].ids(base) for i in rows])
        T = batch.input_ids.shape[1]
        pool = Pool.mean([items[i].pool for i in rows])
        if plan.site == "resid" and unit == 0:
            value = torch.stack([sc[i][Site.resid(0)][c] for i, c in cells])
            run = e.run(batch, read=[self.final], pool=pool, edits=[Edit.replace(Site.resid(0), value, rows=ar,
                                                                                  columns=cols)])
        elif plan.site == "resid":
            site = Site.resid(unit)
            hidden = _padded([bc[i][site] for i in rows], T)
            hidden[ar, cols] = torch.stack([sc[i][site][c] for i, c in cells])
            run = e.run(batch, read=[self.final], pool=pool, start_after=(unit, hidden))
        else:
            l = plan.layer(unit)
            start = plan.start_site(unit)
            hidden = _padded([bc[i][start] for i in rows], T)
            if plan.site == "head":
                h = unit[1]
                value = torch.stack([sc[i][Site.z(l)][c, h] for i, c in cells])
                edit = Edit.replace(Site.z(l, h), value, rows=ar, columns=cols)
            else:
                site = Site(plan.site, l)
                value = torch.stack([sc[i][site][c] for i, c in cells])
                edit = Edit.replace(site, value, rows=ar, columns=cols)
            run = e.run(batch, read=[self.final], pool=pool, edits=[edit], start_after=(l - 1, hidden))
        return self.fn(run[self.final].float(), idx).detach()

    def frames(self, pairs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Run every cell of every unit and direction; the effects and the readouts of this chunk."""
        import torch

        plan, items = self.plan, self.items
        cells = self.cells()
        roles = [items[i].role(c) for i, c in cells]
        parts, reads = [], []
        for direction in plan.directions:
            base, source = _ROLES[direction]
            r_base = self.readout[base].cpu().numpy().astype(np.float64)
            r_src = self.readout[source].cpu().numpy().astype(np.float64)
            diff = r_src - r_base
            flat = np.abs(diff) <= plan.rtol * np.maximum(np.abs(r_src), np.abs(r_base))
            for unit in plan.units:
                vals = []
                for b in range(0, len(cells), self.bs):
                    chunk = cells[b:b + self.bs]
                    vals.append(self.values(unit, chunk, base, source))
                    self.bar.update(len(chunk))
                v = torch.cat(vals).cpu().numpy().astype(np.float64) if vals else np.zeros(0)
                it = np.asarray([items[i].index for i, _ in cells], dtype=np.int64)
                local = np.asarray([i for i, _ in cells], dtype=np.int64)
                effect = v - r_base[local]
                parts.append(_effects_frame(pairs, plan, direction, [unit] * len(cells), it,
                                            np.asarray([c for _, c in cells]), roles, effect,
                                            _ratio(effect, diff[local], flat[local])))
            for k, item in enumerate(items):
                n_vis = sum(c < item.n for c in item.cue)
                reads.append({"pair": pairs["pair"].iloc[item.index], "direction": direction, "base": r_base[k],
                              "source": r_src[k], "difference": diff[k], "n_visible_cues": n_vis})
        return pd.concat(parts, ignore_index=True), pd.DataFrame(reads)


def _tidy(effects: pd.DataFrame, readouts: pd.DataFrame, pairs: pd.DataFrame,
          plan: _Plan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row order whatever the chunks and batches: direction, point or layer (and head), the pairs in the
    order given, position."""
    order = pd.Series(np.arange(len(pairs)), index=pairs["pair"].to_numpy())
    rank = {d: i for i, d in enumerate(plan.directions)}
    units = [c for c in ("point", "layer", "head") if c in effects.columns]
    e = effects.assign(_d=effects["direction"].map(rank), _p=effects["pair"].map(order))
    e = e.sort_values(["_d", *units, "_p", "position"], kind="stable").drop(columns=["_d", "_p"])
    r = readouts.assign(_d=readouts["direction"].map(rank), _p=readouts["pair"].map(order))
    r = r.sort_values(["_d", "_p"], kind="stable").drop(columns=["_d", "_p"])
    return e.reset_index(drop=True), r.reset_index(drop=True)


@contextlib.contextmanager
def _seeded_torch(random_state: int | None) -> Iterator[None]:
    """Seed torch's generators (CPU and every GPU) with ``random_state`` for the block, in a forked state: the
    caller's generators are as they were afterwards. None: no seeding (still forked)."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        if random_state is not None:
            torch.manual_seed(int(random_state))
        yield


# ============================================================== the public function
def patch(
    model: Any,
    pairs: Any,
    *,
    site: str = "resid",
    readout: Any = "logit",
    positions: Any = "all",
    points: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    direction: Any = "denoise",
    pool: str | None = None,
    batch_size: int = 64,
    chunk_size: int = 32,
    on_misaligned: str = "error",
    rtol: float = 1e-5,
    progress: bool = True,
    random_state: int | None = 0,
    store: Any = None,
    overwrite: bool = False,
    return_result: bool = False,
) -> pd.DataFrame | PatchResult:
    """Activation patching of every (site, position) of every pair, read out at the target.

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
    pairs : DataFrame
        Columns ``pair, word, text, counterfactual, target, sense, counterfactual_sense`` (e.g.
        :func:`trajgeo.datasets.minimal_pairs`), optionally ``kind`` (``"flip"``: the cue swap flips the
        sense; ``"same"``: it keeps it, the null). Aligned by :func:`trajgeo.datasets.align_pairs`.
    site : {"resid", "attn", "mlp", "head"}
        Residual stream at each point, a block's attention or MLP write, or one head's write (replaced
        through its slice of the output projection's input, where heads add up: not Gemma, not post-LN
        encoders).
    readout : "logit", Readout or callable
        What is measured at the target's final point (see :mod:`trajgeo.interventions.readouts`):
        ``"logit"`` (the model's next-token log-odds of the senses' words; causal LMs), a
        :class:`SenseReadout`, or ``f(h) -> (n,)`` on vectors ``h`` of shape (n, d_model).
    positions : {"all", "target", "cue"} or list of int
        Token positions patched (of the fed input: a causal model's input ends at the target).
    points : list of int, optional
        Residual sites: the points patched (default all, 0..L).
    layers, heads : list of int, optional
        Sublayer and head sites: the layers (1..L) and heads patched (default all).
    direction : {"denoise", "noise", "both"}
        Denoising patches clean values into the corrupt run; noising the reverse.
    pool : {"last", "first", "mean"}, optional
        How a target of several tokens makes its vector (default as :func:`trajgeo.extract`: last for
        causal models, mean for encoders).
    batch_size : int
        Rows (patched runs) per forward pass.
    chunk_size : int
        Pairs per chunk: the unit of caching, storing and resuming.
    on_misaligned : {"error", "skip"}
        A pair whose texts do not align token for token: an error naming it, or skipped with a warning.
    rtol : float
        Relative tolerance under which the clean and corrupt readouts count as equal (normalized_effect NaN).
    progress : bool
        A tqdm bar over the cells.
    random_state : int or None
        Seeds torch's generator during the sweep (a forked state), for models with a random step.
    store : path, optional
        A folder for the partial results, one file per chunk, written atomically; a sweep with the same
        model, pairs, readout and options resumes from it, and a finished one is read back.
    overwrite : bool
        Replace a store that holds another sweep.
    return_result : bool
        Return a :class:`PatchResult` (effects and per-pair readouts) instead of the effects alone.

    Returns
    -------
    DataFrame
        One row per (pair, point or layer[, head], position, direction): columns ``pair``, ``point``
        (resid) or ``layer`` (and ``head``), ``position, site, effect, normalized_effect, direction``,
        ``kind`` (if the pairs have it), ``word``, and ``role`` (``"target"``, ``"cue"`` or ``"other"``).
        Read ``effect`` of ``kind == "same"`` pairs as the null for ``"flip"`` pairs
        (:func:`trajgeo.interventions.kind_contrast`).
    """
    from tqdm.auto import tqdm

    engine = Engine(model)
    lm = engine.lm
    if int(batch_size) < 1 or int(chunk_size) < 1:
        raise ValueError(f"batch_size and chunk_size must be positive, got {batch_size}, {chunk_size}")
    plan = _Plan.make(engine, site, positions, points, layers, heads, direction, rtol)
    ro = as_readout(readout)
    df, items = prepare_pairs(lm, pairs, on_misaligned=on_misaligned, pool=pool)
    fn = ro.bind(lm, df)
    chunks = [items[s:s + int(chunk_size)] for s in range(0, len(items), int(chunk_size))]
    writer = None
    if store is not None:
        cols = [c for c in ("pair", "word", "text", "counterfactual", "target", "sense", "counterfactual_sense",
                            "kind") if c in df.columns]
        key = sweep_key(lm.fingerprint(), df[cols], plan.record(), ro.key(), int(chunk_size),
                        pool or "", on_misaligned)
        writer = ChunkStore(store, key, len(chunks), ("readouts", "effects"), overwrite=overwrite,
                            what="patching sweep")
    todo = [k for k in range(len(chunks)) if writer is None or not writer.done(k)]
    n_cells = sum(len(it.columns(plan.positions)) for k in todo for it in chunks[k]) * len(plan.units) \
        * len(plan.directions)
    bar = tqdm(total=n_cells, disable=not progress, desc=f"patch {plan.site} ({lm.name})", unit="cell")
    effects, reads = [], []
    with _seeded_torch(random_state):
        for k in todo:
            eff, rd = _Sweep(engine, plan, chunks[k], fn, int(batch_size), bar).frames(df)
            if writer is not None:
                writer.write(k, {"readouts": rd, "effects": eff})
            effects.append(eff)
            reads.append(rd)
    bar.close()
    if writer is not None:
        eff_all, rd_all = writer.read("effects"), writer.read("readouts")
    else:
        eff_all, rd_all = pd.concat(effects, ignore_index=True), pd.concat(reads, ignore_index=True)
    eff_all, rd_all = _tidy(eff_all, rd_all, df, plan)
    return PatchResult(eff_all, rd_all) if return_result else eff_all
