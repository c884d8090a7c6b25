"""Logit lens and tuned lens on the target token's trajectory, with a sense-word read-out.

- :mod:`trajgeo.lens.logit`: the logit lens (:func:`logit_lens`, :func:`top_tokens`,
  :func:`top1_saturation_point`) and the sense-word read-out (:func:`sense_token_ids`); metric
  definitions in its docstring.
- :mod:`trajgeo.lens.shuffled`: the sense-word read-out per word and point read against shuffled
  sense-word sets (:func:`sense_readout`).
- :mod:`trajgeo.lens.prediction`: the lens scored against the actual next token of whole texts
  (:func:`next_token_scores`: cross-entropy and top-1 accuracy per point, with intervals).
- :mod:`trajgeo.lens.tuned`: the tuned lens (:class:`TunedLens`), learned affine translators per
  point read out as the logit lens reads them, trained once per model and cached
  (:func:`train_tuned_lens`, ``python -m trajgeo.lens.train``, :meth:`TunedLens.cached`).

All run the model's own readout (final norm, unembedding, soft-capping or scaling). Every function
takes the model first, then the trajectories (or texts), then options by keyword. A model without
an LM head (a sentence encoder such as MiniLM) has no lens: :func:`has_lm_head` says so before,
:class:`LensUnavailable` (a ``ValueError``) when a lens function is called on it.
"""

from trajgeo.lens._readout import LensUnavailable, has_lm_head
from trajgeo.lens.logit import (
    LENS_METRICS,
    LensResult,
    logit_lens,
    prediction_depth,
    sense_token_ids,
    top1_saturation_point,
    top_tokens,
)
from trajgeo.lens.prediction import NEXT_TOKEN_METRICS, next_token_scores
from trajgeo.lens.shuffled import sense_readout
from trajgeo.lens.tuned import TunedLens, train_tuned_lens

__all__ = ["logit_lens", "top_tokens", "top1_saturation_point", "prediction_depth", "sense_token_ids",
           "sense_readout", "next_token_scores", "TunedLens", "train_tuned_lens", "has_lm_head", "LensUnavailable", "LensResult",
           "LENS_METRICS", "NEXT_TOKEN_METRICS"]
