"""Layer-wise probes done carefully: grouped splits, a permutation null, honest baselines,
information and transfer.

A probe asks whether a property (here: the sense of the target word) can be read off the
residual stream at one point. Done carelessly, probes leak (the same sentence in training and
test folds), overclaim (the best of 31 points is picked after the fact; a powerful probe
memorises anything) and ignore imbalance (CoarseWSD-20 ``bank`` is about 96/4). The functions here
guard against each:

- :func:`layerwise` cross-validates a probe at every point with grouped, stratified splits and
  normalisation fitted on the training fold only; it reports macro F1, accuracy, balanced
  accuracy, Cohen's kappa (the last two on a chance-corrected scale), log-loss and the majority
  baseline, each per fold and as a mean with a cluster-bootstrap interval (:mod:`trajgeo.stats`).
  With ``n_permutations`` it reads every curve against the group-respecting label-permutation
  null (:func:`trajgeo.stats.group_permutations`): per point the null's mean and 95% quantile and
  a raw p-value, per word the family-wise threshold over points (``null_fwer``, the max
  statistic) and family-wise p-values; :func:`word_significance` takes each word's best point and
  adjusts across words (Holm). With ``return_result=True`` it returns a :class:`ProbeSweep` that
  also holds the out-of-fold predictions (and the null of the pooled curve).
- The default probe is :class:`RidgeProbe`, a closed-form ridge classifier: its solve depends on
  the states only, so one solve per point and fold serves the true labels, the permutations of
  the null and the control labels at once (:mod:`~trajgeo.probes.ridge`).
- :func:`surface_baseline` runs the same probe, splits and null on a bag of the context words the
  model could see (before the target for a causal model): how much of the sense the words around
  the target give away with no model depth at all.
- The control task of Hewitt and Liang (2019) (``control=True``) is off by default and accepted
  only for several words pooled in one sweep whose types recur in every fold; with one word per
  sweep its "types" are surface cues such as the previous word, and it is refused.
- :func:`mdl` gives the online codelength of Voita and Titov (2020).
- :func:`transfer` trains at point i and tests at point j.
- :func:`expected_layer` is the cumulative-probe summary of Tenney et al. (2019).
- :func:`resolution_point` is the first point where a score reaches a fraction of its maximum
  and, with a null, exceeds the family-wise threshold (a word whose peak does not is "not resolved").
- :func:`loureiro_1nn` is the 1-NN sense-vector protocol of Loureiro et al. (2021).

Every analysis takes ``traj`` first and its options by keyword
(``labels="sense", word="word", groups="group", normalize=..., random_state=0``). Senses compete
only within a word: with a word column the sweeps, MDL and the resolution point run once per word
and add a ``word`` column; ``word=None`` pools all examples.

The package holds its ideas one module each: :mod:`~trajgeo.probes.estimators` (the probe
classifiers and :func:`make_probe`), :mod:`~trajgeo.probes.ridge` (the closed-form ridge probe and
its shared solve), :mod:`~trajgeo.probes.sweep` (the cross-validated sweep and what is read from
it; its splits and control task in :mod:`~trajgeo.probes.splits`, its engine in ``_cv``),
:mod:`~trajgeo.probes.surface` (the surface-cue baseline), :mod:`~trajgeo.probes.codelength`
(MDL; not named ``mdl`` so that no module hides behind the function) and
:mod:`~trajgeo.probes.presets` (published protocols).

Which probe
-----------
Measured on CoarseWSD-20 (the 15 words in ``../shared/data/coarsewsd20``, up to 400 examples per
word, stratified; MiniLM trajectories, 7 points; 5 grouped folds): the mean over points of each
word's balanced accuracy, averaged over words, is 0.818 for ``"ridge"`` (penalty 100 on
standardised features, equal-prior decision) against 0.798 for the tuned logistic probe (the
default before 0.3), and 0.901 against 0.888 at each word's best point. Per word (mean over
points) ridge is ahead on 8 of 15 words (most on the unbalanced ones: deck +11.9 points, bank
+7.1, pound +6.0), behind on 7 by under one point except digit (-1.9, 110 examples), and takes
1.7 s per word against 29 s. The penalty chosen per labelling by GCV
(``RidgeProbe(alpha=RIDGE_ALPHAS)``) gives 0.807 at twice the cost; ridge with scikit-learn's
decision (largest fitted value, ``prior="fitted"``) 0.802: the equal-prior rule is what lifts the
unbalanced words (bank 0.802 vs 0.757, deck 0.732 vs 0.630), at the price of plain accuracy
there (read balanced accuracy or kappa, not accuracy, on unbalanced words). On SmolLM2 (31 points;
apple, arm, bank, bow, 400 examples each): 0.875 for ridge against 0.857 for the tuned logistic
probe (mean over points), 0.920 against 0.924 at the best point, 2.8 s per word against 64 s.

Speed
-----
The ridge sweep walks point by point: the scatter matrix of each fold is the sum of the other
folds' blocks (one pass over the examples serves all five folds), the fold's standardisation
comes from the same sums, and each fold costs one Cholesky factor (d x d, or n x n when the
training fold has fewer examples than dimensions). Permuted labellings only change the targets:
they are solved as one target matrix, through the map from training targets to test decisions
when there are many. Points run in parallel with joblib (``n_jobs``), BLAS held to one thread
inside each job: for problems of this size multi-threaded BLAS only adds synchronisation, and two
shared cores running competing OpenBLAS pools made each lbfgs iteration ~30x slower on the
development machine. The tuned logistic probe (``probe="logistic"``) fits per fold, point after
point, warm-starting from the previous point.

Measured with ``benchmarks/probes.py`` on the development machine (2 cores shared with other jobs,
load 8-10, so seconds are noisy; ratios come from alternating runs, best of 3), 2,000 examples x
31 points x 576 dims, 5 folds, ``n_jobs=1``: the plain loop ``cross_val_score(LogisticRegression())``
per point at one BLAS thread 10.1 s and 4.0 s in two runs; :func:`layerwise` with the ridge
probe, grouped splits, standardisation and 1,000 bootstrap replicates 13.2 s and 6.0 s (1.3x and
1.5x the loop; of that, the grouped stratified splits take 0.4 s and the bootstrap 0.2 s, which
the loop does not do); with the tuned logistic probe 81 s (8.1x). The null, 1,000 permutations,
costs (sweep with the null / sweep) 2.6x at 600 examples x 31 points (both runs), 8.9x and 9.8x
at 3,000, 7.4x and 7.6x at 9,000 (on 3 points: both costs are linear in points): per point and fold each
labelling costs a product with the n_test x n_train map, so the ratio grows with the word's size;
for large words a few hundred permutations keep the null within a few sweeps. Any other probe
runs one full sweep per permutation.

Progress
--------
:func:`layerwise`, :func:`transfer`, :func:`expected_layer` and :func:`mdl` show a tqdm bar over
points x folds (points x blocks for MDL; one bar per word), ``progress=False`` silences it. With
``n_jobs=1`` it moves after every point; with parallel jobs it moves by a whole fold (by a whole
point, for the ridge sweep) as each job completes.
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
