"""One forward engine: run a model over a batch of token ids, read any residual or component at any
(point, position), and replace, add to, project out of, or transform any of them at any (layer, position).

Everything runs on the model's own modules through PyTorch hooks placed by the family's
:class:`trajgeo.models.Adapter`, for every architecture extraction supports. The hooks live only for one
:meth:`Engine.run` and are removed (and any skipped block restored) on exit, even after an exception.

Sites
-----
A :class:`Site` names a place in the forward pass, indexed as in the rest of trajgeo:

============================  ==========================================================================
site                          value at each (row, column)
============================  ==========================================================================
``Site.resid(point)``         point 0: the token embedding times the model's scale (no position
                              embedding): the output of ``adapter.embed``; point l (1..L): the raw
                              residual after block l (the block's output).
``Site.block_input(layer)``   the input of block ``layer`` (for layer 1: the embedding plus GPT-2's
                              position embedding, or BERT's normed embeddings; else point layer-1).
``Site.attn(layer)``          the attention write of block ``layer`` (for Gemma the post-attention
                              norm's output; for post-LN encoders the difference of the residuals after
                              and before the attention sublayer, as in :func:`trajgeo.extract`).
``Site.mlp(layer)``           the MLP write (post-LN encoders: residual after the block minus residual
                              after attention).
``Site.z(layer, head=None)``  the attention output projection's input split into heads, shape
                              (..., n_heads, head_dim) (one head: (..., head_dim)).
``Site.head(layer, head=None)``  each head's write, its slice of z through its slice of the output
                              projection, shape (..., n_heads, d_model) (one head: (..., d_model)); they
                              add up to the attention write minus the projection's bias. Only where
                              heads are additive (not Gemma, not post-LN encoders).
``Site.pattern(layer)``       the attention probabilities of block ``layer``, shape (..., n_heads, T):
                              column t holds each head's weights of query t over the source columns.
``Site.value(layer)``         the value vectors of block ``layer``, shape (batch, T, n_heads, head_dim):
                              column s holds source s's value per head (grouped-query and multi-query
                              value heads repeated to the query heads that share them). Never pooled:
                              a value belongs to a source, not to the pooled target.
============================  ==========================================================================

``pattern`` and ``value`` are read-only and need the family's attention to go through transformers'
attention interface (every decoder family: not post-LN encoders). A run that reads them computes every
layer's attention the eager way (the model's own ``eager_attention_forward``: softmax(q k^T) v), which
differs from the fused kernels by float rounding only; in that run, per head and query column,
``sum_s pattern[..., h, s] * value[:, s, h]`` is the head's slice of z exactly (values carry their
projection bias; rotary embeddings touch only queries and keys).

Edits on a post-LN sublayer write act on that difference: replacing the attention write by ``w`` makes
the residual after attention ``block input + w``. Edits on a head's write are added to the output
projection's output (``out + w_new - w_old``); replacing a head's ``z`` is the exact form of the same
patch, through the projection.

Columns
-------
Reads and edits address batch columns. With right padding (the default) a row's column t is its token
t; with left padding it is token ``t - batch.offsets[row]``.
"""

from trajgeo.engine.batches import Batch, Pool, Run
from trajgeo.engine.core import Engine
from trajgeo.engine.sites import SITE_KINDS, Edit, HeadsUnavailable, Site

# the modules: sites (Site, Edit), batches (Batch, Pool, Run), core (Engine), hooks (one run's hooks and the
# attention capture); every public name imports from trajgeo.engine
__all__ = ["Engine", "Site", "Edit", "Batch", "Pool", "Run", "SITE_KINDS", "HeadsUnavailable"]

for _cls in (Engine, Site, Edit, Batch, Pool, Run, HeadsUnavailable):  # reprs and tracebacks name the public path
    _cls.__module__ = __name__
del _cls
