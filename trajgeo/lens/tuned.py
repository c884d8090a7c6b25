"""The tuned lens (Belrose et al. 2023, "Eliciting latent predictions from transformers with the tuned lens").

Each point is first mapped through a learned affine *translator*, trained on a text corpus to
minimise the KL divergence from the model's final distribution, and then read out as the logit
lens reads it (:func:`trajgeo.lens.logit_lens`); its metrics are the same.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from trajgeo.datasets import corpus
from trajgeo.lens._readout import _ROW_BUDGET, _frozen, _Readout
from trajgeo.lens.logit import logit_lens
from trajgeo.models import LoadedModel, load_model
from trajgeo.trajectories import Trajectories

__all__ = ["TunedLens"]


def _residuals(lm: LoadedModel, texts: Sequence[str], max_length: int, batch_size: int,
               progress: bool = False) -> np.ndarray:
    """Every point's residual at every (non-special, non-padding) position of the texts.

    Returns
    -------
    ndarray of shape (n_positions, n_layers + 1, d_model)
        Point 0 is the token embedding times the model's scale (as in :func:`trajgeo.extract`),
        point l the raw block-l output (hooks on the blocks: Hugging Face's last hidden state is
        final-normed, trajgeo's point L is not).
    """
    import torch
    from tqdm.auto import tqdm

    a = lm.adapter
    tok = lm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    outs: dict[int, Any] = {}

    def hook(l: int) -> Callable:
        def fn(module: Any, args: Any, output: Any) -> None:
            outs[l] = output[0] if isinstance(output, tuple) else output
        return fn

    handles = [b.register_forward_hook(hook(l)) for l, b in enumerate(a.blocks)]
    chunks = []
    try:
        with torch.inference_mode():
            for i in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="residuals", unit="batch"):
                enc = tok(list(texts[i:i + batch_size]), add_special_tokens=True, truncation=True,
                          max_length=max_length, return_special_tokens_mask=True)
                longest = max(len(x) for x in enc["input_ids"])
                ids = torch.full((len(enc["input_ids"]), longest), pad_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                keep = torch.zeros_like(ids, dtype=torch.bool)
                for r, (x, sp) in enumerate(zip(enc["input_ids"], enc["special_tokens_mask"])):
                    ids[r, :len(x)] = torch.tensor(x)
                    mask[r, :len(x)] = 1
                    keep[r, :len(x)] = ~torch.tensor(sp, dtype=torch.bool)
                ids, mask = ids.to(lm.device), mask.to(lm.device)
                kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask,
                                          "position_ids": (mask.cumsum(-1) - 1).clamp(min=0) + a.position_offset}
                if a.causal:
                    kwargs["use_cache"] = False
                a.base(**kwargs)
                pts = [a.embed(ids)] + [outs[l] for l in range(a.n_layers)]
                h = torch.stack(pts, 2)[keep.to(lm.device)]  # (positions, points, d)
                chunks.append(h.float().cpu().numpy())
    finally:
        for h in handles:
            h.remove()
    return np.concatenate(chunks) if chunks else np.zeros((0, a.n_layers + 1, lm.d_model), np.float32)


class TunedLens(BaseEstimator):
    """Tuned lens (Belrose et al. 2023): one learned affine translator per point before the logit lens.

    Point p's translator maps a residual h to ``h @ weight_[p].T + bias_[p]``; it starts at the
    identity with zero bias (the logit lens) and is trained with Adam to minimise
    KL(P_final || P_lens(translated point)) averaged over the positions of a text corpus, where
    P_final is the model's own output distribution at that position. The last point keeps the
    identity (it *is* the final distribution).

    Parameters
    ----------
    n_epochs : int
        Passes over the corpus's positions.
    lr : float
        Adam learning rate.
    batch_size : int
        Positions per optimisation step (every point's translator sees them all).
    max_tokens : int, optional
        Train on at most this many positions, to bound the cost (texts are taken in random order
        until they hold that many, then positions sampled); None for all.
        The cost is the unembedding: every step unembeds ``batch_size * n_layers`` rows and
        backpropagates through them. The defaults (2048 positions, one epoch: 64 steps) take
        a few minutes for SmolLM2 (30 layers, 49k vocabulary) on 2 CPU cores.
    max_length : int
        Longest text in tokens (longer ones are truncated).
    weight_decay : float
        Decoupled weight decay towards the identity (on the translators' residual part).
    normalize_final : bool
        Apply the model's final norm after translating (as the logit lens does).
    random_state : int
        Seeds the position sample and the batch order.
    progress : bool
        Show tqdm bars.

    Attributes
    ----------
    weight_ : ndarray of shape (n_layers + 1, d_model, d_model)
    bias_ : ndarray of shape (n_layers + 1, d_model)
    loss_history_ : ndarray of shape (n_steps,)
        Training KL (nats, mean over points and the batch's positions) at every step.
    n_train_positions_ : int
    fit_seconds_ : float
    model_name_, model_fingerprint_ : str
        The model the lens was trained for (using it with another raises ``ValueError``).
    """

    def __init__(self, n_epochs: int = 1, lr: float = 1e-3, batch_size: int = 32, max_tokens: int | None = 2048,
                 max_length: int = 128, weight_decay: float = 0.0, normalize_final: bool = True,
                 random_state: int = 0, progress: bool = True) -> None:
        self.n_epochs = n_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.max_length = max_length
        self.weight_decay = weight_decay
        self.normalize_final = normalize_final
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------ fitting
    def fit(self, model: Any, texts: Sequence[str] | pd.DataFrame | None = None) -> "TunedLens":
        """Train the translators on the residuals at every position of ``texts``.

        Parameters
        ----------
        model : LoadedModel or anything :func:`trajgeo.load_model` accepts
        texts : sequence of str or DataFrame with a ``text`` column, optional
            The corpus; default :func:`trajgeo.datasets.corpus` (the built-in one).

        Returns
        -------
        self
        """
        t0 = time.perf_counter()
        lm = load_model(model)
        readout = _Readout(lm, self.normalize_final)
        texts = self._texts(texts)
        if self.n_epochs < 1 or self.batch_size < 1:
            raise ValueError(f"n_epochs and batch_size must be >= 1, got {self.n_epochs} and {self.batch_size}")
        rng = np.random.default_rng(self.random_state)
        h_all = self._training_residuals(lm, texts, rng)
        self.weight_, self.bias_, self.loss_history_ = self._train(lm, readout, h_all, rng)
        self.n_train_positions_ = int(len(h_all))
        self.model_name_ = lm.name
        self.model_fingerprint_ = lm.fingerprint()
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _training_residuals(self, lm: LoadedModel, texts: list[str], rng: np.random.Generator) -> np.ndarray:
        """The residuals of every point at the training positions, (n_positions, n_layers + 1, d_model)."""
        if self.max_tokens is not None:
            # whole texts in random order until max_tokens positions: the model then runs on
            # those texts only (sampling single positions would touch nearly every text)
            enc = lm.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length,
                               return_special_tokens_mask=True)
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

    def _train(self, lm: LoadedModel, readout: _Readout, h_all: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Adam on KL(P_final || P_lens) over the positions; returns weight_, bias_ and the loss per step."""
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
        losses = []
        n_steps = self.n_epochs * int(np.ceil(n_rows / self.batch_size))
        bar = tqdm(total=n_steps, disable=not self.progress, desc="tuned lens", unit="step")
        with _frozen(lm.model):
            for _ in range(self.n_epochs):
                order = rng.permutation(n_rows)
                for s in range(0, n_rows, self.batch_size):
                    h = torch.from_numpy(h_all[order[s:s + self.batch_size]]).to(dev)
                    with torch.no_grad():
                        logp_f = torch.log_softmax(readout(h[:, -1]), -1)[:, None]  # (b, 1, vocab)
                    opt.zero_grad()
                    total = 0.0
                    for p0 in range(0, n_tr, pt_chunk):
                        sl = slice(p0, min(n_tr, p0 + pt_chunk))
                        x = h[:, sl]
                        y = x + torch.einsum("bpd,ped->bpe", x, resid[sl]) + bias[sl] * scale[sl, None]
                        logq = torch.log_softmax(readout(y), -1)
                        kl = (logp_f.exp() * (logp_f - logq)).sum(-1)  # (b, chunk)
                        loss = kl.sum() / (kl.shape[0] * n_tr)
                        loss.backward()
                        total += float(loss.detach())
                    opt.step()
                    losses.append(total)
                    bar.update(1)
                    bar.set_postfix(kl=f"{total:.3f}")
        bar.close()
        eye = np.eye(d, dtype=np.float32)
        weight = np.concatenate([eye + resid.detach().cpu().numpy(), eye[None]], 0)
        bias_out = np.concatenate([(bias * scale[:, None]).detach().cpu().numpy(), np.zeros((1, d), np.float32)], 0)
        return weight, bias_out, np.asarray(losses, np.float32)

    @staticmethod
    def _texts(texts: Any) -> list[str]:
        if texts is None:
            texts = corpus()
        if isinstance(texts, pd.DataFrame):
            if "text" not in texts.columns:
                raise KeyError(f"texts DataFrame has no 'text' column; columns are {list(texts.columns)}")
            texts = texts["text"].tolist()
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not one string")
        texts = [str(t) for t in texts if str(t).strip()]
        if not texts:
            raise ValueError("no non-empty texts to train the tuned lens on")
        return texts

    # ------------------------------------------------------------ using
    def _check_fitted(self, lm: LoadedModel | None = None) -> None:
        if not hasattr(self, "weight_"):
            raise ValueError("this TunedLens is not fitted yet: call fit(model, texts) or TunedLens.load(path)")
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
        """Write the fitted lens to ``path`` (an ``.npz`` file), atomically (temporary file, then rename)."""
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"params": self.get_params(), "model_name": self.model_name_,
                "model_fingerprint": self.model_fingerprint_, "n_train_positions": self.n_train_positions_,
                "fit_seconds": self.fit_seconds_}
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, weight=self.weight_, bias=self.bias_, loss_history=self.loss_history_,
                         meta=np.array(json.dumps(meta)))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TunedLens":
        """Read a lens written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            lens = cls(**meta["params"])
            lens.weight_ = z["weight"].astype(np.float32)
            lens.bias_ = z["bias"].astype(np.float32)
            lens.loss_history_ = z["loss_history"]
        lens.model_name_ = meta["model_name"]
        lens.model_fingerprint_ = meta["model_fingerprint"]
        lens.n_train_positions_ = meta["n_train_positions"]
        lens.fit_seconds_ = meta["fit_seconds"]
        return lens

