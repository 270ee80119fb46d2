"""Modules: parameters in a named tree, and the layers a GPT is built from.

The names and habits follow PyTorch's `torch.nn`: assigning a `Parameter` or a `Module` to an attribute
registers it, `named_parameters()` gives dotted names in registration order, `state_dict()` maps those
names to arrays, `model(x)` calls `forward`.

Reproducibility: layers draw their initial values from the `rng` they are given
(`np.random.default_rng(seed)`), on the host in float32, so one seed gives identical parameters on every
device; `.to(device)` then moves them. Without an `rng` the draw is unseeded. There is no global seed.
"""

import contextlib
import math

import numpy as np

from autograd import backend
from autograd import functional as F
from autograd import reference
from autograd.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as one of its parameters; requires_grad=True by default.

    `Parameter(data)` with data an array or a Tensor (its array is shared, not copied).
    """

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    @classmethod
    def _make(cls, data, device, requires_grad):
        # ops build their output with type(first input)._make: the result of an op on a Parameter is a
        # plain Tensor, not a new Parameter
        return Tensor._make(data, device, requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class StateDictError(KeyError, ValueError):
    """A state dict that does not fit a module: missing or unexpected keys, shape or dtype mismatches.
    Both a KeyError and a ValueError, so either `except` catches it."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def _data(value):
    return value.data if isinstance(value, Tensor) else value


def zero_grad_(parameters, set_to_none=True):
    """Drop each parameter's gradient (set_to_none) or zero it in place, keeping the buffer."""
    for p in parameters:
        if set_to_none or p.grad is None:
            p.grad = None
        else:
            p.grad[...] = 0


class Module:
    """The base of every layer and model.

    Subclasses call `super().__init__()` first, then assign Parameters and Modules as attributes and
    write `forward`. `training` is True after construction; `eval()` turns it off down the tree.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------------------------------------
    # Registration

    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        if isinstance(value, (Parameter, Module)) and params is None:
            raise AttributeError(
                f"cannot assign {type(value).__name__} {name!r} before Module.__init__(): "
                f"call super().__init__() first in {type(self).__name__}.__init__"
            )
        if isinstance(value, Parameter):
            if name not in params:  # a replacement keeps its place in the registration order
                self._discard(name)
            params[name] = value
        elif isinstance(value, Module):
            if name not in self._modules:
                self._discard(name)
            self._modules[name] = value
        elif params is not None and name in params:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} as parameter {name!r} of {type(self).__name__} "
                    "(a Parameter or None is expected)"
                )
            params[name] = None
        elif params is not None and name in self._buffers:
            self._buffers[name] = None if value is None else Tensor(_data(value))
        elif params is not None and name in self._modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as submodule {name!r} (a Module or None)")
            self._modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):  # only called when normal lookup fails
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        if not self._discard(name):
            object.__delattr__(self, name)

    def _discard(self, name):
        found = False
        for registry in (self._parameters, self._buffers, self._modules):
            found = registry.pop(name, None) is not None or found
        self._non_persistent.discard(name)
        if name in self.__dict__:
            del self.__dict__[name]
            found = True
        return found

    def register_buffer(self, name, value, persistent=True):
        """A non-trainable tensor that moves with `to()` and, when persistent, is part of `state_dict()`."""
        self._discard(name)
        self._buffers[name] = None if value is None else Tensor(_data(value))
        if not persistent:
            self._non_persistent.add(name)

    # ------------------------------------------------------------------------------------------------
    # Walking the tree

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        # a Module with no computation of its own is a usage error, not a missing feature
        raise TypeError(f"{type(self).__name__} does not define forward(): a Module subclass computes its "
                        "output in forward(self, ...)")

    def children(self):
        return (m for m in self._modules.values() if m is not None)

    def named_modules(self, prefix="", remove_duplicate=True):
        """(dotted name, module) for this module and every submodule, parents before children."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if remove_duplicate:
                if id(m) in seen:
                    continue
                seen.add(id(m))
            yield name, m
            kids = [(f"{name}.{k}" if name else k, c) for k, c in m._modules.items() if c is not None]
            stack.extend(reversed(kids))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix="", remove_duplicate=True):
        """(dotted name, Parameter) in registration order; a tied parameter comes once, under its first
        name (remove_duplicate=False gives every name)."""
        seen = set()
        for mod_name, m in self.named_modules(prefix, remove_duplicate=remove_duplicate):
            for k, p in m._parameters.items():
                if p is None:
                    continue
                if remove_duplicate:
                    if id(p) in seen:
                        continue
                    seen.add(id(p))
                yield (f"{mod_name}.{k}" if mod_name else k), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self, prefix=""):
        for mod_name, m in self.named_modules(prefix):
            for k, b in m._buffers.items():
                if b is not None:
                    yield (f"{mod_name}.{k}" if mod_name else k), b

    def num_parameters(self, trainable=False):
        """How many numbers the parameters hold (tied ones counted once); `trainable=True` counts only
        those that require grad."""
        return sum(int(p.size) for p in self.parameters() if p.requires_grad or not trainable)

    def apply(self, fn):
        """Call fn(module) on every submodule, children first, then on self (as PyTorch); returns self."""
        for m in reversed(list(self.modules())):
            fn(m)
        return self

    # ------------------------------------------------------------------------------------------------
    # State

    def state_dict(self):
        """{dotted name: array} for every parameter and persistent buffer, every name of a tied
        parameter included. The arrays are the live `.data` arrays, not copies: copy them (or use
        `backend.to_host`) to keep a snapshot."""
        state = {}
        for mod_name, m in self.named_modules(remove_duplicate=False):
            pre = f"{mod_name}." if mod_name else ""
            for k, p in m._parameters.items():
                if p is not None:
                    state[pre + k] = p.data
            for k, b in m._buffers.items():
                if b is not None and k not in m._non_persistent:
                    state[pre + k] = b.data
        return state

    def load_state_dict(self, state, strict=True):
        """Copy `state` (name -> array or Tensor, on any device) into this module's arrays in place, so
        optimizers holding the parameters stay valid. A shape or dtype mismatch always raises; missing and
        unexpected keys raise when `strict`. Every problem is named in one StateDictError.
        Returns (missing keys, unexpected keys)."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        bad = []
        for k, target in own.items():
            if k not in state:
                continue
            value = _data(state[k])
            if not hasattr(value, "shape"):
                bad.append(f"{k}: expected an array, got {type(value).__name__}")
            elif tuple(value.shape) != tuple(target.shape):
                bad.append(f"{k}: expected shape {tuple(target.shape)}, got {tuple(value.shape)}")
            elif value.dtype != target.dtype:
                bad.append(f"{k}: expected dtype {target.dtype}, got {value.dtype}")
        problems = list(bad)
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if problems:
            raise StateDictError(
                f"error loading state dict into {type(self).__name__}:\n  " + "\n  ".join(problems)
            )
        for k, target in own.items():
            if k in state:
                target[...] = backend.to_device(_data(state[k]), backend.device_of(target))
        return missing, unexpected

    # ------------------------------------------------------------------------------------------------
    # Modes and devices

    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze every parameter; returns self."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        zero_grad_(self.parameters(), set_to_none)

    def to(self, device):
        """Move every parameter and buffer to `device` in place (the Parameter objects stay the same, so
        an optimizer built on them stays valid; gradients move too). Returns self."""
        backend.check_device(device)
        for t in list(self.parameters()) + [b for _, b in self.named_buffers()]:
            if t.device != device:
                t.data = backend.to_device(t.data, device)
                if t.grad is not None:
                    t.grad = backend.to_device(t.grad, device)
                t.device = device
        return self

    def rng_states(self):
        """{dotted name: generator state} of every module with its own random generator (Dropout), for
        exact resume; JSON-serializable. None where a generator's state cannot be read (see Dropout)."""
        return {n: m.get_rng_state() for n, m in self.named_modules() if hasattr(m, "get_rng_state")}

    def set_rng_states(self, states):
        for n, m in self.named_modules():
            if n in states and hasattr(m, "set_rng_state"):
                m.set_rng_state(states[n])

    # ------------------------------------------------------------------------------------------------
    # Printing

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = []
        for k, m in self._modules.items():
            body = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({k}): {body}")
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        head = f"{type(self).__name__}(" + (f"\n  {extra}" if extra else "")
        return head + "\n" + "\n".join(lines) + "\n)"


@contextlib.contextmanager
def eval_mode(module):
    """Evaluation mode (dropout off) inside the block, the module's previous mode restored after it,
    also when the block raises or a generator holding it is closed. A module already in eval mode is
    not walked at all.

        with eval_mode(model), no_grad():
            logits = model(ids)
    """
    was_training = module.training
    if was_training:
        module.eval()
    try:
        yield module
    finally:
        if was_training:
            module.train()


def functional_call(module, tensors, *args, **kwargs):
    """module(*args, **kwargs) with some parameters or buffers replaced by `tensors` ({dotted name:
    Tensor}) for this one call (as torch.func.functional_call). Gradients flow to the given tensors;
    this is how the gradient checks feed a module float64 inputs."""
    swapped = []
    try:
        for name, t in tensors.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            registry = owner._parameters if leaf in owner._parameters else owner._buffers
            if leaf not in registry:
                raise KeyError(f"functional_call: {type(module).__name__} has no parameter or buffer {name!r}")
            swapped.append((registry, leaf, registry[leaf]))
            registry[leaf] = t
        return module(*args, **kwargs)
    finally:
        for registry, leaf, old in reversed(swapped):
            registry[leaf] = old


def _get_submodule(self, target):
    """The submodule at a dotted path ("blocks.0.attn")."""
    m = self
    for part in target.split(".") if target else ():
        if part not in m._modules or m._modules[part] is None:
            raise AttributeError(f"{type(m).__name__} has no submodule {part!r} (looking up {target!r})")
        m = m._modules[part]
    return m


Module.get_submodule = _get_submodule


# ---------------------------------------------------------------------------------------------------
# Layers


def _rng(rng):
    return rng if rng is not None else np.random.default_rng()


class Linear(Module):
    """y = x W^T + b with W of shape (out_features, in_features), as torch.nn.Linear.

    Initialised as PyTorch does: W and b ~ U(-1/sqrt(in), 1/sqrt(in)), drawn from `rng`.

    `compute_dtype` (None: compute in the parameters' own float32) is mixed precision (autograd/amp.py):
    with np.float16 the forward casts x, W and b to float16, multiplies there, and casts y back to x's
    dtype. The casts are `Cast` ops, whose backward casts the gradient back, so W.grad stays float32 and
    W itself is never rounded: the float32 "master weights". It is an attribute, not a parameter, so the
    state dict and the checkpoint's names do not change.
    """

    compute_dtype = None

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        rng = _rng(rng)
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(np.float32))
        if bias:
            self.bias = Parameter(rng.uniform(-bound, bound, (out_features,)).astype(np.float32))
        else:
            self.bias = None

    def forward(self, x):
        if self.compute_dtype is None:
            return F.linear(x, self.weight, self.bias)  # (..., in) -> (..., out)
        low = self.compute_dtype
        bias = None if self.bias is None else self.bias.astype(low)
        y = F.linear(x.astype(low), self.weight.astype(low), bias)  # the GEMM in low precision
        return y.astype(x.dtype)  # the layers around it (LayerNorm, softmax, residual) stay in x's dtype

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A table of `num_embeddings` rows of size `embedding_dim`, looked up by integer ids; N(0, 1) init."""

    def __init__(self, num_embeddings, embedding_dim, rng=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(_rng(rng).standard_normal((num_embeddings, embedding_dim), dtype=np.float32))

    def forward(self, ids):
        return F.embedding(ids, self.weight)  # (...,) -> (..., C)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Normalize over the last axis, then scale by `weight` (ones) and shift by `bias` (zeros).
    `fused=False` computes it with the composed formula of `autograd/reference.py` instead of the fused op."""

    def __init__(self, normalized_shape, eps=1e-5, bias=True, fused=True):
        super().__init__()
        self.normalized_shape, self.eps, self.fused = int(normalized_shape), eps, fused
        self.weight = Parameter(np.ones(self.normalized_shape, dtype=np.float32))
        self.bias = Parameter(np.zeros(self.normalized_shape, dtype=np.float32)) if bias else None

    def forward(self, x):
        layer_norm = F.layer_norm if self.fused else reference.layer_norm
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"({self.normalized_shape},), eps={self.eps}"


class Dropout(Module):
    """Zero each entry with probability p while training (scaling the rest by 1/(1-p)); the identity in
    eval mode or when p == 0.

    The module owns its random generator, `xp.random.default_rng(seed)` for the device of the data,
    made on first use. `generator_for(device)` hands it out (attention can draw its dropout mask from a
    Dropout module's generator). `get_rng_state()` / `set_rng_state()` save and restore it for an exact
    resume: a JSON-serializable dict for NumPy's generator (devices "cpu" and "strict"); None where the
    generator does not expose its state (CuPy's), in which case a restore starts again from the seed.
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p, self.seed = float(p), seed
        self._generator, self._generator_device, self._pending_state = None, None, None

    def generator_for(self, device):
        if self._generator is None or self._generator_device != device:
            state = self.get_rng_state()  # carried over a device change where it can be
            self._generator = backend.xp_for(device).random.default_rng(self.seed)
            self._generator_device = device
            if state is not None:
                self._generator.bit_generator.state = state
            self._pending_state = None
        return self._generator

    def get_rng_state(self):
        if self._generator is None:
            return self._pending_state
        state = getattr(self._generator.bit_generator, "state", None)
        return state if isinstance(state, dict) else None

    def set_rng_state(self, state):
        if self._generator is None or state is None:
            self._generator, self._pending_state = None, state
        else:
            self._generator.bit_generator.state = state

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        return F.dropout(x, self.p, training=True, generator=self.generator_for(x.device))

    def extra_repr(self):
        return f"p={self.p}"


class GELU(Module):
    """GPT-2's tanh-approximated GELU."""

    def forward(self, x):
        return F.gelu(x)


class ReLU(Module):
    def forward(self, x):
        return x.relu()


class Sequential(Module):
    """Modules applied one after the other; indexed, iterated and counted like a list."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(*mods[i])
        return mods[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleList(Module):
    """A list of modules registered under "0", "1", ... (no forward of its own)."""

    def __init__(self, modules=()):
        super().__init__()
        self.extend(modules)

    def append(self, module):
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return ModuleList(mods[i])
        return mods[i]

    def __setitem__(self, i, module):
        key = list(self._modules)[i]
        setattr(self, key, module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


__all__ = [
    "Parameter", "Module", "StateDictError", "eval_mode", "functional_call", "Linear", "Embedding", "LayerNorm", "Dropout",
    "GELU", "ReLU", "Sequential", "ModuleList",
]
