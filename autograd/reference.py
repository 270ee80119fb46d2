"""Book chapters 3 to 5 (softmax in section 3.3, layer norm in 4.2, GELU in 4.3, the cross-entropy loss in
5.1.2): the model's functions as the book writes them, a few Tensor ops each, the gradients from the engine.

Read these before `functional/`. Each function here is the formula, line by line, as in the book (and
tinygrad's composed layer norm and cross-entropy); the engine derives every gradient from the basic ops in
`ops.py`. `functional/` has the same functions as fused ops, one op each with a hand-derived backward,
which is what a model runs by default: in eager NumPy every basic op here allocates a full-size
temporary, and the fused ones do the same work in fewer passes. The tests hold each pair equal (values
and gradients), and `nn.LayerNorm(..., fused=False)` (a model's unfused setting) runs on this file.
"""

import math

from autograd.ids import check_ids
from autograd.tensor import Tensor


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along `axis`, with the row maximum subtracted first (it cancels in the ratio,
    and keeps exp from overflowing). [1, 2, 3] -> [0.090, 0.245, 0.665]."""
    e = (x - x.max(axis=axis, keepdims=True).detach()).exp()
    return e / e.sum(axis=axis, keepdims=True)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """Normalise the last axis to mean 0 and variance 1, then scale and shift (the book's LayerNorm, whose
    `scale` and `shift` are our `weight` and `bias`). The variance is the biased one, as in the book."""
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True, correction=0)
    norm = (x - mean) / (var + eps).sqrt()
    if weight is not None:
        norm = norm * weight
    if bias is not None:
        norm = norm + bias
    return norm


def gelu(x):
    """GPT-2's GELU, the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + (math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)).tanh())


def cross_entropy(logits, targets, ignore_index=-100):
    """Mean of -log softmax(logits)[target] over the targets that are not `ignore_index`; logits (N, V) or
    (B, T, V), targets (N,) or (B, T) integer ids."""
    target_ids = targets.data if isinstance(targets, Tensor) else targets
    logits = logits.reshape(-1, logits.shape[-1])  # (B, T, V) -> (B*T, V)
    flat = target_ids.reshape(-1)
    check_ids(target_ids, logits.shape[-1], "cross_entropy targets", ignore_index)  # -1 would pick the last class
    keep = (flat != ignore_index).nonzero()[0]
    shifted = logits - logits.max(axis=-1, keepdims=True).detach()
    log_probs = shifted - shifted.exp().sum(axis=-1, keepdims=True).log()  # log softmax
    picked = log_probs[keep, flat[keep]]  # the log-probability of each kept target
    return -picked.mean()


__all__ = ["softmax", "layer_norm", "gelu", "cross_entropy"]
