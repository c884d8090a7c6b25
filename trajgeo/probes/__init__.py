"""Layer-wise probes done carefully: grouped splits, control tasks, information and transfer.

A probe asks whether a property (here: the sense of the target word) can be read off the
residual stream at one point. Done carelessly, probes leak (the same sentence in training and
test folds), overclaim (a powerful probe memorises anything) and ignore imbalance (CoarseWSD-20
``bank`` is about 90/10). The functions here guard against each:

- :func:`layerwise` cross-validates a probe at every point with grouped, stratified splits and
  normalisation fitted on the training fold only; it reports macro F1, accuracy, balanced
  accuracy, log-loss, the majority baseline, and the control task accuracy and selectivity of
  Hewitt and Liang (2019), each per fold and as a mean with a cluster-bootstrap interval
  (:mod:`trajgeo.stats`). With ``return_result=True`` it returns a :class:`ProbeSweep` that also
  holds the out-of-fold predictions.
- :func:`mdl` gives the online codelength of Voita and Titov (2020).
- :func:`transfer` trains at point i and tests at point j.
- :func:`expected_layer` is the cumulative-probe summary of Tenney et al. (2019).
- :func:`resolution_point` is the first point where accuracy reaches a fraction of its maximum.
- :func:`loureiro_1nn` is the 1-NN sense-vector protocol of Loureiro et al. (2021).

Every analysis takes ``traj`` first and its options by keyword
(``labels="sense", word="word", groups="group", normalize=..., random_state=0``). Senses compete
only within a word: with a word column the sweeps, MDL and the resolution point run once per word
and add a ``word`` column; ``word=None`` pools all examples.

The package holds four ideas, one module each: :mod:`~trajgeo.probes.estimators` (the probe
classifiers and :func:`make_probe`), :mod:`~trajgeo.probes.sweep` (the cross-validated sweep and
what is read from it; its splits and control task in :mod:`~trajgeo.probes.splits`, its engine in
``_cv``), :mod:`~trajgeo.probes.codelength` (MDL; not named ``mdl`` so that no module hides behind
the function) and :mod:`~trajgeo.probes.presets` (published protocols).

Speed
-----
The sweep normalises all points of a fold at once (one pass over the array), walks the points in
order and warm-starts each point's logistic regressions from the previous point's solution
(adjacent residual states are similar, so lbfgs needs few iterations), and runs the folds in
parallel with joblib. BLAS is held to one thread inside each job: for problems of this size
(a few thousand x a few hundred) multi-threaded BLAS only adds synchronisation, and two shared
cores running competing OpenBLAS pools made each lbfgs iteration ~30x slower on the development
machine. Measured there (``benchmarks/probes.py``, 2,000 examples x 31 points x 576 dims,
5 folds, ``n_jobs=1``, machine heavily shared): the sweep with the tuned logistic probe (5 values
of C x 3 grouped inner folds, i.e. 16 fits per point and fold) plus the control task took 45 s
wall (about 11 s of CPU); the plain loop ``cross_val_score(LogisticRegression())`` per point
took 236 s with default BLAS threading (5.2x slower than the sweep) but 3.2 s with BLAS at one
thread: per fit the sweep is as cheap as the loop, and the extra time is the tuning and the
control task the loop does not do. Cost grows linearly in points, folds, grid size x inner
folds, and roughly linearly in examples; ``n_jobs`` up to the number of folds divides it.

Progress
--------
:func:`layerwise`, :func:`transfer`, :func:`expected_layer` and :func:`mdl` show a tqdm bar over
points x folds (points x blocks for MDL; one bar per word), ``progress=False`` silences it. With
``n_jobs=1`` it moves after every point; with parallel jobs it moves by a whole fold as each fold
completes.
"""

from trajgeo.probes.estimators import (
    DEFAULT_CS, PROBES, CosinePrototypeClassifier, TunedLogisticRegression, make_probe,
)
from trajgeo.probes.codelength import VOITA_TITOV_BLOCKS, mdl
from trajgeo.probes.presets import LOUREIRO_BERT_BASE, loureiro_1nn
from trajgeo.probes.splits import control_labels, make_splits
from trajgeo.probes.surface import context_texts, surface_baseline
from trajgeo.probes.ridge import RIDGE_ALPHA, RIDGE_ALPHAS, RidgeProbe
from trajgeo.probes.sweep import (
    METRICS, NULL_METRICS, ProbeSweep, expected_layer, layerwise, resolution_point, transfer, word_significance,
)

__all__ = [
    "layerwise",
    "transfer",
    "mdl",
    "expected_layer",
    "resolution_point",
    "word_significance",
    "surface_baseline",
    "context_texts",
    "loureiro_1nn",
    "make_probe",
    "control_labels",
    "make_splits",
    "ProbeSweep",
    "TunedLogisticRegression",
    "CosinePrototypeClassifier",
    "RidgeProbe",
    "PROBES",
    "METRICS",
    "NULL_METRICS",
    "RIDGE_ALPHA",
    "RIDGE_ALPHAS",
    "VOITA_TITOV_BLOCKS",
    "LOUREIRO_BERT_BASE",
    "DEFAULT_CS",
]
