"""A toy language with planted ambiguity, and small GPT-2-style models trained on it.

Real models never tell us what their internals should look like; a model trained on a language we
designed does. :class:`ToyLanguage` generates token sequences in which every ambiguous target word
has a known sense, fixed by a known cue at a known position, and is followed by a continuation token
that depends on that sense, so that next-token prediction forces the model to resolve the target.
:func:`train` fits a small ``GPT2LMHeadModel`` on it (deterministically, cached on disk), after which
:func:`trajgeo.extract` and every analysis run on it unchanged.

Modules: :mod:`~trajgeo.toy.language` (:class:`ToyLanguage`, :func:`word_tokenizer`),
:mod:`~trajgeo.toy.training` (:func:`train`, :func:`continuation_accuracy`) and
:mod:`~trajgeo.toy.planted` (:func:`suppression_model`: a hand-wired model that removes, or keeps, a
wrong-sense feature, the planted truth behind the attenuation test of
:func:`trajgeo.senses.reinforcement`).

The language
------------
Tokens (all whitespace-free, so a word-level tokenizer maps one token to one word):

* ``w{i}``: ambiguous target words, word ``i`` has ``k_i`` senses ``s0 .. s{k_i-1}``;
* ``n{i}s{j}``: the continuation that follows word ``i`` in sense ``j``;
* ``c{i}s{j}``: the level-1 cue that fixes word ``i`` to sense ``j``;
* ``m{i}``: the mediator of word ``i`` (levels >= 2): itself ambiguous, its sense is passed on to the word;
* ``x{j}``: sense modifiers (levels >= 2), shared by all words: ``x{j}`` immediately before a mediator
  (or a variable) sets its sense to ``j``;
* ``v{k}``: variables (levels >= 3), ambiguous tokens shared by all words;
* ``f{k}``: filler tokens that carry no information.

Composition levels (the deciding cue of the target is always the token ``cue_distance`` tokens away):

* level 1: ``... c3s1 f f w3 n3s1``. One attention hop from the target to its cue resolves it.
* level 2: ``... x1 m3 f f w3 n3s1``. The cue ``m3`` names the word, but its sense is the modifier right
  before it; distractor pairs ``x{j} m{other}`` with the other senses' modifiers (balanced, so counting
  modifiers says nothing) share the cue window with it in random order (so neither recency nor distance
  says which modifier is the target's). Resolving takes two hops: a previous-token move (``x1`` into
  ``m3``'s residual) and the target reading ``m3``. One attention layer cannot tell which modifier stands
  next to ``m3``: measured, 1-layer models stay at chance. Trained on the continuation alone, two-layer
  models sit on a loss plateau at ln(n_senses) whose length depends on the seed (like induction heads:
  1700 to more than 3000 steps). :func:`train` therefore adds by default an auxiliary loss that asks the
  top of the stream at every mediator (and variable) to say that token's sense, i.e. the first hop's
  result is also a training target. That is a training signal only, the language is unchanged; it cannot
  help a 1-layer model (the target reads only embeddings there), and 2- and 4-layer models then solve
  level 2 within ~350 steps for every seed tried (measured: 3 seeds each, 1-layer models stay at chance).
* level L >= 3: ``x1 v4 ... v4 v7 ... v7 m3 ... w3``: a chain of L - 2 variables, each bound by the token
  right before its first (binding) occurrence and used right before the next link, one more hop per level.

Segments (a cue, or a two-token binding) are always separated by at least one filler, so "the token right
before" is never another segment's token.
"""

from trajgeo.toy.language import SIDES, ToyLanguage, word_tokenizer
from trajgeo.toy.planted import SUPPRESSION_WORDS, suppression_model
from trajgeo.toy.training import continuation_accuracy, train

__all__ = ["ToyLanguage", "train", "continuation_accuracy", "word_tokenizer", "SIDES", "suppression_model",
           "SUPPRESSION_WORDS"]
