"""Rotary position embedding (RoPE; Su et al. 2021), the Llama family's positions (the book's repository,
ch05/07_gpt_to_llama), fused.

GPT-2 adds a learned position vector to each token; a Llama model instead turns each pair of a query's
and a key's features by an angle proportional to the position, so that q . k depends on how far apart
the two are. The layout is Hugging Face's "rotate half": feature i is paired with feature i + D/2 (not
with its neighbour, as in the paper and Meta's first code), so checkpoints in transformers' layout load
as they are.

`rope_cos_sin` computes the angles' cosines and sines once per model; `RopeOp` is the rotation, its
formula and derivative in the class docstring, forward above backward, then the public `rope`. The
composed form is `rope` in `autograd/reference.py`.
"""

import math

import numpy as np

from autograd import backend
from autograd.function import Function
from autograd.functional.inputs import as_tensor
from autograd.tensor import Tensor

LLAMA3_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rope_cos_sin(head_dim, positions, base=10000.0, scaling=None, xp=np):
    """(cos, sin), float32 arrays of shape positions.shape + (head_dim,), in the array module `xp`.

    positions: an int n (the positions 0..n-1, a model's whole context) or an array of positions (a
    KV cache's rows start..start+T are `rope_cos_sin(...)[start:start + T]` of the whole table, or
    positions start..start+T here). base: the RoPE theta (`rope_theta`: 1e4 for GPT-NeoX-style models,
    1e5 for SmolLM2, 5e5 for Llama 3, 1e6 for Qwen3). scaling: None, or Llama 3.1's frequency scaling
    as a config's `rope_scaling` writes it, {"factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"} (a "rope_type" of "llama3" or "default" may be there too).

    Angle j of position p is p * inv_freq[j], inv_freq[j] = base^(-2j/D) for j < D/2, and the D/2
    angles are written twice, [angles, angles], as transformers' `torch.cat((freqs, freqs), -1)`: feature i
    and feature i + D/2 turn by the same angle. Computed as transformers computes it in float32 (the
    exponent 2j/D, the scaling, the product p * inv_freq are float32 operations), with the power and
    the cosine taken in float64 and rounded once: transformers' numbers to within an ulp of inv_freq.

    >>> cos, sin = rope_cos_sin(4, 3)  # inv_freq = [1, 0.01]
    >>> cos[2]  # position 2: cos(2), cos(0.02), twice
    array([-0.41614684,  0.9998    , -0.41614684,  0.9998    ], dtype=float32)
    """
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"rope_cos_sin: head_dim must be even and positive, got {head_dim}")
    inv_freq = rope_inverse_frequencies(head_dim, base, scaling)  # (D/2,)
    if isinstance(positions, (int, np.integer)):
        positions = np.arange(int(positions))
    positions = np.asarray(backend.to_host(positions))
    angles = positions.astype(np.float32)[..., None] * inv_freq  # (..., D/2), float32 products as transformers'
    angles = np.concatenate([angles, angles], axis=-1).astype(np.float64)  # (..., D): the halves turn alike
    return xp.asarray(np.cos(angles).astype(np.float32)), xp.asarray(np.sin(angles).astype(np.float32))


def rope_inverse_frequencies(head_dim, base=10000.0, scaling=None):
    """inv_freq[j] = base^(-2j/D), j < D/2, float32, with Llama 3's scaling when `scaling` is given
    (transformers' `_compute_llama3_parameters`, the book's `compute_rope_params`):

    wavelength w = 2 pi / inv_freq. Short waves (w < L / high_freq_factor, L the original context) stay;
    long ones (w > L / low_freq_factor) are slowed by `factor`; in between, a blend
    (1 - t) inv_freq / factor + t inv_freq with t = (L / w - low_freq_factor) / (high_freq_factor -
    low_freq_factor)."""
    exponent = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
    # base^e in float64, rounded once: transformers' float32 power is correctly rounded nearly everywhere
    inv_freq = np.float32(1.0) / (float(base) ** exponent.astype(np.float64)).astype(np.float32)
    if scaling is None:
        return inv_freq
    rope_type = scaling.get("rope_type", scaling.get("type", "llama3"))
    if rope_type == "default":
        return inv_freq
    if rope_type != "llama3":
        raise ValueError(f"rope_cos_sin: unsupported RoPE scaling type {rope_type!r} (supported: 'llama3')")
    missing = [k for k in LLAMA3_SCALING_KEYS if k not in scaling]
    if missing:
        raise ValueError(f"rope_cos_sin: Llama 3 RoPE scaling needs {', '.join(missing)} (given: {sorted(scaling)})")
    factor, low, high = (np.float32(scaling[k]) for k in LLAMA3_SCALING_KEYS[:3])
    context = np.float32(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = context / low, context / high
    # subtle: torch divides a number by a tensor as reciprocal-then-multiply; written so, for its roundings
    wavelen = (np.float32(1.0) / inv_freq) * np.float32(2 * math.pi)
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    t = ((np.float32(1.0) / wavelen) * context - low) / (high - low)
    smoothed = (np.float32(1.0) - t) * scaled / factor + t * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


class RopeOp(Function):
    """y = x * cos + rotate_half(x) * sin over the last axis, rotate_half(x) = [-x2, x1] for the halves
    x = [x1, x2]; x (..., T, D), cos and sin (T, D) (or any shape that broadcasts to x's).

    y is linear in x, y = R x with R built from cos and sin, so dL/dx = R^T g:
    dL/dx = g * cos + rotate_half^T(g * sin),   rotate_half^T([u1, u2]) = [u2, -u1].
    Written half by half (c, s the cos and sin halves, which rope_cos_sin makes equal, but the op does
    not assume it):
    y1 = x1 c1 - x2 s1,  y2 = x2 c2 + x1 s2;   dx1 = g1 c1 + g2 s2,  dx2 = g2 c2 - g1 s1.
    cos and sin are constants: no gradient flows to them.
    """

    def forward(self, x, cos, sin):
        xp = backend.get_array_module(x)
        self.cos, self.sin = cos, sin
        y = xp.empty(x.shape, dtype=xp.result_type(x, cos))
        lead = x.shape[:-2]
        if xp is np and lead and cos.ndim == 2 and x.size > 2 * backend.BLOCK_ELEMENTS and backend.HOST_THREADS > 1:
            # a host prefill's queries and keys, (B, H, T, D): one (T, D) head at a time on each host
            # thread, its passes while it sits in cache (the heads are often a strided view)
            backend.parallel_map(lambda i: _rope_forward(np, x[i], cos, sin, y[i]), list(np.ndindex(lead)))
        else:
            _rope_forward(xp, x, cos, sin, y)
        return y

    def backward(self, grad):
        h = grad.shape[-1] // 2
        cos, sin = self.cos, self.sin
        gx = grad * cos
        gx[..., :h] += grad[..., h:] * sin[..., h:]
        gx[..., h:] -= grad[..., :h] * sin[..., :h]
        return (gx,)


def _rope_forward(xp, x, cos, sin, y):
    """y = x * cos + rotate_half(x) * sin, written into y."""
    h = x.shape[-1] // 2
    xp.multiply(x, cos, out=y)
    y[..., :h] -= x[..., h:] * sin[..., :h]
    y[..., h:] += x[..., :h] * sin[..., h:]


def rope(x, cos, sin):
    """Rotate the queries or keys x (B, H, T, D) by the angles of their positions: cos and sin (T, D) from
    `rope_cos_sin` (the rows for positions start..start+T where a KV cache holds the first `start`).
    cos and sin may be arrays or Tensors; they move to x's device when they are elsewhere."""
    x = as_tensor(x)
    cos, sin = (_constant(a, x) for a in (cos, sin))
    d = x.shape[-1]
    if d % 2 or cos.shape != sin.shape or cos.shape[-1:] != (d,):
        raise ValueError(f"rope: x {x.shape} needs an even last axis, and cos {cos.shape} and sin {sin.shape} "
                         f"one shape ending in {d}")
    if not _broadcasts_to(cos.shape, x.shape):
        raise ValueError(f"rope: cos and sin of shape {cos.shape} do not broadcast to x {x.shape} (rows T must "
                         "match the positions of x)")
    return RopeOp.apply(x, cos=cos, sin=sin)


def _broadcasts_to(shape, target):
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def _constant(a, like):
    """The array of `a` (a Tensor or an array), on `like`'s device and in its dtype (float32 stays float32)."""
    data = a.data if isinstance(a, Tensor) else a
    data = backend.to_device(data if hasattr(data, "dtype") else np.asarray(data, dtype=np.float32), like.device)
    return data if data.dtype == like.dtype else data.astype(like.dtype)


__all__ = ["rope_cos_sin", "rope_inverse_frequencies", "RopeOp", "rope", "LLAMA3_SCALING_KEYS"]
