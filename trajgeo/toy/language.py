"""The planted-ambiguity language: :class:`ToyLanguage` (its rules are in the :mod:`trajgeo.toy`
docstring) and :func:`word_tokenizer`, a one-token-per-word tokenizer over its vocabulary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["ToyLanguage", "word_tokenizer", "SIDES"]

SIDES = ("before", "after", "both")
_SPECIALS = ("[PAD]", "[UNK]")


@dataclass
class ToyLanguage:
    """A seeded generator of sequences with planted ambiguity (see the module docstring for the rules).

    Parameters
    ----------
    n_words : int
        Number of ambiguous target words.
    n_senses : int or sequence of int
        Senses per word (2 to 4), one number for all words or one per word.
    cue_distance : int or (int, int)
        Distance (difference of token indices) from the target to its deciding cue. A pair ``(lo, hi)`` is a
        window into which the deciding cues of *all* chains (the target's and the distractors') are placed
        at random, non-touching, in random order: a cue's distance then says nothing about whose it is
        (with the target's cue always nearest, one attention layer could solve level 2 by recency). An
        int places the target's cue exactly there and the distractors farther out. Default: the smallest
        window that holds all chains, plus slack (1..8 at level 1 with 3 distractors, 1..12 at level 2).
    cue_side : {"before", "after", "both"}
        Where the cue chain sits. ``"after"`` is for encoders (a causal model cannot see it; its
        continuation accuracy stays at chance); ``"both"`` draws the side per sequence and fills the
        other side with fillers.
    distractors : int
        Cue chains of other words per sequence, placed at random (also between the cue and the target).
        At levels >= 2 their modifiers are balanced over senses: with ``distractors + 1`` a multiple of the
        number of senses, every modifier occurs equally often.
    cue_noise : float
        Probability that the cue points to a (uniformly drawn) wrong sense. The target's true sense (the
        ``sense`` column) is the one its continuation shows; ``cue_sense`` is what the cue says. The best
        achievable continuation accuracy is ``1 - cue_noise``.
    level : int
        Composition level, 1 (one cue fixes the sense), 2 (the cue is ambiguous and fixed by its own cue),
        and so on.
    vocab : int or sequence of str
        Filler tokens: a number (named ``f0, f1, ...``) or the tokens themselves (whitespace-free).
    length : int, optional
        Context tokens on the cue side of the target (default: enough for the chains plus 4 fillers).
        Sequences have ``length + 2`` tokens (``2 * length + 2`` for ``cue_side="both"``).
    n_variables : int, optional
        Size of the variable pool (levels >= 3; default: just enough for every chain).
    random_state : int, optional
        Default seed of :meth:`generate`.
    """

    n_words: int = 4
    n_senses: int | Sequence[int] = 2
    cue_distance: int | tuple[int, int] | None = None
    cue_side: str = "before"
    distractors: int = 3
    cue_noise: float = 0.0
    level: int = 1
    vocab: int | Sequence[str] = 16
    length: int | None = None
    n_variables: int | None = None
    random_state: int | None = 0
    _tokens: list[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._check_counts()
        seg = self._segment_len
        chains = self.distractors + 1
        lo, hi = self._check_distance(seg, chains)
        fillers = self._check_fillers()
        need_vars = max(self.level - 2, 0) * chains
        if self.n_variables is None:
            self.n_variables = need_vars
        elif self.n_variables < need_vars:
            raise ValueError(f"level {self.level} with {self.distractors} distractors uses {need_vars} variables "
                             f"per sequence; n_variables={self.n_variables} is too few")
        n_window = chains if hi > lo else 1
        if (hi - lo + 1) - (n_window - 1) * seg < n_window:
            raise ValueError(f"cue_distance {lo}..{hi} cannot hold the deciding cues of all {n_window} chains "
                             f"(target + distractors), {seg} token(s) each with a filler between: make it at "
                             f"least {lo}..{lo - 1 + n_window * (seg + 1) - 1}")
        # window, then the earlier links (and, for a fixed distance, the distractors) farther out
        n_outer = chains * max(self.level - 2, 0) + (chains - 1 if hi == lo else 0)
        minimum = hi + seg - 1 + n_outer * (seg + 1)
        if self.length is None:
            self.length = minimum + 4
        elif self.length < minimum:
            raise ValueError(f"length={self.length} is too short for this language: it needs at least {minimum}")
        structural = self._structural_tokens()
        clash = set(structural) & set(fillers)
        if clash or len(set(fillers)) != len(fillers):
            raise ValueError(f"filler tokens must be unique and distinct from the language's tokens: {sorted(clash)}")
        self._tokens = [*_SPECIALS, *structural, *fillers]
        self._id_of = {t: i for i, t in enumerate(self._tokens)}

    def _check_counts(self) -> None:
        """Words, senses, side, level, cue noise and distractors are valid (a ValueError names which)."""
        if not isinstance(self.n_words, (int, np.integer)) or self.n_words < 1:
            raise ValueError(f"n_words must be a positive integer, got {self.n_words!r}")
        senses = self.senses_per_word
        if len(senses) != self.n_words:
            raise ValueError(f"n_senses has {len(senses)} entries for {self.n_words} words")
        if min(senses) < 2 or max(senses) > 4:
            raise ValueError(f"n_senses must be between 2 and 4 per word, got {senses}")
        if self.cue_side not in SIDES:
            raise ValueError(f"cue_side must be one of {SIDES}, got {self.cue_side!r}")
        if not isinstance(self.level, (int, np.integer)) or self.level < 1:
            raise ValueError(f"level must be an integer >= 1, got {self.level!r}")
        if not 0.0 <= float(self.cue_noise) < 1.0:
            raise ValueError(f"cue_noise must be in [0, 1), got {self.cue_noise!r}")
        if self.distractors < 0:
            raise ValueError(f"distractors must be >= 0, got {self.distractors}")
        if self.distractors > 0 and self.n_words < 2:
            raise ValueError("distractors are cues of other words: they need n_words >= 2")

    def _check_distance(self, seg: int, chains: int) -> tuple[int, int]:
        """Fill in the default cue window and check it; returns (lo, hi)."""
        if self.cue_distance is None:  # the smallest window that holds every chain's deciding cue, plus slack
            self.cue_distance = (1 if self.cue_side == "before" else seg + 1,
                                 (seg + 1 if self.cue_side == "before" else 2 * seg + 1) + chains * (seg + 1))
        lo, hi = self.distance_range
        if lo < 1 or hi < lo:
            raise ValueError(f"cue_distance must be >= 1 (or a range lo <= hi), got {self.cue_distance!r}")
        if self.cue_side != "before" and lo < seg + 1:
            raise ValueError(f"cue_distance must be >= {seg + 1} when the cue may come after the target "
                             f"(the continuation and the cue segment sit in between), got {self.cue_distance!r}")
        return lo, hi

    def _check_fillers(self) -> list[str]:
        """The filler tokens (``vocab`` as a number or the tokens), checked; kept as ``_fillers``."""
        fillers = [f"f{i}" for i in range(self.vocab)] if isinstance(self.vocab, (int, np.integer)) else list(self.vocab)
        if len(fillers) < 1:
            raise ValueError("vocab needs at least one filler token")
        if any((not t) or any(c.isspace() for c in t) for t in fillers):
            raise ValueError("filler tokens must be non-empty and contain no whitespace")
        self._fillers = fillers
        return fillers

    # ------------------------------------------------------------------ structure
    @property
    def senses_per_word(self) -> list[int]:
        """Number of senses of each word, length n_words."""
        if isinstance(self.n_senses, (int, np.integer)):
            return [int(self.n_senses)] * int(self.n_words)
        return [int(k) for k in self.n_senses]

    @property
    def distance_range(self) -> tuple[int, int]:
        """(lo, hi) of the cue distance."""
        d = self.cue_distance
        if isinstance(d, (int, np.integer)):
            return int(d), int(d)
        lo, hi = d
        return int(lo), int(hi)

    @property
    def _segment_len(self) -> int:
        return 1 if self.level == 1 else 2

    @property
    def seq_len(self) -> int:
        """Tokens per sequence (all sequences have the same length)."""
        return self.length + 2 if self.cue_side != "both" else 2 * self.length + 2

    @property
    def tokens(self) -> list[str]:
        """The vocabulary: special tokens, then the language's tokens, then fillers (list index = token id)."""
        return list(self._tokens)

    @property
    def fillers(self) -> list[str]:
        return list(self._fillers)

    def _structural_tokens(self) -> list[str]:
        k = self.senses_per_word
        toks = [f"w{i}" for i in range(self.n_words)]
        toks += [f"n{i}s{j}" for i in range(self.n_words) for j in range(k[i])]
        if self.level == 1:
            toks += [f"c{i}s{j}" for i in range(self.n_words) for j in range(k[i])]
        else:
            toks += [f"m{i}" for i in range(self.n_words)] + [f"x{j}" for j in range(max(k))]
            toks += [f"v{i}" for i in range(self.n_variables)]
        return toks

    def config(self) -> dict[str, Any]:
        """The parameters that define the language (JSON-able; the key of cached models)."""
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["n_senses"] = self.senses_per_word
        d["cue_distance"] = list(self.distance_range)
        d["vocab"] = self.fillers
        return d

    def tokenizer(self) -> Any:
        """A fast word-level tokenizer over :attr:`tokens` (whitespace split, one token per word)."""
        return word_tokenizer(self.tokens)

    # ------------------------------------------------------------------ generation
    def _chain(self, word: int, sense: int, variables: list[int]) -> list[tuple[str, ...]]:
        """The segments of one word's cue chain, farthest first; the last one holds the deciding cue."""
        if self.level == 1:
            return [(f"c{word}s{sense}",)]
        binders = [f"x{sense}", *(f"v{v}" for v in variables)]
        segs = [(binders[i], binders[i + 1]) for i in range(len(binders) - 1)]
        return segs + [(binders[-1], f"m{word}")]

    def _one(self, rng: np.random.Generator) -> dict[str, Any]:
        """One sequence: tokens, target index, senses and the cue chain's token indices."""
        k = self.senses_per_word
        word = int(rng.integers(self.n_words))
        sense = int(rng.integers(k[word]))
        cue_sense = sense
        if self.cue_noise > 0 and rng.random() < self.cue_noise:
            cue_sense = int((sense + 1 + rng.integers(k[word] - 1)) % k[word])
        n_var = max(self.level - 2, 0)
        var_pool = rng.permutation(self.n_variables) if n_var else np.zeros(0, int)
        chains = [self._chain(word, cue_sense, [int(v) for v in var_pool[:n_var]])]
        chain_senses = [cue_sense]
        others = [w for w in range(self.n_words) if w != word]
        for i in range(self.distractors):
            if self.level == 1:
                w2 = int(rng.choice(others))
                s2 = int(rng.integers(k[w2]))
            else:
                # balanced modifiers: the distractors take the other senses in turn
                s2 = (cue_sense + 1 + i) % max(k)
                eligible = [w for w in others if k[w] > s2] or others
                w2 = int(rng.choice(eligible))
                s2 = s2 if k[w2] > s2 else int(rng.integers(k[w2]))
            vs = [int(v) for v in var_pool[n_var * (i + 1): n_var * (i + 2)]]
            chains.append(self._chain(w2, s2, vs))
            chain_senses.append(s2)
        side = self.cue_side if self.cue_side != "both" else ("before", "after")[int(rng.integers(2))]
        ctx, where, starts = self._layout(chains, side, rng)
        target, cont = f"w{word}", f"n{word}s{sense}"
        if side == "before":
            toks, t_idx, offset = ctx + [target, cont], len(ctx), 0
        else:
            toks, t_idx, offset = [target, cont] + ctx, 0, 2
        if self.cue_side == "both":  # the other side holds fillers only, so that lengths stay equal
            other = self._fill(rng, self.length)
            toks = toks + other if side == "before" else other + toks
            if side == "after":
                t_idx, offset = self.length, self.length + 2
        seg = self._segment_len
        # token indices of the target's chain (every link), and of its deciding cue (the last link's last token)
        chain_idx = sorted(i + offset for j in range(len(chains[0])) for i in range(where[j], where[j] + seg))
        cue_idx = where[len(chains[0]) - 1] + seg - 1 + offset
        # ambiguous chain tokens (mediators, variables: every segment token but the leading modifier) and the
        # sense each one carries, its chain's: the targets of the auxiliary training loss (see `train`)
        ambiguous = [(start + offset + i, chain_senses[c]) for start, c in starts for i in range(seg)
                     if self.level > 1 and not toks[start + offset + i].startswith("x")]
        return dict(tokens=toks, target_index=t_idx, word=word, sense=sense, cue_sense=cue_sense,
                    cue_index=cue_idx, cue_chain=tuple(chain_idx), side=side, ambiguous=ambiguous)

    def _fill(self, rng: np.random.Generator, n: int) -> list[str]:
        return [self._fillers[i] for i in rng.integers(len(self._fillers), size=n)]

    @staticmethod
    def _spaced(rng: np.random.Generator, n: int, lo: int, hi: int, size: int) -> np.ndarray:
        """n sorted integers in [lo, hi], consecutive ones at least size + 1 apart, uniform over such sets."""
        slots = (hi - lo + 1) - (n - 1) * size
        return np.sort(rng.choice(slots, size=n, replace=False)) + np.arange(n) * size + lo

    def _window(self) -> tuple[int, int, int, int]:
        """Near-token distances: (window lo, window hi, outer lo, outer hi) for the side "before" or "after".

        A segment's *near distance* u is the distance to the target of its token nearest to it; the
        segment covers distances u .. u + seg - 1. Before the target the cue is that nearest token
        (u = cue distance); after it the cue is the farthest (u = cue distance - seg + 1).
        """
        lo, hi = self.distance_range
        seg = self._segment_len
        return lo, hi, hi + seg + 1, self.length - seg + 1

    def _layout(self, chains: list[list[tuple[str, ...]]], side: str,
                rng: np.random.Generator) -> tuple[list[str], dict[int, int], list[tuple[int, int]]]:
        """Place the chains' segments among fillers in ``length`` context tokens.

        The deciding segments of all chains (the target's and the distractors') go into the window of
        cue distances ``cue_distance`` in random order, so a cue's distance says nothing about whose cue
        it is; earlier links (levels >= 3) go farther out, each chain's links farther the earlier they
        are. Segments never touch (>= 1 filler between them). With a fixed ``cue_distance`` only the
        target's deciding segment sits in the window and the distractors' go farther out.

        Returns the context tokens in text order, for each link of the target's chain the context index of
        its first token, and ``(context index of the first token, chain)`` of every placed segment.
        """
        seg = self._segment_len
        w_lo, w_hi, o_lo, o_hi = self._window()
        shift = 0 if side == "before" else seg - 1  # after the target, near distance = cue distance - (seg - 1)
        exchangeable = w_hi > w_lo
        window = [(c, len(ch) - 1) for c, ch in enumerate(chains)] if exchangeable else [(0, len(chains[0]) - 1)]
        window = [window[i] for i in rng.permutation(len(window))]
        # earlier links, near to far: a random merge of the chains' links in reverse order
        pending = [[(c, j) for j in range(len(ch) - 2, -1, -1)] for c, ch in enumerate(chains)]
        if not exchangeable:
            for c in range(1, len(chains)):
                pending[c].insert(0, (c, len(chains[c]) - 1))
        outer = []
        while any(pending):
            sizes = np.array([len(q) for q in pending], float)
            outer.append(pending[int(rng.choice(len(pending), p=sizes / sizes.sum()))].pop(0))
        near = np.concatenate([self._spaced(rng, len(window), w_lo, w_hi, seg) - shift,
                               self._spaced(rng, len(outer), o_lo, o_hi, seg) - shift if outer else np.zeros(0, int)])
        ctx = self._fill(rng, self.length)
        where: dict[int, int] = {}
        starts: list[tuple[int, int]] = []
        for (c, j), u in zip(window + outer, near):
            # before: distance t sits at index length - t; after (past the continuation): at index t - 2
            start = self.length - int(u) - seg + 1 if side == "before" else int(u) - 2
            ctx[start:start + seg] = chains[c][j]
            starts.append((start, c))
            if c == 0:
                where[j] = start
        return ctx, where, starts

    def _sample(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        return [self._one(rng) for _ in range(n)]

    def _ids(self, rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids (n, seq_len), target indices (n,) and continuation ids (n,) of sampled rows."""
        ids = np.array([[self._id_of[t] for t in r["tokens"]] for r in rows], dtype=np.int64)
        t_idx = np.array([r["target_index"] for r in rows], dtype=np.int64)
        cont = ids[np.arange(len(rows)), t_idx + 1]
        return ids, t_idx, cont

    @staticmethod
    def _ambiguous(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row, token index and sense of every ambiguous chain token of sampled rows, each of shape (n_tokens,)."""
        trip = np.array([(r, i, s) for r, row in enumerate(rows) for i, s in row["ambiguous"]], dtype=np.int64)
        trip = trip.reshape(-1, 3)
        return trip[:, 0], trip[:, 1], trip[:, 2]

    def generate(self, n: int, random_state: int | None = None) -> tuple[list[str], pd.DataFrame]:
        """Generate ``n`` sequences.

        Parameters
        ----------
        n : int
        random_state : int, optional
            Seed (default: the language's ``random_state``); the same seed gives the same sequences.

        Returns
        -------
        texts : list of str
            Whitespace-joined tokens, one string per sequence.
        examples : DataFrame
            One row per sequence in trajgeo's example contract (:func:`trajgeo.extract` takes it as is):
            ``example, text, char_start, char_end, target, word, sense, group, cue_position, cue_distance``
            (tokens between target and cue), plus ``cue_index`` and ``target_index`` (token indices),
            ``level``, ``cue_sense`` (what the cue says; differs from ``sense`` only under cue noise),
            ``continuation`` (the token after the target) and ``cue_chain`` (token indices of every token
            of the target's cue chain, ascending).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        seed = self.random_state if random_state is None else random_state
        rows = self._sample(int(n), np.random.default_rng(seed))
        texts = [" ".join(r["tokens"]) for r in rows]
        starts = [sum(len(t) + 1 for t in r["tokens"][: r["target_index"]]) for r in rows]
        df = pd.DataFrame({
            "example": np.arange(len(rows)),
            "text": texts,
            "char_start": starts,
            "char_end": [s + len(f"w{r['word']}") for s, r in zip(starts, rows)],
            "target": [f"w{r['word']}" for r in rows],
            "word": [f"w{r['word']}" for r in rows],
            "sense": [f"s{r['sense']}" for r in rows],
            "group": np.arange(len(rows)),  # one target per sequence: the sequence is the group
            "cue_position": [r["side"] for r in rows],
            "cue_distance": [abs(r["cue_index"] - r["target_index"]) for r in rows],
            "cue_index": [r["cue_index"] for r in rows],
            "target_index": [r["target_index"] for r in rows],
            "level": self.level,
            "cue_sense": [f"s{r['cue_sense']}" for r in rows],
            "continuation": [r["tokens"][r["target_index"] + 1] for r in rows],
            "cue_chain": [r["cue_chain"] for r in rows],
        })
        return texts, df


# ====================================================================== tokenizer
def word_tokenizer(tokens: Sequence[str]) -> Any:
    """A transformers fast tokenizer that maps each whitespace-separated token to one id.

    Parameters
    ----------
    tokens : sequence of str
        The vocabulary; list index = token id. Must contain ``"[PAD]"`` and ``"[UNK]"``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(tokens)}
    missing = [s for s in _SPECIALS if s not in vocab]
    if missing:
        raise ValueError(f"the vocabulary lacks the special tokens {missing}")
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]")
