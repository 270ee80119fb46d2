"""`Llama.save_pretrained(directory)`, as `GPT.save_pretrained`: config.json + model.safetensors in Hugging
Face's layout, which `tinygrad_llm.load_pretrained` reads back to the same logits bit for bit, and
transformers' AutoModelForCausalLM (where it is installed) to the same logits within float32 rounding;
a LoRA-wrapped model is written as the plain model it amounts to, and a GGUF file's rotary factors as the
rope_scaling that gives them."""

import inspect
import json
from dataclasses import replace

import numpy as np
import pytest

from autograd.checkpoint import CheckpointError
from tinygrad_llm.finetune.lora import apply_lora, lora_layers
from tinygrad_llm.models.gpt import GPT
from tinygrad_llm.models.llama import Llama, LlamaConfig, RopeScaling, rope_frequencies
from tinygrad_llm.models.pretrained import load_pretrained

IDS = np.random.default_rng(0).integers(0, 97, (2, 12))


def transformers_logits(directory, ids=IDS):
    """transformers' logits of the model in `directory`, or a skip where it is not installed."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return theirs(torch.tensor(ids)).logits.numpy()


def test_gpt_and_llama_save_alike():
    assert inspect.signature(Llama.save_pretrained) == inspect.signature(GPT.save_pretrained)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen3"])  # an untied head; a tied one with QK-norm
def test_a_saved_model_loads_back_with_the_same_logits(tmp_path, preset):
    model = Llama(LlamaConfig.preset(preset), seed=3)
    model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    back, tok = load_pretrained(tmp_path / "model")
    assert tok is None  # the tokenizer's files are the caller's to write (pretrained.save_model writes both)
    assert back.config == model.config
    np.testing.assert_array_equal(back(IDS).data, model(IDS).data)
    config = json.loads((tmp_path / "model" / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == model.config.model_type
    np.testing.assert_allclose(transformers_logits(tmp_path / "model"), model(IDS).data, atol=1e-4, rtol=0)


def test_a_lora_model_is_saved_merged(tmp_path):
    model = Llama(LlamaConfig.preset("tiny-llama"), seed=3)
    apply_lora(model, rank=2, alpha=4.0, seed=1)
    for _, layer in lora_layers(model):  # B starts at zero; a trained update, as after some steps
        layer.lora_B.data[...] = np.random.default_rng(2).normal(0.0, 0.1, layer.lora_B.shape)
    expected = model(IDS).data
    model.save_pretrained(tmp_path / "model")
    back, _ = load_pretrained(tmp_path / "model")
    assert not lora_layers(back)
    np.testing.assert_allclose(back(IDS).data, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(transformers_logits(tmp_path / "model"), expected, atol=1e-4, rtol=0)


def test_a_gguf_files_rotary_factors_are_written_as_the_rope_scaling_that_gives_them(tmp_path):
    """Llama 3.1+'s GGUF files hold their scaled frequencies as the rope_freqs tensor, and load_gguf
    divides the plain ones by it (the config keeps no rope_scaling): config.json must still rebuild them."""
    cfg = replace(LlamaConfig.preset("tiny-llama"), rope_base=500000.0)  # wavelengths 6 .. 118,000 positions
    scaling = RopeScaling(8.0, 1.0, 4.0, 8192)  # Llama 3.1's
    factors = rope_frequencies(cfg.head_dim, cfg.rope_base) / rope_frequencies(cfg.head_dim, cfg.rope_base, scaling)
    assert factors.min() == 1.0 and factors.max() == 8.0 and len(np.unique(factors)) == 3  # both ends, one between
    model = Llama(cfg, seed=3)
    model.inv_freq = rope_frequencies(cfg.head_dim, cfg.rope_base) / factors  # as load_gguf does
    long_ids = np.random.default_rng(1).integers(0, 97, (1, 64))
    model.save_pretrained(tmp_path / "model")
    back, _ = load_pretrained(tmp_path / "model")
    assert back.config.rope_scaling == scaling
    np.testing.assert_allclose(back(long_ids).data, model(long_ids).data, atol=1e-6, rtol=0)
    model.inv_freq = rope_frequencies(cfg.head_dim, cfg.rope_base) / factors[::-1]  # no Llama 3 scaling gives these
    with pytest.raises(CheckpointError, match="rope_freqs"):
        model.save_pretrained(tmp_path / "other")
    assert not (tmp_path / "other").exists()
