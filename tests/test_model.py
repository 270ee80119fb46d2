"""The GPT model: parameter counts of the presets, float32 through forward and backward, the summary,
input checks, dropout modes, and a model that learns (overfits a tiny batch)."""

import numpy as np
import pytest

import autograd.functional as F
from autograd import no_grad
from autograd.optim import AdamW
from tinygrad_llm.models.gpt import GPT, PRESETS, GPTConfig, KVCache
from tests.conftest import tiny_config


def count_parameters(cfg):
    """The parameter count of a config by formula (no 1.5B-parameter model is built to count it)."""
    C, V, L = cfg.emb_dim, cfg.vocab_size, cfg.n_layers
    attn = C * 3 * C + 3 * C * cfg.qkv_bias + C * C + C  # c_attn, c_proj
    mlp = C * 4 * C + 4 * C + 4 * C * C + C  # c_fc, c_proj
    block = 2 * C + attn + 2 * C + mlp  # with ln_1 and ln_2
    return V * C + cfg.context_length * C + L * block + 2 * C + (0 if cfg.tie_weights else V * C)


@pytest.mark.parametrize("name,count", [
    ("gpt2-small", 124_439_808),  # as published (Hugging Face's gpt2)
    ("gpt2-medium", 354_823_168),
    ("gpt2-large", 774_030_080),
    ("gpt2-xl", 1_557_611_200),
    ("book-124m", 163_009_536),  # the book's GPT_CONFIG_124M: untied head, no qkv bias
])
def test_preset_parameter_counts(name, count):
    assert count_parameters(GPTConfig.preset(name)) == count


def test_book_124m_tied_count_and_formula_matches_built_models():
    assert count_parameters(GPTConfig.preset("book-124m", tie_weights=True)) == 124_412_160  # the book's figure
    for cfg in [PRESETS["cpu-tiny"], PRESETS["cpu-small"], GPTConfig.preset("cpu-tiny", qkv_bias=False, tie_weights=False)]:
        assert GPT(cfg).num_parameters() == count_parameters(cfg)


def test_gpt2_small_builds_with_the_published_count():
    model = GPT(GPTConfig.preset("gpt2-small"))  # the full size: 124M parameters drawn
    assert model.num_parameters() == 124_439_808
    assert all(p.dtype == np.float32 for p in model.parameters())


def test_presets_match_gpt2():
    for name in ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        cfg = PRESETS[name]
        assert (cfg.vocab_size, cfg.context_length, cfg.qkv_bias, cfg.tie_weights) == (50257, 1024, True, True)
    book = PRESETS["book-124m"]
    assert (book.qkv_bias, book.tie_weights, book.drop_rate) == (False, False, 0.1)
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.preset("gpt5")


def tiny(**kw):
    return tiny_config(97, 32, **kw)


def test_forward_backward_stay_float32(device):
    model = GPT(tiny(drop_rate=0.1, qkv_bias=False, tie_weights=False), seed=0).to(device)
    ids = np.random.default_rng(0).integers(0, 97, (2, 17))
    logits = model(ids[:, :-1])
    assert logits.shape == (2, 16, 97) and logits.dtype == np.float32
    loss = F.cross_entropy(logits.reshape(-1, 97), ids[:, 1:].reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == np.float32 and p.grad.shape == p.shape, name


def test_summary_lists_layers_shapes_and_total():
    model = GPT(tiny(), seed=0)
    text = model.summary(batch_size=2, seq_len=8)
    assert f"{model.num_parameters():,}" in text.splitlines()[-1]
    assert "(2, 8, 64)" in text and "(2, 8, 97)" in text and "h.1.mlp" in text
    assert "tied to wte" in text


def test_too_long_input_is_refused():
    model = GPT(tiny(), seed=0)
    with pytest.raises(ValueError, match="longer than the context length 32"):
        model(np.zeros((1, 33), dtype=np.int64))
    cache = KVCache(model.config, 1)
    with no_grad():
        model(np.zeros((1, 30), dtype=np.int64), cache)
        with pytest.raises(ValueError, match="sequence of 33 tokens"):
            model(np.zeros((1, 3), dtype=np.int64), cache)


def test_dropout_only_in_training_mode():
    model = GPT(tiny(drop_rate=0.5), seed=0)
    ids = np.arange(10)[None]
    with no_grad():
        a, b = model(ids).numpy(), model(ids).numpy()
        assert not np.allclose(a, b)  # training: a fresh dropout mask each call
        model.eval()
        np.testing.assert_array_equal(model(ids).numpy(), model(ids).numpy())


def test_same_seed_same_model():
    a, b, c = GPT(tiny(), seed=5), GPT(tiny(), seed=5), GPT(tiny(), seed=6)
    np.testing.assert_array_equal(a.h[1].attn.c_attn.weight.numpy(), b.h[1].attn.c_attn.weight.numpy())
    assert not np.array_equal(a.wte.weight.numpy(), c.wte.weight.numpy())


def test_overfits_a_tiny_batch():
    """A learner's sanity check: 2 sequences of 16 tokens are memorized; the loss starts at about
    ln(97) = 4.6 and falls below 0.05 within 80 AdamW steps."""
    model = GPT(tiny(), seed=0)
    ids = np.random.default_rng(1).integers(0, 97, (2, 17))
    opt = AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(80):
        loss = F.cross_entropy(model(ids[:, :-1]).reshape(-1, 97), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 4.0 and losses[-1] < 0.05, losses[::10]


def test_assigning_a_head_unties_a_tied_model_and_forward_uses_it():
    """The book's chapter 6 replaces the head (`model.out_head = nn.Linear(768, 2)`). Here, on a tied
    model, that unties it: the config says so, wte keeps its weights, and the new head, bias included,
    makes the logits."""
    from autograd import nn

    model = GPT(tiny(), seed=0).eval()
    config, wte = model.config, model.wte.weight.numpy().copy()
    before = model.num_parameters()
    model.lm_head = nn.Linear(64, 2, rng=np.random.default_rng(1))
    assert model.config.tie_weights is False and config.tie_weights is True  # a new config; the old is frozen
    assert model.num_parameters() == before + 64 * 2 + 2 and "lm_head.bias" in model.state_dict()
    ids = np.arange(6)[None]
    logits = model(ids)
    expected = model.hidden_states(ids).numpy() @ model.lm_head.weight.numpy().T + model.lm_head.bias.numpy()
    assert logits.shape == (1, 6, 2)
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5, atol=1e-6)
    logits.sum().backward()
    assert model.lm_head.bias.grad is not None and np.array_equal(model.wte.weight.numpy(), wte)
    assert "(1, 6, 2)" in model.summary(batch_size=1, seq_len=6)


def test_a_wrapped_head_of_an_untied_model_is_called():
    """forward calls lm_head rather than reading its weight, so a wrapper (LoRA) on the head takes effect."""
    from tinygrad_llm.finetune.lora import LoRALinear

    model = GPT(tiny(tie_weights=False), seed=0).eval()
    ids = np.arange(5)[None]
    with no_grad():
        plain = model(ids).numpy()
        model.lm_head = LoRALinear(model.lm_head, rank=2, alpha=4, rng=np.random.default_rng(0))
        np.testing.assert_array_equal(model(ids).numpy(), plain)  # B starts at zero
        model.lm_head.lora_B.data[...] = 0.1
        assert not np.allclose(model(ids).numpy(), plain)


@pytest.mark.parametrize("fused", [True, False])
def test_attention_with_a_kv_cache_equals_the_full_pass(fused):
    """The cache lives in the attention module: a 4-token prefill and two 1-token steps give the
    outputs of one pass over all 6 tokens, on the fused path and on the reference path."""
    from autograd import Tensor, no_grad
    from tinygrad_llm.models.gpt import CausalSelfAttention, KVCache

    cfg = GPTConfig(vocab_size=10, context_length=8, emb_dim=6, n_heads=2, n_layers=1, drop_rate=0.0, fused=fused)
    attn = CausalSelfAttention(cfg, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 6, 6)).astype(np.float32)
    full = attn(Tensor(x)).numpy()
    cache = KVCache(cfg, batch_size=2)
    with no_grad():
        parts = []
        for a, b in ((0, 4), (4, 5), (5, 6)):
            parts.append(attn(Tensor(x[:, a:b]), cache, 0).numpy())
            cache.length += b - a
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-5, atol=1e-6)
    if fused:
        with pytest.raises(RuntimeError, match="KV cache is for inference; run the model under no_grad"):
            attn(Tensor(x, requires_grad=True), cache, 0)
    with no_grad(), pytest.raises(ValueError, match="KV cache holds 8 positions; 9 were asked for"):
        attn(Tensor(x[:, :3]), cache, 0)


def test_kv_cache_grows_as_positions_come_and_keeps_what_it_holds():
    """The cache starts at INITIAL_POSITIONS (or max_len, if fewer) and doubles up to max_len: a prefill
    past its capacity and decoded tokens across the next boundary give the logits of one full pass."""
    model = GPT(GPTConfig(vocab_size=50, context_length=600, emb_dim=8, n_heads=2, n_layers=2, drop_rate=0.0), seed=0)
    ids = np.random.default_rng(0).integers(0, 50, (2, 520))
    cache = KVCache(model.config, 2)
    assert cache.capacity == KVCache.INITIAL_POSITIONS == 256 and cache.max_len == 600
    assert KVCache(model.config, 2, max_len=40).capacity == 40
    with no_grad():
        full = model(ids).numpy()
        parts = [model(ids[:, :300], cache).numpy()]  # 300 > 256: grows to max(300, 512) = 512
        assert cache.capacity == 512 and cache.length == 300
        parts += [model(ids[:, t:t + 1], cache).numpy() for t in range(300, 520)]  # 513th position: 600, the cap
    assert cache.capacity == 600 and cache.keys[1].shape == (2, 2, 600, 4)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-4, atol=1e-5)
