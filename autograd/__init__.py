"""A small reverse-mode autograd library on NumPy (CuPy on a GPU).

Read it in this order, beside the book's appendix A:

    backend.py        devices: NumPy on the host, CuPy on a GPU, the simulated "strict" device
    function.py       the op base (`Function`: forward above backward), grad mode       A.4
    ops.py            the basic ops                                                     A.3
    backward.py       the backward walk and `grad()`                                    A.4
    tensor.py         the Tensor, its methods, the functions of several tensors         A.2
    reference.py      softmax, layer norm, GELU, cross-entropy as the book writes them  chapters 3-5
                      (then the Llama family's RMSNorm, RoPE, SwiGLU, repeated kv heads; log-sigmoid)
    functional/       the same as fused ops, by concern (layers, activations, normalization, losses,
                      attention, rotary), each with its hand-derived backward
    module.py         Module and Parameter: parameters in a named tree, state dicts     A.5, A.8
    nn.py             the layers (Linear, Embedding, LayerNorm, Dropout, ...)           A.5, chapter 4
    optim.py          optimizers, clipping, schedules                                   A.7
    checkpoint.py     safetensors files of tensors, and of a whole training state       A.8
    amp.py            mixed precision: float16 matrix products, loss scaling

Support: ids.py (the id check both op files use), printing.py (a Tensor's repr), grad_check.py (finite
differences, for any op: docs/your-own-op.md) and testing.py (the strict device) serve the rest.
"""

from autograd.backend import DeviceError, cuda_available
from autograd.function import Function, enable_grad, is_grad_enabled, no_grad
from autograd.tensor import Tensor, cat, concatenate, grad, split, stack, tensor, tril, triu, where

__all__ = [
    "Tensor", "tensor", "no_grad", "enable_grad", "is_grad_enabled", "Function", "DeviceError",
    "cuda_available", "cat", "concatenate", "stack", "split", "where", "tril", "triu", "grad",
]
