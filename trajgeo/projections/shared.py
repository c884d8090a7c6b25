"""A shared PCA/UMAP space for the vectors of all points (:class:`Projector`, :func:`fit`), with a cache of fits."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from trajgeo._api import changed_signature
from trajgeo._arrays import compute
from trajgeo.normalization import DEFAULT_NORMALIZE
from trajgeo.projections._common import (
    _keyword_signature,
    _moments,
    _pca_from_moments,
    _PointProjection,
    _project_blocks,
)
from trajgeo.trajectories import as_trajectories

__all__ = ["Projector", "fit", "METHODS"]

METHODS = ("pca", "umap")
_CACHE_FORMAT = 2  # 2: arrays in .npz, loaded without pickle (1 was a joblib pickle, never loaded now)


class Projector(_PointProjection):
    """A shared low-dimensional space for the vectors of all points (PCA or UMAP).

    Parameters
    ----------
    method : {"pca", "umap"}
        Linear PCA (exact, with explained variance) or UMAP (umap-learn, imported when fitted).
    points : sequence of int, optional
        Original point indices to fit on and to project (default: all points of the fitting
        trajectories). Trajectories given to :meth:`transform` must contain them.
    normalize : {None, "center", "standardize", "whiten"}
        Per-point normalisation before fitting (see the module docstring for why the default is
        ``"standardize"``). Its statistics come from the fitting examples and are reused for new ones.
    n_components : int
        Dimension of the projection (2 for a plane, 3 for a ``z`` column).
    sample : int or float, optional
        Fit on this many randomly drawn examples (int) or this fraction of them (float in (0, 1]);
        all examples by default. The normalisation statistics come from the same sample.
    random_state : int or None
        Seed for the example sample, PCA's solver and UMAP.
    umap_kwargs : dict, optional
        Further arguments to :class:`umap.UMAP` (e.g. ``n_neighbors``, ``min_dist``, ``n_epochs``).

    Attributes
    ----------
    points_ : ndarray of shape (n_points,)
        The original point indices the projector works on.
    normalizer_ : PointNormalizer
        Fitted per-point statistics, shape (n_points, d_model) each.
    mean_ : ndarray of shape (d_model,)
        Mean of the normalised fitting vectors (PCA).
    components_ : ndarray of shape (n_components, d_model)
        Principal axes in normalised space (PCA); the largest-magnitude entry of each is positive.
    explained_variance_ : ndarray of shape (n_components,)
    explained_variance_ratio_ : ndarray of shape (n_components,)
        Share of the total variance of the normalised fitting vectors along each axis (PCA).
    umap_ : umap.UMAP or None
        The fitted UMAP model (UMAP); ``None`` in a projector loaded from the cache of :func:`fit`,
        which keeps only arrays (the model would need pickle): such a projector returns its layout
        for the fitting trajectories and refuses new ones.
    embedding_ : ndarray of shape (n_fit_examples, n_points, n_components)
        UMAP's coordinates of the fitting vectors; :meth:`transform` returns these for the
        fitting examples, since ``umap.UMAP.transform`` of training data only approximates them.
    fit_index_ : ndarray of shape (n_fit_examples,)
        Positions (rows) of the examples the projector was fitted on.
    fit_fingerprint_ : str or None
        ``traj.fingerprint()`` of the fitting trajectories (UMAP, to recognise them in
        :meth:`transform`; ``None`` for PCA, which does not need it: hashing costs a pass over the
        states, and a lazy store without a stored fingerprint would be read whole).
    n_features_in_ : int
        d_model.

    Examples
    --------
    >>> import numpy as np, trajgeo as tg
    >>> states = np.random.default_rng(0).normal(size=(20, 4, 8)).astype("float32")
    >>> proj = tg.projections.Projector(n_components=2).fit(states)
    >>> proj.transform(states).shape
    (20, 4, 2)
    """

    @changed_signature(positional=("method", "points", "normalize", "n_components", "sample", "random_state",
                                    "umap_kwargs"))
    def __init__(
        self,
        *,
        method: str = "pca",
        points: Sequence[int] | None = None,
        normalize: str | None = DEFAULT_NORMALIZE,
        n_components: int = 2,
        sample: int | float | None = None,
        random_state: int | None = 0,
        umap_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.points = points
        self.normalize = normalize
        self.n_components = n_components
        self.sample = sample
        self.random_state = random_state
        self.umap_kwargs = umap_kwargs

    # ---------------------------------------------------------------- fit
    def fit(self, traj: Any, y: Any = None) -> "Projector":
        """Fit the normalisation and the projection.

        Parameters
        ----------
        traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
            In memory or lazy (dask); PCA reads either block by block (a lazy store one chunk at a
            time), UMAP needs the vectors in memory.
        y : ignored

        Returns
        -------
        self
        """
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        traj, x = self._start_fit(traj)
        self.fit_fingerprint_ = traj.fingerprint() if self.method == "umap" else None
        if self.method == "umap":
            x = np.asarray(compute(x), dtype=np.float32)
            self._fit_umap(self.normalizer_.transform(x).reshape(-1, traj.d_model), x.shape[:2])
            return self
        m = _moments(x, self.normalizer_, per_point=False)
        fitted = _pca_from_moments(m.n_, m.mean_, m.m2_, int(self.n_components))
        self.mean_ = fitted["mean"]
        self.components_ = fitted["components"]
        self.explained_variance_ = fitted["explained_variance"]
        self.explained_variance_ratio_ = fitted["explained_variance_ratio"]
        return self

    def _fit_umap(self, flat: np.ndarray, shape: tuple[int, int]) -> None:
        try:
            import umap  # slow to import (numba): only when a UMAP is actually fitted
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("method='umap' needs umap-learn: pip install umap-learn") from err
        kwargs = {"n_neighbors": min(15, max(2, flat.shape[0] - 1))}
        kwargs.update(self.umap_kwargs or {})
        with warnings.catch_warnings():
            # umap warns that a fixed random_state disables parallelism: that is the point (reproducible)
            warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
            self.umap_ = umap.UMAP(n_components=int(self.n_components), random_state=self.random_state, **kwargs)
            emb = self.umap_.fit_transform(flat)
        self.embedding_ = np.asarray(emb, dtype=np.float32).reshape(*shape, int(self.n_components))

    # ---------------------------------------------------------- transform
    def _check_fitted(self) -> None:
        if not hasattr(self, "normalizer_"):
            raise RuntimeError("this Projector is not fitted yet; call fit first (or tg.projections.fit)")

    def _project(self, x: np.ndarray) -> np.ndarray:
        """Normalise raw states (n, n_points, d) with the stored statistics and project them."""
        xn = self.normalizer_.transform(x)
        n, p, d = xn.shape
        if self.method == "pca":  # (x - m) C^T as one product over all vectors, the mean's image after
            out = (xn.reshape(n * p, d) @ self.components_.T - self.mean_ @ self.components_.T).reshape(n, p, -1)
        else:
            out = self.umap_.transform(xn.reshape(n * p, d)).reshape(n, p, -1)
        return np.asarray(out, dtype=np.float32)

    def transform(self, traj: Any) -> np.ndarray:
        """Project trajectories into the fitted space, without refitting anything.

        Parameters
        ----------
        traj : Trajectories or array-like of shape (n_examples, n_points_any, d_model)
            Must contain the points in ``points_``; in memory or lazy (projected chunk by chunk).

        Returns
        -------
        ndarray of shape (n_examples, n_points, n_components), float32
            Coordinates of each example at each point of ``points_``.
        """
        self._check_fitted()
        traj = as_trajectories(traj)
        k = int(self.components_.shape[0]) if self.method == "pca" else int(self.n_components)
        same = False
        if self.method == "umap":
            same = traj.fingerprint() == self.fit_fingerprint_
            if same and len(self.fit_index_) == traj.n_examples:  # the fitted layout itself, nothing to project
                self._states(traj)  # the same checks as a projection (points, d_model)
                return self.embedding_.copy()
            if getattr(self, "umap_", None) is None:
                raise RuntimeError(
                    "this UMAP projector was loaded from the projection cache, which keeps its layout of the "
                    "fitting examples but not the UMAP model (that would need pickle, which trajgeo never loads "
                    "from a cache); to project other examples, fit it again with cache=False")
        out = _project_blocks(self._states(traj), self._project, k)
        if self.method == "umap" and same:
            out[self.fit_index_] = self.embedding_  # the fitted layout itself, not its re-projection
        return out


# ================================================================= functions
def _cache_key(fingerprint: str, params: dict[str, Any]) -> str:
    blob = json.dumps({"fingerprint": fingerprint, "format": _CACHE_FORMAT, **params}, sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def _cache_folder(cache: bool | str | os.PathLike | None, method: str) -> Path | None:
    """Where to cache: None caches UMAP only (PCA refits faster than a disk round trip)."""
    if cache is False or (cache is None and method != "umap"):
        return None
    if cache is None or cache is True:
        from trajgeo.models import cache_dir

        return cache_dir() / "projections"
    return Path(cache)


# The cache holds arrays only (.npz, read with allow_pickle=False): a file planted in the cache folder can at
# worst be refused, never run code. Every file carries its key and format, checked on load.
_ARRAY_ATTRS = ("points_", "fit_index_", "mean_", "components_", "explained_variance_", "explained_variance_ratio_",
                "embedding_")
_NORMALIZER_ATTRS = ("mean_", "scale_", "whitener_")


def _to_arrays(proj: "Projector", key: str) -> dict[str, np.ndarray]:
    """The fitted projector as named plain arrays (no object arrays)."""
    norm = proj.normalizer_
    header = {"key": key, "format": _CACHE_FORMAT, "params": _params_for_key(proj),
              "n_features_in_": int(proj.n_features_in_), "fit_fingerprint_": proj.fit_fingerprint_,
              "normalizer": {"method": norm.method, "shared_at": norm.shared_at, "eps": float(norm.eps),
                             "n_examples_": int(norm.n_examples_)}}
    arrays = {"header": np.array(json.dumps(header, sort_keys=True))}
    for name in _ARRAY_ATTRS:
        if hasattr(proj, name):
            arrays[name] = np.asarray(getattr(proj, name))
    for name in _NORMALIZER_ATTRS:
        if hasattr(norm, name):
            arrays[f"normalizer.{name}"] = np.asarray(getattr(norm, name))
    return arrays


def _from_arrays(path: Path, key: str, template: "Projector") -> "Projector | None":
    """The projector cached at ``path``, or None when the file is absent, unreadable, not an array file
    (a pickle is refused, never loaded), of another format, key or parameters, or inconsistent.
    ``template`` is the unfitted projector asked for."""
    from sklearn.base import clone

    from trajgeo.normalization import PointNormalizer

    params = _params_for_key(template)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        header = json.loads(str(arrays.pop("header")))
        if header.get("format") != _CACHE_FORMAT or header.get("key") != key or header.get("params") != params:
            return None
        proj = clone(template)
        norm_h = header["normalizer"]
        norm = PointNormalizer(norm_h["method"], shared_at=norm_h["shared_at"], eps=norm_h["eps"])
        norm.n_examples_ = int(norm_h["n_examples_"])
        for name, value in arrays.items():
            if name.startswith("normalizer."):
                attr = name[len("normalizer."):]
                if attr not in _NORMALIZER_ATTRS:
                    return None
                setattr(norm, attr, value)
            elif name in _ARRAY_ATTRS:
                setattr(proj, name, value)
            else:
                return None
        proj.normalizer_ = norm
        proj.n_features_in_ = int(header["n_features_in_"])
        proj.fit_fingerprint_ = header["fit_fingerprint_"]
        if proj.method == "umap":
            proj.umap_ = None
        if not _consistent(proj):
            return None
        return proj
    except Exception:  # absent, truncated, a pickle, another layout: refit and overwrite
        return None


def _consistent(proj: "Projector") -> bool:
    """The shapes a fitted projector of these parameters must have."""
    d, n_points = proj.n_features_in_, len(proj.points_)
    norm = proj.normalizer_
    n_stats = 1 if norm.shared_at is not None else n_points
    need = {"mean_": (n_stats, d), "scale_": (n_stats, d), "whitener_": (n_stats, d, d)}
    wanted = {None: (), "center": ("mean_",), "standardize": ("mean_", "scale_"), "whiten": ("mean_", "whitener_")}
    for name in wanted.get(norm.method, ("?",)):
        if getattr(getattr(norm, name, None), "shape", None) != need.get(name):
            return False
    if proj.method == "pca":
        k = proj.components_.shape[0]
        return (proj.components_.shape == (k, d) and proj.mean_.shape == (d,)
                and proj.explained_variance_.shape == proj.explained_variance_ratio_.shape == (k,))
    return proj.embedding_.shape == (len(proj.fit_index_), n_points, int(proj.n_components))


def _params_for_key(proj: "Projector") -> dict[str, Any]:
    """The projector's parameters as JSON would give them back (points as a list of ints)."""
    params = proj.get_params()
    params["points"] = None if proj.points is None else [int(p) for p in proj.points]
    return json.loads(json.dumps(params, sort_keys=True, default=str))


def _atomic_save(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write the arrays as .npz to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@changed_signature(positional=("method", "points", "normalize", "n_components", "sample", "random_state", "cache",
                               "umap_kwargs"))
def fit(traj: Any, *, cache: bool | str | os.PathLike | None = None, **params: Any) -> Projector:
    """Fit a shared projection of trajectories (PCA or UMAP), loading it from the cache if fitted before.

    Parameters
    ----------
    traj : Trajectories or array-like of shape (n_examples, n_points, d_model)
        In memory or lazy; lazy stores are reduced chunk by chunk for PCA.
    method, points, normalize, n_components, sample, random_state, umap_kwargs
        The parameters of :class:`Projector`, keyword-only:
    method : {"pca", "umap"}
    points : sequence of int, optional
        Original point indices to fit on and project (default: all).
    normalize : {None, "center", "standardize", "whiten"}
        Per-point normalisation (default ``"standardize"``; see the module docstring).
    n_components : int
    sample : int or float, optional
        Fit on a random subset of examples (count or fraction).
    random_state : int or None
    cache : bool, path or None
        ``None`` (default) caches UMAP fits under ``trajgeo.models.cache_dir() / "projections"`` and
        refits PCA; ``True`` caches either method there; ``False`` never caches; a path caches there.
        The key is ``traj.fingerprint()`` plus every parameter above. The cache holds arrays only
        (``<key>.npz``, read with ``allow_pickle=False``; each file carries its key, which is checked):
        nothing in it is unpickled, so a file planted there cannot run code. A PCA projector loads
        whole; a UMAP projector loads its layout of these trajectories but not the UMAP model, so it
        cannot :meth:`~Projector.transform` other examples: fit with ``cache=False`` for that.
    umap_kwargs : dict, optional
        Further arguments to :class:`umap.UMAP`.

    Returns
    -------
    Projector
        Fitted; ``transform``, ``coords`` and (PCA) ``explained_variance_ratio_``.

    Examples
    --------
    >>> import numpy as np, trajgeo as tg
    >>> states = np.random.default_rng(0).normal(size=(30, 5, 16)).astype("float32")
    >>> proj = tg.projections.fit(states, method="pca")
    >>> list(proj.coords(states).columns)
    ['example', 'point', 'x', 'y']
    """
    traj = as_trajectories(traj)
    proj = Projector(**params)
    if proj.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {proj.method!r}")
    folder = _cache_folder(cache, proj.method)
    if folder is None:
        return proj.fit(traj)
    params = _params_for_key(proj)
    key = _cache_key(traj.fingerprint(), params)
    path = folder / f"{key}.npz"
    cached = _from_arrays(path, key, proj) if path.is_file() else None
    if cached is not None:
        return cached
    proj.fit(traj)
    _atomic_save(_to_arrays(proj, key), path)
    return proj



_keyword_signature(fit, Projector, [inspect.Parameter("cache", inspect.Parameter.KEYWORD_ONLY, default=None)])
