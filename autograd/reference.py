"""Book chapters 3 to 5 (softmax in section 3.3, layer norm in 4.2, GELU in 4.3, the cross-entropy loss in
5.1.2): the model's functions as the book writes them, a few Tensor ops each, the gradients from the engine.
Then the Llama family's (the book's repository, ch05/07_gpt_to_llama): RMSNorm, rotary position embedding,
SiLU and SwiGLU, the keys and values repeated for grouped-query attention; and log-sigmoid, DPO's loss.

Read these before `functional/`. Each function here is the formula, line by line, as in the book (and
tinygrad's composed layer norm and cross-entropy); the engine derives every gradient from the basic ops in
`ops.py`. `functional/` has the same functions as fused ops, one op each with a hand-derived backward,
which is what a model runs by default: in eager NumPy every basic op here allocates a full-size
temporary, and the fused ones do the same work in fewer passes. The tests hold each pair equal (values
and gradients), and `nn.LayerNorm(..., fused=False)` (a model's unfused setting) runs on this file.
"""

import math

from autograd.ids import check_ids
from autograd.tensor import Tensor, cat, where


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


def rms_norm(x, weight=None, eps=1e-6):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis: layer norm without the mean and the shift
    (the book's repository's `RMSNorm`; Llama's, and Qwen3's QK-norm over the head dimension)."""
    norm = x / ((x * x).mean(axis=-1, keepdims=True) + eps).sqrt()
    if weight is not None:
        norm = norm * weight
    return norm


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] for the two halves of the last axis (Hugging Face's RoPE layout)."""
    h = x.shape[-1] // 2
    return cat([-x[..., h:], x[..., :h]], axis=-1)


def rope(x, cos, sin):
    """x * cos + rotate_half(x) * sin: the rotary position embedding of queries or keys x (B, H, T, D), cos
    and sin (T, D) from `functional.rope_cos_sin` (the book's repository's `compute_rope`)."""
    return x * cos + rotate_half(x) * sin


def silu(x):
    """x * sigmoid(x)."""
    return x * x.sigmoid()


def swiglu(gate, up):
    """silu(gate) * up: the middle of Llama's feed-forward, down(silu(gate(x)) * up(x))."""
    return silu(gate) * up


def log_sigmoid(x):
    """log sigmoid(x) = min(x, 0) - log(1 + exp(-|x|)): finite for any x, as exp(-|x|) <= 1.

    subtle: min(x, 0) and |x| both take their x >= 0 branch at 0, so their kinks cancel in the gradient
    there (0.5, the slope of the smooth function)."""
    negative = x < 0
    return where(negative, x, 0.0) - (1.0 + (-where(negative, -x, x)).exp()).log()


def repeat_kv(x, groups):
    """(B, Hkv, T, D) -> (B, Hkv * groups, T, D), each key or value head repeated `groups` times in a row:
    the book's `keys.repeat_interleave(group_size, dim=1)` for grouped-query attention, after which
    attention runs as multi-head attention (a copy per query head, which the fused op does without)."""
    b, h, t, d = x.shape
    return x.unsqueeze(2).expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


__all__ = ["softmax", "layer_norm", "gelu", "cross_entropy", "rms_norm", "rotate_half", "rope", "silu", "swiglu",
           "log_sigmoid", "repeat_kv"]
