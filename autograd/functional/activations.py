"""Book chapter 3, section 3.3 (softmax) and chapter 4, section 4.3 (GELU): the activations, fused.

Each op: its formula and derivative in the class docstring, the class (forward above backward), its
helpers, then the public function. The composed forms are in `autograd/reference.py`.
"""

import math

from autograd import backend
from autograd.function import Function
from autograd.functional.inputs import as_tensor


class SoftmaxOp(Function):
    """y = exp(x - max x) / sum exp(x - max x) along `axis`.

    dL/dx = y * (g - sum(g * y)), the sum along `axis`.
    """

    def forward(self, x, axis=-1):
        xp = backend.get_array_module(x)
        self.axis = axis
        self.y = _exp_normalize_(xp, x - x.max(axis=axis, keepdims=True), axis)
        return self.y

    def backward(self, grad):
        y = self.y
        gx = grad * y
        gx -= y * gx.sum(axis=self.axis, keepdims=True)
        return (gx,)


def _exp_normalize_(xp, s, axis):
    """exp(s) / sum exp(s) along `axis`, in place (`s` already has its maximum subtracted): the softmax
    that the softmax op and the attention ops share. Returns `s`."""
    xp.exp(s, out=s)
    s /= s.sum(axis=axis, keepdims=True)
    return s


def softmax(x, axis=-1):
    return SoftmaxOp.apply(as_tensor(x), axis=axis)


class LogSoftmaxOp(Function):
    """y = x - max x - log sum exp(x - max x).

    dL/dx = g - exp(y) * sum(g).
    """

    def forward(self, x, axis=-1):
        xp = backend.get_array_module(x)
        self.axis = axis
        y = x - x.max(axis=axis, keepdims=True)
        y -= xp.log(xp.exp(y).sum(axis=axis, keepdims=True))
        self.y = y
        return y

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        return (grad - xp.exp(self.y) * grad.sum(axis=self.axis, keepdims=True),)


def log_softmax(x, axis=-1):
    return LogSoftmaxOp.apply(as_tensor(x), axis=axis)


def sigmoid(x):
    """1 / (1 + exp(-x)), elementwise: `Tensor.sigmoid()` (the basic op `ops.Sigmoid`), for a function's
    caller."""
    return as_tensor(x).sigmoid()


_GELU_C = math.sqrt(2.0 / math.pi)


class GeluOp(Function):
    """GPT-2's tanh approximation: y = x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).

    Computed as y = x * sigmoid(2u) = x / (1 + exp(-2u)), the same function (1 + tanh(u))/2 = sigmoid(2u):
    NumPy's float32 exp costs about half its tanh, and tanh would be the dearest pass of the chain.
    With p = sigmoid(2u):

    dy/dx = p + x p (1 - p) 2u',  2u' = 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2).

    Each formula is a chain of in-place passes (`_gelu_forward`, `_gelu_backward`), run by
    `backend.blockwise` in cache-sized blocks on every core on the host, and once per pass on a GPU.
    """

    def forward(self, x):
        xp = backend.get_array_module(x)
        p, r, y = xp.empty_like(x), xp.empty_like(x), xp.empty_like(x)
        backend.blockwise(_gelu_forward, x, p, r, y)
        self.x, self.p, self.r = x, p, r
        return y

    def backward(self, grad):
        # the gradient is written over r on the graph's last walk (retain_graph=True keeps it for another)
        dy = self.r.copy() if self.retain_graph else self.r
        backend.blockwise(_gelu_backward, self.x, self.p, dy, grad)
        return (dy,)


_GELU_EXP_MAX = 80.0  # exp(-2u) is kept finite (e^80 < float32's max): no overflow warning, p ~ 1e-35, y ~ -0


def _gelu_forward(xp, x, p, r, y):
    """p = sigmoid(2u), r = p (1 - p) (for the backward), y = x p, written into the given arrays."""
    xp.multiply(x, x, out=r)
    r *= -2.0 * _GELU_C * 0.044715
    r -= 2.0 * _GELU_C
    r *= x  # -2u = -2 sqrt(2/pi) x (1 + 0.044715 x^2)
    xp.minimum(r, _GELU_EXP_MAX, out=r)
    xp.exp(r, out=r)
    r += 1.0
    xp.divide(1.0, r, out=p)  # p = 1 / (1 + exp(-2u))
    xp.multiply(x, p, out=y)
    xp.subtract(1.0, p, out=r)
    r *= p


def _gelu_backward(xp, x, p, r, grad):
    """r (holding p (1 - p) on entry) becomes grad * dy/dx."""
    s = x * x  # one block's temporary on the host
    s *= 3.0 * 0.044715 * 2.0 * _GELU_C
    s += 2.0 * _GELU_C
    s *= x
    s *= r  # x p (1 - p) 2u'
    s += p
    xp.multiply(s, grad, out=r)


def gelu(x):
    return GeluOp.apply(as_tensor(x))


__all__ = ["SoftmaxOp", "softmax", "LogSoftmaxOp", "log_softmax", "sigmoid", "GeluOp", "gelu"]
