"""Small GPT-2-style models trained on a :class:`~trajgeo.toy.ToyLanguage` (deterministic for a seed,
cached on disk), and their continuation accuracy.

:func:`train` is a short driver over named steps: check the settings, build the cache key, load a
cached model or build and fit one (:func:`_build`, :func:`_step_losses`, :func:`_fit`), record and save.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from trajgeo._api import changed_signature
from trajgeo.toy.language import ToyLanguage

__all__ = ["train", "continuation_accuracy"]

_CACHE_VERSION = 1  # bump when training changes in a way the configuration does not show

_TRAIN_OPTIONS = ("n_layers", "d_model", "n_heads", "n_steps", "batch_size", "lr", "weight_decay", "warmup",
                  "loss_on", "aux_weight", "random_state", "cache", "return_pair", "n_threads", "progress")


@dataclass(frozen=True)
class _Settings:
    """What a training run depends on (all of it is in the cache key, see :meth:`key`)."""

    n_layers: int
    d_model: int
    n_heads: int
    n_steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: int
    loss_on: str
    aux_weight: float
    random_state: int
    threads: int

    def key(self, language: ToyLanguage) -> dict[str, Any]:
        """The training part of the cache key (the same dict, in content, since version 1)."""
        out = dict(n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads, n_steps=self.n_steps,
                   batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay, warmup=self.warmup,
                   loss_on=self.loss_on, random_state=self.random_state, threads=self.threads)
        if language.level > 1:  # the auxiliary loss exists only where there are ambiguous chain tokens
            out["aux_weight"] = float(self.aux_weight)
        return out

    def uses_aux(self, language: ToyLanguage) -> bool:
        return self.aux_weight > 0 and language.level > 1


def _config_key(config: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(config, sort_keys=True).encode(), digest_size=10).hexdigest()


@changed_signature(positional=_TRAIN_OPTIONS)
def train(
    language: ToyLanguage,
    *,
    n_layers: int = 4,
    d_model: int = 64,
    n_heads: int = 4,
    n_steps: int = 1500,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    warmup: int = 100,
    loss_on: str = "continuation",
    aux_weight: float = 1.0,
    random_state: int = 0,
    cache: bool = True,
    return_pair: bool = False,
    n_threads: int | None = 1,
    progress: bool = False,
) -> Any:
    """Train a small GPT-2-style model on a toy language (CPU, deterministic for a seed, cached).

    Every step draws a fresh batch from the language (so there is nothing to overfit); the loss is the
    cross-entropy of the continuation token after the target (``loss_on="continuation"``, the signal that
    forces resolution, and the fastest to learn) or of every next token (``loss_on="all"``).

    Parameters
    ----------
    language : ToyLanguage
    n_layers, d_model, n_heads : int
        Model shape (MLP width 4 * d_model, no dropout, learned absolute positions).
    n_steps, batch_size : int
        Level 1 needs ~150 steps of 64 sequences (loss ~0.01); level 2 with the auxiliary loss ~350
        (without it a seed-dependent 2000 or more: a loss plateau precedes the two-hop circuit).
    lr, weight_decay : float
        AdamW; linear warm-up over ``warmup`` steps, then cosine decay to zero.
    loss_on : {"continuation", "all"}
    aux_weight : float
        Weight of the auxiliary loss at levels >= 2 (0 turns it off; ignored, and not part of the cache key,
        at level 1): cross-entropy of a linear read-out (``d_model -> max senses``, trained along and then
        discarded) of the sense of every ambiguous chain token (mediators and variables, of the target's
        chain and the distractors'), taken from the last layer's output at that token. It rewards the first
        hop (modifier into mediator) directly, which removes the long plateau of continuation-only training.
        The saved model is an ordinary ``GPT2LMHeadModel``; its recorded loss is the continuation loss only.
    random_state : int
        Seeds initialisation and the training data (data seed ``random_state + 10_000``).
    cache : bool
        Load the model from / save it to ``trajgeo.models.cache_dir() / "toy" / <hash of every setting>``
        (written to a temporary folder and renamed, so concurrent runs never see half a model).
    return_pair : bool
        Return ``(model, tokenizer)`` instead of a :class:`~trajgeo.models.LoadedModel`.
    n_threads : int or None
        torch threads while training (None: leave as is). Results are deterministic for a given thread
        count, which is therefore part of the cache key. The default, 1, is also the fastest for models this
        small on a shared machine: measured on 2 busy cores, 100 steps of a 4-layer model took 3.4 to 4.5 s
        with one thread and 11 to 100 s with two (threads waiting for each other).
    progress : bool
        Print the loss every 10% of the steps.

    Returns
    -------
    LoadedModel or (GPT2LMHeadModel, PreTrainedTokenizerFast)
        The model is in eval mode; ``model.config.trajgeo_toy`` records the language, the training settings,
        the final loss, the number of steps and the training time in seconds.

    Notes
    -----
    Long only by its signature and this parameter list: the body is a short driver over named steps
    (check the settings, build the cache key, load a cached model or build and fit one, record, save).
    """
    import torch
    import transformers as tf

    from trajgeo.models import cache_dir, load_model

    _check(loss_on, aux_weight, d_model, n_heads, n_layers, n_steps, batch_size)
    s = _Settings(n_layers, d_model, n_heads, n_steps, batch_size, lr, weight_decay, warmup, loss_on, aux_weight,
                  random_state, threads=int(n_threads) if n_threads else torch.get_num_threads())
    config = {"language": language.config(), "train": s.key(language), "version": _CACHE_VERSION,
              "torch": torch.__version__.split("+")[0], "transformers": tf.__version__}
    folder = cache_dir() / "toy" / _config_key(config)
    if cache and (folder / "config.json").exists():
        with _quiet_transformers():
            model = tf.GPT2LMHeadModel.from_pretrained(folder).eval()
            tok = tf.PreTrainedTokenizerFast.from_pretrained(folder)
        return (model, tok) if return_pair else load_model((model, tok))
    with _deterministic(s.threads):
        model, record = _fit(language, s, progress)
    model.eval()
    model.config.trajgeo_toy = {**config, **record, "threads": s.threads}
    tok = language.tokenizer()
    if cache:
        with _quiet_transformers():
            _save_atomically(model, tok, folder)
    return (model, tok) if return_pair else load_model((model, tok))


def _check(loss_on: str, aux_weight: float, d_model: int, n_heads: int, n_layers: int, n_steps: int,
           batch_size: int) -> None:
    """Raise a ValueError naming the first bad training setting."""
    if loss_on not in ("continuation", "all"):
        raise ValueError(f"loss_on must be 'continuation' or 'all', got {loss_on!r}")
    if not aux_weight >= 0:
        raise ValueError(f"aux_weight must be >= 0, got {aux_weight!r}")
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
    if n_layers < 1 or n_steps < 1 or batch_size < 1:
        raise ValueError("n_layers, n_steps and batch_size must be >= 1")


class _deterministic:
    """torch on ``threads`` threads with deterministic algorithms inside; both restored after."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> None:
        import torch

        self.old_threads = torch.get_num_threads()
        self.old_det = torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.use_deterministic_algorithms(self.old_det)
        torch.set_num_threads(self.old_threads)


def _build(language: ToyLanguage, s: _Settings) -> tuple[Any, Any, list[Any], Any, Any]:
    """The seeded model, the auxiliary read-out (or None), the trained parameters, AdamW and its
    schedule (linear warm-up, then cosine decay to zero). Creation order fixes the random draws."""
    import torch
    import transformers as tf

    torch.manual_seed(s.random_state)
    cfg = tf.GPT2Config(vocab_size=len(language.tokens), n_positions=language.seq_len, n_embd=s.d_model,
                        n_layer=s.n_layers, n_head=s.n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = tf.GPT2LMHeadModel(cfg)
    params = list(model.parameters())
    aux_head = None
    if s.uses_aux(language):  # a linear read-out of a chain token's sense from the top of the stream; discarded after
        aux_head = torch.nn.Linear(s.d_model, max(language.senses_per_word))
        params += list(aux_head.parameters())
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda st: min(1.0, (st + 1) / max(s.warmup, 1)) * 0.5 * (1 + np.cos(np.pi * min(st / s.n_steps, 1.0))),
    )
    return model, aux_head, params, opt, sched


def _step_losses(model: Any, aux_head: Any, language: ToyLanguage, rows: list[dict[str, Any]],
                 s: _Settings) -> tuple[Any, Any]:
    """The recorded loss of one batch (continuation, or every next token) and the total that is
    minimised (plus the weighted auxiliary loss where there is one)."""
    import torch

    ids, t_idx, cont = language._ids(rows)
    x = torch.from_numpy(ids)
    a_row, a_idx, a_sense = language._ambiguous(rows) if aux_head is not None else (np.zeros(0, int),) * 3
    if s.loss_on == "continuation":
        # the body runs on the context up to the last scored token only: later tokens cannot matter
        n_ctx = int(max(t_idx.max(), a_idx.max(initial=0))) + 1
        h = model.transformer(input_ids=x[:, :n_ctx]).last_hidden_state
        logits = model.lm_head(h[torch.arange(len(ids)), torch.from_numpy(t_idx)])
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(cont))
    else:
        h = model.transformer(input_ids=x).last_hidden_state
        logits = model.lm_head(h[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    total = loss
    if aux_head is not None and len(a_row):
        aux = aux_head(h[torch.from_numpy(a_row), torch.from_numpy(a_idx)])
        total = loss + s.aux_weight * torch.nn.functional.cross_entropy(aux, torch.from_numpy(a_sense))
    return loss, total


def _batches(language: ToyLanguage, s: _Settings) -> Iterator[list[dict[str, Any]]]:
    """A fresh batch of sequences per step, from the data seed ``random_state + 10_000``."""
    rng = np.random.default_rng(s.random_state + 10_000)
    for _ in range(s.n_steps):
        yield language._sample(s.batch_size, rng)


def _fit(language: ToyLanguage, s: _Settings, progress: bool) -> tuple[Any, dict[str, Any]]:
    """Build and train the model; returns it (in train mode) and the training record: final loss,
    loss curve (``[step, mean loss over the last 5% of steps]`` every 5%), steps and seconds."""
    import torch

    model, aux_head, params, opt, sched = _build(language, s)
    model.train()
    t0 = time.perf_counter()
    losses: list[float] = []
    curve: list[list[float]] = []
    every = max(s.n_steps // 20, 1)
    for step, rows in enumerate(_batches(language, s)):
        loss, total = _step_losses(model, aux_head, language, rows, s)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.detach().item())
        if (step + 1) % every == 0:
            curve.append([step + 1, round(float(np.mean(losses[-every:])), 5)])
            if progress:
                print(f"step {step + 1}/{s.n_steps}: loss {curve[-1][1]:.4f}", flush=True)
    seconds = time.perf_counter() - t0
    return model, {"final_loss": curve[-1][1] if curve else float(losses[-1]), "loss_curve": curve,
                   "steps": s.n_steps, "seconds": round(seconds, 2)}


class _quiet_transformers:
    """Silence transformers' per-file progress bars while a tiny model is saved or loaded (restored after)."""

    def __enter__(self) -> None:
        from transformers.utils import logging

        self.was = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()

    def __exit__(self, *exc: Any) -> None:
        from transformers.utils import logging

        if self.was:
            logging.enable_progress_bar()


def _save_atomically(model: Any, tokenizer: Any, folder: Path) -> None:
    """Write into a temporary sibling folder, then rename it into place (a lost race just discards ours)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}-{time.monotonic_ns()}")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder)
    except OSError:  # another process got there first (or the disk is full): the model is in memory anyway
        shutil.rmtree(tmp, ignore_errors=True)


@changed_signature(renamed={"by": "per"}, positional=("n", "random_state", "per"), n_leading=2)
def continuation_accuracy(model: Any, language: ToyLanguage, *, n: int = 1000, random_state: int = 12345,
                          per: str | None = None) -> float | pd.Series:
    """Share of sequences whose continuation token is the model's top prediction at the target.

    Parameters
    ----------
    model : LoadedModel or (model, tokenizer) or a transformers causal LM
    language : ToyLanguage
    n : int
        Sequences to score (fresh ones: ``random_state`` should differ from the training seeds).
    random_state : int
    per : str, optional
        A column of :meth:`ToyLanguage.generate`'s frame (e.g. ``"word"``, ``"cue_position"``): return the
        accuracy per value of that column instead of overall. (Formerly ``by=``.)

    Returns
    -------
    float, or Series indexed by the values of ``per``
        Top-1 over the whole vocabulary (stricter than choosing among the word's continuations).
        Chance is ``1 / n_senses``; the best possible is ``1 - cue_noise``.
    """
    import torch

    net = model
    if isinstance(model, tuple):
        net = model[0]
    elif hasattr(model, "adapter"):
        net = model.model
    _, df = language.generate(n, random_state=random_state)
    rows = [{"tokens": t.split(), "target_index": i} for t, i in zip(df["text"], df["target_index"])]
    ids, t_idx, cont = language._ids(rows)
    preds = []
    with torch.no_grad():
        for s in range(0, len(ids), 512):
            x = torch.from_numpy(ids[s:s + 512])
            logits = net(input_ids=x).logits
            preds.append(logits[torch.arange(len(x)), torch.from_numpy(t_idx[s:s + 512])].argmax(-1).numpy())
    right = np.concatenate(preds) == cont if len(ids) else np.zeros(0, bool)
    if per is None:
        return float(right.mean())
    return pd.Series(right, index=df[per].to_numpy()).groupby(level=0).mean()
