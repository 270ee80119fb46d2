"""Book chapter 5, section 5.1.2 (the cross-entropy loss) and appendix A, section A.3 (binary
cross-entropy): the losses, fused.

Each op: its formula and derivative in the class docstring, the class (forward above backward), its
helpers, then the public function. The composed cross-entropy is in `autograd/reference.py`.
"""

from autograd import backend
from autograd.function import Function
from autograd.functional.inputs import as_ids, as_tensor
from autograd.ops import stable_sigmoid
from autograd.tensor import Tensor


class CrossEntropyOp(Function):
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
    logits = as_tensor(logits)
    targets = as_ids(targets, logits, logits.shape[-1], "cross_entropy targets", ignore_index)
    if logits.ndim not in (2, 3) or tuple(targets.shape) != logits.shape[:-1]:
        raise ValueError(
            f"cross_entropy: logits of shape {logits.shape} need targets of shape {logits.shape[:-1]} "
            f"(logits (N, V) or (B, T, V)), got {tuple(targets.shape)}"
        )
    if logits.ndim == 3:
        logits = logits.reshape(-1, logits.shape[-1])
        targets = targets.reshape(-1)
    return CrossEntropyOp.apply(logits, Tensor._make(targets, logits.device, False), ignore_index=ignore_index)


class BinaryCrossEntropyOp(Function):
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


def _clamped_log(x):
    """max(log x, -100), without taking the log of 0."""
    xp = backend.get_array_module(x)
    positive = x > 0
    return xp.maximum(xp.where(positive, xp.log(xp.where(positive, x, 1.0)), -100.0), -100.0)


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


def binary_cross_entropy(probs, targets, reduction="mean"):
    """Binary cross-entropy of probabilities `probs` (after a sigmoid) against targets of the same shape,
    as torch.nn.functional.binary_cross_entropy: the mean over entries by default.

        binary_cross_entropy(Tensor([1.1 * 2.2]).sigmoid(), Tensor([1.0]))  # tensor(0.0852), appendix A
    """
    probs = as_tensor(probs)
    return _reduce(BinaryCrossEntropyOp.apply(probs, _targets_like(targets, probs, "binary_cross_entropy")),
                   reduction, "binary_cross_entropy")


class BinaryCrossEntropyWithLogitsOp(Function):
    """l = -(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))) from the logit x, in the stable form
    l = max(x, 0) - x t + log(1 + exp(-|x|)) (no exp overflows, no log of 0).

    dl/dx = sigmoid(x) - t,   dl/dt = -x.
    """

    def forward(self, x, t):
        xp = backend.get_array_module(x)
        self.x, self.t = x, t
        self.sig, e = stable_sigmoid(xp, x)  # e = exp(-|x|), for the log term too
        return xp.maximum(x, 0.0) - x * t + xp.log1p(e)

    def backward(self, grad):
        gx = grad * (self.sig - self.t) if self.needs_grad[0] else None
        gt = -grad * self.x if self.needs_grad[1] else None
        return gx, gt


def binary_cross_entropy_with_logits(logits, targets, reduction="mean"):
    """Binary cross-entropy of sigmoid(logits) against targets, computed from the logits without forming
    the sigmoid's log (stable for large |logits|), as torch.nn.functional.binary_cross_entropy_with_logits."""
    logits = as_tensor(logits)
    return _reduce(BinaryCrossEntropyWithLogitsOp.apply(
        logits, _targets_like(targets, logits, "binary_cross_entropy_with_logits")),
        reduction, "binary_cross_entropy_with_logits")


__all__ = ["CrossEntropyOp", "cross_entropy", "BinaryCrossEntropyOp", "binary_cross_entropy",
           "BinaryCrossEntropyWithLogitsOp", "binary_cross_entropy_with_logits"]
