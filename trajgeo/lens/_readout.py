"""What the logit and tuned lens share: the model's own readout and the checks that a model fits the trajectories."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from trajgeo.models import LoadedModel, load_model
from trajgeo.trajectories import Trajectories, as_trajectories

# Lens rows unembedded at once (rows * vocabulary floats per tensor): about 64 MB per tensor.
_ROW_BUDGET = 1 << 24


class LensUnavailable(ValueError):
    """The model has no LM head (unembedding) for a lens to read through, e.g. a sentence encoder.

    A ``ValueError``, so code that caught the former error keeps working. Check first with
    :func:`has_lm_head` to skip the lens and say so.
    """


def has_lm_head(model: Any) -> bool:
    """Whether the logit and tuned lens can read this model: it has an LM head (unembedding).

    Parameters
    ----------
    model : LoadedModel or anything :func:`trajgeo.load_model` accepts

    Returns
    -------
    bool
        False for encoders loaded without their masked-LM head (MiniLM, any ``*Model`` checkpoint);
        the lens functions raise :class:`LensUnavailable` on them.
    """
    try:
        _Readout(load_model(model))
    except LensUnavailable:
        return False
    return True


# ============================================================== the readout
class _Readout:
    """The model's own readout, residual (..., d_model) -> logits (..., vocab), as its forward applies it.

    Decoders: final norm (optional), unembedding, then the model's logit soft-capping
    (``final_logit_softcapping``, Gemma 2/3) or scaling (``logit_scale``, ``logits_scaling``).
    Encoders with a masked-LM head: the whole head (dense, activation, layer norm, decoder), since
    their "final norm" lives inside it; ``normalize_final=False`` keeps only the decoder matrix.
    """

    def __init__(self, lm: LoadedModel, normalize_final: bool = True) -> None:
        a = lm.adapter
        if a.unembed is None:
            raise LensUnavailable(
                f"the lens needs an unembedding (an LM head), but model {lm.name!r} ({a.family}) has none: "
                "it was loaded without one (e.g. a sentence-embedding encoder such as MiniLM). Load a causal LM "
                "or a *ForMaskedLM checkpoint to use the logit or tuned lens."
            )
        self.lm = lm
        model = lm.model
        self.norm: Any = None
        if a.causal:
            self.head = a.unembed
            self.norm = a.final_norm if normalize_final else None
        elif normalize_final:
            # BERT keeps its masked-LM head in model.cls.predictions, RoBERTa in model.lm_head
            cls = getattr(model, "cls", None)
            self.head = getattr(cls, "predictions", None) if cls is not None else getattr(model, "lm_head", None)
            if self.head is None:
                raise LensUnavailable(f"model {lm.name!r}: found an unembedding but no masked-LM head (cls / lm_head) "
                                      "for the lens to read through")
        else:
            self.head = a.unembed
        cfg = model.config
        num = (int, float)
        self.softcap = getattr(cfg, "final_logit_softcapping", None) if a.causal else None
        self.scale = getattr(cfg, "logit_scale", None) if a.causal else None  # Cohere multiplies
        self.divide = getattr(cfg, "logits_scaling", None) if a.causal else None  # Granite divides
        self.softcap, self.scale, self.divide = (v if isinstance(v, num) and not isinstance(v, bool) else None
                                                 for v in (self.softcap, self.scale, self.divide))
        self.device, self.dtype = lm.device, lm.dtype

    @property
    def vocab_size(self) -> int:
        w = getattr(self.lm.adapter.unembed, "weight", None)
        return int(w.shape[0])

    def __call__(self, h: Any) -> Any:
        import torch

        h = h.to(self.device, self.dtype)
        if self.norm is not None:
            h = self.norm(h)
        logits = self.head(h)
        if self.scale is not None:
            logits = logits * self.scale
        if self.divide is not None:
            logits = logits / self.divide
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()


class _frozen:
    """Context in which the model's parameters need no gradient (restored afterwards)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self.flags:
            p.requires_grad_(False)

    def __exit__(self, *exc: Any) -> None:
        for p, flag in self.flags:
            p.requires_grad_(flag)


# ============================================================== the model's pass over whole texts
def _encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, list[list[int]]]:
    """Token ids and special-token masks of each text, cut after ``max_length`` tokens.

    Cut here rather than with the tokenizer's ``truncation=True``: that leaves the truncation
    setting in a fast tokenizer's backend, whose serialisation is part of the model's fingerprint,
    so the same model would hash differently before and after a lens ran on it.
    """
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=False, return_special_tokens_mask=True,
                    verbose=False)
    return {"input_ids": [list(x[:max_length]) for x in enc["input_ids"]],
            "special_tokens_mask": [list(m[:max_length]) for m in enc["special_tokens_mask"]]}


def _forward(lm: LoadedModel, texts: Sequence[str], max_length: int, batch_size: int,
             progress: bool = False, desc: str = "residuals") -> Iterator[tuple[Any, Any, Any, Any]]:
    """Run the model (through :class:`trajgeo.engine.Engine`) on batches of texts and yield every point's
    residual at every position.

    Yields
    ------
    h : tensor of shape (batch, n_tokens, n_layers + 1, d_model)
        Point 0 is the token embedding times the model's scale (as in :func:`trajgeo.extract`),
        point l the raw block-l output (Hugging Face's last hidden state is final-normed, trajgeo's
        point L is not).
    ids : tensor of shape (batch, n_tokens), the token ids (padding on the right)
    mask : bool tensor of shape (batch, n_tokens), True on the texts' tokens (special ones included)
    content : bool tensor of shape (batch, n_tokens), True on non-special, non-padding tokens
    """
    import torch
    from tqdm.auto import tqdm

    from trajgeo.engine import Engine, Site

    engine = Engine(lm)
    points = [Site.resid(p) for p in range(lm.n_layers + 1)]
    for i in tqdm(range(0, len(texts), batch_size), disable=not progress, desc=desc, unit="batch"):
        enc = _encode(lm.tokenizer, texts[i:i + batch_size], max_length)
        batch = engine.batch(enc["input_ids"])
        ids, mask = batch.input_ids.cpu(), batch.mask.bool().cpu()
        content = torch.zeros_like(mask)
        for r, sp in enumerate(enc["special_tokens_mask"]):
            content[r, :len(sp)] = ~torch.tensor(sp, dtype=torch.bool)
        run = engine.run(batch, read=points)  # under no_grad: not held across the yield
        h = torch.stack([run[s] for s in points], 2).float().cpu()
        del run
        yield h, ids, mask, content


# ============================================================== checks
def _check_model(lm: LoadedModel, traj: Trajectories) -> None:
    """Refuse trajectories of another model (shape or fingerprint and name); warn on a weights-only change."""
    info = traj.model_info
    if traj.d_model != lm.d_model:
        raise ValueError(f"the trajectories have d_model={traj.d_model} but model {lm.name!r} has "
                         f"d_model={lm.d_model}: they come from another model")
    if int(np.max(traj.points)) > lm.n_layers:
        raise ValueError(f"the trajectories have point {int(np.max(traj.points))} but model {lm.name!r} has only "
                         f"{lm.n_layers} layers")
    if "n_layers" in info and int(info["n_layers"]) != lm.n_layers:
        raise ValueError(f"the trajectories come from a {info['n_layers']}-layer model ({info.get('name')!r}), "
                         f"but the lens got {lm.name!r} with {lm.n_layers} layers")
    fp = info.get("weights_fingerprint")
    if fp and fp != lm.fingerprint():
        msg = (f"the trajectories were extracted with model {info.get('name')!r} (weights fingerprint {fp}), "
               f"but the lens got {lm.name!r} (fingerprint {lm.fingerprint()})")
        if info.get("name") != lm.name:
            raise ValueError(msg + ": pass the model the trajectories came from")
        warnings.warn(msg + ": same name, different weights (another dtype or checkpoint?)", stacklevel=5)
    if info.get("post_ln") and lm.adapter.causal:
        raise ValueError(f"the trajectories come from a post-LN encoder but {lm.name!r} is a causal LM")


def _final_column(traj: Trajectories, lm: LoadedModel) -> int:
    points = np.asarray(traj.points)
    if np.any(np.diff(points) <= 0):
        raise ValueError(f"the lens needs points in increasing order; got {points.tolist()}")
    hit = np.flatnonzero(points == lm.n_layers)
    if len(hit) == 0:
        raise ValueError(
            f"the lens compares every point with the model's final distribution, which needs the last point "
            f"(point {lm.n_layers}); these trajectories have points {points.tolist()} (extracted with max_point?)"
        )
    return int(hit[0])




def _prepare(model: Any, traj: Any, lens: Any = None) -> tuple[LoadedModel, Trajectories]:
    """Load the model, accept the trajectories, and check that they (and a tuned lens) belong to it."""
    lm = load_model(model)
    traj = as_trajectories(traj)
    _check_model(lm, traj)
    if lens is not None:
        lens._check_fitted(lm)
    return lm, traj
