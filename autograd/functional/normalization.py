"""Book chapter 4, section 4.2: layer normalization, fused; and RMSNorm, the Llama family's normalization
(the book's repository, ch05/07_gpt_to_llama), which is layer norm without the mean and the shift.

Each op: the formula and its derivative in the class docstring, the class (forward above backward), its
helpers, then the public function. The composed forms are in `autograd/reference.py`.
"""

import functools

from autograd import backend
from autograd.function import Function
from autograd.functional.inputs import as_tensor
from autograd.tensor import Tensor


class LayerNormOp(Function):
    """y = (x - mean) / sqrt(var + eps) * w + b over the last axis (biased variance).

    With xhat the normalized input, rstd = 1/sqrt(var + eps), d = g * w and means over the last axis:
    dL/dx = rstd * (d - mean(d) - xhat * mean(d * xhat))
    dL/dw = sum over rows of g * xhat,   dL/db = sum over rows of g.

    Both formulas work row by row, so `backend.blockwise` runs them in row blocks on every host core
    (`_layer_norm_forward`, `_layer_norm_backward`); the sums over rows for dw and db stay whole-array.
    """

    def forward(self, x, w=None, b=None, eps=1e-5):
        xp = backend.get_array_module(x)
        xhat, rstd = xp.empty_like(x), xp.empty(x.shape[:-1] + (1,), dtype=x.dtype)
        y = xp.empty_like(x) if w is not None else None
        outputs = (xhat, rstd) if y is None else (xhat, rstd, y)
        backend.blockwise(functools.partial(_layer_norm_forward, w=w, b=b, eps=eps), x, *outputs)
        self.xhat, self.rstd, self.w = xhat, rstd, w
        return xhat.copy() if y is None else y

    def backward(self, grad):
        xhat, rstd, w = self.xhat, self.rstd, self.w
        c = xhat.shape[-1]
        gx = backend.get_array_module(grad).empty_like(grad)
        backend.blockwise(functools.partial(_layer_norm_backward, w=w), grad, xhat, rstd, gx)
        grads = [gx]
        if len(self.needs_grad) > 1:
            g2 = grad.reshape(-1, c)
            grads.append((g2 * xhat.reshape(-1, c)).sum(axis=0) if self.needs_grad[1] else None)
        if len(self.needs_grad) > 2:
            grads.append(g2.sum(axis=0) if self.needs_grad[2] else None)
        return tuple(grads)


def _layer_norm_forward(xp, x, xhat, rstd, y=None, *, w, b, eps):
    """xhat = (x - mean) * rstd, rstd = 1/sqrt(var + eps) (shape (..., 1)), y = xhat * w + b, in the given
    arrays. Sums times 1/C rather than .mean(): NumPy's mean wrapper has a fixed cost per call that is a
    large part of a layer norm on one token while decoding."""
    inv_c = 1.0 / x.shape[-1]
    xp.sum(x, axis=-1, keepdims=True, out=rstd)  # rstd holds the mean for a moment
    rstd *= inv_c
    xp.subtract(x, rstd, out=xhat)
    sq = xhat * xhat if y is None else xp.multiply(xhat, xhat, out=y)  # y is scratch until the last pass
    xp.sum(sq, axis=-1, keepdims=True, out=rstd)
    rstd *= inv_c
    rstd += eps
    xp.sqrt(rstd, out=rstd)
    xp.divide(1.0, rstd, out=rstd)
    xhat *= rstd
    if y is not None:
        xp.multiply(xhat, w, out=y)
        if b is not None:
            y += b


def _layer_norm_backward(xp, grad, xhat, rstd, gx, *, w):
    """gx = rstd * (d - mean(d) - xhat * mean(d * xhat)), d = grad * w, row by row."""
    inv_c = 1.0 / xhat.shape[-1]
    if w is not None:
        xp.multiply(grad, w, out=gx)  # d
    else:
        gx[...] = grad
    mean_d = gx.sum(axis=-1, keepdims=True)
    mean_d *= inv_c
    t = gx * xhat
    mean_dx = t.sum(axis=-1, keepdims=True)
    mean_dx *= inv_c
    gx -= mean_d
    xp.multiply(xhat, mean_dx, out=t)
    gx -= t
    gx *= rstd


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    x = as_tensor(x)
    c = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"layer_norm: {name} has shape {tuple(p.shape)}, expected ({c},) for input {x.shape}")
    if weight is None and bias is not None:
        weight = Tensor._make(backend.xp_for(x.device).ones((c,), dtype=x.dtype), x.device, False)
    inputs = [x] + [p for p in (weight, bias) if p is not None]
    return LayerNormOp.apply(*inputs, eps=eps)


class RMSNormOp(Function):
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis (Zhang and Sennrich 2019; Llama's RMSNorm).

    With xhat = x * rstd the normalized input, rstd = 1/sqrt(mean(x^2) + eps), d = g * w and means over
    the last axis:
    dL/dx = rstd * (d - xhat * mean(d * xhat))
    dL/dw = sum over rows of g * xhat.

    Layer norm's formulas less the mean (no centring, so no mean(d) term): row by row, run by
    `backend.blockwise` in row blocks (`_rms_norm_forward`, `_rms_norm_backward`); the sum over rows for dw
    stays whole-array. Qwen3's QK-norm is this op over the head dimension of (B, H, T, D) queries and keys.
    """

    def forward(self, x, w=None, eps=1e-6):
        xp = backend.get_array_module(x)
        xhat, rstd = xp.empty_like(x), xp.empty(x.shape[:-1] + (1,), dtype=x.dtype)
        y = xp.empty_like(x) if w is not None else None
        outputs = (xhat, rstd) if y is None else (xhat, rstd, y)
        backend.blockwise(functools.partial(_rms_norm_forward, w=w, eps=eps), x, *outputs)
        self.xhat, self.rstd, self.w = xhat, rstd, w
        return xhat.copy() if y is None else y

    def backward(self, grad):
        xhat, rstd, w = self.xhat, self.rstd, self.w
        gx = backend.get_array_module(grad).empty_like(grad)
        backend.blockwise(functools.partial(_rms_norm_backward, w=w), grad, xhat, rstd, gx)
        grads = [gx]
        if len(self.needs_grad) > 1:
            c = xhat.shape[-1]
            grads.append((grad.reshape(-1, c) * xhat.reshape(-1, c)).sum(axis=0) if self.needs_grad[1] else None)
        return tuple(grads)


def _rms_norm_forward(xp, x, xhat, rstd, y=None, *, w, eps):
    """rstd = 1/sqrt(mean(x^2) + eps) (shape (..., 1)), xhat = x * rstd, y = xhat * w, in the given arrays
    (a sum times 1/C rather than .mean(), as in `_layer_norm_forward`)."""
    xp.multiply(x, x, out=xhat)  # xhat is scratch for x^2 until the last pass
    xp.sum(xhat, axis=-1, keepdims=True, out=rstd)
    rstd *= 1.0 / x.shape[-1]
    rstd += eps
    xp.sqrt(rstd, out=rstd)
    xp.divide(1.0, rstd, out=rstd)
    xp.multiply(x, rstd, out=xhat)
    if y is not None:
        xp.multiply(xhat, w, out=y)


def _rms_norm_backward(xp, grad, xhat, rstd, gx, *, w):
    """gx = rstd * (d - xhat * mean(d * xhat)), d = grad * w, row by row."""
    if w is not None:
        xp.multiply(grad, w, out=gx)  # d
    else:
        gx[...] = grad
    t = gx * xhat
    mean_dx = t.sum(axis=-1, keepdims=True)
    mean_dx *= 1.0 / xhat.shape[-1]
    xp.multiply(xhat, mean_dx, out=t)
    gx -= t
    gx *= rstd


def rms_norm(x, weight=None, eps=1e-6):
    """x / sqrt(mean(x^2, last axis) + eps) * weight: RMSNorm over the last axis, `weight` (C,) optional.
    eps comes from the model's config (`rms_norm_eps`: 1e-5 for SmolLM2 and Llama 3, 1e-6 for Qwen3)."""
    x = as_tensor(x)
    c = x.shape[-1]
    if weight is not None and tuple(weight.shape) != (c,):
        raise ValueError(f"rms_norm: weight has shape {tuple(weight.shape)}, expected ({c},) for input {x.shape}")
    inputs = [x] if weight is None else [x, weight]
    return RMSNormOp.apply(*inputs, eps=float(eps))


__all__ = ["LayerNormOp", "layer_norm", "RMSNormOp", "rms_norm"]
