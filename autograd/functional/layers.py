"""The ops behind nn's Linear, Embedding and Dropout layers (book chapter 2, section 2.7, token
embeddings; chapter 3, section 3.5.2, dropout; appendix A, section A.5, linear layers).

Each op: its formula and derivative in the class docstring, the class (forward above backward), its
helpers, then the public function.
"""

import numpy as np

from autograd import backend
from autograd.function import Function, RowGradient
from autograd.functional.inputs import as_ids, as_tensor
from autograd.tensor import Tensor


class LinearOp(Function):
    """y = x W^T + b with W (out, in) as in PyTorch.

    dL/dx = g W,  dL/dW = g^T x (over all rows),  dL/db = sum of g over all rows.

    Leading axes are flattened into one GEMM each way: `x @ w.T` on a (B, T, C) x would be B separate
    (T, C) GEMMs inside NumPy's matmul loop (it calls BLAS once per matrix of a stack), each smaller and
    less efficient than one (B*T, C) product.
    """

    fresh_grads = True  # dx, dw, db are new arrays: the walk may sum a tied weight's other gradients into dw

    def forward(self, x, w, b=None):
        self.x, self.w = x, w
        y = backend.matmul(x.reshape(-1, x.shape[-1]), w.T)  # (N, in) @ (in, out) -> (N, out), N = all leading axes
        if b is not None:
            y += b
        return y.reshape(*x.shape[:-1], w.shape[0])

    def backward(self, grad):
        x, w = self.x, self.w
        g2 = grad.reshape(-1, grad.shape[-1])  # (N, out)
        gx = (g2 @ w).reshape(x.shape) if self.needs_grad[0] else None  # (N, out) @ (out, in)
        gw = (g2.T @ x.reshape(-1, x.shape[-1])) if self.needs_grad[1] else None  # (out, N) @ (N, in)
        grads = (gx, gw)
        if len(self.needs_grad) > 2:
            grads += (g2.sum(axis=0) if self.needs_grad[2] else None,)
        return grads


def linear(x, weight, bias=None):
    x = as_tensor(x)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input of shape {x.shape} has {x.shape[-1]} features but weight {tuple(weight.shape)} "
            f"(out, in) expects {weight.shape[1]}"
        )
    if bias is None:
        return LinearOp.apply(x, weight)
    return LinearOp.apply(x, weight, bias)


class EmbeddingOp(Function):
    """y = W[ids]. dL/dW[v] = sum of g over the positions whose id is v (a scatter-add)."""

    def forward(self, weight, ids):
        self.ids, self.shape = ids, weight.shape
        return weight[ids]  # `embedding` checked the ids: -1 would read the last row

    def backward(self, grad):  # the scatter-add as a RowGradient: the walk adds it where the table's gradient is summed
        return RowGradient(self.ids.reshape(-1), grad.reshape(-1, self.shape[1]), self.shape), None


def embedding(ids, weight):
    """Rows of `weight` (V, C) picked by integer `ids` of any shape: (...,) -> (..., C). An id outside
    [0, V) is a ValueError naming it (checked once per call: a model's entry, once per batch)."""
    ids = as_ids(ids, weight, weight.shape[0], "embedding ids")
    return EmbeddingOp.apply(weight, Tensor._make(ids, weight.device, False))


class DropoutOp(Function):
    """Inverted dropout: y = x * m / (1 - p), m ~ Bernoulli(1 - p). dL/dx = g * m / (1 - p)."""

    def forward(self, x, p, generator):
        self.mask = _dropout_mask(generator, x.shape, p, x.dtype)
        return x * self.mask

    def backward(self, grad):
        return (grad * self.mask,)


def _dropout_mask(generator, shape, p, dtype):
    """Inverted dropout's mask, m / (1 - p) with m ~ Bernoulli(1 - p): shared by dropout and attention."""
    mask = (generator.random(shape, dtype=np.float32) >= p).astype(dtype)
    mask *= 1.0 / (1.0 - p)
    return mask


def default_generator(device, seed=None):
    """A new random generator of `device`'s array module, `xp.random.default_rng(seed)`: what dropout
    draws its masks from when it is given no generator (nn.Dropout keeps one of these per module)."""
    return backend.xp_for(device).random.default_rng(seed)


def dropout(x, p=0.5, training=True, generator=None, seed=None):
    """Zero each entry with probability p and scale the rest by 1/(1-p); the identity when not training.

    `generator` is a random generator of the tensor's array module (`xp.random.default_rng(seed)`);
    `seed` makes one when no generator is given.
    """
    x = as_tensor(x)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    if generator is None:
        generator = default_generator(x.device, seed)
    return DropoutOp.apply(x, p=float(p), generator=generator)


__all__ = ["LinearOp", "linear", "EmbeddingOp", "embedding", "DropoutOp", "dropout", "default_generator"]
