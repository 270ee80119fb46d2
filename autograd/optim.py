"""Book appendix A, section A.7 (a typical training loop): optimizers, gradient clipping and
learning-rate schedules.

Every update runs in place on the parameter arrays, a few whole-array ufunc calls per parameter with
`out=` into preallocated buffers: no per-element Python, no full-size temporaries per step, and no
host sync (the step never turns a device value into a Python number). Hyperparameters live in
`optimizer.param_groups[i]` (a dict per group, as PyTorch), where a schedule may change "lr".
"""

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from autograd import backend
from autograd.module import zero_grad_
from autograd.tensor import Tensor


_THREADS = min(2, os.cpu_count() or 1)


def _groups_mismatch(name, saved, groups):
    """The error for a saved state whose parameter groups differ from this optimizer's: what each has,
    and what to build instead."""
    def describe(gs):
        return "; ".join(f"group {i}: {len(g['params'])} parameters"
                         + (f", weight_decay={g['weight_decay']}" if "weight_decay" in g else "")
                         for i, g in enumerate(gs))

    return (
        f"optimizer state has groups of sizes {[len(g['params']) for g in saved]}, this optimizer has "
        f"{[len(g['params']) for g in groups]}. A state loads only into an optimizer built with the same "
        f"parameter groups, in the same order, as the one that saved it ({describe(saved)}): build this one "
        f"that way, as `{name}(params, ...)` for one group or `{name}([{{'params': [...], ...}}, ...], ...)` "
        "for several"
    )


class Optimizer:
    """The base: parameter groups, per-parameter state, zero_grad, state_dict.

    `params` is an iterable of Parameters, or of dicts {"params": [...], <hyperparameter>: value, ...}
    whose hyperparameters override the optimizer's defaults for that group.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        seen = set()
        for g in groups:
            unknown = set(g) - set(self.defaults) - {"params"}
            if unknown:
                raise ValueError(f"{type(self).__name__}: unknown hyperparameters {sorted(unknown)} in a group")
            group = {**self.defaults, **g, "params": list(g["params"])}
            for p in group["params"]:
                if not isinstance(p, Tensor):
                    raise TypeError(f"{type(self).__name__} optimizes Tensors, got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError("a parameter appears in more than one group (or twice in one)")
                seen.add(id(p))
            self.param_groups.append(group)
        self.state = {}  # id(param) -> {name: array or int}
        self._scratch = {}  # (device, dtype) -> one flat buffer, reused by every update

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none=True):
        zero_grad_(self._params(), set_to_none)

    def _scratch_for(self, x):
        """A view with x's shape of a reusable buffer (one per device and dtype, grown on demand)."""
        key = (backend.device_of(x), x.dtype)
        buf = self._scratch.get(key)
        if buf is None or buf.size < x.size:
            buf = backend.get_array_module(x).empty(x.size, dtype=x.dtype)
            self._scratch[key] = buf
        return buf[: x.size].reshape(x.shape)

    # ------------------------------------------------------------------------------------------------
    # Saving

    _STATE_ARRAYS = ()

    def state_dict(self):
        """{"param_groups": [hyperparameters and "params": [indices]], "state": {index: {"step": int,
        <buffer name>: array}}}; indices count the parameters across groups in order. The arrays are the
        live buffers, not copies."""
        groups, state, i = [], {}, 0
        for g in self.param_groups:
            idx = list(range(i, i + len(g["params"])))
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": idx})
            for j, p in zip(idx, g["params"]):
                if id(p) in self.state:
                    state[j] = dict(self.state[id(p)])
            i += len(idx)
        return {"param_groups": groups, "state": state}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and buffers saved by `state_dict()` (arrays may be host NumPy arrays:
        they are copied onto each parameter's device, into existing buffers where there are some)."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(s["params"]) != len(g["params"]) for s, g in zip(groups, self.param_groups)
        ):
            raise ValueError(_groups_mismatch(type(self).__name__, groups, self.param_groups))
        params = self._params()
        problems = []
        for i, s in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(params):
                problems.append(f"state for parameter {i}, but there are {len(params)} parameters")
                continue
            p = params[i]
            for k in self._STATE_ARRAYS:
                if k not in s:
                    problems.append(f"parameter {i}: missing {k!r}")
                elif tuple(s[k].shape) != p.shape or s[k].dtype != p.data.dtype:
                    problems.append(
                        f"parameter {i} {k}: expected shape {p.shape} {p.data.dtype}, got "
                        f"{tuple(s[k].shape)} {s[k].dtype}"
                    )
        if problems:
            raise ValueError("error loading optimizer state:\n  " + "\n  ".join(problems))
        for s, g in zip(groups, self.param_groups):
            g.update({k: v for k, v in s.items() if k != "params"})
        new_state = {}
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            old = self.state.get(id(p), {})
            entry = {"step": int(s["step"])}
            for k in self._STATE_ARRAYS:
                value = backend.to_device(s[k].data if isinstance(s[k], Tensor) else s[k], p.device)
                if k in old and old[k] is not value:
                    old[k][...] = value
                    entry[k] = old[k]
                else:
                    entry[k] = value.copy()
            new_state[id(p)] = entry
        self.state = new_state


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's `torch.optim.AdamW` rule.

    For each parameter p with gradient g, at its step t = 1, 2, ...:

        p <- p - lr * wd * p                                   (decoupled decay, skipped when wd = 0)
        m <- b1 * m + (1 - b1) * g
        v <- b2 * v + (1 - b2) * g^2
        p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    computed as p -= (lr * sqrt(1 - b2^t) / (1 - b1^t)) * m / (sqrt(v) + eps * sqrt(1 - b2^t)), the bias
    corrections folded into Python-float scalars (the same value, one pass fewer). Each parameter keeps
    its own step count, so a parameter without a gradient in some step is skipped and not advanced.
    Groups ({"params": [...], "lr": ..., "weight_decay": ...}) let biases and LayerNorm weights go
    undecayed.

    On the host the update runs block by block (`block_size` entries, 128K by default) so its passes hit
    the cache; on a device, one pass per whole array. (128K: the five 512 KB arrays of a block sit in L3,
    and half as many ufunc calls as with 64K-entry blocks, which fit L2 but pay more per-call overhead;
    docs/performance.md has the measurement.)
    """

    _STATE_ARRAYS = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, block_size=131072):
        self.block_size = block_size  # host arrays are updated in cache-sized blocks; None: whole arrays
        self._pool = None
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"AdamW: invalid hyperparameters lr={lr}, betas={betas}, eps={eps}, wd={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def step(self):
        jobs = []
        for group in self.param_groups:
            lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
            b1, b2 = (float(b) for b in group["betas"])
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                xp = backend.get_array_module(p.data)
                st = self.state.get(id(p))
                if st is None:
                    st = {"step": 0, "exp_avg": xp.zeros_like(p.data), "exp_avg_sq": xp.zeros_like(p.data)}
                    self.state[id(p)] = st
                st["step"] += 1
                t = st["step"]
                m, v = st["exp_avg"], st["exp_avg_sq"]
                bc1, bc2_sqrt = 1.0 - b1**t, math.sqrt(1.0 - b2**t)
                hyper = (1.0 - lr * wd, b1, b2, eps * bc2_sqrt, lr * bc2_sqrt / bc1)
                jobs.extend((xp, arrays, hyper) for arrays in _blocks((p.data, g, m, v), self.block_size))
        self._run(jobs)

    def _run(self, jobs):
        """Apply the update to every block. NumPy's ufuncs run on one core and release the GIL, so host
        blocks are shared between two threads, each with its own scratch buffer: the update is memory
        bound and the second core adds bandwidth. The result does not depend on the split."""
        blocks = [j for j in jobs if j[0] is np and j[1][0].size <= (self.block_size or 0)]
        rest = [j for j in jobs if not (j[0] is np and j[1][0].size <= (self.block_size or 0))]
        for xp, (x, g, m, v), hyper in rest:
            _adamw_update(xp, x, g, m, v, self._scratch_for(x), *hyper)
        if len(blocks) < 2 * _THREADS:
            for xp, (x, g, m, v), hyper in blocks:
                _adamw_update(xp, x, g, m, v, self._scratch_for(x), *hyper)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="adamw")
            self._thread_scratch = [np.empty(self.block_size, np.float64) for _ in range(_THREADS)]

        def work(k):
            scratch = self._thread_scratch[k]
            for xp, (x, g, m, v), hyper in blocks[k::_THREADS]:
                s = scratch.view(x.dtype)[: x.size].reshape(x.shape)  # float64 storage holds any float dtype
                _adamw_update(xp, x, g, m, v, s, *hyper)

        list(self._pool.map(work, range(_THREADS)))


def _adamw_update(xp, x, g, m, v, s, decay, b1, b2, c, step_size):
    """The AdamW rule in place on one block; `s` is scratch. 12 to 13 whole-array passes, no temporaries."""
    if decay != 1.0:
        x *= decay
    m -= g  # m <- b1 m + (1 - b1) g, written as g + b1 (m - g)
    m *= b1
    m += g
    xp.multiply(g, 1.0 - b2, out=s)  # v <- b2 v + (1 - b2) g^2
    s *= g
    v *= b2
    v += s
    xp.sqrt(v, out=s)  # x <- x - step_size * m / (sqrt(v) + c)
    s += c
    xp.divide(m, s, out=s)
    s *= step_size
    x -= s


def _blocks(arrays, size):
    """Equal-shaped arrays as matching flat pieces of `size` entries, so the dozen passes of an update
    run over a piece that stays in the CPU's cache instead of streaming every pass through memory
    (docs/performance.md has the measurement). Only host NumPy arrays that are contiguous are split: a GPU wants one
    kernel launch per whole array, and other arrays are yielded whole."""
    n = arrays[0].size
    if not size or n <= size or not all(type(a) is np.ndarray and a.flags.c_contiguous for a in arrays):
        yield arrays
        return
    flat = [a.reshape(-1) for a in arrays]
    for i in range(0, n, size):
        yield tuple(f[i : i + size] for f in flat)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and (coupled, L2) weight decay, as torch.optim.SGD:

        g <- g + wd * p
        b <- g at the first step, then b <- momentum * b + g      (when momentum > 0)
        p <- p - lr * b   (or lr * g without momentum)
    """

    _STATE_ARRAYS = ("momentum_buffer",)

    def __init__(self, params, lr=1e-2, momentum=0.0, weight_decay=0.0):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: invalid hyperparameters lr={lr}, momentum={momentum}, wd={weight_decay}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def step(self):
        for group in self.param_groups:
            lr, mom, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                xp = backend.get_array_module(p.data)
                s = self._scratch_for(p.data)
                if wd != 0.0:
                    xp.multiply(p.data, wd, out=s)
                    s += g
                    g = s
                if mom != 0.0:
                    st = self.state.get(id(p))
                    if st is None:
                        st = {"step": 0, "momentum_buffer": g.copy()}
                        self.state[id(p)] = st
                    else:
                        st["momentum_buffer"] *= mom
                        st["momentum_buffer"] += g
                    st["step"] += 1
                    g = st["momentum_buffer"]
                xp.multiply(g, lr, out=s)
                p.data -= s


# ---------------------------------------------------------------------------------------------------
# Gradient clipping


def grad_norm(parameters):
    """The global L2 norm of the parameters' gradients, left on their device (a 0-d float32 array on a
    GPU, an np.float32 on the host): reading it is a host sync, so the training loop reads it only where
    it reads the losses. Each gradient's squared norm is one `einsum("i,i->")`: no temporary, and more
    accurate than BLAS's `vdot` in float32, while `(g * g).sum()` would allocate a gradient-sized
    temporary (docs/performance.md has the figures). A NaN or infinite gradient makes the norm NaN or inf,
    which is how the trainer tells a diverged step."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return np.zeros((), dtype=np.float32)
    xp = backend.get_array_module(grads[0])
    total = None
    for g in grads:
        flat = g.reshape(-1)
        sq = xp.einsum("i,i->", flat, flat)
        total = sq if total is None else total + sq
    return xp.sqrt(xp.asarray(total, dtype=grads[0].dtype))


def clip_grad_norm_(parameters, max_norm, norm=None):
    """Scale all gradients in place so their global L2 norm (`grad_norm`) is at most `max_norm`; returns
    the norm before clipping, left on the gradients' device: call `.item()` on it outside the hot loop to
    read it, since on a GPU that waits for the device. The scale min(1, max_norm / (norm + 1e-6)) is
    computed on the device. `norm`: the gradients' norm when the caller has just computed it (a loss
    scaler's finiteness test), which saves a pass over every gradient."""
    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return np.zeros((), dtype=np.float32)
    xp = backend.get_array_module(grads[0])
    if norm is None:
        norm = grad_norm(parameters)
    scale = xp.minimum(max_norm / (norm + 1e-6), 1.0).astype(grads[0].dtype)
    for g in grads:
        g *= scale
    return norm


# ---------------------------------------------------------------------------------------------------
# Learning-rate schedules: step -> lr as a Python float


def constant(step, lr):
    return float(lr)


def cosine_with_warmup(step, *, max_lr, total_steps, warmup_steps, min_lr=0.0, initial_lr=0.0):
    """Linear warmup from `initial_lr` to `max_lr` over `warmup_steps`, then a half cosine from `max_lr`
    down to `min_lr` at `total_steps` (and `min_lr` after), as in the book's appendix D:

        step < warmup:  lr = initial_lr + (max_lr - initial_lr) * step / warmup_steps
        otherwise:      lr = min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2,
                        progress = (step - warmup_steps) / (total_steps - warmup_steps), at most 1

    Count `step` from 0, as appendix D does: its `global_step` starts at -1 and is incremented before the
    lr is computed, so its first step gets `initial_lr`. The book's call, `initial_lr=1e-4, max_lr=0.01`
    with 27 warmup steps of 135, gives 1e-4, 4.67e-4, 8.33e-4, ...; steps counted from 1 would shift the
    whole sequence one step early (4.67e-4 first, and `min_lr` reached at the last step instead of after it).
    """
    if step < warmup_steps:
        return float(initial_lr + (max_lr - initial_lr) * step / warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return float(min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class LRScheduler:
    """Sets each group's lr from `lr_fn(step)`, as torch.optim.lr_scheduler.LambdaLR but with an absolute
    lr: a group keeps its ratio to the optimizer's default lr (a group created with half the default lr
    gets half of `lr_fn(step)`).

    The lr for step 0 is set on construction; call `step()` after each `optimizer.step()`, as in PyTorch.
    `state_dict()` is the step count (the function itself is code and is not saved).
    """

    def __init__(self, optimizer, lr_fn):
        self.optimizer, self.lr_fn, self.last_step = optimizer, lr_fn, 0
        base = float(optimizer.defaults["lr"])
        for g in optimizer.param_groups:
            g.setdefault("lr_ratio", float(g["lr"]) / base if base else 1.0)
        self._apply()

    def _apply(self):
        lr = float(self.lr_fn(self.last_step))
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_ratio"]

    def step(self):
        self.last_step += 1
        self._apply()

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_step": self.last_step}

    def load_state_dict(self, state):
        self.last_step = int(state["last_step"])
        self._apply()


__all__ = ["Optimizer", "AdamW", "SGD", "grad_norm", "clip_grad_norm_", "constant", "cosine_with_warmup", "LRScheduler"]
