"""The Llama family's weights (tinygrad_llm/models/llama_weights.py, pretrained.py): Hugging Face directories
in float32, bfloat16, float16 and shards; GGUF files, quantized and with llama.cpp's row order; our files
read back by transformers; `load_pretrained`; and every bad input as one clear error. The real
SmolLM2-135M-Instruct GGUF against transformers on the same file where the file is here."""

import json

import numpy as np
import pytest

from autograd.checkpoint import CheckpointError
from tinygrad_llm.models.generate import generate
from tinygrad_llm.models.llama import Llama, LlamaConfig
from tinygrad_llm.models.llama_weights import GGUF_NAMES, load_gguf, load_llama, save_pretrained, unpermute_rows
from tinygrad_llm.models.pretrained import load_pretrained
from tests.test_llama import hf_tiny

torch = pytest.importorskip("torch")
IDS = np.random.default_rng(0).integers(0, 97, (2, 16))


def hf_logits(hf, ids=IDS):
    with torch.no_grad():
        return hf(torch.tensor(ids)).logits.float().numpy()


def saved(hf, directory, **kwargs):
    hf.save_pretrained(directory, safe_serialization=True, **kwargs)
    return directory


# ---------------------------------------------------------------------------------------------------
# Hugging Face directories


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_files_widen_to_float32_exactly(tmp_path, dtype):
    hf = hf_tiny().to(getattr(torch, dtype))
    model = load_llama(saved(hf, tmp_path))
    hf = hf.float()  # the same rounded weights, widened
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, hf.state_dict()[f"model.{name}" if name != "lm_head.weight" else name].numpy())
    np.testing.assert_allclose(model(IDS).data, hf_logits(hf), atol=1e-4)


def test_sharded_directory_through_its_index(tmp_path):
    hf = hf_tiny(tie_word_embeddings=False)
    saved(hf, tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 2
    np.testing.assert_allclose(load_llama(tmp_path)(IDS).data, hf_logits(hf), atol=1e-4)


@pytest.mark.parametrize("kind, overrides", [
    ("llama", dict(tie_word_embeddings=False)),
    ("llama", dict(tie_word_embeddings=True, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    ("qwen3", dict(tie_word_embeddings=True)),
], ids=["llama", "llama3-tied", "qwen3"])
def test_our_files_load_back_in_transformers_and_ours(tmp_path, kind, overrides):
    from transformers import AutoModelForCausalLM

    ours = load_llama(saved(hf_tiny(kind, **overrides), tmp_path / "hf"))
    save_pretrained(ours, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["model_type"] == kind and config["architectures"] == [f"{'Qwen3' if kind == 'qwen3' else 'Llama'}ForCausalLM"]
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    back = load_llama(tmp_path / "ours")
    assert back.config == ours.config
    np.testing.assert_allclose(hf_logits(theirs), ours(IDS).data, atol=1e-4)
    np.testing.assert_array_equal(back(IDS).data, ours(IDS).data)


def test_missing_tensor_and_wrong_shape_name_the_key(tmp_path):
    from safetensors.numpy import load_file, save_file

    directory = saved(hf_tiny(tie_word_embeddings=False), tmp_path)
    tensors = load_file(directory / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.norm.weight"] = np.ones(31, dtype=np.float32)
    save_file(tensors, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing key model.layers.1.mlp.up_proj.weight") as e:
        load_llama(directory)
    assert "model.norm.weight: expected shape (32,), got (31,)" in str(e.value)


def test_truncated_safetensors_names_the_file(tmp_path):
    directory = saved(hf_tiny(), tmp_path)
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_llama(directory)


def test_bad_configs_are_refused_with_one_line(tmp_path):
    directory = saved(hf_tiny(), tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "num_attention_heads": 9, "num_key_value_heads": 4,
                                                       "head_dim": 4}))
    with pytest.raises(CheckpointError, match="config.json: n_heads 9 must be a multiple of n_kv_heads 4"):
        load_llama(directory)
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    with pytest.raises(CheckpointError, match="model_type 'mistral' is not supported"):
        load_pretrained(directory)


# ---------------------------------------------------------------------------------------------------
# GGUF files, written here the way llama.cpp's converter writes them


def llama_cpp_permute(w, n_heads):
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute`: within each head, rows i and i + D/2 of
    Hugging Face's rotate-half layout become neighbours."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, hf, arch="llama", qtype="F32", skip=(), extra=None):
    """A GGUF v3 file of a transformers model, as llama.cpp's converter lays it out (names, metadata,
    attn_q / attn_k rows permuted for arch llama), its matrices stored as `qtype`."""
    import gguf

    cfg = hf.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    ours = {v: k for k, v in GGUF_NAMES.items()}
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_key_length(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    for key, value in (extra or {}).items():
        w.add_uint32(key, value)
    for name, t in hf.state_dict().items():
        short = name.removeprefix("model.")
        if short == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        parts = short.split(".")
        block = parts[1] if parts[0] == "layers" else None
        pattern = f"layers.{{}}.{'.'.join(parts[2:])}" if block is not None else short
        gname = ours[pattern].format(block)
        if gname in skip:
            continue
        a = t.float().numpy()
        if arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
            a = llama_cpp_permute(a, H if "attn_q" in gname else KV)
        if a.ndim == 2 and qtype != "F32":
            kind = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(gname, gguf.quants.quantize(a, kind), raw_dtype=kind)
        else:
            w.add_tensor(gname, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unpermute_undoes_llama_cpps_row_order():
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(32, 3)
    np.testing.assert_array_equal(unpermute_rows(llama_cpp_permute(w, 4), 4), w)
    # one head of D = 4: Hugging Face's rows 0 1 | 2 3 (the two halves) are stored as 0 2 1 3
    np.testing.assert_array_equal(llama_cpp_permute(np.arange(4.0)[:, None], 1)[:, 0], [0, 2, 1, 3])


@pytest.mark.parametrize("kind, tied", [("llama", False), ("llama", True), ("qwen3", True)])
def test_gguf_float32_equals_the_model_it_was_written_from(tmp_path, kind, tied):
    hf = hf_tiny(kind, tie_word_embeddings=tied)
    model = load_gguf(write_gguf(tmp_path / "m.gguf", hf, arch=kind))
    assert model.config.tie_weights == tied and model.config.model_type == kind
    np.testing.assert_allclose(model(IDS).data, hf_logits(hf), atol=1e-4)


@pytest.mark.parametrize("qtype", ["Q8_0", "F16", "BF16"])
def test_gguf_quantized_equals_transformers_on_the_same_file(tmp_path, qtype):
    """transformers dequantizes the file with the same package: the same float32 weights, the same logits."""
    from transformers import AutoModelForCausalLM

    hf = hf_tiny(hidden_size=64, intermediate_size=128, tie_word_embeddings=False)  # rows of 32-value blocks
    path = write_gguf(tmp_path / "m.gguf", hf, qtype=qtype)
    ours = load_gguf(path)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    np.testing.assert_allclose(ours(IDS).data, hf_logits(theirs), atol=1e-4)
    assert np.abs(ours(IDS).data - hf_logits(hf)).max() < 0.1  # and near the unquantized model


def test_gguf_bad_inputs_are_named(tmp_path):
    hf = hf_tiny()
    good = write_gguf(tmp_path / "good.gguf", hf)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.gguf is not a readable GGUF file"):
        load_gguf(truncated)
    with pytest.raises(CheckpointError, match="general.architecture 'gemma' is not supported"):
        load_gguf(write_gguf(tmp_path / "gemma.gguf", hf, arch="gemma"))
    with pytest.raises(CheckpointError, match="missing tensor blk.1.ffn_up.weight"):
        load_gguf(write_gguf(tmp_path / "missing.gguf", hf, skip=("blk.1.ffn_up.weight",)))
    with pytest.raises(CheckpointError, match="n_heads 9 must be a multiple of n_kv_heads 4"):
        load_gguf(_bare_gguf(tmp_path / "odd.gguf", n_heads=9, n_kv_heads=4))
    with pytest.raises(CheckpointError, match="token_embd.weight: quantization type I32 is not supported"):
        load_gguf(_bare_gguf(tmp_path / "int32.gguf", embedding=np.zeros((4, 8), dtype=np.int32)))


def _bare_gguf(path, n_heads=2, n_kv_heads=1, embedding=None):
    """A one-layer llama GGUF with its metadata and at most an embedding tensor."""
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    for key, value in (("llama.block_count", 1), ("llama.context_length", 8), ("llama.embedding_length", 8),
                       ("llama.feed_forward_length", 8), ("llama.attention.head_count", n_heads),
                       ("llama.attention.head_count_kv", n_kv_heads), ("llama.vocab_size", 4)):
        w.add_uint32(key, value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tensor("token_embd.weight", embedding if embedding is not None else np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---------------------------------------------------------------------------------------------------
# load_pretrained


def test_load_pretrained_reads_every_kind_of_source(tmp_path):
    from tinygrad_llm.models.gpt import GPT
    from tests.conftest import tiny_gpt
    from tinygrad_llm.text.tokenizer import BPETokenizer

    hf = hf_tiny()
    model, tok = load_pretrained(saved(hf, tmp_path / "llama"))
    assert isinstance(model, Llama) and tok is None  # the directory holds no tokenizer.json
    np.testing.assert_allclose(model(IDS).data, hf_logits(hf), atol=1e-4)
    model, tok = load_pretrained(write_gguf(tmp_path / "m.gguf", hf))
    assert isinstance(model, Llama) and tok is None  # nor this GGUF file a vocabulary
    gpt = tiny_gpt()
    gpt.save_pretrained(tmp_path / "gpt")
    BPETokenizer.train("a few words to train a few merges on", 260).save(tmp_path / "gpt")
    model, tok = load_pretrained(tmp_path / "gpt")
    assert isinstance(model, GPT) and isinstance(tok, BPETokenizer)


def test_load_pretrained_offline_and_gated_say_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub as hub
    from huggingface_hub import constants, errors

    from tinygrad_llm.models.gpt2_weights import WeightsUnavailableError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE.*local directory .* or a .gguf file"):
        load_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def gated(repo, local_files_only=False, **kwargs):
        if local_files_only:
            raise errors.LocalEntryNotFoundError("not cached")
        error = errors.GatedRepoError.__new__(errors.GatedRepoError)
        Exception.__init__(error, "401 Client Error: access to this model is restricted")
        raise error

    monkeypatch.setattr(hub, "snapshot_download", gated)
    with pytest.raises(WeightsUnavailableError, match="gated: accept its licence .*huggingface-cli login"):
        load_pretrained("meta-llama/Llama-3.2-1B-Instruct", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a GGUF file, a model directory"):
        load_pretrained(tmp_path / "absent.gguf")


def test_bad_sources_print_one_error_line(tmp_path):
    """The command-line contract: each error above is one of cli.USER_ERRORS, one line once printed."""
    from tinygrad_llm.support.cli import USER_ERRORS, one_line

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
                                                      "num_hidden_layers": 1, "num_attention_heads": 9,
                                                      "num_key_value_heads": 4, "intermediate_size": 8}))
    with pytest.raises(USER_ERRORS) as e:
        load_pretrained(tmp_path)
    assert "\n" not in one_line(e.value) and "n_heads 9 must be a multiple of n_kv_heads 4" in one_line(e.value)


# ---------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct (Q4_1 GGUF) against transformers on the same file

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    """(ours, our tokenizer, transformers' model, transformers' tokenizer) of the real file, loaded once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours, tok = load_pretrained(smollm2_gguf)
    theirs = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                  dtype=torch.float32).eval()
    their_tok = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    return ours, tok, theirs, their_tok


def test_smollm2_logits_equal_transformers(smollm2):
    ours, _, theirs, their_tok = smollm2
    assert ours.config == LlamaConfig.preset("smollm2-135m", rms_norm_eps=ours.config.rms_norm_eps)
    worst = 0.0
    for prompt in PROMPTS:
        ids = np.array([their_tok(prompt)["input_ids"]])
        diff = np.abs(ours(ids).data - hf_logits(theirs, ids)).max()
        worst = max(worst, diff)
    print(f"SmolLM2-135M-Instruct Q4_1: max |logit difference| over {len(PROMPTS)} prompts = {worst:.2e}")
    assert worst < 5e-4


def test_smollm2_answers_the_chat_question_as_transformers_does(smollm2):
    ours, tok, theirs, their_tok = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = their_tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert len(ids) == 37 and ids[:20] == [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519,
                                            28, 7018, 411, 407, 19712, 8182, 2]
    end = their_tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        expected = theirs.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    got = generate(ours, np.array(ids), 12, eos_id=end)[len(ids):].tolist()
    assert got + [end] == expected[:len(got) + 1]
    assert their_tok.decode(expected, skip_special_tokens=False).startswith("The capital of France is Paris.<|im_end|>")
    assert tok.decode(got) == "The capital of France is Paris."
