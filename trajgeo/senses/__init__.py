"""Sense resolution along trajectories: prototypes, cosine-to-sense curves, margins, commitment,
superposition at the embedding, reinforcement along sense directions, and attribution of the nudges.

Vocabulary (see docs/architecture.md): a **point** is a position along a trajectory (0 = context-free
embedding, l = residual after block l); a **layer** is a block 1..L; the **reference** point is the
one whose sense prototypes a curve is scored against.

These rules hold throughout.

* **Senses compete only within a word.** Prototypes are kept per (word, sense); an example is
  compared only with the senses of its own word (the ``word`` column, ``"word"`` by default; without
  that column all examples are one word).
* **Leave-group-out.** An example is never scored against a prototype that contains itself or any
  example of its group (the ``group`` column, the sentence; for a causal model also every example
  with the same text up to the end of the target, which the model cannot tell apart: see
  :meth:`trajgeo.Trajectories.group_codes`). Its prototypes are replaced, in closed form, by
  ``(S_k - G) / (n_k - c)`` with ``G`` the sum of its group's ``c`` examples of sense k. Directions
  learned by LDA or a probe are cross-fitted over folds that keep a group together.
* **Ties are no decisions.** Where a word's raw vectors at a point have (near) zero within-word
  variance (at most ``TIE_RTOL`` = 1e-8 of their mean squared norm; point 0, the context-free
  embedding, always), margins are NaN and no accuracy, commitment or stable point counts it.
* **The reference is named for what it does.** With a fixed reference (``"last"`` or an integer),
  every point is compared with prototypes of the reference point: that is *alignment with the
  representation at the reference*, which peaks there by construction (``"last"``: alignment with
  the final representation). Separability at each point needs no reference (``reference="same"``,
  :func:`nearest_centroid_accuracy`, ``separability``); :func:`reference_matrix` shows every
  reference at once. ``"center"`` and ``"standardize"`` use each point's own statistics (a
  per-point shift and a per-dimension scale: the coordinates stay the same axes, so cosines across
  points keep their meaning), because a scale fitted at one point is wrong at the others: MiniLM's
  last point has a dimension of zero variance, and dividing the other points by it made every
  margin before the last point exactly 0. ``"whiten"`` would rotate each point into its own
  eigenbasis, so it fits one whitening at the reference point and applies it at every point.
  With ``reference="same"`` each point is normalised with its own statistics.
* **Words with one sense** have nothing to compare: they are skipped, and one warning names them.
* **Reinforcement needs a neutral origin**: the other words' mean at each point (two words at least).

Everything is computed from a few dot products per example (the Gram trick), so the cost is one
pass over the states, and lazy (dask) trajectories are processed chunk by chunk.

Every function takes ``traj`` first and its options by keyword:
``f(traj, *, labels="sense", word="word", groups="group", reference="last", normalize=...)``
(``by=`` is the old name of ``word=`` and still works for one release, with a DeprecationWarning).

Modules: :mod:`~trajgeo.senses.estimator` (:class:`SensePrototypes`, :func:`prototypes`,
:func:`nearest_centroid_accuracy`), :mod:`~trajgeo.senses.crossfit` (sense directions, cross-fitted),
:mod:`~trajgeo.senses.convergence` (:func:`curves`, :func:`reference_matrix`, :func:`commitment`,
:func:`superposition`), :mod:`~trajgeo.senses.directional` (:func:`reinforcement` with
:class:`ReinforcementResult`, :func:`attribution`).
"""

from trajgeo.senses._common import DIRECTIONS, TIE_RTOL
from trajgeo.senses.convergence import commitment, curves, reference_matrix, superposition
from trajgeo.senses.directional import ReinforcementResult, attribution, reinforcement
from trajgeo.senses.estimator import SensePrototypes, nearest_centroid_accuracy, prototypes
from trajgeo.senses.separability import separability

__all__ = [
    "DIRECTIONS",
    "TIE_RTOL",
    "SensePrototypes",
    "prototypes",
    "nearest_centroid_accuracy",
    "curves",
    "reference_matrix",
    "commitment",
    "superposition",
    "reinforcement",
    "ReinforcementResult",
    "attribution",
    "separability",
]
