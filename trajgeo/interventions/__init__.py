"""Causal tests of the story: activation patching over minimal pairs, with sense readouts and a null.

- :func:`patch`: exact activation patching (causal tracing) of every (site, position) of every pair,
  denoising and noising, in a few large forward passes; resumable with ``store=``.
- :func:`attribution_patch`: its gradient estimate, every cell at once; :func:`agreement` with the
  exact sweep.
- :func:`kind_contrast`: flip pairs against same-sense pairs (the null), per cell, with a family-wise
  permutation threshold.
- Readouts (:mod:`trajgeo.interventions.readouts`): :class:`SenseReadout` (a class-mean margin fitted on
  other texts), :class:`LogitReadout` (the model's next-token log-odds of sense words), or any callable.

Everything runs on :class:`trajgeo.engine.Engine`. Functions that run the model take it first.
"""

from trajgeo.interventions.attribution import agreement, attribution_patch
from trajgeo.interventions.contrast import kind_contrast
from trajgeo.interventions.patching import DIRECTIONS, SITES, PatchResult, patch
from trajgeo.interventions.readouts import FunctionReadout, LogitReadout, Readout, SenseReadout, as_readout

__all__ = ["patch", "attribution_patch", "agreement", "kind_contrast", "PatchResult", "Readout", "SenseReadout",
           "LogitReadout", "FunctionReadout", "as_readout", "SITES", "DIRECTIONS"]
