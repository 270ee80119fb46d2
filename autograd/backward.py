"""Book appendix A, section A.4 (automatic differentiation): the backward walk, from a result to the
gradient of everything it was computed from.

`backprop` visits the graph in an iterative topological order (no recursion, so a chain of any length
works), hands each op the gradient of its output, sums gradients that meet at a tensor (`_GradientSums`,
where all the walk's bookkeeping lives), and frees the graph as it goes. `Tensor.backward()` and `grad()`
are the two ways in.

This module sits below the Tensor class (tensor.py imports it): it knows a tensor, as `Function.apply`
does, by what it holds (`data`, `requires_grad`, `device`, `_ctx`), and makes its results with
`type(t)._make`.
"""

import numpy as np

from autograd import backend
from autograd.function import RowGradient, unbroadcast

_FREED = object()  # marks an op output whose graph a backward pass has already consumed


def _is_tensor(x):
    return hasattr(x, "requires_grad") and hasattr(x, "_ctx")


def _array(x):
    """The array of a Tensor; an array as it is."""
    return x.data if _is_tensor(x) else x


def _seed_grad(t, grad, who):
    """The gradient a walk starts from at `t`: ones for a scalar, else `grad` checked against t's shape."""
    if grad is None:
        if t.data.size != 1:
            raise RuntimeError(
                f"{who} without a gradient needs a scalar, but this tensor has shape {t.shape}; "
                "reduce it first (e.g. .sum() or .mean()) or pass grad= with that shape"
            )
        return backend.xp_for(t.device).ones_like(t.data)
    grad = _array(grad)
    if backend.device_of(grad) != t.device:
        grad = backend.to_device(np.asarray(grad, dtype=t.dtype), t.device)
    if tuple(grad.shape) != t.shape:
        raise ValueError(f"{who}: grad has shape {tuple(grad.shape)} but the tensor has {t.shape}")
    return grad


def _topological_order(roots):
    """Tensors that need a gradient, each after every tensor it was computed from."""
    order, visited, stack = [], set(), [(r, False) for r in reversed(roots)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        ctx = t._ctx
        if ctx is not None and ctx is not _FREED:
            for p in ctx.inputs:
                if p.requires_grad and id(p) not in visited:
                    stack.append((p, False))
    return order


class _GradientSums:
    """d(loss)/d(t) for the tensors a backward walk has reached, summed where paths meet.

    The bookkeeping that keeps the walk cheap lives here and only here. An op's backward may hand out
    arrays it also keeps or gives to another input (x + x hands both inputs one array), so a sum is
    done in place only into a buffer this walk allocated itself or that an op with `fresh_grads` made
    (`owned`); and a leaf's `.grad` gets its own copy of an array another leaf already holds (`handed`),
    so one never changes under the other. A `RowGradient` is added into the sum where there is one.
    """

    def __init__(self):
        self.grads, self.owned, self.handed = {}, set(), set()

    def add(self, t, g, fresh=False):
        key, prev = id(t), self.grads.get(id(t))
        if isinstance(g, RowGradient):
            if prev is None:
                self.grads[key] = g.dense()
            elif key in self.owned:
                g.add_to(prev)
            else:
                self.grads[key] = g.add_to(prev.copy())
            self.owned.add(key)
        elif prev is None:
            self.grads[key] = g
            if fresh:
                self.owned.add(key)
        elif key in self.owned:
            prev += g
        else:
            self.grads[key] = prev + g  # a new buffer, ours to add into from now on
            self.owned.add(key)

    def pop(self, t):
        return self.grads.pop(id(t), None)

    def give_to_leaf(self, leaf, g):
        if id(g) in self.handed:
            g = g.copy()
        self.handed.add(id(g))
        leaf._accumulate(g)


def _backprop(roots, seeds, retain_graph, wanted=None):
    """Walk the graph from `roots` (gradients `seeds`) to the leaves, freeing it unless `retain_graph`.

    Without `wanted`, every leaf's gradient is added to its `.grad`. With `wanted` (a set of tensor ids),
    no `.grad` is touched: the summed gradients of those tensors are returned as {id: array}.
    """
    sums, found = _GradientSums(), {}
    for r, g in zip(roots, seeds):
        sums.add(r, g)
    for t in reversed(_topological_order(roots)):  # each tensor before the ones it was computed from
        g = sums.pop(t)  # d(loss)/d(t), complete: everything computed from t is done
        if g is None:
            continue
        if wanted is not None and id(t) in wanted:
            found[id(t)] = g
        ctx = t._ctx
        if ctx is None:  # a leaf: a parameter or an input
            if wanted is None:
                sums.give_to_leaf(t, g)
            continue
        if ctx is _FREED:
            raise RuntimeError(
                "backward() through a graph a second time: the first backward freed it; "
                "run the forward pass again, or pass retain_graph=True to the first backward"
            )
        ctx.retain_graph = retain_graph  # an op may reuse its saved buffers only on the graph's last walk
        for parent, pg in zip(ctx.inputs, ctx.backward(g)):  # the chain rule through one op
            if pg is not None and parent.requires_grad:
                if tuple(pg.shape) != parent.shape:
                    pg = unbroadcast(pg, parent.shape)
                sums.add(parent, pg, ctx.fresh_grads)
        if not retain_graph:
            t._ctx = _FREED
    return found


def grad(outputs, inputs, grad_outputs=None, retain_graph=False, allow_unused=False):
    """The gradients of `outputs` with respect to `inputs`, as a tuple of Tensors, one per input (as
    torch.autograd.grad); no `.grad` is touched.

    `outputs`: a Tensor or a list of them (a scalar needs no `grad_outputs`; otherwise pass one
    gradient per output). `inputs`: a Tensor or a list, leaves or intermediate results. The graph is
    freed unless `retain_graph=True`. An input the outputs do not depend on is an error, or None with
    `allow_unused=True`.

        w = Tensor([2.2], requires_grad=True)
        loss = -(w * 1.1).sigmoid().log().sum()
        grad(loss, w, retain_graph=True)   # (tensor([-0.0898]),); loss.backward() still works after it
    """
    outputs = [outputs] if _is_tensor(outputs) else list(outputs)
    inputs = [inputs] if _is_tensor(inputs) else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif hasattr(grad_outputs, "shape"):  # one Tensor or array
        grad_outputs = [grad_outputs]
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"grad(): {len(outputs)} outputs but {len(grad_outputs)} grad_outputs")
    for k, o in enumerate(outputs):
        if not o.requires_grad:
            raise RuntimeError(f"grad(): output {k} does not require grad: no input of its computation had "
                               "requires_grad=True (or it ran under no_grad())")
    for k, t in enumerate(inputs):
        if not t.requires_grad:
            raise RuntimeError(f"grad(): input {k} of shape {t.shape} does not require grad; "
                               "create it with requires_grad=True")
    seeds = [_seed_grad(o, g, "grad()") for o, g in zip(outputs, grad_outputs)]
    found = _backprop(outputs, seeds, retain_graph, wanted={id(t) for t in inputs})
    result, given = [], set()
    for k, t in enumerate(inputs):
        g = found.get(id(t))
        if g is None:
            if not allow_unused:
                raise RuntimeError(f"grad(): input {k} of shape {t.shape} was not used to compute the outputs; "
                                   "pass allow_unused=True to get None for it")
            result.append(None)
            continue
        if id(g) in given:  # one array reached two inputs (x + y hands both the same gradient)
            g = g.copy()
        given.add(id(g))
        result.append(type(t)._make(g, t.device, False))  # a plain Tensor, also for a Parameter
    return tuple(result)


__all__ = ["grad"]
