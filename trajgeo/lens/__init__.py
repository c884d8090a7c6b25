"""Logit lens and tuned lens on the target token's trajectory, with a sense-word read-out.

- :mod:`trajgeo.lens.logit`: the logit lens (:func:`logit_lens`, :func:`top_tokens`,
  :func:`prediction_depth`) and the sense-word read-out (:func:`sense_token_ids`); metric
  definitions in its docstring.
- :mod:`trajgeo.lens.tuned`: the tuned lens (:class:`TunedLens`), learned affine translators per
  point read out as the logit lens reads them.

Both run the model's own readout (final norm, unembedding, soft-capping or scaling) on the target
rows only. Every function takes the model first, then the trajectories, then options by keyword.
"""

from trajgeo.lens.logit import LENS_METRICS, LensResult, logit_lens, prediction_depth, sense_token_ids, top_tokens
from trajgeo.lens.tuned import TunedLens

__all__ = ["logit_lens", "top_tokens", "prediction_depth", "sense_token_ids", "TunedLens", "LensResult",
           "LENS_METRICS"]
