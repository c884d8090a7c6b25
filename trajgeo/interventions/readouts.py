"""Readouts: what a patching sweep measures at the target's final point.

A readout maps the target's final-point vectors, shape (n, d_model), to one number each, shape (n,),
oriented so that larger means "more the clean text's sense". Three kinds:

* any callable ``f(h) -> (n,)`` (given a torch tensor; one that only takes numpy arrays works for exact
  patching but not for attribution patching, which needs gradients);
* :class:`SenseReadout`: the margin along a class-mean difference fitted on trajectories of *other*
  texts (never the pairs' own);
* :class:`LogitReadout`: the model's own next-token log-odds of the two senses' signal words, through
  its real final norm and unembedding (causal LMs).

Each pair is scored against its *contrast*: the counterfactual's sense when it differs (flip pairs),
else the mean (sense readout) or union (logit readout) of the word's other senses (same-sense pairs,
the null), so flip and same-sense pairs share one scale.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from trajgeo.interventions._pairs import contrast_senses
from trajgeo.models import LoadedModel
from trajgeo.normalization import PointNormalizer, check_method
from trajgeo.trajectories import as_trajectories

__all__ = ["Readout", "FunctionReadout", "SenseReadout", "LogitReadout", "as_readout"]

# A bound readout: (h of shape (n, d_model), pair index of shape (n,)) -> (n,), in torch.
Bound = Callable[[Any, Any], Any]


class Readout:
    """Base class: :meth:`bind` turns a readout into a torch function of (vectors, pair index) for a set of pairs."""

    differentiable = True

    def bind(self, lm: LoadedModel, pairs: pd.DataFrame) -> Bound:
        raise NotImplementedError

    def key(self) -> str:
        """What identifies the readout in a resumable sweep's key."""
        raise NotImplementedError


def _check_output(out: Any, n: int) -> Any:
    import torch

    if not torch.is_tensor(out):
        out = torch.as_tensor(np.asarray(out, dtype=np.float32))
    if tuple(out.shape) != (n,):
        raise ValueError(f"a readout must return one value per vector, shape ({n},); got {tuple(out.shape)}")
    return out.float()


class FunctionReadout(Readout):
    """A plain callable ``f(h) -> (n,)`` on the target's final-point vectors ``h`` of shape (n, d_model).

    ``f`` is called with a float32 torch tensor; if that fails (TypeError, or torch refusing to turn a
    tensor that needs gradients into numpy) it is called with a numpy array instead, and then it gives no
    gradients: attribution patching refuses it. ``key`` names the
    function in a resumable sweep's key (default: its module, name and source code).
    """

    def __init__(self, fn: Callable[[Any], Any], key: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"a readout must be callable, got {type(fn).__name__}")
        self.fn = fn
        self._key = key
        self.differentiable = True

    def bind(self, lm: LoadedModel, pairs: pd.DataFrame) -> Bound:
        import torch

        def bound(h: Any, idx: Any) -> Any:
            if self.differentiable:
                try:
                    return _check_output(self.fn(h), len(h)).to(h.device)
                except (TypeError, RuntimeError):  # a numpy function (torch refuses numpy() on a graph tensor)
                    self.differentiable = False
            out = self.fn(h.detach().float().cpu().numpy())
            return _check_output(torch.as_tensor(np.asarray(out, dtype=np.float32)), len(h)).to(h.device)
        return bound

    def key(self) -> str:
        if self._key is not None:
            return self._key
        fn = self.fn
        try:
            src = inspect.getsource(fn)
        except (OSError, TypeError):
            src = repr(fn)
        name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
        return name + ":" + hashlib.blake2b(src.encode(), digest_size=8).hexdigest()


class SenseReadout(Readout, BaseEstimator):
    """The sense margin at the last point along a class-mean difference fitted on other texts.

    For a pair of word ``w``, clean sense ``s`` and contrast senses ``C``: vectors are normalised with
    the statistics of ``w``'s fitted examples (``normalize``, default per-dimension standardisation);
    ``m_s`` is the mean of sense ``s``'s normalised vectors, ``m_C`` the mean of the contrast senses'
    means; the readout is ``(normalize(h) - (m_s + m_C) / 2) . u`` with ``u = (m_s - m_C) / |m_s - m_C|``:
    positive on the clean sense's side of the midpoint, in normalised units.

    Parameters
    ----------
    labels, word : str
        Meta columns of the fitted trajectories holding the sense and the word.
    normalize : {None, "center", "standardize", "whiten"}
        How vectors are normalised (:class:`trajgeo.normalization.PointNormalizer`).

    Attributes
    ----------
    words_ : dict
        word -> ``{"senses": list, "centroids": (K, d) normalised class means, "normalizer": fitted}``.
    texts_ : frozenset of str
        The fitted examples' texts: :meth:`bind` refuses pairs whose text or counterfactual is among them.
    point_ : int
        The point fitted (the trajectories' last point).
    model_info_ : dict
    """

    def __init__(self, *, labels: str = "sense", word: str = "word", normalize: str | None = "standardize") -> None:
        self.labels = labels
        self.word = word
        self.normalize = normalize

    def fit(self, traj: Any, y: Any = None) -> "SenseReadout":
        """Fit on trajectories of the words' examples (texts other than the pairs').

        Parameters
        ----------
        traj : Trajectories
            With ``labels`` and ``word`` meta columns; only its last point is used.
        y : ignored
        """
        check_method(self.normalize)
        traj = as_trajectories(traj)
        for col in (self.labels, self.word):
            if col not in traj.meta.columns:
                raise KeyError(f"SenseReadout needs meta column {col!r}; the trajectories have "
                               f"{list(traj.meta.columns)}")
        x = np.asarray(traj.states[:, -1:], dtype=np.float32)  # (n, 1, d): the last point
        labels = traj.meta[self.labels].astype(str).to_numpy()
        words = traj.meta[self.word].astype(str).to_numpy()
        self.words_ = {}
        for w in pd.unique(words):
            rows = words == w
            senses = sorted(pd.unique(labels[rows]))
            small = [s for s in senses if (labels[rows] == s).sum() < 2]
            if small:
                raise ValueError(f"word {w!r}: senses {small} have fewer than 2 fitted examples")
            norm = PointNormalizer(self.normalize).fit(x[rows])
            z = norm.transform(x[rows])[:, 0]
            cents = np.stack([z[labels[rows] == s].mean(0) for s in senses])
            self.words_[str(w)] = {"senses": senses, "centroids": cents.astype(np.float64), "normalizer": norm}
        self.texts_ = frozenset(traj.meta["text"].astype(str)) if "text" in traj.meta.columns else frozenset()
        self.point_ = int(traj.points[-1])
        self.d_model_ = int(traj.d_model)
        self.model_info_ = dict(traj.model_info)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "words_"):
            raise RuntimeError("SenseReadout is not fitted; call fit(traj) first")

    def _check_model(self, lm: LoadedModel) -> None:
        if self.point_ != lm.n_layers:
            raise ValueError(f"SenseReadout was fitted at point {self.point_}, but {lm.name!r}'s final point is "
                             f"{lm.n_layers}: fit it on full trajectories of this model")
        if self.d_model_ != lm.d_model:
            raise ValueError(f"SenseReadout was fitted on d_model={self.d_model_}, {lm.name!r} has {lm.d_model}")
        fp = self.model_info_.get("weights_fingerprint")
        if fp and fp != lm.fingerprint():
            name = self.model_info_.get("name")
            raise ValueError(f"SenseReadout was fitted on trajectories of another model ({name!r}, weights {fp}) "
                             f"than {lm.name!r} ({lm.fingerprint()})")

    def coefficients(self, pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Per pair, the raw-space readout ``h @ weight[i] + bias[i]``: weight (n_pairs, d), bias (n_pairs,)."""
        self._check_fitted()
        known = {w: v["senses"] for w, v in self.words_.items()}
        contrasts = contrast_senses(pairs, known, "SenseReadout")
        weight = np.zeros((len(pairs), self.d_model_))
        bias = np.zeros(len(pairs))
        for i, (word, (sense, others)) in enumerate(zip(pairs["word"], contrasts)):
            fit = self.words_[word]
            cents = fit["centroids"]
            m_s = cents[fit["senses"].index(sense)]
            m_c = np.mean([cents[fit["senses"].index(s)] for s in others], axis=0)
            diff = m_s - m_c
            norm = np.linalg.norm(diff)
            if norm == 0:
                raise ValueError(f"pair {pairs['pair'].iloc[i]}: senses {sense!r} and {others} of {word!r} have "
                                 "equal fitted means: no direction")
            u = diff / norm
            nz = fit["normalizer"]
            w = np.asarray(nz.pull_back(u[None].astype(np.float32), 0)[0], dtype=np.float64)  # z . u == (x - mean) . w
            mean = getattr(nz, "mean_", np.zeros((1, len(u))))[0].astype(np.float64)
            weight[i] = w
            bias[i] = -mean @ w - 0.5 * (m_s + m_c) @ u
        return weight, bias

    def bind(self, lm: LoadedModel, pairs: pd.DataFrame) -> Bound:
        import torch

        self._check_fitted()
        self._check_model(lm)
        used = pairs["text"].isin(self.texts_) | pairs["counterfactual"].isin(self.texts_)
        if used.any():
            raise ValueError(f"pairs {pairs.loc[used, 'pair'].tolist()[:5]}: their texts are among those the "
                             "SenseReadout was fitted on; fit it on other texts (other groups)")
        weight, bias = self.coefficients(pairs)
        w = torch.as_tensor(weight, dtype=torch.float32, device=lm.device)
        b = torch.as_tensor(bias, dtype=torch.float32, device=lm.device)

        def bound(h: Any, idx: Any) -> Any:
            idx = idx.to(h.device)
            return (h.float() * w[idx]).sum(-1) + b[idx]
        return bound

    def key(self) -> str:
        self._check_fitted()
        h = hashlib.blake2b(digest_size=12)
        h.update(repr((self.labels, self.word, self.normalize, self.point_)).encode())
        for w in sorted(self.words_):
            h.update(w.encode())
            h.update(repr(self.words_[w]["senses"]).encode())
            h.update(np.ascontiguousarray(self.words_[w]["centroids"]).tobytes())
        return "sense:" + h.hexdigest()


class LogitReadout(Readout):
    """The model's next-token log-odds at the target: ``log P(clean sense's words) - log P(contrast's words)``.

    The target's final residual goes through the model's own final norm, unembedding and logit
    soft-capping (as its forward applies them); each sense's words count by their first token (see
    :func:`trajgeo.lens.sense_token_ids`), so ``P(sense)`` is the probability that the next token starts
    one of them. Causal LMs only: an encoder's masked-LM head does not predict the next token, and a
    model loaded without a head (MiniLM) has no unembedding.

    Parameters
    ----------
    sense_words : mapping, optional
        ``{word: {sense: [words]}}``; default :func:`trajgeo.datasets.sense_words` of each pair's word.
    """

    def __init__(self, sense_words: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.sense_words = sense_words

    def _table(self, word: str) -> dict[str, list[str]]:
        if self.sense_words is not None:
            if word not in self.sense_words:
                raise ValueError(f"LogitReadout has no sense words for {word!r} (it has {sorted(self.sense_words)})")
            return {str(s): list(ws) for s, ws in self.sense_words[word].items()}
        from trajgeo.datasets import sense_words

        return sense_words(word)

    def bind(self, lm: LoadedModel, pairs: pd.DataFrame) -> Bound:
        import torch

        from trajgeo.lens import sense_token_ids
        from trajgeo.lens._readout import _Readout

        a = lm.adapter
        if not a.causal or a.unembed is None:
            why = "has no unembedding (loaded without an LM head)" if a.unembed is None else \
                "is an encoder, whose masked-LM head does not predict the next token"
            raise ValueError(f"LogitReadout reads a causal LM's next-token log-odds, but {lm.name!r} ({a.family}) "
                             f"{why}; use a SenseReadout (or any callable) instead")
        head = _Readout(lm)
        tables = {w: self._table(w) for w in pd.unique(pairs["word"])}
        ids = {w: sense_token_ids(lm.tokenizer, t) for w, t in tables.items()}
        contrasts = contrast_senses(pairs, {w: list(t) for w, t in tables.items()}, "LogitReadout")
        sets = []
        for word, (sense, others) in zip(pairs["word"], contrasts):
            sets.append((ids[word][sense], sorted({t for s in others for t in ids[word][s]})))
        k = max(max(len(s), len(c)) for s, c in sets)

        def padded(j: int) -> tuple[Any, Any]:
            idx = torch.zeros((len(sets), k), dtype=torch.long)
            valid = torch.zeros((len(sets), k), dtype=torch.bool)
            for i, s in enumerate(sets):
                idx[i, :len(s[j])] = torch.as_tensor(s[j])
                valid[i, :len(s[j])] = True
            return idx.to(lm.device), valid.to(lm.device)

        (s_idx, s_ok), (c_idx, c_ok) = padded(0), padded(1)

        def bound(h: Any, pair_idx: Any) -> Any:
            pair_idx = pair_idx.to(h.device)

            def lse(idx: Any, ok: Any) -> Any:  # log-sum-exp of the logits of each row's tokens
                x = _logits_at(head, h, idx[pair_idx]).masked_fill(~ok[pair_idx], float("-inf"))
                return torch.logsumexp(x, -1)

            return lse(s_idx, s_ok) - lse(c_idx, c_ok)  # log P differences need no softmax normaliser
        self._ids = ids
        return bound

    def key(self) -> str:
        return "logit:" + hashlib.blake2b(repr(self.sense_words).encode(), digest_size=8).hexdigest()


def _logits_at(head: Any, h: Any, idx: Any) -> Any:
    """The logits of tokens ``idx`` (n, k) for vectors ``h`` (n, d), as the model's readout ``head`` gives them.

    Only those rows of the unembedding are multiplied (the soft-capping and scaling after it act
    element by element); a head of another shape is run whole and gathered.
    """
    import torch

    lin = getattr(head, "head", None)
    if not isinstance(lin, torch.nn.Linear) or not hasattr(head, "norm"):
        return head(h).gather(1, idx)
    x = h.to(head.device, head.dtype)
    if head.norm is not None:
        x = head.norm(x)
    w = lin.weight[idx]  # (n, k, d)
    logits = torch.einsum("nd,nkd->nk", x, w)
    if lin.bias is not None:
        logits = logits + lin.bias[idx]
    if head.scale is not None:
        logits = logits * head.scale
    if head.divide is not None:
        logits = logits / head.divide
    if head.softcap is not None:
        logits = torch.tanh(logits / head.softcap) * head.softcap
    return logits.float()


def as_readout(readout: Any) -> Readout:
    """``"logit"`` -> :class:`LogitReadout`; a :class:`Readout` as is; a callable -> :class:`FunctionReadout`."""
    if isinstance(readout, Readout):
        return readout
    if isinstance(readout, str):
        if readout == "logit":
            return LogitReadout()
        raise ValueError(f"readout must be 'logit', a Readout (e.g. SenseReadout) or a callable, got {readout!r}")
    if callable(readout):
        return FunctionReadout(readout)
    raise TypeError(f"readout must be 'logit', a Readout or a callable, got {type(readout).__name__}")
