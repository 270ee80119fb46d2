"""Book appendix A, section A.5 (a multilayer network from layers) and chapter 4 (the layers a GPT is
built from): Linear, Embedding, LayerNorm, Dropout, GELU, and the containers.

Every layer is a `Module` (`autograd/module.py`: parameters in a named tree, state dicts); this module
re-exports that machinery, so `nn.Module`, `nn.Parameter`, `nn.eval_mode`, `nn.functional_call` and
`nn.StateDictError` are where PyTorch users look for them.

Reproducibility: layers draw their initial values from the `rng` they are given
(`np.random.default_rng(seed)`), on the host in float32, so one seed gives identical parameters on every
device; `.to(device)` then moves them. Without an `rng` the draw is unseeded. There is no global seed.
"""

import math

import numpy as np

from autograd import functional as F
from autograd import reference
from autograd.module import Module, Parameter, StateDictError, eval_mode, functional_call, zero_grad_


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
            self._generator = F.default_generator(device, self.seed)
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

    def reseed(self, seed):
        """Start the generator again from `seed`, dropping its state (each rank of a data-parallel run
        draws its own masks this way)."""
        self.seed = seed
        self._generator, self._generator_device, self._pending_state = None, None, None

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
    "Parameter", "Module", "StateDictError", "eval_mode", "functional_call", "zero_grad_", "Linear", "Embedding", "LayerNorm", "Dropout",
    "GELU", "ReLU", "Sequential", "ModuleList",
]
