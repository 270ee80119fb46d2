"""Beyond the book: a Llama-family model (tinygrad_llm/models/llama.py) written in Hugging Face's layout,
`config.json` and `model.safetensors` (float32, Hugging Face's names), which transformers'
AutoModelForCausalLM and our loader (llama_weights.py, which reads the names and files named here) both
read back. `Llama.save_pretrained` calls `save_pretrained`; `pretrained.save_model` adds the tokenizer's
files. The writer is a module of its own because the model imports it, and the loader imports the model.
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from autograd.checkpoint import CheckpointError, write_safetensors, write_text
from tinygrad_llm.finetune.lora import merged_state_dict
from tinygrad_llm.models.llama_config import RopeScaling, config_to_hf, rope_frequencies

HF_CONFIG, HF_WEIGHTS = "config.json", "model.safetensors"


def hf_name(name):
    """Hugging Face's key of our parameter `name`: layers.0.mlp.up_proj.weight -> model.layers.0.mlp.up_proj.weight."""
    return name if name.startswith("lm_head.") else f"model.{name}"


def save_pretrained(model, directory):
    """Write `directory`/config.json and model.safetensors in Hugging Face's layout (float32, Hugging
    Face's names, no lm_head.weight when tied), which transformers' AutoModelForCausalLM and this loader
    both read. A LoRA-wrapped layer is written as the plain Linear it amounts to."""
    directory = Path(directory)
    config = hf_config(model)  # first: a model config.json cannot describe leaves no files behind
    directory.mkdir(parents=True, exist_ok=True)
    state = merged_state_dict(model)
    tensors = [(hf_name(name), array, False) for name, array in state.items()]
    write_safetensors(directory / HF_WEIGHTS, tensors, metadata={"format": "pt"})
    write_text(directory / HF_CONFIG, json.dumps(config, indent=2) + "\n")


def hf_config(model):
    """The config.json (a dict) that rebuilds `model`, rotary frequencies included.

    subtle: a GGUF file of Llama 3.1+ gives its scaled frequencies as the rope_freqs tensor, not as
    settings (`load_gguf` puts them in `model.inv_freq`, and its config has no rope_scaling), so written
    as it is the config would rebuild plain RoPE: another model. The released files' scaling is Llama
    3's with low and high factors 1 and 4 over 8192 positions, its factor the largest of the tensor's;
    frequencies that it does not give are an error rather than a config.json of another model."""
    cfg = model.config
    if not np.allclose(model.inv_freq, rope_frequencies(cfg.head_dim, cfg.rope_base, cfg.rope_scaling), rtol=1e-6):
        plain = rope_frequencies(cfg.head_dim, cfg.rope_base)
        scaling = RopeScaling(float(np.max(plain / model.inv_freq)), 1.0, 4.0, 8192)
        if not np.allclose(model.inv_freq, rope_frequencies(cfg.head_dim, cfg.rope_base, scaling), rtol=1e-5):
            raise CheckpointError("the model's rotary frequencies (a GGUF file's rope_freqs) are not Llama 3's "
                                  "scaling with low and high factors 1 and 4 over 8192 positions, the one "
                                  "config.json's rope_scaling can hold here; the saved model would differ")
        cfg = replace(cfg, rope_scaling=scaling)
    return config_to_hf(cfg)


__all__ = ["HF_CONFIG", "HF_WEIGHTS", "hf_name", "save_pretrained", "hf_config"]
