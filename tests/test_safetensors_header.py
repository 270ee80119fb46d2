"""A safetensors header that is valid JSON but points tensors at the wrong bytes is an error naming the
file and the tensor (the format's specification: known dtypes, 0 <= begin <= end <= data length,
size = prod(shape) * itemsize, tensors tiling the data with no gap or overlap); and every file our
writer makes reads back through the `safetensors` package."""

import json

import numpy as np
import pytest
from safetensors import safe_open

from autograd.checkpoint import CheckpointError, FileFormatError, write_safetensors
from tinygrad_llm.models.gpt import GPT, GPTConfig
from autograd.checkpoint import read_safetensors_header
from tinygrad_llm.models.gpt2_weights import load_weights


def _write(path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(4, dtype=np.int64)
    write_safetensors(path, [("a", a, False), ("b", b, False)], metadata={"format": "pt"})
    return a, b


def _rewrite_header(path, change):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    change(header)
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n:])


def test_our_files_read_back_through_the_package(tmp_path):
    a, b = _write(tmp_path / "t.safetensors")
    with safe_open(tmp_path / "t.safetensors", framework="numpy") as f:
        np.testing.assert_array_equal(f.get_tensor("a"), a)
        np.testing.assert_array_equal(f.get_tensor("b"), b)
        assert f.metadata() == {"format": "pt"}
    header, metadata, _ = read_safetensors_header(tmp_path / "t.safetensors")
    assert header["a"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]} and metadata == {"format": "pt"}
    model = GPT(GPTConfig.preset("cpu-tiny", vocab_size=40, context_length=8))
    model.save_pretrained(tmp_path / "model")
    with safe_open(tmp_path / "model" / "model.safetensors", framework="numpy") as f:
        np.testing.assert_array_equal(f.get_tensor("wte.weight"), model.wte.weight.numpy())
        np.testing.assert_array_equal(f.get_tensor("h.0.attn.c_attn.weight"), model.h[0].attn.c_attn.weight.numpy().T)


@pytest.mark.parametrize("change, words", [
    (lambda h: h["a"].update(data_offsets=[-8, 16]), "tensor a: data_offsets [-8, 16] lie outside the 56 data bytes"),
    (lambda h: h["b"].update(data_offsets=[16, 48]), "tensor b (bytes 16 to 48) overlaps the tensor before it"),
    (lambda h: h["b"].update(data_offsets=[32, 64]), "tensor b: data_offsets [32, 64] lie outside"),
    (lambda h: h["a"].update(shape=[3, 3]), "tensor a holds 24 bytes, not the 36 of F32 (3, 3)"),
    (lambda h: h["a"].update(shape=["2", 3]), "tensor a: shape ['2', 3] is not a list of non-negative integers"),
    (lambda h: h["a"].update(shape=[-2, -3]), "tensor a: shape [-2, -3] is not a list"),
    (lambda h: h["a"].update(dtype="F128"), "tensor a: unknown dtype 'F128'"),
    (lambda h: h["a"].update(data_offsets=[0.0, 24]), "tensor a: data_offsets [0.0, 24] is not two integers"),
    (lambda h: h["a"].pop("dtype"), "tensor a: malformed header entry"),
    (lambda h: h.update(__metadata__={"format": 1}), "__metadata__ must be an object of strings"),
    (lambda h: h.pop("b"), "the tensors cover 24 of the 56 data bytes"),
])
def test_inconsistent_headers_name_the_file_and_tensor(tmp_path, change, words):
    path = tmp_path / "t.safetensors"
    _write(path)
    _rewrite_header(path, change)
    with pytest.raises(CheckpointError) as e:
        read_safetensors_header(path)
    assert str(e.value).startswith(f"{path}: ") and words in str(e.value)
    assert isinstance(e.value, FileFormatError)


def test_overlapping_offsets_do_not_load_other_bytes(tmp_path):
    """Two tensors pointed at the same bytes (each the right size) used to load the same values."""
    model = GPT(GPTConfig.preset("cpu-tiny", vocab_size=40, context_length=8))
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    _rewrite_header(path, lambda h: h["ln_f.bias"].update(data_offsets=h["ln_f.weight"]["data_offsets"]))
    with pytest.raises(CheckpointError, match="ln_f.bias .* overlaps|ln_f.weight .* overlaps"):
        load_weights(GPT(model.config), path)
