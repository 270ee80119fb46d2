"""examples/chat.py on every source load_pretrained takes: the real SmolLM2-135M-Instruct GGUF answering the
issue's question as transformers does (one subprocess, as a user runs it), a multi-turn chat whose ids are
exactly the chat template's for the conversation so far (a tiny random Llama transformers writes, in this
process), and each bad source as one line `error: ...` with status 2."""

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import assert_clean_error
from tests.test_instruct import tiny_chat_llama
from tinygrad_llm.finetune import instruct
from tinygrad_llm.models.generate import generate
from tinygrad_llm.models.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
CHAT = ROOT / "examples" / "chat.py"
# transformers' greedy answer on the same GGUF file (tests/test_llama_weights.py checks it token for token)
FRANCE = "The capital of France is Paris."


def load_script(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chat = load_script(CHAT)


def test_smollm2_answers_the_capital_of_france_streamed(smollm2_gguf):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, str(CHAT), "--model", str(smollm2_gguf), "--max-new-tokens", "40"],
                            input="What is the capital of France?\n", capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert result.stdout == FRANCE + "\n\n"


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return tiny_chat_llama(tmp_path_factory.mktemp("chat") / "llama")


def run_chat(monkeypatch, capsys, args, typed):
    """chat.py's main in this process with `typed` as its piped stdin; (status, stdout, the ids of each turn)."""
    fed = []
    real_stream = chat.stream

    def recording_stream(model, ids, *a, **kw):
        fed.append(list(ids))
        return real_stream(model, ids, *a, **kw)

    monkeypatch.setattr(chat, "stream", recording_stream)
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    code = chat.main(args)
    return code, capsys.readouterr().out, fed


def test_multi_turn_ids_are_the_templates_for_the_conversation_so_far(chat_dir, monkeypatch, capsys):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(chat_dir)
    model, tok = load_pretrained(chat_dir)
    typed = ["Add one to 3.", "Say hello."]
    code, out, fed = run_chat(monkeypatch, capsys, ["--model", str(chat_dir), "--max-new-tokens", "5",
                                                    "--system", "Be brief."], "\n".join(typed) + "\n\nignored\n")
    assert code == 0 and len(fed) == 2
    messages, expected = [{"role": "system", "content": "Be brief."}], ""
    for line, ids in zip(typed, fed):
        messages.append({"role": "user", "content": line})
        assert ids == theirs.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        new = generate(model, ids, 5, eos_id=tok.stop_ids)[len(ids):].tolist()
        expected += tok.decode(new) + "\n\n"
        messages.append({"role": "assistant", "content": tok.decode(new, skip_special_tokens=True).strip()})
    assert out == expected  # each answer streamed as generate gives it, up to a stop id


def test_alpaca_prompt_for_a_model_without_a_template(chat_dir, tmp_path, monkeypatch, capsys):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(chat_dir, plain)
    (plain / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>"}', encoding="utf-8")
    code, out, fed = run_chat(monkeypatch, capsys, ["--model", str(plain), "--max-new-tokens", "3"], "Say hello.\n")
    _, tok = load_pretrained(plain)
    assert code == 0 and fed == [instruct.encode_text(tok, instruct.prompt_text({"instruction": "Say hello.",
                                                                                    "input": ""}))]


def in_process(capsys, code):
    return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)


def test_bad_sources_are_one_line(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    assert_clean_error(in_process(capsys, chat.main(["--model", str(tmp_path / "missing.gguf")])), "missing.gguf",
                       "not a GGUF file")
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    assert_clean_error(in_process(capsys, chat.main(["--model", str(corrupt)])), "corrupt.gguf")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert_clean_error(in_process(capsys, chat.main(["--model", "nobody/no-such-model"])), "nobody/no-such-model",
                       "HF_HUB_OFFLINE")
    assert_clean_error(in_process(capsys, chat.main(["--model", str(tmp_path / "nope")])), "nope")
