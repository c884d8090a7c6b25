"""Sense resolution along trajectories: prototypes, cosine-to-sense curves, margins, commitment,
superposition at the embedding, reinforcement along sense directions, and attribution of the nudges.

Vocabulary (see docs/architecture.md): a **point** is a position along a trajectory (0 = context-free
embedding, l = residual after block l); a **layer** is a block 1..L; the **reference** point is the
one whose sense prototypes define "the resolved meaning".

Three rules hold throughout.

* **Senses compete only within a word.** Prototypes are kept per (word, sense); an example is
  compared only with the senses of its own word (the ``word`` column, ``"word"`` by default; without
  that column all examples are one word).
* **Leave-one-out.** An example is never scored against a prototype that contains itself: its own
  sense's prototype is replaced, in closed form, by ``(n * mean - x_i) / (n - 1)``. Directions
  learned by LDA or a probe are cross-fitted (each example's direction comes from a model fitted on
  the other folds), and the folds are grouped: examples sharing a ``group`` (the sentence) fall in
  the same fold, so a duplicated sentence cannot teach the model the example it is scored on.
* **One basis per comparison.** With a fixed reference (``"last"`` or an integer), every point is
  compared with prototypes of the reference point: all blocks write into one residual space.
  ``"center"`` and ``"standardize"`` use each point's own statistics (a per-point shift and a
  per-dimension scale: the coordinates stay the same axes, so cosines across points keep their
  meaning), because a scale fitted at one point is wrong at the others: MiniLM's last point has a
  dimension of zero variance, and dividing the other points by it made every margin before the
  last point exactly 0. ``"whiten"`` would rotate each point into its own eigenbasis, so it fits
  one whitening at the reference point and applies it at every point. With ``reference="same"``
  each point is normalised with its own statistics.

Everything is computed from a few dot products per example (the Gram trick), so the cost is one
pass over the states, and lazy (dask) trajectories are processed chunk by chunk.

Every function takes ``traj`` first and its options by keyword:
``f(traj, *, labels="sense", word="word", groups="group", reference="last", normalize=...)``
(``by=`` is the old name of ``word=`` and still works for one release, with a DeprecationWarning).

Modules: :mod:`~trajgeo.senses.estimator` (:class:`SensePrototypes`, :func:`prototypes`,
:func:`nearest_centroid_accuracy`), :mod:`~trajgeo.senses.crossfit` (sense directions, cross-fitted),
:mod:`~trajgeo.senses.convergence` (:func:`curves`, :func:`commitment`, :func:`superposition`),
:mod:`~trajgeo.senses.directional` (:func:`reinforcement`, :func:`attribution`).
"""

from trajgeo.senses._common import DIRECTIONS
from trajgeo.senses.convergence import commitment, curves, superposition
from trajgeo.senses.directional import attribution, reinforcement
from trajgeo.senses.estimator import SensePrototypes, nearest_centroid_accuracy, prototypes
from trajgeo.senses.separability import separability

__all__ = [
    "DIRECTIONS",
    "SensePrototypes",
    "prototypes",
    "nearest_centroid_accuracy",
    "curves",
    "commitment",
    "superposition",
    "reinforcement",
    "attribution",
    "separability",
]
