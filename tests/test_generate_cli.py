"""examples/generate.py on the Llama family: a Hugging Face directory (a tiny random Llama transformers writes) and
a GGUF file continue a prompt as `generate` does, --chat asks it as a user turn in the chat template and prints
the answer up to a stop id, and each bad source is one line `error: ...` with status 2 (in this process).
GPT-2 sources keep their tests in tests/test_generate.py."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import assert_clean_error
from tests.test_instruct import tiny_chat_llama
from tinygrad_llm.models.generate import generate
from tinygrad_llm.models.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]


def load_script(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load_script(ROOT / "examples" / "generate.py")


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return tiny_chat_llama(tmp_path_factory.mktemp("gen") / "llama")


def test_a_llama_directory_continues_the_prompt(chat_dir, capsys):
    model, tok = load_pretrained(chat_dir)
    assert script.main(["--model", str(chat_dir), "--prompt", "Add one", "--max-new-tokens", "6"]) == 0
    ids = tok.encode("Add one", add_special_tokens=True)
    new = generate(model, ids, 6, eos_id=tok.stop_ids)[len(ids):].tolist()
    assert capsys.readouterr().out == "Add one" + tok.decode(new) + "\n"


def test_chat_prints_the_answer_to_the_prompt_as_a_user_turn(chat_dir, capsys):
    model, tok = load_pretrained(chat_dir)
    assert script.main(["--model", str(chat_dir), "--chat", "--prompt", "Say hello.", "--max-new-tokens", "6"]) == 0
    ids = tok.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True)
    new = generate(model, ids, 6, eos_id=tok.stop_ids)[len(ids):].tolist()
    assert capsys.readouterr().out == tok.decode(new) + "\n"


def test_smollm2_gguf_chat(smollm2_gguf, capsys):
    args = ["--model", str(smollm2_gguf), "--chat", "--prompt", "What is the capital of France?"]
    assert script.main(args) == 0
    assert capsys.readouterr().out == "The capital of France is Paris.\n"  # transformers' greedy answer


def test_bad_sources_are_one_line(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    def error(*args):
        return SimpleNamespace(returncode=script.main(list(args)), stderr=capsys.readouterr().err)

    assert_clean_error(error("--model", str(tmp_path / "missing.gguf")), "missing.gguf")
    corrupt = tmp_path / "bad.gguf"
    corrupt.write_bytes(b"not a gguf file at all")
    assert_clean_error(error("--model", str(corrupt)), "bad.gguf")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert_clean_error(error("--model", "nobody/no-such-model"), "nobody/no-such-model", "HF_HUB_OFFLINE")
    assert_clean_error(error("--model", "gpt2", "--chat", "--prompt", "hi"), "chat template")
