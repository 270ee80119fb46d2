"""Book chapter 3, section 3.3 (softmax) and chapter 4, section 4.3 (GELU): the activations, fused; then
SiLU and SwiGLU, the Llama family's feed-forward (the book's repository, ch05/07_gpt_to_llama), and
log-sigmoid, the loss of preference tuning (DPO: -log_sigmoid(beta * margin)).

Each op: its formula and derivative in the class docstring, the class (forward above backward), its
helpers, then the public function. The composed forms are in `autograd/reference.py`.
"""

import math

from autograd import backend
from autograd.function import Function
from autograd.functional.inputs import as_tensor
from autograd.ops import stable_sigmoid


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


class SiluOp(Function):
    """y = x * sigmoid(x) (SiLU, also called swish).

    With s = sigmoid(x): dy/dx = s + x s (1 - s) = s (1 + x (1 - s)).

    s = 1 / (1 + exp(-x)) with exp(-x) kept finite (y is ~ -0 far left, x far right); the passes run
    in cache-sized blocks through `backend.blockwise` (`_silu_forward`, `_silu_slope`).
    """

    def forward(self, x):
        xp = backend.get_array_module(x)
        s, y = xp.empty_like(x), xp.empty_like(x)
        backend.blockwise(_silu_forward, x, s, y)
        self.x, self.s = x, s
        return y

    def backward(self, grad):
        gx = backend.get_array_module(grad).empty_like(grad)
        backend.blockwise(_silu_backward, self.x, self.s, grad, gx)
        return (gx,)


def _silu_forward(xp, x, s, y):
    """s = sigmoid(x) = 1 / (1 + exp(-x)), y = x s, written into the given arrays as passes in place, with
    exp(-x) kept finite as GELU's is (-x at most _GELU_EXP_MAX: s ~ 1e-35 and y ~ -0 far left, where
    the exact values are smaller still). `ops.stable_sigmoid`'s form, exp(-|x|) and a choice by sign,
    gives the same numbers to an ulp but took four times as long here (its masked copy), and its
    whole-array temporaries more: SmolLM2's 512-token prefill spent 0.10 s of 1.0 s in them."""
    xp.negative(x, out=s)
    xp.minimum(s, _GELU_EXP_MAX, out=s)
    xp.exp(s, out=s)
    s += 1.0
    xp.divide(1.0, s, out=s)
    xp.multiply(x, s, out=y)


def _silu_slope(xp, x, s, out):
    """out = dsilu/dx = s (1 + x (1 - s))."""
    xp.subtract(1.0, s, out=out)
    out *= x
    out += 1.0
    out *= s


def _silu_backward(xp, x, s, grad, gx):
    _silu_slope(xp, x, s, gx)
    gx *= grad


def silu(x):
    return SiluOp.apply(as_tensor(x))


class SwiGLUOp(Function):
    """y = silu(gate) * up: the elementwise middle of the SwiGLU feed-forward, down(silu(gate(x)) * up(x))
    (Shazeer 2020, "GLU Variants Improve Transformer"; Llama's MLP).

    With s = sigmoid(gate):
    dL/dgate = g * up * s (1 + gate (1 - s)),   dL/dup = g * silu(gate) = g * gate * s.

    One op instead of sigmoid, two products and their saved temporaries; s is the one array it saves
    beside its inputs.
    """

    def forward(self, gate, up):
        xp = backend.get_array_module(gate)
        s, y = xp.empty_like(gate), xp.empty_like(gate)
        backend.blockwise(_swiglu_forward, gate, up, s, y)
        self.gate, self.up, self.s = gate, up, s
        return y

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        dgate, dup = xp.empty_like(grad), xp.empty_like(grad)
        backend.blockwise(_swiglu_backward, self.gate, self.up, self.s, grad, dgate, dup)
        return (dgate if self.needs_grad[0] else None, dup if self.needs_grad[1] else None)


def _swiglu_forward(xp, gate, up, s, y):
    """s = sigmoid(gate), y = gate s up, written into the given arrays."""
    _silu_forward(xp, gate, s, y)
    y *= up


def _swiglu_backward(xp, gate, up, s, grad, dgate, dup):
    """dgate = grad * up * dsilu/dgate, dup = grad * gate * s, written into the given arrays."""
    _silu_slope(xp, gate, s, dgate)
    dgate *= up
    dgate *= grad
    xp.multiply(gate, s, out=dup)
    dup *= grad


def swiglu(gate, up):
    """silu(gate) * up for two tensors of one shape (the gate and up projections of the same input)."""
    gate, up = as_tensor(gate), as_tensor(up)
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {gate.shape} and up {up.shape} must have one shape")
    return SwiGLUOp.apply(gate, up)


class LogSigmoidOp(Function):
    """y = log sigmoid(x) = -softplus(-x) = min(x, 0) - log(1 + exp(-|x|)).

    dy/dx = 1 - sigmoid(x) = sigmoid(-x).

    The form with |x| never overflows: exp(-|x|) <= 1, so y and its slope are finite for any x (y = x
    far left, -0 far right). The slope is `ops.stable_sigmoid` of -x, which keeps its digits where it is
    tiny (e^-x far right) instead of rounding 1 - sigmoid(x) to 0; its exp(-|x|) serves the log too.
    """

    def forward(self, x):
        xp = backend.get_array_module(x)
        self.slope, e = stable_sigmoid(xp, -x)  # sigmoid(-x), exp(-|x|)
        y = xp.log1p(e)
        xp.subtract(xp.minimum(x, 0.0), y, out=y)
        return y

    def backward(self, grad):
        return (grad * self.slope,)


def log_sigmoid(x):
    """log(sigmoid(x)), elementwise, finite for any x: DPO's loss is -log_sigmoid(beta * margin)."""
    return LogSigmoidOp.apply(as_tensor(x))


__all__ = ["SoftmaxOp", "softmax", "LogSoftmaxOp", "log_softmax", "sigmoid", "GeluOp", "gelu", "SiluOp", "silu",
           "SwiGLUOp", "swiglu", "LogSigmoidOp", "log_sigmoid"]
