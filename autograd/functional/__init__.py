"""Fused ops: the model's hot path, one op each with its backward derived by hand.

In eager NumPy every basic op allocates a full-size temporary, so composing softmax or layer norm
from `exp`, `sum` and `/` costs several passes over memory and several saved arrays. Each op here
does the forward in few passes, saves what its backward needs, and states its derivative in the
docstring. The tests compare each one with the same computation composed of basic ops and with
finite differences. The same functions composed of Tensor ops, the way the book writes them, are in
`autograd/reference.py`: read those first, then these as the fast variants.

One file per concern, each op in one order (the formula and its derivative in the class docstring,
`XxxOp(Function)` with forward above backward, its helpers, then the public function):

    layers.py         linear, embedding, dropout            (the ops behind nn.Linear, nn.Embedding, nn.Dropout)
    activations.py    softmax, log_softmax, sigmoid, gelu; silu, swiglu (Llama's feed-forward); log_sigmoid (DPO)
    normalization.py  layer_norm; rms_norm (Llama's, and Qwen3's QK-norm)
    losses.py         cross_entropy, binary_cross_entropy, binary_cross_entropy_with_logits
    attention.py      scaled_dot_product_attention (grouped-query when k and v have fewer heads),
                      multi_head_attention
    rotary.py         rope_cos_sin, rope: the rotary position embedding of the Llama family
    inputs.py         what the ops accept: Tensors and checked ids

Every public name is here too: `import autograd.functional as F; F.cross_entropy(logits, targets)`. The
attention's query chunk size is `F.attention.ATTENTION_CHUNK`, set on that module (the tests and the op
benchmark change it there).
"""

from autograd.functional import activations, attention, inputs, layers, losses, normalization, rotary
from autograd.functional.activations import (GeluOp, LogSigmoidOp, LogSoftmaxOp, SiluOp, SoftmaxOp, SwiGLUOp, gelu,
                                             log_sigmoid, log_softmax, sigmoid, silu, softmax, swiglu)
from autograd.functional.attention import (MultiHeadAttentionOp, ScaledDotProductAttentionOp, multi_head_attention,
                                           scaled_dot_product_attention)
from autograd.functional.layers import DropoutOp, EmbeddingOp, LinearOp, default_generator, dropout, embedding, linear
from autograd.functional.losses import (BinaryCrossEntropyOp, BinaryCrossEntropyWithLogitsOp, CrossEntropyOp,
                                        binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy)
from autograd.functional.normalization import LayerNormOp, RMSNormOp, layer_norm, rms_norm
from autograd.functional.rotary import RopeOp, rope, rope_cos_sin, rope_inverse_frequencies
from autograd.ids import check_ids

# the op classes' earlier names
Softmax, LogSoftmax, Gelu = SoftmaxOp, LogSoftmaxOp, GeluOp
CrossEntropy, BinaryCrossEntropy, BinaryCrossEntropyWithLogits = (
    CrossEntropyOp, BinaryCrossEntropyOp, BinaryCrossEntropyWithLogitsOp)
LayerNorm, Linear, Embedding, Dropout = LayerNormOp, LinearOp, EmbeddingOp, DropoutOp
ScaledDotProductAttention, MultiHeadAttention = ScaledDotProductAttentionOp, MultiHeadAttentionOp

__all__ = [
    "linear", "embedding", "dropout", "default_generator", "softmax", "log_softmax", "sigmoid", "gelu", "layer_norm",
    "cross_entropy", "binary_cross_entropy", "binary_cross_entropy_with_logits", "scaled_dot_product_attention",
    "multi_head_attention", "check_ids", "rms_norm", "rope_cos_sin", "rope_inverse_frequencies", "rope", "silu",
    "swiglu", "log_sigmoid",
    "LinearOp", "EmbeddingOp", "DropoutOp", "SoftmaxOp", "LogSoftmaxOp", "GeluOp", "LayerNormOp", "CrossEntropyOp",
    "BinaryCrossEntropyOp", "BinaryCrossEntropyWithLogitsOp", "ScaledDotProductAttentionOp", "MultiHeadAttentionOp",
    "RMSNormOp", "RopeOp", "SiluOp", "SwiGLUOp", "LogSigmoidOp",
    "activations", "attention", "inputs", "layers", "losses", "normalization", "rotary",
]
