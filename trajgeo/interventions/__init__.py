"""Causal tests of the story: activation patching over minimal pairs, with sense readouts and a null.

- :func:`patch`: exact activation patching (causal tracing) of every (site, position) of every pair,
  denoising and noising, in a few large forward passes; resumable with ``store=``.
- :func:`attribution_patch`: its gradient estimate, every cell at once; :func:`agreement` with the
  exact sweep.
- :func:`kind_contrast`: flip pairs against same-sense pairs (the null), per cell, with a family-wise
  permutation threshold.
- Readouts (:mod:`trajgeo.interventions.readouts`): :class:`SenseReadout` (a class-mean margin fitted on
  other texts), :class:`LogitReadout` (the model's next-token log-odds of sense words), or any callable.
- :func:`source_attribution`: each head's write into the target split by source position (exact), on a
  sense direction, with a shuffled-sense null (:mod:`~trajgeo.interventions.sources`).
- :func:`erase`: LEACE fitted at one point on some groups, applied inside the pass to the others, against
  permuted-label and matched random-subspace controls (:mod:`~trajgeo.interventions.erasure`;
  :func:`leace_eraser`).
- :func:`steer`: the class-mean difference added at one point, dose-response of the final sense against
  random directions and a permutation null (:mod:`~trajgeo.interventions.steering`).
- :func:`patchscope`: the target's residual patched into an inspection prompt, read as sense-word log-odds
  (:mod:`~trajgeo.interventions.patchscope`).
- :func:`skip_layers`: blocks skipped, final separability and loss (:mod:`~trajgeo.interventions.depth`).

Everything runs on :class:`trajgeo.engine.Engine`. Functions that run the model take it first.
"""

from trajgeo.interventions.attribution import agreement, attribution_patch
from trajgeo.interventions.contrast import kind_contrast
from trajgeo.interventions.patching import DIRECTIONS, SITES, PatchResult, patch
from trajgeo.interventions.readouts import FunctionReadout, LogitReadout, Readout, SenseReadout, as_readout
from trajgeo.interventions.sources import SOURCE_BY, SourceAttribution, source_attribution
from trajgeo.interventions.erasure import ERASE_CONDITIONS, ERASE_METRICS, ErasureResult, SenseEraser, erase, \
    leace_eraser
from trajgeo.interventions.steering import STEER_CONDITIONS, STEER_METRICS, SteeringResult, steer
from trajgeo.interventions.patchscope import DEFAULT_PROMPT, patchscope
from trajgeo.interventions.depth import DEPTH_METRICS, skip_layers

__all__ = ["patch", "attribution_patch", "agreement", "kind_contrast", "PatchResult", "Readout", "SenseReadout",
           "LogitReadout", "FunctionReadout", "as_readout", "SITES", "DIRECTIONS",
           "source_attribution", "SourceAttribution", "SOURCE_BY",
           "erase", "leace_eraser", "SenseEraser", "ErasureResult", "ERASE_CONDITIONS", "ERASE_METRICS",
           "steer", "SteeringResult", "STEER_CONDITIONS", "STEER_METRICS",
           "patchscope", "DEFAULT_PROMPT", "skip_layers", "DEPTH_METRICS"]
