"""examples/chat.py on every source load_pretrained takes: the real SmolLM2-135M-Instruct GGUF answering the
issue's question as transformers does (one subprocess, as a user runs it), a multi-turn chat whose ids are
exactly the chat template's for the conversation so far (a tiny random Llama transformers writes, in this
process), the KV cache kept from turn to turn (each turn fed only the ids it does not hold, the answers
those of a fresh prefill, on the tiny Llama and on SmolLM2), and each bad source as one line `error: ...`
with status 2."""

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
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


def run_chat_counting(monkeypatch, capsys, args, typed):
    """chat.py's main as run_chat runs it, with the loaded model's forward counting the positions each pass
    is fed: (status, stdout, model, tokenizer, [(a turn's ids, the positions each of its passes was fed)])."""
    loaded, turns = [], []
    real_load, real_stream = instruct.load_model, chat.stream

    def load(*a, **kw):
        model, tok = real_load(*a, **kw)
        forward = model.forward

        def counting(ids, cache=None, last_only=False):
            turns[-1][1].append(np.shape(ids)[1])  # ids (B, T)
            return forward(ids, cache, last_only)

        model.forward = counting
        loaded.append((model, tok))
        return model, tok

    def recording_stream(model, ids, *a, **kw):
        turns.append((list(ids), []))
        return real_stream(model, ids, *a, **kw)

    monkeypatch.setattr(instruct, "load_model", load)
    monkeypatch.setattr(chat, "stream", recording_stream)
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    code = chat.main(args)
    model, tok = loaded[0]
    del model.forward  # the counting wrapper off: the class's forward again
    return code, capsys.readouterr().out, model, tok, turns


def common_prefix(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_turns(model, tok, turns, max_new_tokens):
    """Each turn's answer generated afresh (a new cache, the whole prompt prefilled) and held against
    what the chat fed: its first pass only the ids after the longest common prefix of the turn's ids and
    the ids the earlier passes fed (what the kept cache holds), then one token a pass. Returns the
    stdout the fresh answers give."""
    held, expected = [], ""
    for ids, fed in turns:
        new = generate(model, ids, instruct.response_budget(model, ids, max_new_tokens),
                       eos_id=instruct.stop_ids(tok))[len(ids):].tolist()
        reused = min(common_prefix(held, ids), len(ids) - 1)
        assert fed == [len(ids) - reused] + [1] * (len(fed) - 1)
        held = (ids + new)[:reused + sum(fed)]  # every position fed is kept
        expected += tok.decode(new) + "\n\n"
    return expected


def test_each_turn_feeds_only_the_ids_the_kept_cache_does_not_hold(chat_dir, monkeypatch, capsys):
    typed = ["Add one to 3.", "Say hello.", "Add two to 5."]
    code, out, model, tok, turns = run_chat_counting(
        monkeypatch, capsys, ["--model", str(chat_dir), "--max-new-tokens", "5", "--system", "Be brief."],
        "\n".join(typed) + "\n")
    assert code == 0 and len(turns) == 3
    assert out == check_turns(model, tok, turns, 5)  # the answers a fresh prefill of each turn gives
    for (before, _), (ids, fed) in zip(turns, turns[1:]):
        # at least the last turn's prompt is reused (this random model's answers, bytes that decode to
        # U+FFFD, are encoded otherwise when the conversation is rendered again: the prefix ends there)
        assert ids[:len(before)] == before and fed[0] <= len(ids) - len(before)


def test_smollm2_two_turns_on_the_kept_cache_answer_as_fresh_prefills(smollm2_gguf, monkeypatch, capsys):
    typed = ["What is the capital of France?", "And of Italy?"]
    code, out, model, tok, turns = run_chat_counting(monkeypatch, capsys, ["--model", str(smollm2_gguf),
                                                                           "--max-new-tokens", "40"],
                                                     "\n".join(typed) + "\n")
    assert code == 0 and len(turns) == 2
    assert out.startswith(FRANCE + "\n\n")
    assert out == check_turns(model, tok, turns, 40)
    (first, _), (second, fed) = turns
    assert second[:len(first)] == first and fed[0] < len(second) - len(first)  # the first answer was cached too


def test_alpaca_prompt_for_a_model_without_a_template(chat_dir, tmp_path, monkeypatch, capsys):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(chat_dir, plain)
    (plain / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>"}', encoding="utf-8")
    typed = ["Say hello.", "Say goodbye."]
    code, out, model, tok, turns = run_chat_counting(monkeypatch, capsys, ["--model", str(plain), "--max-new-tokens",
                                                                           "3"], "\n".join(typed) + "\n")
    assert code == 0 and [ids for ids, _ in turns] == [
        instruct.encode_text(tok, instruct.prompt_text({"instruction": line, "input": ""})) for line in typed]
    # each line answered on its own, as afresh; the second fed only what follows the header both prompts share
    assert out == check_turns(model, tok, turns, 3)
    assert common_prefix(turns[0][0], turns[1][0]) > 20


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
