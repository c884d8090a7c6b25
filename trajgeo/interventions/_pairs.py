"""Minimal pairs checked, aligned (through :func:`trajgeo.datasets.align_pairs`) and turned into model inputs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from trajgeo.models import LoadedModel

PAIR_COLUMNS = ("pair", "word", "text", "counterfactual", "target", "sense", "counterfactual_sense")
ALIGN_COLUMNS = ("pair", "aligned", "n_tokens", "target_start", "target_end", "cue_positions", "reason")
KINDS = ("flip", "same")
POOLS = ("last", "first", "mean")
ROLES = ("clean", "corrupt")


@dataclass
class PairInputs:
    """One aligned pair as the model is fed it.

    ``clean``/``corrupt`` are the token ids of ``text``/``counterfactual`` (causal models: up to the
    target's last token, since later tokens cannot change its states); ``pool`` the columns pooled
    into the target's vector; ``cue`` the positions where the two differ (all of them, even those a
    causal model never sees).
    """

    pair: Any
    index: int  # row of the pair in the frame of pairs used (the readouts' pair index)
    clean: np.ndarray
    corrupt: np.ndarray
    target: tuple[int, int]
    pool: list[int]
    cue: tuple[int, ...]

    def ids(self, role: str) -> np.ndarray:
        return self.clean if role == "clean" else self.corrupt

    @property
    def n(self) -> int:
        return len(self.clean)

    def columns(self, positions: Any) -> list[int]:
        """The positions a sweep patches in this pair: ``"all"``, ``"target"``, ``"cue"`` or a list."""
        if isinstance(positions, str):
            if positions == "all":
                return list(range(self.n))
            if positions == "target":
                return list(range(self.target[0], self.target[1]))
            if positions == "cue":
                return [c for c in self.cue if c < self.n]
            raise ValueError(f"positions must be 'all', 'target', 'cue' or a list of ints, got {positions!r}")
        return [int(p) for p in positions if 0 <= int(p) < self.n]

    def role(self, col: int) -> str:
        if self.target[0] <= col < self.target[1]:
            return "target"
        return "cue" if col in self.cue else "other"


def check_pairs(pairs: Any) -> pd.DataFrame:
    """The pairs as a fresh DataFrame, or an error naming the pair and what is wrong."""
    if not isinstance(pairs, pd.DataFrame):
        pairs = pd.DataFrame(list(pairs))
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise KeyError(f"pairs need the columns {list(PAIR_COLUMNS)}; missing {missing} (they have "
                       f"{list(pairs.columns)})")
    if len(pairs) == 0:
        raise ValueError("no pairs given")
    df = pairs.reset_index(drop=True).copy()
    dup = df["pair"][df["pair"].duplicated()].tolist()
    if dup:
        raise ValueError(f"pair ids must be unique; repeated: {dup[:5]}")
    for col in ("text", "counterfactual", "target", "sense", "counterfactual_sense", "word"):
        bad = df.loc[~df[col].map(lambda v: isinstance(v, str) and v.strip() != ""), "pair"].tolist()
        if bad:
            raise ValueError(f"pairs {bad[:5]}: {col!r} must be a non-empty string")
    if "kind" in df.columns:
        bad = df.loc[~df["kind"].isin(KINDS), "pair"].tolist()
        if bad:
            raise ValueError(f"pairs {bad[:5]}: 'kind' must be one of {KINDS}")
        wrong = df.loc[(df["kind"] == "same") != (df["sense"] == df["counterfactual_sense"]), "pair"].tolist()
        if wrong:
            raise ValueError(f"pairs {wrong[:5]}: kind 'same' must mean sense == counterfactual_sense, and 'flip' "
                             "that they differ")
    return df


def _aligner() -> Any:
    from trajgeo import datasets

    fn = getattr(datasets, "align_pairs", None)
    if fn is None:
        raise ImportError("tg.interventions aligns pairs with tg.datasets.align_pairs(tokenizer, pairs), which this "
                          "version of trajgeo does not have (it comes with the minimal pairs of issue 15)")
    return fn


def _check_alignment(al: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ALIGN_COLUMNS if c not in al.columns]
    if missing:
        raise ValueError(f"tg.datasets.align_pairs returned no {missing} columns")
    al = al.set_index("pair")
    if set(al.index) != set(df["pair"]) or len(al) != len(df):
        raise ValueError("tg.datasets.align_pairs did not return one row per pair")
    return al.loc[df["pair"]]


def prepare_pairs(lm: LoadedModel, pairs: Any, *, on_misaligned: str = "error",
                  pool: str | None = None) -> tuple[pd.DataFrame, list[PairInputs]]:
    """Check and align the pairs; returns the pairs kept (renumbered rows) and their inputs.

    Raises
    ------
    ValueError
        Naming the pairs that do not align (``on_misaligned="error"``), or whose alignment disagrees with
        the tokenizer; with ``on_misaligned="skip"`` they are dropped with a warning naming them.
    """
    if on_misaligned not in ("error", "skip"):
        raise ValueError(f"on_misaligned must be 'error' or 'skip', got {on_misaligned!r}")
    a = lm.adapter
    pool = pool or ("last" if a.causal else "mean")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    df = check_pairs(pairs)
    al = _check_alignment(pd.DataFrame(_aligner()(lm.tokenizer, df)), df)
    ok = al["aligned"].astype(bool).to_numpy()
    if not ok.all():
        bad = [f"{p} ({r})" for p, r in zip(al.index[~ok], al["reason"][~ok])]
        if on_misaligned == "error":
            raise ValueError(f"{len(bad)} pair(s) do not align on {lm.name!r}'s tokenizer: {'; '.join(bad[:10])}"
                             f"{' ...' if len(bad) > 10 else ''} (on_misaligned='skip' drops them)")
        warnings.warn(f"skipped {len(bad)} pair(s) that do not align on {lm.name!r}'s tokenizer: "
                      f"{'; '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}", stacklevel=3)
        df, al = df[ok].reset_index(drop=True), al[ok]
        if len(df) == 0:
            raise ValueError("no pair aligns on this tokenizer")
    cfg = lm.model.config
    context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    clean_ids = lm.tokenizer(df["text"].tolist())["input_ids"]
    corrupt_ids = lm.tokenizer(df["counterfactual"].tolist())["input_ids"]
    items = []
    for i, (pair, row) in enumerate(zip(df["pair"], al.itertuples())):
        c, k = np.asarray(clean_ids[i], np.int64), np.asarray(corrupt_ids[i], np.int64)
        s, e = int(row.target_start), int(row.target_end)
        if not (len(c) == len(k) == int(row.n_tokens)):
            raise ValueError(f"pair {pair}: align_pairs says {row.n_tokens} tokens, but the tokenizer gives "
                             f"{len(c)} (text) and {len(k)} (counterfactual)")
        if not 0 <= s < e <= len(c):
            raise ValueError(f"pair {pair}: target tokens {s}:{e} lie outside its {len(c)} tokens")
        if not np.array_equal(c[s:e], k[s:e]):
            raise ValueError(f"pair {pair}: the target's tokens differ between the text and the counterfactual")
        if a.causal:  # later tokens cannot change a causal model's states at the target
            c, k = c[:e], k[:e]
        if context and len(c) > int(context):
            raise ValueError(f"pair {pair}: {len(c)} tokens exceed {lm.name!r}'s context of {context}")
        cols = {"last": [e - 1], "first": [s], "mean": list(range(s, e))}[pool]
        items.append(PairInputs(pair, i, c, k, (s, e), cols, tuple(int(p) for p in row.cue_positions)))
    return df, items


def contrast_senses(df: pd.DataFrame, known: dict[str, Sequence[str]], what: str) -> list[tuple[str, list[str]]]:
    """Per pair: its clean sense and the senses it is contrasted with (the counterfactual's sense if it
    differs, else every other sense of the word known to the readout)."""
    out = []
    for pair, word, sense, cf in zip(df["pair"], df["word"], df["sense"], df["counterfactual_sense"]):
        senses = list(known.get(word, ()))
        if not senses:
            raise ValueError(f"pair {pair}: the {what} knows no senses of word {word!r} (it knows "
                             f"{sorted(known)[:10]})")
        for s in (sense, cf):
            if s not in senses:
                raise ValueError(f"pair {pair}: the {what} knows senses {senses} of {word!r}, not {s!r}")
        others = [cf] if cf != sense else [s for s in senses if s != sense]
        if not others:
            raise ValueError(f"pair {pair}: word {word!r} has a single sense for the {what}; nothing to contrast")
        out.append((sense, others))
    return out
