"""A small reverse-mode autograd library on NumPy (CuPy on a GPU).

Read it in this order: backend (devices) -> function (the op base, grad mode) -> ops (basic ops) ->
tensor (Tensor and backward) -> functional (fused ops) -> nn (modules) -> optim (optimizers) ->
amp (mixed precision: float16 matrix products, loss scaling).
"""

from autograd.backend import DeviceError, cuda_available
from autograd.function import Function, enable_grad, is_grad_enabled, no_grad
from autograd.tensor import Tensor, cat, concatenate, grad, split, stack, tensor, tril, triu, where

__all__ = [
    "Tensor", "tensor", "no_grad", "enable_grad", "is_grad_enabled", "Function", "DeviceError",
    "cuda_available", "cat", "concatenate", "stack", "split", "where", "tril", "triu", "grad",
]
