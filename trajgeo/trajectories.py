"""The :class:`Trajectories` container: one residual-stream path per example, its metadata and its store.

A trajectory is the sequence of a target token's vectors through the network. Point 0 is the
context-free token embedding; point ``l`` (1..L) is the raw residual stream after block ``l``.
Layer-indexed arrays (``components``) use ``layer`` 1..L, the block that wrote them.

On disk a :class:`Trajectories` is a Zarr group (arrays chunked by examples and compressed) with the
metadata table beside it as ``meta.parquet`` and a checksum for every file. Stores are written to
``<path>.partial`` and renamed into place only when complete, so nothing half-written ever looks
finished, and every chunk is checked as it is read (the format is :mod:`trajgeo.store`; its writer
:class:`trajgeo.store.StoreWriter` is importable from here too).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from trajgeo.store import StoreLock, StoreWriter, check_target, read, store_format

__all__ = ["Trajectories", "as_trajectories", "concat", "load", "StoreWriter"]

COMPONENT_NAMES = ("attn", "mlp", "heads")


class Trajectories:
    """Residual-stream trajectories of target tokens.

    Parameters
    ----------
    states : array-like of shape (n_examples, n_points, d_model)
        The vectors along each path. A NumPy array in memory, or a dask array when loaded lazily.
    meta : DataFrame, optional
        One row per example. An ``example`` column of integer ids is created (0..n-1) if absent;
        ``sense``, ``word`` and ``group`` are read by the analysis functions when present.
    components : mapping, optional
        ``"attn"`` and ``"mlp"`` map to arrays of shape (n_examples, n_layers, d_model): what each
        block's attention and MLP sublayer wrote into the residual stream at the target.
        ``"heads"`` maps to shape (n_examples, n_layers, n_heads, d_model).
    aux : mapping, optional
        Further per-example arrays, e.g. ``"block_input"`` of shape (n_examples, d_model): the
        residual entering block 1 (token embedding times its scale, plus the position embedding).
    points : sequence of int, optional
        The original point index of each position along axis 1 (default ``0..n_points-1``); kept
        when points are subset so that result tables still say which point a value belongs to.
    model_info : mapping, optional
        Where the states came from: model name, source, architecture, n_layers, d_model, dtype,
        fingerprints, trajgeo version and extraction options.

    Examples
    --------
    >>> import numpy as np, trajgeo as tg
    >>> traj = tg.Trajectories(np.zeros((4, 3, 8), dtype=np.float32))
    >>> traj.n_examples, traj.n_points, traj.d_model
    (4, 3, 8)
    """

    def __init__(
        self,
        states: Any,
        meta: pd.DataFrame | None = None,
        components: Mapping[str, Any] | None = None,
        aux: Mapping[str, Any] | None = None,
        points: Sequence[int] | None = None,
        model_info: Mapping[str, Any] | None = None,
    ) -> None:
        if not hasattr(states, "shape"):
            states = np.asarray(states, dtype=np.float32)
        if len(states.shape) != 3:
            raise ValueError(
                f"states must have shape (n_examples, n_points, d_model); got shape {tuple(states.shape)}"
            )
        if isinstance(states, np.ndarray) and states.dtype != np.float32:
            states = states.astype(np.float32)
        self.states = states
        n = states.shape[0]
        if meta is None:
            meta = pd.DataFrame({"example": np.arange(n)})
        elif len(meta) != n:
            raise ValueError(f"meta has {len(meta)} rows but states has {n} examples")
        else:
            meta = meta.reset_index(drop=True).copy()
            if "example" not in meta.columns:
                meta.insert(0, "example", np.arange(n))
        self.meta = meta
        self.components: dict[str, Any] = {}
        for name, arr in (components or {}).items():
            if arr is None:
                continue
            if name not in COMPONENT_NAMES:
                raise ValueError(f"unknown component {name!r}; expected one of {COMPONENT_NAMES}")
            if arr.shape[0] != n:
                raise ValueError(f"component {name!r} has {arr.shape[0]} examples, states has {n}")
            self.components[name] = arr
        self.aux: dict[str, Any] = {}
        for name, arr in (aux or {}).items():
            if arr is not None:
                if arr.shape[0] != n:
                    raise ValueError(f"aux array {name!r} has {arr.shape[0]} examples, states has {n}")
                self.aux[name] = arr
        self.points = np.arange(states.shape[1]) if points is None else np.asarray(points, dtype=int)
        if len(self.points) != states.shape[1]:
            raise ValueError(f"points has {len(self.points)} entries but states has {states.shape[1]} points")
        self.model_info: dict[str, Any] = dict(model_info or {})

    # ------------------------------------------------------------------ shape
    @property
    def n_examples(self) -> int:
        return int(self.states.shape[0])

    @property
    def n_points(self) -> int:
        return int(self.states.shape[1])

    @property
    def n_layers(self) -> int:
        """Number of blocks L: the number of points minus the embedding point (of the full path)."""
        return int(self.model_info.get("n_layers", int(self.points.max())))

    @property
    def d_model(self) -> int:
        return int(self.states.shape[2])

    @property
    def is_lazy(self) -> bool:
        return not isinstance(self.states, np.ndarray)

    def __len__(self) -> int:
        return self.n_examples

    def __repr__(self) -> str:
        comps = ",".join(self.components) or "none"
        name = self.model_info.get("name", "?")
        return (
            f"Trajectories(n_examples={self.n_examples}, n_points={self.n_points}, d_model={self.d_model}, "
            f"components={comps}, model={name!r}{', lazy' if self.is_lazy else ''})"
        )

    # ------------------------------------------------------------- accessors
    def labels(self, column: str | Sequence[Any] | np.ndarray = "sense") -> np.ndarray:
        """Per-example labels: a ``meta`` column name, or an array of length n_examples."""
        if isinstance(column, str):
            if column not in self.meta.columns:
                raise KeyError(
                    f"meta has no column {column!r}; columns are {list(self.meta.columns)}"
                )
            return self.meta[column].to_numpy()
        arr = np.asarray(column)
        if len(arr) != self.n_examples:
            raise ValueError(f"got {len(arr)} labels for {self.n_examples} examples")
        return arr

    def group_codes(
        self,
        groups: str | Sequence[Any] | np.ndarray | None = "group",
        *,
        prefix: bool | None = None,
    ) -> np.ndarray | None:
        """Integer cross-validation group of each example, shape (n_examples,), or None if ungrouped.

        Examples that share a group must never be split across folds, nor score each other.

        For a causal model (``model_info["causal"]``) two examples whose texts agree up to the end of
        the target (``text[:char_end]``) hand the model the same input at the target, so they have the
        same states there whatever follows: by default such identical prefixes are one group. The
        given groups and the prefix groups are merged as connected components (two examples share a
        code when a chain of shared groups or shared prefixes links them), so a prefix shared across
        two sentences joins them, and two targets of one sentence stay together.

        Parameters
        ----------
        groups : str, array-like of shape (n_examples,) or None
            A ``meta`` column name or the groups themselves. Without a ``"group"`` column the
            default means ungrouped (None, or the prefix groups of a causal model); any other missing
            column is a KeyError. ``None`` means ungrouped, unless ``prefix=True``.
        prefix : bool or None
            Merge in the groups of identical input prefixes. ``None`` (default): when the
            trajectories come from a causal model and ``meta`` has ``text`` and ``char_end`` (and
            ``groups`` is not None). ``False``: never (the given groups as they are). ``True``:
            always (a KeyError without ``text``/``char_end``).

        Raises
        ------
        KeyError
            For a missing column other than the default, or ``prefix=True`` without the columns.
        ValueError
            For missing values or a length that is not n_examples.
        """
        given = self._given_groups(groups)
        if prefix is None:
            prefix = (groups is not None and bool(self.model_info.get("causal"))
                      and {"text", "char_end"} <= set(self.meta.columns))
        if not prefix:
            return given
        missing = [c for c in ("text", "char_end") if c not in self.meta.columns]
        if missing:
            raise KeyError(f"prefix groups need the meta columns 'text' and 'char_end'; missing {missing}, "
                           f"columns are {list(self.meta.columns)}")
        texts = self.meta["text"].astype(str).tolist()
        prefixes = pd.factorize(np.array([t[: int(e)] for t, e in zip(texts, self.meta["char_end"])],
                                         dtype=object))[0]
        return prefixes if given is None else _merged_groups(given, prefixes)

    def _given_groups(self, groups: Any) -> np.ndarray | None:
        """The groups as given (column or array), factorised; None when ungrouped."""
        if groups is None:
            return None
        if isinstance(groups, str):
            if groups not in self.meta.columns:
                if groups == "group":  # the default: data without a group column are not grouped
                    return None
                raise KeyError(f"groups column {groups!r} not in meta; columns are {list(self.meta.columns)}")
            g = self.meta[groups].to_numpy()
        else:
            g = np.asarray(groups)
            if len(g) != self.n_examples:
                raise ValueError(f"got {len(g)} groups for {self.n_examples} examples")
        missing = pd.isna(pd.Series(g)).to_numpy()
        if missing.any():
            ex = self.meta["example"].to_numpy()[missing][:5].tolist()
            raise ValueError(f"groups are missing for {int(missing.sum())} examples (example ids {ex} ...)")
        return pd.factorize(g)[0]

    def point_labels(self) -> list[str]:
        """Readable names for the points: ``"emb"`` for point 0, ``"L<l>"`` after block l."""
        return ["emb" if p == 0 else f"L{p}" for p in self.points]

    def compute(self) -> "Trajectories":
        """Load every lazy (dask) array into memory; a no-op for in-memory trajectories."""
        if not self.is_lazy:
            return self
        to_np = lambda a: np.asarray(a.compute() if hasattr(a, "compute") else a, dtype=np.float32)  # noqa: E731
        return Trajectories(
            to_np(self.states),
            self.meta,
            {k: to_np(v) for k, v in self.components.items()},
            {k: to_np(v) for k, v in self.aux.items()},
            self.points,
            self.model_info,
        )

    # ------------------------------------------------------------ subsetting
    def __getitem__(self, key: Any) -> "Trajectories":
        """Select examples by boolean mask, integer indices or slice; metadata and ids follow."""
        if isinstance(key, (int, np.integer)):
            key = [int(key)]
        if isinstance(key, pd.Series):
            key = key.to_numpy()
        if isinstance(key, slice):
            idx = np.arange(self.n_examples)[key]
        else:
            key = np.asarray(key)
            if key.dtype == bool:
                if key.shape != (self.n_examples,):
                    raise IndexError(
                        f"boolean mask has shape {key.shape}, expected ({self.n_examples},)"
                    )
                idx = np.flatnonzero(key)
            else:
                idx = key.astype(int)
        take = lambda a: a[idx]  # noqa: E731
        return Trajectories(
            take(self.states),
            self.meta.iloc[idx].reset_index(drop=True),
            {k: take(v) for k, v in self.components.items()},
            {k: take(v) for k, v in self.aux.items()},
            self.points,
            self.model_info,
        )

    def select_points(self, points: Iterable[int]) -> "Trajectories":
        """Keep only the given (original) point indices; components are kept whole."""
        points = [int(p) for p in points]
        pos = {int(p): i for i, p in enumerate(self.points)}
        missing = [p for p in points if p not in pos]
        if missing:
            raise IndexError(f"points {missing} are not in these trajectories (have {self.points.tolist()})")
        cols = [pos[p] for p in points]
        return Trajectories(
            self.states[:, cols], self.meta, self.components, self.aux, points, self.model_info
        )

    # ------------------------------------------------------------ long form
    def to_frame(
        self,
        values: Mapping[str, np.ndarray] | None = None,
        meta_columns: Sequence[str] = ("word", "sense"),
    ) -> pd.DataFrame:
        """Tidy long DataFrame: one row per example x point x metric.

        Parameters
        ----------
        values : mapping of str to ndarray of shape (n_examples, n_points), optional
            The metrics to put in long form. By default the L2 norm of each state.
        meta_columns : sequence of str
            ``meta`` columns to carry into every row (those absent are skipped).

        Returns
        -------
        DataFrame with columns ``example, point, <meta_columns>, metric, value``.
        """
        if values is None:
            values = {"norm": np.linalg.norm(np.asarray(self.states), axis=-1)}
        frames = []
        n, p = self.n_examples, self.n_points
        cols = [c for c in meta_columns if c in self.meta.columns]
        for name, arr in values.items():
            arr = np.asarray(arr)
            if arr.shape != (n, p):
                raise ValueError(f"metric {name!r} has shape {arr.shape}, expected {(n, p)}")
            df = pd.DataFrame(
                {
                    "example": np.repeat(self.meta["example"].to_numpy(), p),
                    "point": np.tile(self.points, n),
                }
            )
            for c in cols:
                df[c] = np.repeat(self.meta[c].to_numpy(), p)
            df["metric"] = name
            df["value"] = arr.reshape(-1)
            frames.append(df)
        return pd.concat(frames, ignore_index=True)

    # ------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """A short hash of the states, points, example ids and model info (for caches)."""
        if "fingerprint" in self.model_info and self.is_lazy:
            return str(self.model_info["fingerprint"])
        h = hashlib.blake2b(digest_size=12)
        h.update(np.ascontiguousarray(np.asarray(self.states, dtype=np.float32)).tobytes())
        h.update(np.asarray(self.points).tobytes())
        h.update(self.meta["example"].to_numpy().astype(np.int64).tobytes())
        info = {k: v for k, v in self.model_info.items() if k != "fingerprint"}
        h.update(json.dumps(info, sort_keys=True, default=str).encode())
        return h.hexdigest()

    # ---------------------------------------------------------------- saving
    def save(self, path: str | os.PathLike, dtype: str = "float32", overwrite: bool = False, *,
             chunk_size: int | None = None) -> Path:
        """Write the trajectories as a Zarr store (atomically: to ``<path>.partial``, then renamed).

        Parameters
        ----------
        path : path-like
            Directory of the store, conventionally ending in ``.zarr``.
        dtype : {"float32", "float16"}
            Storage type of the arrays; float16 halves the size (loaded back as float32).
        overwrite : bool
            Replace an existing trajgeo store at ``path`` (never a file or another folder).
        chunk_size : int, optional
            Examples per chunk (the unit of reading and checking); default ``min(n_examples, 1024)``.

        Raises
        ------
        FileExistsError
            A store exists at ``path`` and not ``overwrite``; or ``path`` is a file or a folder that is
            not a trajgeo store (nothing is deleted).
        trajgeo.store.StoreLockedError
            Another run is writing the store.
        """
        path = check_target(path)  # a file or a folder that is not a store is never replaced
        arrays = {"states": self.states}
        arrays.update({f"components/{k}": v for k, v in self.components.items()})
        arrays.update({f"aux/{k}": v for k, v in self.aux.items()})
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if store_format(path) is not None and not overwrite:
            raise FileExistsError(f"a store already exists at {path}; pass overwrite=True to replace it")
        with StoreLock(path):
            writer = StoreWriter.create(
                path,
                {k: tuple(v.shape) for k, v in arrays.items()},
                meta=self.meta,
                attrs={"points": [int(p) for p in self.points], "model_info": self.model_info},
                dtype=dtype,
                chunk_size=max(1, min(self.n_examples, 1024)) if chunk_size is None else chunk_size,
                overwrite=overwrite,
            )
            for i, (start, stop) in enumerate(writer.chunk_bounds()):
                writer.write_chunk(i, {k: np.asarray(v[start:stop]) for k, v in arrays.items()})
            return writer.finalize()


def _merged_groups(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of two groupings of the same examples (codes 0..k-1 in order of first
    appearance): examples share a code iff a chain of shared ``a`` or shared ``b`` codes links them."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_a = int(a.max(initial=-1)) + 1
    n_nodes = n_a + int(b.max(initial=-1)) + 1
    # one node per group of either kind; each example joins its a-group to its b-group
    graph = coo_matrix((np.ones(len(a)), (a, n_a + b)), shape=(n_nodes, n_nodes))
    labels = connected_components(graph, directed=False)[1]
    return pd.factorize(labels[a])[0]


def as_trajectories(obj: Any) -> Trajectories:
    """Accept a :class:`Trajectories` or a plain array of shape (n_examples, n_points, d_model)."""
    if isinstance(obj, Trajectories):
        return obj
    return Trajectories(obj)


def concat(trajs: Sequence[Trajectories], renumber: bool = False) -> Trajectories:
    """Stack trajectories of the same model (same points and d_model) along examples.

    Parameters
    ----------
    trajs : sequence of Trajectories
    renumber : bool
        Give the examples new ids 0..n-1 (needed when the inputs' ids collide).
    """
    if not trajs:
        raise ValueError("concat needs at least one Trajectories")
    first = trajs[0]
    for i, t in enumerate(trajs[1:], 1):
        if not np.array_equal(t.points, first.points) or t.d_model != first.d_model:
            raise ValueError(
                f"trajectories {i} has points {t.points.tolist()} / d_model {t.d_model}, "
                f"but trajectories 0 has {first.points.tolist()} / {first.d_model}"
            )
        if set(t.components) != set(first.components):
            raise ValueError(f"trajectories {i} has components {set(t.components)}, 0 has {set(first.components)}")
    meta = pd.concat([t.meta for t in trajs], ignore_index=True)
    if renumber:
        meta["example"] = np.arange(len(meta))
    elif meta["example"].duplicated().any():
        raise ValueError("example ids collide across the inputs; pass renumber=True")
    stack = np.concatenate
    return Trajectories(
        stack([np.asarray(t.states) for t in trajs]),
        meta,
        {k: stack([np.asarray(t.components[k]) for t in trajs]) for k in first.components},
        {k: stack([np.asarray(t.aux[k]) for t in trajs]) for k in first.aux if all(k in t.aux for t in trajs)},
        first.points,
        first.model_info,
    )



# ====================================================================== loading
def load(path: str | os.PathLike, lazy: bool = False) -> Trajectories:
    """Load trajectories saved by :meth:`Trajectories.save` or :func:`trajgeo.extract`.

    Every file is checked against the checksum the store records: ``meta.parquet`` and the Zarr
    metadata on opening, each chunk as it is read (in memory: now; lazily: when a computation reads
    it). Hashing costs about as much as decompressing, so a load takes up to twice as long as an
    unchecked one; the states are read far less often than they are computed on. Stores written by
    trajgeo 0.1 (format 1) load with a warning that they cannot be verified
    (:func:`trajgeo.store.upgrade` records checksums for them).

    Parameters
    ----------
    path : path-like
        The store directory.
    lazy : bool
        Return dask arrays over the store instead of reading everything into memory; the metric
        functions then work chunk by chunk.

    Raises
    ------
    FileNotFoundError
        No store at ``path`` (the message says when an unfinished run can be resumed).
    trajgeo.store.CorruptStoreError
        A file is missing, truncated or does not match its checksum; the message names the store,
        the array and the chunk.
    trajgeo.store.StoreError
        ``path`` is a file or a folder that is not a trajgeo store.
    """
    path = Path(path)
    got = read(path, lazy=lazy)
    names = got.attrs.get("arrays", [])
    components = {n.split("/", 1)[1]: got.arrays[n] for n in names if n.startswith("components/")}
    aux = {n.split("/", 1)[1]: got.arrays[n] for n in names if n.startswith("aux/")}
    info = dict(got.attrs.get("model_info", {}))
    info["fingerprint"] = (got.marker or {}).get("fingerprint", got.attrs.get("fingerprint"))
    return Trajectories(got.arrays["states"], got.meta, components, aux, got.attrs.get("points"), info)
