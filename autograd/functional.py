"""Fused ops: the model's hot path, one op each with its backward derived by hand.

In eager NumPy every basic op allocates a full-size temporary, so composing softmax or layer norm
from `exp`, `sum` and `/` costs several passes over memory and several saved arrays. Each op here
does the forward in few passes, saves what its backward needs, and states its derivative in the
docstring. The tests compare each one with the same computation composed of basic ops and with
finite differences. The same functions composed of Tensor ops, the way the book writes them, are in
`reference.py`: read those first, then these as the fast variants.
"""

import math

import numpy as np

from autograd import backend
from autograd.function import Function, RowGradient
from autograd.tensor import Tensor


def _tensor(x, like=None):
    if isinstance(x, Tensor):
        return x
    return Tensor(x, device=like.device if like is not None else None)


def _ids(ids, like, n=None, what="ids", ignore_index=None):
    """Ids or targets: an integer Tensor or array, on `like`'s device. With `n`, checked to lie in [0, n)
    (see `check_ids`) before they move: host ids are checked on the host, without a device sync."""
    data = ids.data if isinstance(ids, Tensor) else ids
    if not hasattr(data, "dtype"):
        data = np.asarray(data)
    if data.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {data.dtype}")
    if n is not None:
        check_ids(data, n, what, ignore_index)
    return backend.to_device(data, like.device)


def check_ids(ids, n, what, ignore_index=None):
    """Raise ValueError unless every id lies in [0, n) (or equals `ignore_index`), naming the first bad
    id, its position and n. Python indexing would otherwise read -1 as the last row (and CuPy clips ids
    past the end), so a bad id silently gives another token's numbers.

    The test is one min and one max over the array as given: free for the host arrays a data loader
    makes, one host sync for a device array. Callers check once per batch where the ids enter (the
    embedding lookup, the loss's targets), never per layer. Only a failing check searches for the
    position.

        check_ids(np.array([[3, -1]]), 10, "token ids")  # ValueError: token ids: id -1 at position (0, 1) ...
    """
    if ids.size == 0:
        return
    xp = backend.get_array_module(ids)
    low, high = int(ids.min()), int(ids.max())
    if low >= 0 and high < n:
        return
    bad = (ids < 0) | (ids >= n)
    if ignore_index is not None:
        bad &= ids != ignore_index
        if not bool(bad.any()):
            return
    first = int(xp.argmax(bad.reshape(-1)))  # the first True
    position = tuple(int(i) for i in np.unravel_index(first, ids.shape))
    value = int(ids.reshape(-1)[first])
    where = position[0] if len(position) == 1 else position
    allowed = f" or the ignore index {ignore_index}" if ignore_index is not None else ""
    raise ValueError(f"{what}: id {value} at position {where} is outside [0, {n}) "
                     f"(a vocabulary of {n}){allowed}")


# ---------------------------------------------------------------------------------------------------
# softmax and friends


def _exp_normalize_(xp, s, axis):
    """exp(s) / sum exp(s) along `axis`, in place (`s` already has its maximum subtracted): the softmax
    that the softmax op and the attention ops share. Returns `s`."""
    xp.exp(s, out=s)
    s /= s.sum(axis=axis, keepdims=True)
    return s


def _dropout_mask(generator, shape, p, dtype):
    """Inverted dropout's mask, m / (1 - p) with m ~ Bernoulli(1 - p): shared by dropout and attention."""
    mask = (generator.random(shape, dtype=np.float32) >= p).astype(dtype)
    mask *= 1.0 / (1.0 - p)
    return mask


class Softmax(Function):
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


class LogSoftmax(Function):
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


def softmax(x, axis=-1):
    return Softmax.apply(_tensor(x), axis=axis)


def log_softmax(x, axis=-1):
    return LogSoftmax.apply(_tensor(x), axis=axis)


class CrossEntropy(Function):
    """Mean over the counted rows of -log softmax(x)[target]; rows whose target is `ignore_index` are
    left out of both the sum and the count (a batch of only ignored rows gives 0, not NaN).

    With p = softmax(x) = e / s (e = exp(x - max x), s its row sum) and n the number of counted rows:
    dL/dx_i = (p_i - onehot(target_i)) / n on counted rows, 0 on ignored ones.
    Only e and s are kept, and the backward turns e into the gradient in place, scaling each row by
    1 / (n s) in the same pass: the (N, V) logits of a language model are the step's largest arrays,
    and normalising e in the forward would be one more pass over them.
    """

    def forward(self, logits, targets, ignore_index=-100):
        xp = backend.get_array_module(logits)
        n, v = logits.shape
        valid = targets != ignore_index
        safe = xp.where(valid, targets, 0)
        rows = xp.arange(n)
        p, top, total = xp.empty_like(logits), xp.empty((n, 1), logits.dtype), xp.empty((n, 1), logits.dtype)
        backend.blockwise(_shifted_exp, logits, p, top, total)  # row blocks, on every host core
        picked = logits[rows, safe] - top[:, 0]  # shifted logit of each target
        total = total[:, 0]
        self.e, self.total, self.rows, self.safe, self.valid = p, total, rows, safe, valid
        self.count = xp.maximum(valid.sum(), 1).astype(logits.dtype)
        nll = (xp.log(total) - picked) * valid
        return (nll.sum() / self.count).astype(logits.dtype)

    def backward(self, grad):
        e = self.e.copy() if self.retain_graph else self.e  # e becomes the gradient in place
        scale = (self.valid * (grad / self.count)).astype(e.dtype)  # (N,): 1/n on counted rows, else 0
        backend.blockwise(_scale_rows, e, (scale / self.total)[:, None])  # e / s / n = p / n, one pass
        e[self.rows, self.safe] -= scale
        return e, None


def _shifted_exp(xp, logits, e, top, total):
    """Per row: top = max, e = exp(logits - top), total = sum of e."""
    xp.max(logits, axis=-1, keepdims=True, out=top)
    xp.subtract(logits, top, out=e)
    xp.exp(e, out=e)
    xp.sum(e, axis=-1, keepdims=True, out=total)


def _scale_rows(xp, e, factor):
    e *= factor


def cross_entropy(logits, targets, ignore_index=-100):
    """Mean cross-entropy of (N, V) or (B, T, V) logits against integer targets of shape (N,) or (B, T).
    A target equal to `ignore_index` is left out; any other target outside [0, V) is a ValueError."""
    logits = _tensor(logits)
    targets = _ids(targets, logits, logits.shape[-1], "cross_entropy targets", ignore_index)
    if logits.ndim not in (2, 3) or tuple(targets.shape) != logits.shape[:-1]:
        raise ValueError(
            f"cross_entropy: logits of shape {logits.shape} need targets of shape {logits.shape[:-1]} "
            f"(logits (N, V) or (B, T, V)), got {tuple(targets.shape)}"
        )
    if logits.ndim == 3:
        logits = logits.reshape(-1, logits.shape[-1])
        targets = targets.reshape(-1)
    return CrossEntropy.apply(logits, Tensor._make(targets, logits.device, False), ignore_index=ignore_index)


def sigmoid(x):
    """1 / (1 + exp(-x)), elementwise (also `Tensor.sigmoid()`)."""
    return _tensor(x).sigmoid()


def _targets_like(targets, x, name):
    """Float targets as a Tensor beside `x`, of x's shape and dtype (0/1 labels or probabilities)."""
    t = targets if isinstance(targets, Tensor) else Tensor(targets, dtype=x.dtype, device=x.device)
    if t.shape != x.shape:
        raise ValueError(f"{name}: targets of shape {t.shape} must have the input's shape {x.shape}")
    return t.astype(x.dtype)


def _reduce(loss, reduction, name):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _clamped_log(x):
    """max(log x, -100), without taking the log of 0."""
    xp = backend.get_array_module(x)
    positive = x > 0
    return xp.maximum(xp.where(positive, xp.log(xp.where(positive, x, 1.0)), -100.0), -100.0)


class BinaryCrossEntropy(Function):
    """l = -(t log p + (1 - t) log(1 - p)) elementwise, each log clamped at -100 as PyTorch does (so p = 0
    or 1 gives a finite loss).

    dl/dp = (p - t) / max(p (1 - p), 1e-12),   dl/dt = log(1 - p) - log p.
    """

    def forward(self, p, t):
        self.p, self.t = p, t
        self.log_p, self.log_q = _clamped_log(p), _clamped_log(1.0 - p)
        return -(t * self.log_p + (1.0 - t) * self.log_q)

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        p, t = self.p, self.t
        gp = grad * (p - t) / xp.maximum(p * (1.0 - p), 1e-12) if self.needs_grad[0] else None
        gt = grad * (self.log_q - self.log_p) if self.needs_grad[1] else None
        return gp, gt


def binary_cross_entropy(probs, targets, reduction="mean"):
    """Binary cross-entropy of probabilities `probs` (after a sigmoid) against targets of the same shape,
    as torch.nn.functional.binary_cross_entropy: the mean over entries by default.

        binary_cross_entropy(Tensor([1.1 * 2.2]).sigmoid(), Tensor([1.0]))  # tensor(0.0852), appendix A
    """
    probs = _tensor(probs)
    return _reduce(BinaryCrossEntropy.apply(probs, _targets_like(targets, probs, "binary_cross_entropy")),
                   reduction, "binary_cross_entropy")


class BinaryCrossEntropyWithLogits(Function):
    """l = -(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))) from the logit x, in the stable form
    l = max(x, 0) - x t + log(1 + exp(-|x|)) (no exp overflows, no log of 0).

    dl/dx = sigmoid(x) - t,   dl/dt = -x.
    """

    def forward(self, x, t):
        xp = backend.get_array_module(x)
        self.x, self.t = x, t
        e = xp.exp(-xp.abs(x))
        self.sig = xp.where(x >= 0, 1.0, e) / (1.0 + e)  # sigmoid(x), as ops.Sigmoid computes it
        return xp.maximum(x, 0.0) - x * t + xp.log1p(e)

    def backward(self, grad):
        gx = grad * (self.sig - self.t) if self.needs_grad[0] else None
        gt = -grad * self.x if self.needs_grad[1] else None
        return gx, gt


def binary_cross_entropy_with_logits(logits, targets, reduction="mean"):
    """Binary cross-entropy of sigmoid(logits) against targets, computed from the logits without forming
    the sigmoid's log (stable for large |logits|), as torch.nn.functional.binary_cross_entropy_with_logits."""
    logits = _tensor(logits)
    return _reduce(BinaryCrossEntropyWithLogits.apply(
        logits, _targets_like(targets, logits, "binary_cross_entropy_with_logits")),
        reduction, "binary_cross_entropy_with_logits")


# ---------------------------------------------------------------------------------------------------
# Normalization and activations


class LayerNorm(Function):
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
        backend.blockwise(lambda xp, x, *out: _layer_norm_forward(xp, x, *out, w=w, b=b, eps=eps), x, *outputs)
        self.xhat, self.rstd, self.w = xhat, rstd, w
        return xhat.copy() if y is None else y

    def backward(self, grad):
        xhat, rstd, w = self.xhat, self.rstd, self.w
        c = xhat.shape[-1]
        gx = backend.get_array_module(grad).empty_like(grad)
        backend.blockwise(lambda xp, *a: _layer_norm_backward(xp, *a, w=w), grad, xhat, rstd, gx)
        grads = [gx]
        if len(self.needs_grad) > 1:
            g2 = grad.reshape(-1, c)
            grads.append((g2 * xhat.reshape(-1, c)).sum(axis=0) if self.needs_grad[1] else None)
        if len(self.needs_grad) > 2:
            grads.append(g2.sum(axis=0) if self.needs_grad[2] else None)
        return tuple(grads)


def _layer_norm_forward(xp, x, xhat, rstd, y=None, *, w, b, eps):
    """xhat = (x - mean) * rstd, rstd = 1/sqrt(var + eps) (shape (..., 1)), y = xhat * w + b, in the given
    arrays. Sums times 1/C rather than .mean(): NumPy's mean wrapper costs ~10 us a call, a fifth of a layer
    norm on one token while decoding."""
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
    x = _tensor(x)
    c = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"layer_norm: {name} has shape {tuple(p.shape)}, expected ({c},) for input {x.shape}")
    if weight is None and bias is not None:
        weight = Tensor._make(backend.xp_for(x.device).ones((c,), dtype=x.dtype), x.device, False)
    inputs = [x] + [p for p in (weight, bias) if p is not None]
    return LayerNorm.apply(*inputs, eps=eps)


_GELU_C = math.sqrt(2.0 / math.pi)


class Gelu(Function):
    """GPT-2's tanh approximation: y = x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).

    Computed as y = x * sigmoid(2u) = x / (1 + exp(-2u)), the same function (1 + tanh(u))/2 = sigmoid(2u):
    NumPy's float32 exp costs half its tanh (1.3 against 2.7 ns an element here), and tanh is the
    dearest pass of the chain. With p = sigmoid(2u):

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
    return Gelu.apply(_tensor(x))


class Dropout(Function):
    """Inverted dropout: y = x * m / (1 - p), m ~ Bernoulli(1 - p). dL/dx = g * m / (1 - p)."""

    def forward(self, x, p, generator):
        self.mask = _dropout_mask(generator, x.shape, p, x.dtype)
        return x * self.mask

    def backward(self, grad):
        return (grad * self.mask,)


def dropout(x, p=0.5, training=True, generator=None, seed=None):
    """Zero each entry with probability p and scale the rest by 1/(1-p); the identity when not training.

    `generator` is a random generator of the tensor's array module (`xp.random.default_rng(seed)`);
    `seed` makes one when no generator is given.
    """
    x = _tensor(x)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    if generator is None:
        generator = backend.xp_for(x.device).random.default_rng(seed)
    return Dropout.apply(x, p=float(p), generator=generator)


class Embedding(Function):
    """y = W[ids]. dL/dW[v] = sum of g over the positions whose id is v (a scatter-add)."""

    def forward(self, weight, ids):
        self.ids, self.shape = ids, weight.shape
        return weight[ids]  # `embedding` checked the ids: -1 would read the last row

    def backward(self, grad):  # the scatter-add as a RowGradient: the walk adds it where the table's gradient is summed
        return RowGradient(self.ids.reshape(-1), grad.reshape(-1, self.shape[1]), self.shape), None


def embedding(ids, weight):
    """Rows of `weight` (V, C) picked by integer `ids` of any shape: (...,) -> (..., C). An id outside
    [0, V) is a ValueError naming it (checked once per call: a model's entry, once per batch)."""
    ids = _ids(ids, weight, weight.shape[0], "embedding ids")
    return Embedding.apply(weight, Tensor._make(ids, weight.device, False))


class Linear(Function):
    """y = x W^T + b with W (out, in) as in PyTorch.

    dL/dx = g W,  dL/dW = g^T x (over all rows),  dL/db = sum of g over all rows.

    Leading axes are flattened into one GEMM each way: `x @ w.T` on a (B, T, C) x would be B separate
    (T, C) GEMMs inside NumPy's matmul loop (it calls BLAS once per matrix of a stack), each smaller and
    less efficient than one (B*T, C) product. docs/performance.md has the measurement.
    """

    fresh_grads = True  # dx, dw, db are new arrays: the walk may sum a tied weight's other gradients into dw

    def forward(self, x, w, b=None):
        self.x, self.w = x, w
        y = x.reshape(-1, x.shape[-1]) @ w.T  # (N, in) @ (in, out) -> (N, out), N = all leading axes
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
    x = _tensor(x)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input of shape {x.shape} has {x.shape[-1]} features but weight {tuple(weight.shape)} "
            f"(out, in) expects {weight.shape[1]}"
        )
    if bias is None:
        return Linear.apply(x, weight)
    return Linear.apply(x, weight, bias)


ATTENTION_CHUNK = 128  # causal attention in query chunks of about this many rows (see _query_chunks)


def _query_chunks(tq, tk, causal):
    """[(r0, r1, kend)]: the query rows r0:r1 of each chunk and the keys :kend that they can see.

    Query i sees keys j <= i + (tk - tq), so in causal attention a chunk of early queries needs only the
    first keys: with the rows split in chunks of about ATTENTION_CHUNK, the products and the softmax skip
    the blocks above the diagonal that the mask would zero (for two chunks, a quarter of the work).
    gpt2-small's attention forward + backward for one layer (2 x 12 heads, T = 256), one chunk against
    two, interleaved: median 24.5-31.4 -> 20.2-27.4 ms (docs/performance.md)."""
    n = tq // ATTENTION_CHUNK if causal else 1
    if n < 2:
        return [(0, tq, tk)]
    bounds = [tq * i // n for i in range(n + 1)]
    return [(r0, r1, r1 + tk - tq) for r0, r1 in zip(bounds, bounds[1:])]


def _attention_forward(ctx, q, k, v, causal, dropout_p, generator, out=None):
    """softmax(q k^T / sqrt(d) + mask) v on (..., T, D) arrays, chunk by chunk of queries, written into
    `out` when given (any (..., Tq, D) view); saves what `_attention_backward` needs on ctx."""
    xp = backend.get_array_module(q)
    tq, tk = q.shape[-2], k.shape[-2]
    ctx.scale = 1.0 / math.sqrt(q.shape[-1])  # a Python float: a NumPy float64 scalar would promote to float64
    ctx.chunks = _query_chunks(tq, tk, causal)
    ctx.a, ctx.a_used, ctx.mask = [], [], []
    ctx.q, ctx.k, ctx.v = q, k, v
    y = out if out is not None or len(ctx.chunks) == 1 else xp.empty(q.shape[:-1] + v.shape[-1:], dtype=q.dtype)
    for r0, r1, kend in ctx.chunks:
        rows = r1 - r0
        s = q[..., r0:r1, :] @ k[..., :kend, :].swapaxes(-1, -2)  # (B, H, rows, D) @ (B, H, D, kend)
        # the causal mask as an additive 0 / -inf: one broadcast add, much faster than a boolean assignment;
        # needed where the chunk's first query cannot see its last key
        offset = r0 + tk - tq  # query r0 sees keys <= offset
        mask = xp.triu(xp.full((rows, kend), -np.inf, dtype=s.dtype), k=offset + 1) if causal and kend - 1 > offset else None

        def weights(xp, s):  # scale, mask and softmax, in place, on a block of whole (rows, kend) score matrices
            s = s.reshape(-1, rows, kend)
            s *= ctx.scale
            if mask is not None:
                s += mask
            s -= s.max(axis=-1, keepdims=True)
            _exp_normalize_(xp, s, -1)

        backend.blockwise(weights, s.reshape(-1, rows * kend))  # the attention weights, in place: one head per row
        drop = _dropout_mask(generator, s.shape, dropout_p, s.dtype) if dropout_p > 0.0 else None
        a_used = s * drop if drop is not None else s
        for saved, value in ((ctx.a, s), (ctx.a_used, a_used), (ctx.mask, drop)):
            saved.append(value)
        chunk_y = a_used @ v[..., :kend, :]  # (B, H, rows, kend) @ (B, H, kend, D) -> (B, H, rows, D)
        if y is None:
            return chunk_y
        y[..., r0:r1, :] = chunk_y
    return y


def _attention_backward(ctx, grad, out=None):
    """dq, dk, dv from the upstream gradient, chunk by chunk, written into `out` = (dq, dk, dv) when given
    (views of any layout). (No matmul `out=`: CuPy's matmul does not take one.) The last chunk sees every
    key, so it is done first and sets dk and dv; the others add in."""
    xp = backend.get_array_module(grad)
    q, k, v = ctx.q, ctx.k, ctx.v
    if out is None and len(ctx.chunks) > 1:
        out = xp.empty(q.shape, dtype=grad.dtype), xp.empty(k.shape, dtype=grad.dtype), xp.empty(v.shape, dtype=grad.dtype)
    first = True
    for (r0, r1, kend), a, a_used, drop in reversed(list(zip(ctx.chunks, ctx.a, ctx.a_used, ctx.mask))):
        rows, g = r1 - r0, grad[..., r0:r1, :]
        dv_part = a_used.swapaxes(-1, -2) @ g
        da = g @ v[..., :kend, :].swapaxes(-1, -2)
        if drop is not None:
            da *= drop

        def softmax_backward(xp, ds, a):  # ds = a * (da - sum(da * a)) * scale, in place, whole heads
            ds, a = ds.reshape(-1, rows, kend), a.reshape(-1, rows, kend)
            ds *= a
            ds -= a * ds.sum(axis=-1, keepdims=True)
            ds *= ctx.scale

        ds = da
        backend.blockwise(softmax_backward, ds.reshape(-1, rows * kend), a.reshape(-1, rows * kend))
        dq_part = ds @ k[..., :kend, :]
        dk_part = ds.swapaxes(-1, -2) @ q[..., r0:r1, :]
        if out is None:  # one chunk: its products are the gradients
            return dq_part, dk_part, dv_part
        dq, dk, dv = out
        dq[..., r0:r1, :] = dq_part
        if first:  # the last chunk: every key
            dk[...], dv[...], first = dk_part, dv_part, False
        else:
            dk[..., :kend, :] += dk_part
            dv[..., :kend, :] += dv_part
    return out


class ScaledDotProductAttention(Function):
    """softmax(q k^T / sqrt(d) + mask) v over (B, H, T, D), with optional dropout on the weights.

    With s the scaled scores, a = softmax(s) (after dropout: a' = a * m), and g the upstream gradient:
    dv = a'^T g,  da' = g v^T,  da = da' * m,  ds = a * (da - sum(da * a)),
    dq = ds k / sqrt(d),  dk = ds^T q / sqrt(d).
    The causal mask lets query i see keys j <= i + (Tk - Tq), so a query block at the end of a
    longer key sequence (decoding with a KV cache) is masked correctly.
    """

    def forward(self, q, k, v, causal=True, dropout_p=0.0, generator=None):
        return _attention_forward(self, q, k, v, causal, dropout_p, generator)

    def backward(self, grad):
        return _attention_backward(self, grad)


def scaled_dot_product_attention(q, k, v, causal=True, dropout_p=0.0, training=True, generator=None):
    """Attention over (B, H, T, D) tensors (any leading axes): softmax(q k^T / sqrt(D)) v."""
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit (T and D must agree)")
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"attention: causal attention needs no more queries ({q.shape[-2]}) than keys ({k.shape[-2]})")
    if not training:
        dropout_p = 0.0
    if dropout_p > 0.0 and generator is None:
        generator = backend.xp_for(q.device).random.default_rng()
    return ScaledDotProductAttention.apply(q, k, v, causal=causal, dropout_p=float(dropout_p), generator=generator)


class MultiHeadAttention(Function):
    """Causal attention straight from the fused projection: qkv (B, T, 3C) -> y (B, T, C).

    The same math as ScaledDotProductAttention; the heads are split out of qkv as strided views and
    merged back by writing into a (B, T, H, D) buffer, and the backward writes dq, dk, dv into one
    (B, T, 3C) gradient. Splitting with three index ops instead would cost three zero-filled (B, T, 3C)
    gradients, their sum, and two layout copies per layer.

    (Generation with a KV cache goes through `scaled_dot_product_attention` on the cached keys and
    values: tinygrad_llm/models/gpt.py, `CausalSelfAttention.attend_cached`.)
    """

    def forward(self, qkv, n_heads, causal=True, dropout_p=0.0, generator=None):
        B, T, C3 = qkv.shape
        C = C3 // 3
        heads = qkv.reshape(B, T, 3, n_heads, C // n_heads).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, D) view
        q, k, v = heads[0], heads[1], heads[2]
        y = backend.get_array_module(qkv).empty((B, T, n_heads, C // n_heads), dtype=qkv.dtype)
        _attention_forward(self, q, k, v, causal, dropout_p, generator, out=y.transpose(0, 2, 1, 3))  # (B, H, T, D) view
        return y.reshape(B, T, C)  # the heads merged: (B, T, H, D) is (B, T, C)

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        B, T, C = grad.shape
        H = self.q.shape[1]
        g = grad.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)  # (B, H, T, D) view
        dqkv = xp.empty((B, T, 3, H, C // H), dtype=grad.dtype)
        d = dqkv.transpose(2, 0, 3, 1, 4)  # (3, B, H, T, D) view
        _attention_backward(self, g, out=(d[0], d[1], d[2]))
        return (dqkv.reshape(B, T, 3 * C),)


def multi_head_attention(qkv, n_heads, causal=True, dropout_p=0.0, training=True, generator=None):
    """Attention on the output of a fused q/k/v projection, (B, T, 3C) -> (B, T, C)."""
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_heads):
        raise ValueError(f"multi_head_attention: qkv of shape {qkv.shape} is not (B, T, 3C) with C divisible by {n_heads} heads")
    if not training:
        dropout_p = 0.0
    if dropout_p > 0.0 and generator is None:
        generator = backend.xp_for(qkv.device).random.default_rng()
    return MultiHeadAttention.apply(qkv, n_heads=n_heads, causal=causal, dropout_p=float(dropout_p), generator=generator)
