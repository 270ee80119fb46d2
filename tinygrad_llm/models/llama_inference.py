"""Beyond the book: a Llama-family model's inference without a graph (models/llama.py's fast path).

Where no gradient is asked for (no_grad: generation, prefill, evaluation) nothing needs the graph's
bookkeeping, and two things make the fast path faster there:

- `stacked_weight`: the q, k and v projections' weights as the row blocks of one array, and gate's and
  up's as another, so that one product serves each group (a decoded token reads q, k and v in one
  matrix-vector product instead of three).
- `decode_step`: one decoded token with the KV cache, run as the fused ops' `forward` methods
  (`F.RMSNormOp`, `F.RopeOp`, `F.ScaledDotProductAttentionOp`, `F.SwiGLUOp`) and the same products
  straight on the arrays, layer by layer in the order of `LlamaBlock.forward`, without the Tensors,
  Modules and op objects that the fast path wraps around every array operation. For SmolLM2-135M on a
  2-core CPU those cost about 7 ms of a 30 ms token, beside 22 ms of products (363 ops a token); on the
  arrays a token costs its products and about 4 ms more (docs/llama-performance.md). Its logits are the
  fast path's bit for bit (tests/test_llama.py).

`Llama.forward` takes `decode_step` for one new token per sequence with a cache, under no_grad, on the
fast path. Where a layer is not a plain bias-free Linear (a LoRA adapter, float16 products, attention
biases) or attention weights are being recorded, `decode_step` returns None before it touches the cache,
and the model takes the path of Tensors, which handles all of those.
"""

import autograd.functional as F
from autograd import backend, nn

QKV, GATE_UP = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")  # the layers a product can share


def stacked_weight(module, names):
    """The weights of `module`'s Linear layers `names` (one input width, no bias) as the row blocks of one
    array (sum of outputs, in), so that one product x @ W^T serves them all where no gradient is asked
    for: a decoded token reads q, k and v in one matrix-vector product instead of three (and gate and up
    in one instead of two). None where a layer is not a plain bias-free Linear (a LoRA wrapper).

    subtle: the layers' weights become views of that array, in place: the Parameter objects and their
    values stay, so an optimizer, a state dict or a loader writing into them (p.data[...] = w) still works
    on them; the array is made on the first call and made again when a weight's array was replaced (the
    model moved to a device, a parameter assigned anew). `Llama.to` drops the arrays at once, so a model
    moved to a GPU holds no host copy of them."""
    layers = [getattr(module, name) for name in names]
    if not all(_plain(lin) for lin in layers):
        return None
    key = "_stacked_" + "_".join(names)
    stack = module.__dict__.get(key)
    if stack is not None and all(lin.weight.data is view for lin, view in zip(layers, stack[1])):
        return stack[0]
    xp = backend.get_array_module(layers[0].weight.data)
    w = xp.concatenate([lin.weight.data for lin in layers])  # (sum of outputs, in)
    views, row = [], 0
    for lin in layers:
        rows = lin.weight.shape[0]
        lin.weight.data = w[row:row + rows]  # a view of its rows, the same values
        views.append(lin.weight.data)
        row += rows
    object.__setattr__(module, key, (w, views))
    return w


def decode_step(model, ids, cache):
    """Logits (B, 1, vocab), an array, for ids (B, 1), the next token of each sequence after the cache's
    `cache.length` positions (advanced by one); None, with nothing done, where `plain_layers` finds a
    layer this step does not handle.

    What `plain_layers` finds is kept on the cache (`cache.decode_layers`) for its next tokens: the
    cache's keys and values already hold the model's weights as they were (after changing them, a
    cache is reset, which forgets this too), and looking through 30 layers' modules again costs about
    0.4 ms a token (docs/llama-performance.md)."""
    layers = getattr(cache, "decode_layers", None)
    if layers is None or any(block.self_attn.record_weights for block, _, _ in layers):
        layers = cache.decode_layers = plain_layers(model)
        if layers is None:
            return None
    cfg = model.config
    B, H, KV, D = ids.shape[0], cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    start = cache.length
    cos, sin = model.rope_table(start + 1)
    cos, sin = cos[start:start + 1], sin[start:start + 1]  # (1, D) views: this position's angles
    h = F.embedding(ids, model.embed_tokens.weight).data  # (B, 1) -> (B, 1, C), the ids checked
    for i, (block, qkv, gate_up) in enumerate(layers):
        attn = block.self_attn
        x = _rms_norm(block.input_layernorm, h)
        y = (x.reshape(B, -1) @ qkv.T).reshape(B, 1, H + 2 * KV, D)  # (B, C) -> (B, 1, H + 2 KV, D)
        heads = y.transpose(0, 2, 1, 3)  # (B, H + 2 KV, 1, D), a view
        if hasattr(attn, "q_norm"):  # Qwen3's QK-norm, each head over its D, then the rotation
            q = F.RopeOp().forward(_rms_norm(attn.q_norm, y[:, :, :H]).transpose(0, 2, 1, 3), cos, sin)
            k = F.RopeOp().forward(_rms_norm(attn.k_norm, y[:, :, H:H + KV]).transpose(0, 2, 1, 3), cos, sin)
        else:  # queries and keys side by side: one rotation
            qk = F.RopeOp().forward(heads[:, :H + KV], cos, sin)
            q, k = qk[:, :H], qk[:, H:]
        keys, values = cache.update(i, k, heads[:, H + KV:])  # (B, KV, start + 1, D) each
        a = F.ScaledDotProductAttentionOp().forward(q, keys, values, causal=True)  # (B, H, 1, D)
        h = h + (a.transpose(0, 2, 1, 3).reshape(B, H * D) @ attn.o_proj.weight.data.T).reshape(B, 1, -1)
        x = _rms_norm(block.post_attention_layernorm, h)
        gu = x.reshape(B, -1) @ gate_up.T  # (B, C) -> (B, 2 hidden): gate and up from one product
        hidden = gu.shape[-1] // 2
        m = F.SwiGLUOp().forward(gu[:, :hidden], gu[:, hidden:])  # (B, hidden)
        h = h + (m @ block.mlp.down_proj.weight.data.T).reshape(B, 1, -1)
    cache.length += 1
    head = model.embed_tokens.weight if cfg.tie_weights else model.lm_head.weight
    return (_rms_norm(model.norm, h).reshape(B, -1) @ head.data.T).reshape(B, 1, -1)  # (B, 1, vocab)


def plain_layers(model):
    """[(block, stacked q/k/v weight, stacked gate/up weight)] per layer, or None where one is not what
    `decode_step` computes: a LoRA adapter or float16 products on a layer, biases, a non-fused model, or
    attention weights being recorded."""
    if not model.config.fused:
        return None
    if not model.config.tie_weights and not _plain(model.lm_head):
        return None
    layers = []
    for block in model.layers:
        attn, mlp = block.self_attn, block.mlp
        if attn.record_weights or not (_plain(attn.o_proj) and _plain(mlp.down_proj)):
            return None
        qkv, gate_up = stacked_weight(attn, QKV), stacked_weight(mlp, GATE_UP)
        if qkv is None or gate_up is None:
            return None
        layers.append((block, qkv, gate_up))
    return layers


def _plain(layer):
    """A bias-free nn.Linear computing in its weights' dtype: what a stacked product or the decode step
    reads as one weight matrix (a LoRA wrapper, a bias or float16 products are not)."""
    return type(layer) is nn.Linear and layer.bias is None and layer.compute_dtype is None


def _rms_norm(norm, x):
    """`norm` (an RMSNorm module) on the array x, as its fused op computes it."""
    return F.RMSNormOp().forward(x, norm.weight.data, norm.eps)


__all__ = ["QKV", "GATE_UP", "stacked_weight", "decode_step", "plain_layers"]
