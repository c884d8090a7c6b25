"""The tuned lens (Belrose et al. 2023, "Eliciting latent predictions from transformers with the tuned lens").

Each point is first mapped through a learned affine *translator*, trained on a text corpus to
minimise the KL divergence from the model's final distribution, and then read out as the logit
lens reads it (:func:`trajgeo.lens.logit_lens`); its metrics are the same.

Training runs until the KL on held-out texts stops improving and costs minutes to an hour on a
laptop CPU, so it is done once per model, outside any analysis's budget: :func:`train_tuned_lens`
(or ``python -m trajgeo.lens.train --model smollm2``) trains on the built-in corpus plus any texts
given and caches the lens under ``trajgeo.models.cache_dir() / "tuned_lens"``, keyed by the model's
weights fingerprint; :meth:`TunedLens.cached` loads it (or returns None) so that the demo and the
report use it when it is there.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from trajgeo._api import changed_signature
from trajgeo.datasets import corpus
from trajgeo.lens._readout import _ROW_BUDGET, _encode, _forward, _frozen, _Readout
from trajgeo.lens.logit import logit_lens
from trajgeo.models import LoadedModel, cache_dir, load_model
from trajgeo.trajectories import Trajectories

__all__ = ["TunedLens", "train_tuned_lens"]

_FORMAT = "trajgeo.TunedLens/2"  # the safetensors metadata key holding the JSON description
_ARRAYS = ("weight_", "bias_", "loss_history_", "validation_steps_", "validation_kl_", "held_out_kl_per_point_",
           "logit_held_out_kl_per_point_")
_SCALARS = ("model_name_", "model_fingerprint_", "n_train_positions_", "n_validation_positions_", "n_texts_",
            "texts_fingerprint_", "n_steps_", "best_step_", "stopped_early_", "held_out_kl_", "logit_held_out_kl_",
            "fit_seconds_")


# ============================================================== the model's residuals on texts
def _residuals(lm: LoadedModel, texts: Sequence[str], max_length: int, batch_size: int,
               progress: bool = False) -> np.ndarray:
    """Every point's residual at every (non-special, non-padding) position of the texts.

    Returns
    -------
    ndarray of shape (n_positions, n_layers + 1, d_model)
    """
    chunks = [h[content].numpy() for h, _, _, content in _forward(lm, texts, max_length, batch_size, progress)]
    return np.concatenate(chunks) if chunks else np.zeros((0, lm.n_layers + 1, lm.d_model), np.float32)


def _texts_fingerprint(texts: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()


# ============================================================== the estimator
class TunedLens(BaseEstimator):
    """Tuned lens (Belrose et al. 2023): one learned affine translator per point before the logit lens.

    Point p's translator maps a residual h to ``h @ weight_[p].T + bias_[p]``; it starts at the
    identity with zero bias (the logit lens) and is trained with Adam to minimise
    KL(P_final || P_lens(translated point)) averaged over the positions of a text corpus, where
    P_final is the model's own output distribution at that position. The last point keeps the
    identity (it *is* the final distribution).

    Training stops early: a share of the *texts* (``validation_fraction``) is held out, the mean KL
    over their positions and points 0..L-1 is measured before training (the logit lens) and every
    ``validation_interval`` steps, and training stops once ``n_iter_no_change`` measurements in a
    row fail to beat the best one by ``tol`` nats; the translators of the best measurement are
    kept. Its held-out KL is reported next to the logit lens's (``held_out_kl_``,
    ``logit_held_out_kl_``).

    Parameters
    ----------
    max_epochs : int
        At most this many passes over the training positions (formerly ``n_epochs``, which was the
        exact count: with ``validation_fraction=0`` it still is).
    lr : float
        Adam learning rate (constant).
    batch_size : int
        Positions per optimisation step (every point's translator sees them all).
    max_tokens : int, optional
        Train on at most this many positions (texts in random order until they hold that many,
        then positions sampled); None (default) for all of them.
    max_length : int
        Longest text in tokens (longer ones are truncated).
    weight_decay : float
        Decoupled weight decay towards the identity (on the translators' residual part).
    normalize_final : bool
        Apply the model's final norm after translating (as the logit lens does).
    random_state : int
        Seeds the held-out split, the position sample and the batch order.
    progress : bool
        Show tqdm bars.
    validation_fraction : float
        Share of the texts held out for early stopping and the reported held-out KL (at least one
        text). 0 trains exactly ``max_epochs`` epochs with no held-out measurement.
    validation_interval : int
        Optimisation steps between held-out measurements.
    n_iter_no_change : int
        Stop after this many held-out measurements in a row without an improvement of ``tol``.
    tol : float
        The improvement (nats of mean held-out KL) that counts.
    add_corpus : bool
        Train on the built-in corpus (:func:`trajgeo.datasets.corpus`) plus the texts given to
        :meth:`fit`; False trains on the given texts only.

    The cost is the unembedding: every step unembeds and backpropagates ``batch_size * n_layers``
    rows of the vocabulary. For SmolLM2 (30 layers, 49k vocabulary) on 2 CPU cores a step takes
    about 3-5 s; see :func:`train_tuned_lens` for the measured time to convergence.

    Attributes
    ----------
    weight_ : ndarray of shape (n_layers + 1, d_model, d_model)
    bias_ : ndarray of shape (n_layers + 1, d_model)
    loss_history_ : ndarray of shape (n_steps_,)
        Training KL (nats, mean over points and the batch's positions) at every step.
    validation_steps_, validation_kl_ : ndarrays of shape (n_measurements,)
        The step of each held-out measurement (0: before training, the logit lens) and the mean
        held-out KL over points 0..L-1 there.
    held_out_kl_, logit_held_out_kl_ : float
        Mean held-out KL(P_final || P_lens) over the held-out positions and points 0..L-1, in nats,
        of this lens (at its best step) and of the logit lens (NaN with ``validation_fraction=0``).
    held_out_kl_per_point_, logit_held_out_kl_per_point_ : ndarrays of shape (n_layers + 1,)
        The same per point (0 at the last point).
    n_steps_, best_step_ : int
        Steps taken, and the step whose translators were kept.
    stopped_early_ : bool
        Whether the held-out KL stopped improving before ``max_epochs``.
    n_train_positions_, n_validation_positions_, n_texts_ : int
    texts_fingerprint_ : str
        A hash of the texts trained and validated on (with the corpus when ``add_corpus``).
    fit_seconds_ : float
    model_name_, model_fingerprint_ : str
        The model the lens was trained for (using it with another raises ``ValueError``).
    """

    @changed_signature(renamed={"n_epochs": "max_epochs"},
                       positional=("max_epochs", "lr", "batch_size", "max_tokens", "max_length", "weight_decay",
                                   "normalize_final", "random_state", "progress"))
    def __init__(self, *, max_epochs: int = 20, lr: float = 1e-3, batch_size: int = 32,
                 max_tokens: int | None = None, max_length: int = 128, weight_decay: float = 0.0,
                 normalize_final: bool = True, random_state: int = 0, progress: bool = True,
                 validation_fraction: float = 0.1, validation_interval: int = 50, n_iter_no_change: int = 3,
                 tol: float = 1e-3, add_corpus: bool = True) -> None:
        self.max_epochs = max_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.max_length = max_length
        self.weight_decay = weight_decay
        self.normalize_final = normalize_final
        self.random_state = random_state
        self.progress = progress
        self.validation_fraction = validation_fraction
        self.validation_interval = validation_interval
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.add_corpus = add_corpus

    # ------------------------------------------------------------ fitting
    def fit(self, model: Any, texts: Sequence[str] | pd.DataFrame | None = None, *,
            validation_texts: Sequence[str] | pd.DataFrame | None = None) -> "TunedLens":
        """Train the translators on the residuals at every position of the corpus (and ``texts``).

        Parameters
        ----------
        model : LoadedModel or anything :func:`trajgeo.load_model` accepts
            A model with an LM head (else :class:`~trajgeo.lens.LensUnavailable`).
        texts : sequence of str or DataFrame with a ``text`` column, optional
            Texts to train on besides the built-in corpus (instead of it with ``add_corpus=False``).
        validation_texts : sequence of str or DataFrame with a ``text`` column, optional
            Hold out these texts for early stopping and the reported held-out KL, instead of a
            ``validation_fraction`` of the training texts.

        Returns
        -------
        self
        """
        t0 = time.perf_counter()
        self._check_params()
        lm = load_model(model)
        readout = _Readout(lm, self.normalize_final)
        fingerprint = lm.fingerprint()  # before anything touches the tokenizer
        texts = self._texts(texts)
        rng = np.random.default_rng(self.random_state)
        if validation_texts is None:
            train_texts, val_texts = self._split(texts, rng)
        else:
            train_texts, val_texts = texts, _as_texts(validation_texts, "validation_texts")
            if not val_texts:
                raise ValueError("validation_texts is empty")
        h_train = self._training_residuals(lm, train_texts, rng)
        h_val = (_residuals(lm, val_texts, self.max_length, batch_size=16, progress=self.progress)
                 if val_texts else None)
        if h_val is not None and len(h_val) == 0:
            raise ValueError(f"the {len(val_texts)} held-out texts hold no (non-special) tokens; give longer texts")
        self._train(lm, readout, h_train, h_val, rng)
        self.n_train_positions_ = int(len(h_train))
        self.n_validation_positions_ = 0 if h_val is None else int(len(h_val))
        self.n_texts_ = len(texts)
        self.texts_fingerprint_ = _texts_fingerprint(texts)
        self.model_name_ = lm.name
        self.model_fingerprint_ = fingerprint
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _check_params(self) -> None:
        for name in ("max_epochs", "batch_size", "validation_interval", "n_iter_no_change"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        if self.lr < 0 or self.tol < 0:
            raise ValueError(f"lr and tol must be >= 0, got {self.lr!r} and {self.tol!r}")

    def _split(self, texts: list[str], rng: np.random.Generator) -> tuple[list[str], list[str]]:
        """Held-out texts (whole texts: positions of one text are not independent) and the rest."""
        if self.validation_fraction == 0:
            return texts, []
        if len(texts) < 2:
            raise ValueError(f"early stopping holds out whole texts, so it needs at least 2 texts; got {len(texts)} "
                             "(give more texts, or validation_fraction=0)")
        n_val = min(len(texts) - 1, max(1, int(round(self.validation_fraction * len(texts)))))
        val = np.zeros(len(texts), bool)
        val[rng.permutation(len(texts))[:n_val]] = True
        return [t for t, v in zip(texts, val) if not v], [t for t, v in zip(texts, val) if v]

    def _training_residuals(self, lm: LoadedModel, texts: list[str], rng: np.random.Generator) -> np.ndarray:
        """The residuals of every point at the training positions, (n_positions, n_layers + 1, d_model)."""
        if self.max_tokens is not None:
            # whole texts in random order until max_tokens positions: the model then runs on
            # those texts only (sampling single positions would touch nearly every text)
            enc = _encode(lm.tokenizer, texts, self.max_length)
            counts = np.array([len(m) - sum(m) for m in enc["special_tokens_mask"]])
            order = rng.permutation(len(texts))
            n_take = int(np.searchsorted(np.cumsum(counts[order]), self.max_tokens) + 1)
            texts = [texts[i] for i in np.sort(order[:n_take])]
        h_all = _residuals(lm, texts, self.max_length, batch_size=16, progress=self.progress)
        if len(h_all) == 0:
            raise ValueError("the texts hold no (non-special) tokens to train on")
        if self.max_tokens is not None and len(h_all) > self.max_tokens:
            h_all = h_all[np.sort(rng.choice(len(h_all), self.max_tokens, replace=False))]
        return h_all

    def _train(self, lm: LoadedModel, readout: _Readout, h_all: np.ndarray, h_val: np.ndarray | None,
               rng: np.random.Generator) -> None:
        """Adam on KL(P_final || P_lens) over the positions, with early stopping on ``h_val``."""
        import torch
        from tqdm.auto import tqdm

        n_rows, n_pts, d = h_all.shape
        n_tr = n_pts - 1  # the last point keeps the identity
        torch.manual_seed(self.random_state)
        dev = lm.device
        resid = torch.zeros(n_tr, d, d, device=dev, requires_grad=True)  # translator = identity + resid
        bias = torch.zeros(n_tr, d, device=dev, requires_grad=True)
        # The bias is learned in units of each point's RMS norm, so that Adam's steps (about lr per
        # parameter) move small-norm early points and large-norm late points by similar fractions.
        scale = torch.from_numpy(np.sqrt((h_all[:, :n_tr].astype(np.float64) ** 2).mean((0, 2))).astype(np.float32))
        scale = scale.to(dev)
        opt = torch.optim.AdamW([resid, bias], lr=self.lr, weight_decay=self.weight_decay)
        # points per backward pass, so the (batch, points, vocab) logits stay near the row budget
        pt_chunk = max(1, _ROW_BUDGET // (self.batch_size * readout.vocab_size))

        def translate(x: Any, sl: slice) -> Any:
            return x + torch.einsum("bpd,ped->bpe", x, resid[sl]) + bias[sl] * scale[sl, None]

        def held_out() -> np.ndarray:
            """Mean held-out KL per point 0..L-1, (n_tr,) float64."""
            total = np.zeros(n_tr)
            rows = max(1, _ROW_BUDGET // (n_tr * readout.vocab_size))
            with torch.no_grad():
                for s in range(0, len(h_val), rows):
                    h = torch.from_numpy(h_val[s:s + rows]).to(dev)
                    kl = _kl_to_final(readout, h[:, -1], translate(h[:, :n_tr], slice(0, n_tr)))
                    total += kl.double().sum(0).cpu().numpy()
            return total / len(h_val)

        best = {"kl": math.inf, "step": 0, "state": None, "per_point": None}
        steps, val_kl, losses = [], [], []
        bad = 0

        def measure(step: int) -> bool:
            """Record the held-out KL at this step; True when training should stop."""
            nonlocal bad
            per_point = held_out()
            kl = float(per_point.mean())
            steps.append(step)
            val_kl.append(kl)
            if step == 0:
                self.logit_held_out_kl_per_point_ = np.append(per_point, 0.0)
            if kl < best["kl"] - self.tol or step == 0:
                best.update(kl=kl, step=step, per_point=per_point,
                            state=(resid.detach().clone(), bias.detach().clone()))
                bad = 0
            else:
                bad += 1
            return bad >= self.n_iter_no_change

        n_steps = self.max_epochs * int(np.ceil(n_rows / self.batch_size))
        bar = tqdm(total=n_steps, disable=not self.progress, desc="tuned lens", unit="step")
        stop = False
        step = 0
        with _frozen(lm.model):
            if h_val is not None:
                measure(0)
            for _ in range(self.max_epochs):
                order = rng.permutation(n_rows)
                for s in range(0, n_rows, self.batch_size):
                    h = torch.from_numpy(h_all[order[s:s + self.batch_size]]).to(dev)
                    opt.zero_grad()
                    total = 0.0
                    for p0 in range(0, n_tr, pt_chunk):
                        sl = slice(p0, min(n_tr, p0 + pt_chunk))
                        kl = _kl_to_final(readout, h[:, -1], translate(h[:, sl], sl))  # (b, chunk)
                        loss = kl.sum() / (kl.shape[0] * n_tr)
                        loss.backward()
                        total += float(loss.detach())
                    opt.step()
                    step += 1
                    losses.append(total)
                    bar.update(1)
                    bar.set_postfix(kl=f"{total:.3f}", held_out=f"{val_kl[-1]:.3f}" if val_kl else "-")
                    if h_val is not None and step % self.validation_interval == 0:
                        stop = measure(step)
                        if stop:
                            break
                if stop:
                    break
            if h_val is not None and steps[-1] != step:
                measure(step)
        bar.close()
        if best["state"] is not None:  # keep the translators of the best held-out measurement
            with torch.no_grad():
                resid.copy_(best["state"][0])
                bias.copy_(best["state"][1])
        eye = np.eye(d, dtype=np.float32)
        self.weight_ = np.concatenate([eye + resid.detach().cpu().numpy(), eye[None]], 0)
        self.bias_ = np.concatenate([(bias * scale[:, None]).detach().cpu().numpy(), np.zeros((1, d), np.float32)], 0)
        self.loss_history_ = np.asarray(losses, np.float32)
        self.n_steps_ = step
        self.stopped_early_ = bool(stop)
        self.validation_steps_ = np.asarray(steps, np.int64)
        self.validation_kl_ = np.asarray(val_kl, np.float64)
        if h_val is None:
            self.best_step_ = step
            self.held_out_kl_ = self.logit_held_out_kl_ = float("nan")
            self.held_out_kl_per_point_ = self.logit_held_out_kl_per_point_ = np.full(n_pts, np.nan)
        else:
            self.best_step_ = int(best["step"])
            self.held_out_kl_ = float(best["kl"])
            self.held_out_kl_per_point_ = np.append(best["per_point"], 0.0)
            self.logit_held_out_kl_ = float(self.logit_held_out_kl_per_point_[:-1].mean())

    def _texts(self, texts: Any) -> list[str]:
        given = _as_texts(texts, "texts") if texts is not None else []
        out = (corpus() if self.add_corpus else []) + given
        if not out:
            raise ValueError("no non-empty texts to train the tuned lens on (add_corpus=False and no texts given)")
        return out

    # ------------------------------------------------------------ using
    def _check_fitted(self, lm: LoadedModel | None = None) -> None:
        if not hasattr(self, "weight_"):
            raise ValueError("this TunedLens is not fitted yet: call fit(model, texts), TunedLens.load(path) "
                             "or TunedLens.cached(model)")
        if lm is not None:
            if lm.d_model != self.weight_.shape[1] or lm.n_layers + 1 != self.weight_.shape[0]:
                raise ValueError(f"the tuned lens was trained for {self.model_name_!r} ({self.weight_.shape[0] - 1} "
                                 f"layers, d_model {self.weight_.shape[1]}), not for {lm.name!r}")
            if self.model_fingerprint_ and lm.fingerprint() != self.model_fingerprint_:
                raise ValueError(f"the tuned lens was trained for {self.model_name_!r} (fingerprint "
                                 f"{self.model_fingerprint_}), but got {lm.name!r} (fingerprint {lm.fingerprint()})")

    def _translate(self, states: np.ndarray, points: Sequence[int]) -> np.ndarray:
        pts = np.asarray(points, dtype=int)
        if pts.max() >= len(self.weight_):
            raise ValueError(f"point {pts.max()} is beyond the tuned lens's {len(self.weight_) - 1} layers")
        out = np.einsum("npd,ped->npe", states, self.weight_[pts], optimize=True) + self.bias_[pts]
        return np.ascontiguousarray(out, dtype=np.float32)

    def transform(self, traj: Any) -> Any:
        """Translate every point: states (n_examples, n_points, d_model) -> same shape.

        Returns a :class:`Trajectories` (meta, points and model info kept; components and aux,
        which are no longer consistent with the states, dropped) or an ndarray for an array input.
        """
        self._check_fitted()
        if isinstance(traj, Trajectories):
            out = self._translate(np.asarray(traj.states, dtype=np.float32), traj.points)
            return Trajectories(out, traj.meta, None, None, traj.points, {**traj.model_info, "tuned_lens": True})
        x = np.asarray(traj, dtype=np.float32)
        if x.ndim != 3:
            raise ValueError(f"states must have shape (n_examples, n_points, d_model); got {x.shape}")
        return self._translate(x, np.arange(x.shape[1]))

    def lens(self, model: Any, traj: Any, **kwargs: Any) -> pd.DataFrame:
        """:func:`logit_lens` read through this tuned lens (same arguments, same output)."""
        kwargs.setdefault("normalize_final", self.normalize_final)  # read out as it was trained
        return logit_lens(model, traj, lens=self, **kwargs)

    # ------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted lens to ``path`` as safetensors (no pickle), atomically.

        The arrays are stored bit for bit; the parameters and the scalar attributes go as JSON into
        the file's metadata (readable with any safetensors reader). A temporary file in the same
        folder is renamed into place, so an interrupted save leaves no half-written lens.
        """
        from safetensors.numpy import save

        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.ascontiguousarray(getattr(self, k)) for k in _ARRAYS if hasattr(self, k)}
        meta = {"params": self.get_params(), **{k: _json_scalar(getattr(self, k)) for k in _SCALARS if hasattr(self, k)}}
        blob = save(arrays, metadata={_FORMAT: json.dumps(meta)})
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TunedLens":
        """Read a lens written by :meth:`save` (safetensors; the 0.1 ``.npz`` files still load)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no tuned lens at {path}")
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic == b"PK":  # a zip: the 0.1 .npz format
            return cls._load_npz(path)
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                header = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except SafetensorError as e:
            raise ValueError(f"{path} is not a readable tuned lens (safetensors says: {e})") from e
        if _FORMAT not in header:
            raise ValueError(f"{path} is a safetensors file but not a trajgeo tuned lens (no {_FORMAT!r} metadata)")
        meta = json.loads(header[_FORMAT])
        lens = cls(**cls._known_params(meta.pop("params")))
        for k, v in arrays.items():
            setattr(lens, k, v)
        for k, v in meta.items():
            setattr(lens, k, v)
        return lens

    @classmethod
    def _known_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        params = dict(params)
        if "n_epochs" in params:  # 0.1 files
            params["max_epochs"] = params.pop("n_epochs")
        names = set(cls._get_param_names())
        return {k: v for k, v in params.items() if k in names}

    @classmethod
    def _load_npz(cls, path: Path) -> "TunedLens":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            lens = cls(**cls._known_params(meta["params"]))
            lens.weight_ = z["weight"].astype(np.float32)
            lens.bias_ = z["bias"].astype(np.float32)
            lens.loss_history_ = z["loss_history"]
        lens.model_name_ = meta["model_name"]
        lens.model_fingerprint_ = meta["model_fingerprint"]
        lens.n_train_positions_ = meta["n_train_positions"]
        lens.fit_seconds_ = meta["fit_seconds"]
        return lens

    # ------------------------------------------------------------ the cache
    @staticmethod
    def cache_path(model: Any) -> Path:
        """Where the cached tuned lens of ``model`` lives: ``cache_dir() / "tuned_lens" / <fingerprint>.safetensors``
        (``$TRAJGEO_CACHE`` moves it)."""
        lm = load_model(model)
        return cache_dir() / "tuned_lens" / f"{lm.fingerprint()}.safetensors"

    @classmethod
    def cached(cls, model: Any) -> "TunedLens | None":
        """The tuned lens cached for this model's weights (by :func:`train_tuned_lens`), or None.

        Parameters
        ----------
        model : LoadedModel or anything :func:`trajgeo.load_model` accepts

        Returns
        -------
        TunedLens or None
            None when no lens was trained for these weights (the key is the weights and tokenizer
            fingerprint, so another checkpoint or dtype never picks up a wrong lens).
        """
        path = cls.cache_path(model)
        if not path.exists():
            return None
        lens = cls.load(path)
        lens._check_fitted(load_model(model))
        return lens


def _as_texts(texts: Any, what: str) -> list[str]:
    """A list of non-empty strings from a sequence or a DataFrame's ``text`` column."""
    if isinstance(texts, pd.DataFrame):
        if "text" not in texts.columns:
            raise KeyError(f"{what} DataFrame has no 'text' column; columns are {list(texts.columns)}")
        texts = texts["text"].tolist()
    if isinstance(texts, str):
        raise ValueError(f"{what} must be a list of strings, not one string")
    return [str(t) for t in texts if str(t).strip()]


def _json_scalar(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _kl_to_final(readout: _Readout, h_last: Any, y: Any) -> Any:
    """KL(P_final || P_lens) per row and point, (b, points), from the last point (b, d) and translated points (b, points, d).

    Written as sum p_f log p_f - sum p_f z + logsumexp(z) (sum p_f = 1), which never materialises the
    lens's log-softmax: the (b, points, vocab) logits are the only large tensor.
    """
    import torch

    with torch.no_grad():
        logp_f = torch.log_softmax(readout(h_last), -1)  # (b, vocab)
        p_f = logp_f.exp()
        neg_entropy = (p_f * logp_f).sum(-1)  # (b,)
    z = readout(y)  # (b, points, vocab)
    return neg_entropy[:, None] - torch.einsum("bv,bpv->bp", p_f, z) + torch.logsumexp(z, -1)


def train_tuned_lens(model: Any, texts: Sequence[str] | pd.DataFrame | None = None, *, cache: bool = True,
                     progress: bool = True, **params: Any) -> TunedLens:
    """Train a model's tuned lens once (until its held-out KL stops improving) and cache it.

    What ``python -m trajgeo.lens.train --model NAME`` runs. The lens trains on the built-in corpus
    plus ``texts`` and is written to :meth:`TunedLens.cache_path`, where :meth:`TunedLens.cached`
    (the demo, the report) finds it. Measured on SmolLM2 with the defaults on 2 CPU cores: see the
    project's report of issue 13 (tens of minutes; the held-out KL falls well below the logit lens's).

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts
    texts : sequence of str or DataFrame with a ``text`` column, optional
        Texts to train on besides the built-in corpus.
    cache : bool
        Write the lens to the cache (replacing a lens cached for these weights).
    progress : bool
        Show tqdm bars.
    **params
        :class:`TunedLens` parameters (``lr``, ``max_epochs``, ``validation_fraction``, ...).

    Returns
    -------
    TunedLens
        Fitted; ``held_out_kl_`` and ``logit_held_out_kl_`` say how much it gained.
    """
    lm = load_model(model)
    lens = TunedLens(progress=progress, **params).fit(lm, texts)
    if cache:
        lens.save(TunedLens.cache_path(lm))
    return lens
