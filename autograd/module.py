"""Book appendix A, sections A.5 (a network as a Module of layers) and A.8 (saving and loading its state
dict): parameters in a named tree.

The names and habits follow PyTorch's `torch.nn.Module`: assigning a `Parameter` or a `Module` to an
attribute registers it, `named_parameters()` gives dotted names in registration order, `state_dict()`
maps those names to arrays, `model(x)` calls `forward`. The layers built on it are in `nn.py`.
"""

import contextlib

from autograd import backend
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

    def get_submodule(self, target):
        """The submodule at a dotted path ("blocks.0.attn")."""
        m = self
        for part in target.split(".") if target else ():
            if part not in m._modules or m._modules[part] is None:
                raise AttributeError(f"{type(m).__name__} has no submodule {part!r} (looking up {target!r})")
            m = m._modules[part]
        return m

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


__all__ = ["Parameter", "Module", "StateDictError", "eval_mode", "functional_call", "zero_grad_"]
