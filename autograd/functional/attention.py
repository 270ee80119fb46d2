"""Book chapter 3, sections 3.5 (causal attention, with dropout on the weights) and 3.6 (multi-head
attention): attention, fused.

softmax(q k^T / sqrt(d) + mask) v as one op, in query chunks that skip the masked blocks. The work on
one chunk is a pair of functions, `_attention_forward` and `_attention_backward`, which both ops call;
the softmax inside a chunk is `_attention_weights_` forward and `_attention_weights_backward_` backward,
run by `backend.blockwise` over whole heads. The book's step-by-step attention needs no op of its own:
it is a few Tensor ops (a matmul, a mask, `softmax`) in the model that uses it.

Grouped-query attention (the Llama family; the book's repository, ch05/07_gpt_to_llama) is the same op
with fewer key and value heads than query heads: each kv head serves a group of G query heads, whose
rows are stacked into one product with it (`_group_rows`) instead of the kv head being copied G times,
as the book's `repeat_interleave` does (`reference.repeat_kv`).
"""

import functools
import math

import numpy as np

from autograd import backend
from autograd.function import Function
from autograd.functional.activations import _exp_normalize_
from autograd.functional.layers import _dropout_mask, default_generator

ATTENTION_CHUNK = 128  # causal attention in query chunks of about this many rows (see _query_chunks)


class ScaledDotProductAttentionOp(Function):
    """softmax(q k^T / sqrt(d) + mask) v over (B, H, T, D), with optional dropout on the weights.

    With s the scaled scores, a = softmax(s) (after dropout: a' = a * m), and g the upstream gradient:
    dv = a'^T g,  da' = g v^T,  da = da' * m,  ds = a * (da - sum(da * a)),
    dq = ds k / sqrt(d),  dk = ds^T q / sqrt(d).
    The causal mask lets query i see keys j <= i + (Tk - Tq), so a query block at the end of a
    longer key sequence (decoding with a KV cache) is masked correctly.

    Grouped-query attention: k and v (B, Hkv, Tk, D) with Hkv dividing H, query head h attending to kv
    head h // G, G = H / Hkv. The same formulas hold per query head; a kv head's dk and dv are the sums
    over its G query heads, which the products form directly when the group's rows are stacked:
    q viewed as (B, Hkv, G, Tq, D), a chunk's rows as (B, Hkv, G * rows, D), times k^T (B, Hkv, D, Tk).
    """

    def forward(self, q, k, v, causal=True, dropout_p=0.0, generator=None):
        groups = q.shape[-3] // k.shape[-3] if min(q.ndim, k.ndim) >= 3 else 1
        if groups == 1:
            return _attention_forward(self, q, k, v, causal, dropout_p, generator)
        self.q_shape = q.shape
        q = q.reshape(q.shape[:-3] + (k.shape[-3], groups) + q.shape[-2:])  # (B, Hkv, G, Tq, D) view
        y = _attention_forward(self, q, k, v, causal, dropout_p, generator, groups=groups)
        return y.reshape(self.q_shape[:-1] + v.shape[-1:])  # (B, Hkv, G, Tq, D) -> (B, H, Tq, D)

    def backward(self, grad):
        if self.groups == 1:
            return _attention_backward(self, grad)
        grad = grad.reshape(self.q.shape[:-1] + grad.shape[-1:])  # (B, H, Tq, D) -> (B, Hkv, G, Tq, D) view
        dq, dk, dv = _attention_backward(self, grad)
        return dq.reshape(self.q_shape), dk, dv


def _query_chunks(tq, tk, causal):
    """[(r0, r1, kend)]: the query rows r0:r1 of each chunk and the keys :kend that they can see.

    Query i sees keys j <= i + (tk - tq), so in causal attention a chunk of early queries needs only the
    first keys: with the rows split in chunks of about ATTENTION_CHUNK, the products and the softmax skip
    the blocks above the diagonal that the mask would zero (for two chunks, a quarter of the work).
    docs/performance.md has the measurement."""
    n = tq // ATTENTION_CHUNK if causal else 1
    if n < 2:
        return [(0, tq, tk)]
    bounds = [tq * i // n for i in range(n + 1)]
    return [(r0, r1, r1 + tk - tq) for r0, r1 in zip(bounds, bounds[1:])]


def _attention_forward(ctx, q, k, v, causal, dropout_p, generator, out=None, groups=1):
    """softmax(q k^T / sqrt(d) + mask) v on (..., T, D) arrays, chunk by chunk of queries, written into
    `out` when given (any (..., Tq, D) view); saves what `_attention_backward` needs on ctx.

    groups > 1: q is (..., Hkv, G, Tq, D), k and v (..., Hkv, Tk, D), and each chunk's products run on the
    group's stacked rows (`_group_rows`); the result is (..., Hkv, G, Tq, D)."""
    xp = backend.get_array_module(q)
    tq, tk = q.shape[-2], k.shape[-2]
    ctx.scale = 1.0 / math.sqrt(q.shape[-1])  # a Python float: a NumPy float64 scalar would promote to float64
    ctx.chunks = _query_chunks(tq, tk, causal)
    ctx.a, ctx.a_used, ctx.mask = [], [], []
    ctx.q, ctx.k, ctx.v, ctx.groups = q, k, v, groups
    if backend.in_host_parallel() and xp is np and dropout_p == 0.0:
        y = out if out is not None else np.empty(q.shape[:-1] + v.shape[-1:], dtype=q.dtype)
        return _attention_forward_in_tasks(ctx, causal, y)
    y = out if out is not None or len(ctx.chunks) == 1 else xp.empty(q.shape[:-1] + v.shape[-1:], dtype=q.dtype)
    for r0, r1, kend in ctx.chunks:
        rows = r1 - r0
        s = _group_rows(q[..., r0:r1, :], groups) @ k[..., :kend, :].swapaxes(-1, -2)  # (B, H, rows, D) @ (B, H, D, kend)
        mask = _causal_mask(xp, rows, s.dtype) if causal else None
        weights = functools.partial(_attention_weights_, rows=rows, kend=kend, scale=ctx.scale, mask=mask)
        backend.blockwise(weights, s.reshape(-1, rows * kend))  # the attention weights, in place: one head per row
        drop = _dropout_mask(generator, s.shape, dropout_p, s.dtype) if dropout_p > 0.0 else None
        a_used = s * drop if drop is not None else s
        for saved, value in ((ctx.a, s), (ctx.a_used, a_used), (ctx.mask, drop)):
            saved.append(value)
        chunk_y = _ungroup_rows(a_used @ v[..., :kend, :], groups)  # (B, H, rows, kend) @ (B, H, kend, D) -> (B, H, rows, D)
        if y is None:
            return chunk_y
        y[..., r0:r1, :] = chunk_y
    return y


def _attention_forward_in_tasks(ctx, causal, y):
    """`_attention_forward`'s work inside `backend.host_parallel()` (BLAS on one thread), in blocks of one
    query chunk of one (batch, key/value head) each, shared by the host threads, largest first: a
    block's scores, softmax and product with v run one after another while its scores sit in the core's
    cache. Fills y and ctx.a (a chunk's weights, the arrays `_attention_backward` reads) as the loop does."""
    q, k, v, groups = ctx.q, ctx.k, ctx.v, ctx.groups
    lead = k.shape[:-2]  # (B, Hkv)
    blocks = []
    for c, (r0, r1, kend) in enumerate(ctx.chunks):
        rows = r1 - r0
        mask = _causal_mask(np, rows, q.dtype) if causal else None
        ctx.a.append(np.empty(lead + (groups * rows, kend), dtype=q.dtype))  # (B, Hkv, G * rows, kend)
        ctx.a_used.append(ctx.a[-1])
        ctx.mask.append(None)
        weights = functools.partial(_attention_weights_, rows=rows, kend=kend, scale=None, mask=mask)
        blocks += [(kend, c, r0, r1, weights, index) for index in np.ndindex(lead)]

    def block(work):
        kend, c, r0, r1, weights, index = work
        s = ctx.a[c][index]  # (G * rows, kend)
        # the scale on the queries, (G, rows, D) in a new array (the group's rows stacked), rather than a
        # pass over the scores: kend columns in place of D; for D = 64 (GPT-2, SmolLM2) the same floats
        q_scaled = np.multiply(q[index][..., r0:r1, :], ctx.scale).reshape(-1, q.shape[-1])  # (G * rows, D)
        np.matmul(q_scaled, k[index][:kend].T, out=s)
        weights(np, s)
        out = s @ v[index][:kend]  # (G * rows, D)
        y[index][..., r0:r1, :] = _ungroup_rows(out, groups)

    backend.parallel_map(block, sorted(blocks, key=lambda b: -b[0]))
    return y


def _group_rows(x, groups):
    """(..., Hkv, G, rows, D) -> (..., Hkv, G * rows, D): a group's query rows stacked, so that one product
    with its kv head serves its G query heads and sums their dk and dv (a copy only of a chunk's strided
    rows, never of k or v). x itself where groups == 1: multi-head attention runs as it always has."""
    return x if groups == 1 else x.reshape(x.shape[:-3] + (-1, x.shape[-1]))


def _ungroup_rows(x, groups):
    """(..., Hkv, G * rows, D) -> (..., Hkv, G, rows, D), the inverse of `_group_rows` (a view)."""
    return x if groups == 1 else x.reshape(x.shape[:-2] + (groups, -1, x.shape[-1]))


def _causal_mask(xp, rows, dtype):
    """The causal mask of a chunk of `rows` queries as an additive 0 / -inf (one broadcast add, much
    faster than a boolean assignment) over the chunk's last `rows` keys: its first query sees the keys
    up to `rows` before the chunk's last (`_query_chunks`), so the keys that a query of the chunk cannot
    see all lie in that block, above its diagonal. None for one query (a decoded token sees every key)."""
    return None if rows == 1 else xp.triu(xp.full((rows, rows), -np.inf, dtype=dtype), k=1)


def _attention_weights_(xp, s, *, rows, kend, scale, mask):
    """Scale (unless None: the queries were scaled), mask and softmax, in place, on a block of whole
    (rows, kend) score matrices (one head per row of `s`)."""
    s = s.reshape(-1, rows, kend)
    if scale is not None:
        s *= scale
    if mask is not None:
        s[..., kend - rows:] += mask  # (rows, rows): the last keys, where the masked ones are
    s -= s.max(axis=-1, keepdims=True)
    _exp_normalize_(xp, s, -1)


def _attention_backward(ctx, grad, out=None):
    """dq, dk, dv from the upstream gradient, chunk by chunk, written into `out` = (dq, dk, dv) when given
    (views of any layout). (No matmul `out=`: CuPy's matmul does not take one.) The last chunk sees every
    key, so it is done first and sets dk and dv; the others add in."""
    xp = backend.get_array_module(grad)
    q, k, v, groups = ctx.q, ctx.k, ctx.v, ctx.groups
    if out is None and len(ctx.chunks) > 1:
        out = xp.empty(q.shape, dtype=grad.dtype), xp.empty(k.shape, dtype=grad.dtype), xp.empty(v.shape, dtype=grad.dtype)
    first = True
    for (r0, r1, kend), a, a_used, drop in reversed(list(zip(ctx.chunks, ctx.a, ctx.a_used, ctx.mask))):
        rows, g = r1 - r0, _group_rows(grad[..., r0:r1, :], groups)
        dv_part = a_used.swapaxes(-1, -2) @ g
        da = g @ v[..., :kend, :].swapaxes(-1, -2)
        if drop is not None:
            da *= drop
        ds = da
        weights_backward = functools.partial(_attention_weights_backward_, rows=rows, kend=kend, scale=ctx.scale)
        backend.blockwise(weights_backward, ds.reshape(-1, rows * kend), a.reshape(-1, rows * kend))
        dq_part = _ungroup_rows(ds @ k[..., :kend, :], groups)
        dk_part = ds.swapaxes(-1, -2) @ _group_rows(q[..., r0:r1, :], groups)
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


def _attention_weights_backward_(xp, ds, a, *, rows, kend, scale):
    """The softmax's backward, in place on whole heads: ds (holding da on entry) = a * (da - sum(da * a))
    * scale."""
    ds, a = ds.reshape(-1, rows, kend), a.reshape(-1, rows, kend)
    ds *= a
    ds -= a * ds.sum(axis=-1, keepdims=True)
    ds *= scale


def scaled_dot_product_attention(q, k, v, causal=True, dropout_p=0.0, training=True, generator=None):
    """Attention over (B, H, T, D) tensors (any leading axes): softmax(q k^T / sqrt(D)) v.

    k and v may have fewer heads than q, (B, Hkv, Tk, D) with Hkv dividing H: grouped-query attention,
    query head h attending to kv head h // (H / Hkv), without a copy of k and v per query head."""
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit (T and D must agree)")
    if min(q.ndim, k.ndim) >= 3 and q.shape[-3] != k.shape[-3]:
        if k.ndim != q.ndim or k.shape[:-1] != v.shape[:-1] or k.shape[:-3] != q.shape[:-3] or q.shape[-3] % k.shape[-3]:
            raise ValueError(f"attention: q {q.shape} has {q.shape[-3]} heads, k {k.shape} and v {v.shape} must "
                             "have one shape and a number of heads that divides it, with the same leading axes")
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"attention: causal attention needs no more queries ({q.shape[-2]}) than keys ({k.shape[-2]})")
    if not training:
        dropout_p = 0.0
    if dropout_p > 0.0 and generator is None:
        generator = default_generator(q.device)
    return ScaledDotProductAttentionOp.apply(q, k, v, causal=causal, dropout_p=float(dropout_p), generator=generator)


class MultiHeadAttentionOp(Function):
    """Causal attention straight from the fused projection: qkv (B, T, 3C) -> y (B, T, C).

    The same math as ScaledDotProductAttentionOp; the heads are split out of qkv as strided views and
    merged back by writing into a (B, T, H, D) buffer, and the backward writes dq, dk, dv into one
    (B, T, 3C) gradient. Splitting with three index ops instead would cost three zero-filled (B, T, 3C)
    gradients, their sum, and two layout copies per layer.

    (Generation with a KV cache calls `scaled_dot_product_attention` on the cached keys and values
    instead: its queries are a few new positions, its keys every position so far.)
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
        generator = default_generator(qkv.device)
    return MultiHeadAttentionOp.apply(qkv, n_heads=n_heads, causal=causal, dropout_p=float(dropout_p), generator=generator)


__all__ = ["ATTENTION_CHUNK", "ScaledDotProductAttentionOp", "scaled_dot_product_attention", "MultiHeadAttentionOp",
           "multi_head_attention"]
