"""The Llama family's model (tinygrad_llm/models/llama.py): its config, the stages against their formulas,
the reference and fast paths equal (logits and gradients), the KV cache, and tiny random models that
transformers itself builds, whose logits and gradients ours must equal."""

import json
from dataclasses import replace
from unittest import mock

import numpy as np
import pytest

import autograd.functional as F
from autograd import Tensor, backend, no_grad
from tinygrad_llm.models.generate import generate
from tinygrad_llm.models.llama import (Llama, LlamaConfig, LlamaKVCache, RopeScaling, apply_rope, rms_norm,
                                       rope_angles, rope_frequencies)

TINY = LlamaConfig.preset("tiny-llama")
TINY_QWEN3 = LlamaConfig.preset("tiny-qwen3")


# ---------------------------------------------------------------------------------------------------
# Config


def test_heads_that_do_not_divide_are_refused_by_name():
    with pytest.raises(ValueError, match="n_heads 9 must be a multiple of n_kv_heads 4"):
        LlamaConfig(n_heads=9, n_kv_heads=4)


def test_head_dim_is_derived_or_given():
    assert LlamaConfig.preset("smollm2-135m").head_dim == 64  # 576 / 9
    assert LlamaConfig.preset("qwen3-0.6b").head_dim == 128  # given: 16 heads of 128 on a width of 1024
    with pytest.raises(ValueError, match="head_dim 7 must be even"):
        LlamaConfig(head_dim=7)


def test_config_round_trips_through_its_dict():
    cfg = LlamaConfig.preset("llama-3.2-1b")
    assert LlamaConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown LlamaConfig fields: colour"):
        LlamaConfig.from_dict({**cfg.to_dict(), "colour": 1})


HF_LLAMA32 = {  # Llama 3.2 1B's config.json as transformers 4 wrote it (rope_theta and rope_scaling)
    "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
    "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "hidden_act": "silu",
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
}


def test_from_hf_reads_both_generations_of_rope_settings():
    old = LlamaConfig.from_hf(HF_LLAMA32)
    assert old == LlamaConfig.preset("llama-3.2-1b", tie_weights=True)
    rope = {**HF_LLAMA32["rope_scaling"], "rope_theta": 500000.0}
    new = {k: v for k, v in HF_LLAMA32.items() if k not in ("rope_theta", "rope_scaling")} | {"rope_parameters": rope}
    assert LlamaConfig.from_hf(new) == old  # transformers 5's rope_parameters
    plain = LlamaConfig.from_hf({**new, "rope_parameters": {"rope_theta": 1e5, "rope_type": "default"}})
    assert plain.rope_scaling is None and plain.rope_base == 1e5


def test_from_hf_refuses_what_the_model_does_not_implement():
    with pytest.raises(ValueError, match="model_type 'mistral' is not supported"):
        LlamaConfig.from_hf({**HF_LLAMA32, "model_type": "mistral"})
    with pytest.raises(ValueError, match="rope type 'yarn'"):
        LlamaConfig.from_hf({**HF_LLAMA32, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        LlamaConfig.from_hf({**HF_LLAMA32, "hidden_act": "gelu"})


def test_from_gguf_metadata_reads_llama_and_qwen3_keys():
    meta = {"general.architecture": "llama", "llama.block_count": 30, "llama.context_length": 8192,
            "llama.embedding_length": 576, "llama.feed_forward_length": 1536, "llama.attention.head_count": 9,
            "llama.attention.head_count_kv": 3, "llama.rope.freq_base": 100000.0,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.dimension_count": 64}
    assert LlamaConfig.from_gguf_metadata(meta, vocab_size=49152) == LlamaConfig.preset("smollm2-135m")
    qwen = {k.replace("llama.", "qwen3."): v for k, v in meta.items()} | {"general.architecture": "qwen3",
                                                                          "qwen3.attention.key_length": 128}
    cfg = LlamaConfig.from_gguf_metadata(qwen, vocab_size=49152, tied=False)
    assert (cfg.model_type, cfg.qk_norm, cfg.head_dim, cfg.tie_weights) == ("qwen3", True, 128, False)
    with pytest.raises(ValueError, match="general.architecture 'gpt2' is not supported"):
        LlamaConfig.from_gguf_metadata({**meta, "general.architecture": "gpt2"}, vocab_size=10)


# ---------------------------------------------------------------------------------------------------
# The stages


def test_rms_norm_worked_example():
    y = rms_norm(Tensor(np.array([3.0, 4.0], dtype=np.float32)), Tensor(np.ones(2, dtype=np.float32)), 0.0)
    np.testing.assert_allclose(y.data, [3 / np.sqrt(12.5), 4 / np.sqrt(12.5)], rtol=1e-6)


def test_rope_rotates_pairs_and_keeps_the_norm():
    inv = rope_frequencies(8, 10000.0)
    np.testing.assert_allclose(inv, 10000.0 ** (-np.arange(0, 8, 2) / 8))
    cos, sin = rope_angles(inv, np.arange(5))
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    y = apply_rope(Tensor(x), Tensor(cos), Tensor(sin)).data
    np.testing.assert_allclose(y[:, 0], x[:, 0], rtol=1e-6)  # position 0: no rotation
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    # dimension 0 and 4 (= D/2) rotate together by angle position * inv[0] = position
    np.testing.assert_allclose(y[:, 3, 0], x[:, 3, 0] * np.cos(3.0) - x[:, 3, 4] * np.sin(3.0), rtol=1e-5)


def test_llama3_frequency_scaling_equals_transformers():
    torch = pytest.importorskip("torch")
    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    from transformers import LlamaConfig as HFLlamaConfig

    hf = HFLlamaConfig(**{k: v for k, v in HF_LLAMA32.items() if k != "model_type"})
    fn = rope_utils.ROPE_INIT_FUNCTIONS["llama3"]
    theirs, _ = fn(hf, torch.device("cpu"))
    ours = rope_frequencies(64, 500000.0, RopeScaling(32.0, 1.0, 4.0, 8192))
    np.testing.assert_allclose(ours, theirs.double().numpy(), rtol=1e-6)
    assert not np.allclose(ours, rope_frequencies(64, 500000.0))  # the long wavelengths did change


# ---------------------------------------------------------------------------------------------------
# Reference and fast paths, the cache


def _grads(model, ids, targets):
    logits = model(ids)
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    return logits.data, {n: p.grad.copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("cfg", [TINY, TINY_QWEN3, replace(TINY, n_kv_heads=1), replace(TINY, n_kv_heads=4)],
                         ids=["gqa", "qwen3", "mqa", "mha"])
def test_fast_path_equals_the_reference_logits_and_gradients(cfg):
    rng = np.random.default_rng(1)
    ids, targets = rng.integers(0, cfg.vocab_size, (2, 12)), rng.integers(0, cfg.vocab_size, (2, 12))
    fast_logits, fast = _grads(Llama(cfg, seed=3), ids, targets)
    ref_logits, ref = _grads(Llama(replace(cfg, fused=False), seed=3), ids, targets)
    np.testing.assert_allclose(fast_logits, ref_logits, atol=1e-5)
    assert fast.keys() == ref.keys()
    for name in fast:
        np.testing.assert_allclose(fast[name], ref[name], atol=1e-5, err_msg=name)


def _ops(t):
    """{op class name: [the op's input shapes]} over the graph that made `t` (an iterative walk)."""
    seen, stack, ops = set(), [t], {}
    while stack:
        ctx = stack.pop()._ctx
        if ctx is None or id(ctx) in seen:
            continue
        seen.add(id(ctx))
        ops.setdefault(type(ctx).__name__, []).append([tuple(i.shape) for i in ctx.inputs])
        stack.extend(ctx.inputs)
    return ops


@pytest.mark.parametrize("cfg", [TINY, TINY_QWEN3], ids=["llama", "qwen3"])
def test_fast_path_runs_the_fused_ops_and_the_reference_composes_them(cfg):
    """The fast path is made of the fused ops (every norm, QK-norm included, one F.rms_norm; RoPE one F.rope
    per q and k; the SwiGLU middle one op; attention one op given the n_kv_heads keys and values as they
    are, with no expand or concatenation anywhere); the reference of Tensor ops only."""
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 6))
    L, n_norms = cfg.n_layers, 2 * cfg.n_layers + 1 + (2 * cfg.n_layers if cfg.qk_norm else 0)
    fast = _ops(Llama(cfg, seed=0)(ids))
    assert len(fast["RMSNormOp"]) == n_norms and len(fast["RopeOp"]) == 2 * L and len(fast["SwiGLUOp"]) == L
    attention = fast["ScaledDotProductAttentionOp"]
    assert len(attention) == L
    assert all(q == (2, cfg.n_heads, 6, cfg.head_dim) and k == v == (2, cfg.n_kv_heads, 6, cfg.head_dim)
               for q, k, v in attention)
    assert not {"Expand", "Concatenate", "Sigmoid", "Sqrt", "Mean"} & fast.keys()
    reference = _ops(Llama(replace(cfg, fused=False), seed=0)(ids))
    assert not {"RMSNormOp", "RopeOp", "SwiGLUOp", "SiluOp", "ScaledDotProductAttentionOp"} & reference.keys()
    assert {"Expand", "Concatenate", "Sigmoid", "Sqrt"} <= reference.keys()


def test_rope_table_is_made_once_and_decoding_reads_views_of_it(monkeypatch):
    """cos and sin come from F.rope_cos_sin once per model (grown by doubling, at least 256 rows, at most the
    context); each forward, a decoded token too, takes its rows start..start+T as views of that table. A
    loader's own frequencies (a GGUF file's rotary factors) make a new table from them."""
    cfg = replace(TINY, context_length=1024)
    model = Llama(cfg, seed=0)
    cos, sin = model.rope_table(5)
    assert cos.shape == sin.shape == (256, cfg.head_dim) and cos.dtype == np.float32
    expected = F.rope_cos_sin(cfg.head_dim, 256, cfg.rope_base)
    np.testing.assert_array_equal(cos, expected[0])
    np.testing.assert_array_equal(sin, expected[1])
    np.testing.assert_allclose(cos, rope_angles(model.inv_freq, np.arange(256))[0], atol=1e-5)  # the reference's
    seen, real_rope = [], F.RopeOp.forward
    with no_grad():
        cache = model.new_cache(1)
        model(np.array([[1, 2, 3]]), cache)
        # the op's forward: the decode step on arrays (models/llama_inference.py) calls it as the op does
        monkeypatch.setattr(F.RopeOp, "forward", lambda op, x, c, s: seen.append((c, s)) or real_rope(op, x, c, s))
        for token in (4, 5):
            model(np.array([[token]]), cache)
        monkeypatch.undo()
    assert model.rope_table(5)[0] is cos  # no new table for the decoded tokens
    assert len(seen) == 2 * cfg.n_layers  # two tokens, one rotation per layer (q and k side by side)
    assert all(c.base is cos and s.base is sin for c, s in seen)  # views, not copies
    np.testing.assert_array_equal(seen[-1][0], cos[4:5])  # the second decoded token sits at position 4
    assert model.rope_table(300)[0].shape == (512, cfg.head_dim)  # doubled
    assert model.rope_table(1000)[0].shape == (1024, cfg.head_dim)  # up to the context
    model.inv_freq = model.inv_freq / 2.0  # as llama_weights does with a file's rope_freqs factors
    np.testing.assert_allclose(model.rope_table(3)[0], rope_angles(model.inv_freq, np.arange(1024))[0], atol=1e-6)
    ref = Llama(replace(cfg, fused=False), seed=0)
    ref.inv_freq = model.inv_freq
    ids = np.array([[7, 8, 9, 10]])
    np.testing.assert_allclose(model(ids).data, ref(ids).data, atol=1e-5)


@pytest.mark.parametrize("cfg", [TINY, TINY_QWEN3], ids=["llama", "qwen3"])
def test_inference_shares_one_product_for_qkv_and_for_gate_up(cfg):
    """Without a graph (no_grad) the fast path reads q, k and v's weights in one product and gate and up's in
    another: the weights become row views of one array each (same Parameters, same names and values), the
    logits are those of the graph path, and a weight replaced afterwards is stacked again."""
    from autograd import nn
    from tinygrad_llm.models.llama import stacked_weight

    model = Llama(cfg, seed=2)
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 7))
    params = dict(model.named_parameters())
    with_graph = model(ids).data
    with no_grad():
        np.testing.assert_allclose(model(ids).data, with_graph, atol=1e-5)
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    qkv = stacked_weight(attn, ("q_proj", "k_proj", "v_proj"))
    assert qkv.shape == ((cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, cfg.emb_dim)
    assert all(getattr(attn, n).weight.data.base is qkv for n in ("q_proj", "k_proj", "v_proj"))
    assert stacked_weight(mlp, ("gate_proj", "up_proj")).shape == (2 * cfg.hidden_dim, cfg.emb_dim)
    assert dict(model.named_parameters()) == params  # the same Parameter objects under the same names
    attn.k_proj.weight.data = attn.k_proj.weight.data * 3.0  # a new array: stacked again on the next call
    mlp.up_proj.weight.data = mlp.up_proj.weight.data[::-1].copy()
    with_graph = model(ids).data
    with no_grad():
        np.testing.assert_allclose(model(ids).data, with_graph, atol=1e-5)
    assert stacked_weight(attn, ("q_proj", "k_proj", "v_proj")) is not qkv
    model.to("strict")  # the host arrays are let go: the moved weights are stacked anew on the device
    assert "_stacked_q_proj_k_proj_v_proj" not in attn.__dict__
    with no_grad():
        np.testing.assert_allclose(backend.to_host(model(ids).data), with_graph, atol=1e-5)
    assert stacked_weight(attn, ("q_proj", "k_proj", "v_proj")).shape == qkv.shape
    attn.q_proj = nn.Sequential(attn.q_proj)  # as a wrapper (LoRA) would replace it
    assert stacked_weight(attn, ("q_proj", "k_proj", "v_proj")) is None  # not a plain Linear: apart


@pytest.mark.parametrize("cfg", [TINY, TINY_QWEN3, replace(TINY, tie_weights=False), replace(TINY, n_kv_heads=1)],
                         ids=["llama", "qwen3", "untied", "one-kv-head"])
def test_a_decoded_token_on_the_arrays_equals_the_tensor_path_bit_for_bit(cfg, monkeypatch):
    """One new token with the cache under no_grad runs `llama_inference.decode_step` (the fused ops' forward
    methods on the arrays, no Tensors): its logits and the cache it fills are the Tensor path's exactly,
    for a batch, token after token."""
    from tinygrad_llm.models import llama_inference

    model = Llama(cfg, seed=4)
    rng = np.random.default_rng(6)
    prompt, tokens = rng.integers(0, cfg.vocab_size, (2, 5)), rng.integers(0, cfg.vocab_size, (4, 2, 1))
    calls, real_step = [], llama_inference.decode_step
    monkeypatch.setattr(llama_inference, "decode_step", lambda *a: calls.append(1) or real_step(*a))
    with no_grad():
        fast, slow = model.new_cache(2), model.new_cache(2)
        model(prompt, fast), model(prompt, slow)
        for token in tokens:
            fast_logits = model(token, fast).data
            monkeypatch.setattr(llama_inference, "decode_step", lambda *a: None)  # the Tensor path
            slow_logits = model(token, slow).data
            monkeypatch.setattr(llama_inference, "decode_step", lambda *a: calls.append(1) or real_step(*a))
            np.testing.assert_array_equal(fast_logits, slow_logits)
    assert len(calls) == len(tokens) and fast.length == slow.length == 5 + len(tokens)
    for layer in range(cfg.n_layers):
        np.testing.assert_array_equal(fast.keys[layer][:, :, :fast.length], slow.keys[layer][:, :, :slow.length])
        np.testing.assert_array_equal(fast.values[layer][:, :, :fast.length], slow.values[layer][:, :, :slow.length])


def test_the_decode_step_leaves_what_it_does_not_compute_to_the_tensor_path():
    """A LoRA adapter on a layer, attention weights being recorded, or the reference path: `plain_layers`
    says None, the cache is untouched by the step, and the model's logits are still right."""
    from tinygrad_llm.finetune.lora import apply_lora
    from tinygrad_llm.models import llama_inference

    ids, token = np.array([[3, 4, 5]]), np.array([[6]])
    full = Llama(TINY, seed=1)
    expected = full(np.array([[3, 4, 5, 6]])).data[:, -1:]
    assert llama_inference.plain_layers(full) is not None
    lora = Llama(TINY, seed=1)
    apply_lora(lora, rank=2)
    reference = Llama(replace(TINY, fused=False), seed=1)
    recording = Llama(TINY, seed=1)
    recording.layers[1].self_attn.record_weights = True
    for model in (lora, reference, recording):
        assert llama_inference.plain_layers(model) is None
        with no_grad():
            cache = model.new_cache(1)
            model(ids, cache)
            assert llama_inference.decode_step(model, token, cache) is None and cache.length == 3
            np.testing.assert_allclose(model(token, cache).data, expected, atol=1e-5)


def test_fast_path_in_query_chunks_equals_the_reference(monkeypatch):
    """The fused attention splits long sequences in query chunks; keys broadcast over the group must
    take their gradients there too."""
    monkeypatch.setattr(F.attention, "ATTENTION_CHUNK", 4)
    rng = np.random.default_rng(2)
    ids, targets = rng.integers(0, 97, (1, 20)), rng.integers(0, 97, (1, 20))
    fast_logits, fast = _grads(Llama(TINY, seed=0), ids, targets)
    ref_logits, ref = _grads(Llama(replace(TINY, fused=False), seed=0), ids, targets)
    np.testing.assert_allclose(fast_logits, ref_logits, atol=1e-5)
    for name in fast:
        np.testing.assert_allclose(fast[name], ref[name], atol=1e-5, err_msg=name)


@pytest.mark.parametrize("fused", [True, False])
def test_cache_holds_kv_heads_and_gives_the_full_pass_logits(fused):
    model = Llama(replace(TINY_QWEN3, fused=fused), seed=0)
    ids = np.random.default_rng(0).integers(0, 97, (2, 9))
    cache = model.new_cache(2)
    assert isinstance(cache, LlamaKVCache) and cache.keys[0].shape == (2, 2, 64, 16)  # n_kv_heads 2, not 4
    with no_grad():
        full = model(ids).data
        steps = [model(ids[:, :5], cache).data] + [model(ids[:, t:t + 1], cache).data for t in range(5, 9)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_greedy_generation_with_and_without_the_cache_is_the_same():
    model = Llama(TINY, seed=4)
    prompt = np.array([[5, 17, 3], [8, 8, 1]])
    with_cache = generate(model, prompt, 12)
    np.testing.assert_array_equal(with_cache, generate(model, prompt, 12, use_cache=False))
    assert with_cache.shape == (2, 15)


def test_a_cache_is_for_inference_and_the_context_is_checked():
    model = Llama(TINY, seed=0)
    with pytest.raises(RuntimeError, match="KV cache is for inference"):
        model(np.array([[1, 2]]), model.new_cache(1))
    with pytest.raises(ValueError, match="longer than the context length 64"):
        model(np.zeros((1, 65), dtype=np.int64))


def test_tied_head_reads_the_embedding_and_a_new_head_unties():
    from autograd import nn

    model = Llama(TINY_QWEN3, seed=0)
    assert model.config.tie_weights and not hasattr(model, "lm_head")
    model.lm_head = nn.Linear(32, 2, bias=False)
    assert not model.config.tie_weights and model(np.array([[1, 2, 3]])).shape == (1, 3, 2)


# ---------------------------------------------------------------------------------------------------
# Against transformers' own Llama and Qwen3, random tiny models it writes


def hf_tiny(kind="llama", **overrides):
    """A tiny random transformers model (eval mode, float32): Llama with 4 query heads on 2 KV heads."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)
    if kind == "qwen3":
        cfg = transformers.Qwen3Config(**{**common, "head_dim": 16, **overrides})
        model = transformers.Qwen3ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**{**common, **overrides})
        model = transformers.LlamaForCausalLM(cfg)
    return model.eval()


VARIANTS = {
    "llama-untied": ("llama", dict(tie_word_embeddings=False)),
    "llama-tied": ("llama", dict(tie_word_embeddings=True)),
    "llama3-rope-scaling": ("llama", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                                          rope_theta=500000.0)),
    "llama-head-dim-given": ("llama", dict(head_dim=16)),
    "qwen3-tied": ("qwen3", dict(tie_word_embeddings=True)),
    "qwen3-untied": ("qwen3", dict(tie_word_embeddings=False)),
}


@pytest.fixture(params=list(VARIANTS), scope="module")
def hf_and_ours(request, tmp_path_factory):
    from tinygrad_llm.models.llama_weights import load_llama

    kind, overrides = VARIANTS[request.param]
    hf = hf_tiny(kind, **overrides)
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory, safe_serialization=True)
    return hf, load_llama(directory), json.loads((directory / "config.json").read_text())


def test_logits_and_gradients_equal_transformers(hf_and_ours):
    import torch

    hf, ours, _ = hf_and_ours
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, 97, (2, 16)), rng.integers(0, 97, (2, 16))
    hf.zero_grad()
    logits = hf(torch.tensor(ids)).logits
    torch.nn.functional.cross_entropy(logits.reshape(-1, 97), torch.tensor(targets).reshape(-1)).backward()
    ours_logits, grads = _grads(ours, ids, targets)
    np.testing.assert_allclose(ours_logits, logits.detach().numpy(), atol=1e-4)
    theirs = dict(hf.named_parameters())
    for name in ("embed_tokens.weight", "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
                 "layers.1.mlp.gate_proj.weight", "layers.1.input_layernorm.weight", "norm.weight"):
        g = theirs[f"model.{name}"].grad.numpy()
        np.testing.assert_allclose(grads[name], g, rtol=1e-4, atol=1e-4 * np.abs(g).max(), err_msg=name)
    if ours.config.qk_norm:
        g = theirs["model.layers.0.self_attn.k_norm.weight"].grad.numpy()
        np.testing.assert_allclose(grads["layers.0.self_attn.k_norm.weight"], g, rtol=1e-4, atol=1e-4 * np.abs(g).max())


def test_greedy_generation_equals_transformers(hf_and_ours):
    import torch

    hf, ours, _ = hf_and_ours
    prompt = np.array([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        theirs = hf.generate(torch.tensor(prompt), max_new_tokens=20, do_sample=False, min_new_tokens=20,
                             pad_token_id=0).numpy()
    np.testing.assert_array_equal(generate(ours, prompt, 20), theirs)
    np.testing.assert_array_equal(generate(ours, prompt, 20, use_cache=False), theirs)


def test_both_paths_and_the_cache_run_on_every_device(device):
    """One code path for every device: the strict simulated device refuses any host array mixed in."""
    rng = np.random.default_rng(5)
    ids, targets = rng.integers(0, 97, (2, 10)), rng.integers(0, 97, (2, 10))
    host_logits, host = _grads(Llama(TINY_QWEN3, seed=0), ids, targets)
    for fused in (True, False):
        model = Llama(replace(TINY_QWEN3, fused=fused), seed=0).to(device)
        logits, grads = _grads(model, ids, targets)
        np.testing.assert_allclose(backend.to_host(logits), host_logits, atol=1e-4)
        np.testing.assert_allclose(backend.to_host(grads["layers.0.self_attn.q_proj.weight"]),
                                   host["layers.0.self_attn.q_proj.weight"], atol=1e-4)
        np.testing.assert_array_equal(generate(model, ids[:1, :4], 6), generate(Llama(TINY_QWEN3, seed=0), ids[:1, :4], 6))


def test_attention_weights_are_each_query_heads_softmax_and_equal_the_logits_path():
    """Llama.attention_weights (the attention grid's input): one (B, n_heads, T, T) array per layer,
    causal rows that sum to 1, taken from the reference attention without changing the logits; the
    heads of a group share keys but each has its own weights."""
    model = Llama(LlamaConfig.preset("tiny-llama"), seed=0)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, 7))
    with no_grad():
        before = model(ids).numpy()
    weights = model.attention_weights(ids)
    cfg = model.config
    assert len(weights) == cfg.n_layers and weights[0].shape == (1, cfg.n_heads, 7, 7)
    np.testing.assert_allclose(weights[0].sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(weights[1][0, 0], k=1) == 0)
    assert not np.allclose(weights[0][0, 0], weights[0][0, 1])
    with no_grad():
        np.testing.assert_array_equal(model(ids).numpy(), before)  # recording left nothing behind
    assert all(not b.self_attn.record_weights for b in model.layers)


def test_the_decode_step_keeps_the_layers_it_found_on_the_cache_until_reset():
    """`decode_step` looks through the model's layers once per cache (`cache.decode_layers`); reset()
    forgets them, and recording attention weights still sends the next token to the Tensor path."""
    from tinygrad_llm.models import llama_inference

    model = Llama(TINY, seed=2)
    looked = []
    real = llama_inference.plain_layers
    with mock.patch.object(llama_inference, "plain_layers", lambda m: looked.append(1) or real(m)), no_grad():
        cache = model.new_cache(1)
        model(np.array([[1, 2, 3]]), cache)
        steps = [model(np.array([[t]]), cache).data for t in (4, 5, 6)]
        assert len(looked) == 1 and cache.decode_layers is not None
        model.layers[0].self_attn.record_weights = True
        recorded = model(np.array([[7]]), cache).data  # the Tensor path: the reference attention records
        assert cache.decode_layers is None and model.layers[0].self_attn.attn_weights is not None
        model.layers[0].self_attn.record_weights = False
        cache.reset()
        assert cache.decode_layers is None and cache.length == 0
    full = model(np.array([[1, 2, 3, 4, 5, 6, 7]])).data
    np.testing.assert_allclose(np.concatenate(steps + [recorded], axis=1), full[:, 3:], atol=1e-5)
