"""examples/finetune_instructions.py and examples/chat.py: a short run end to end, chat with piped input,
and each kind of bad input giving one line `error: ...` and status 2.

The error cases call the scripts' main() in this process (they stop before any training); the run and
the chat are subprocesses, as a user starts them."""

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from tests import test_instruct
from tests.test_instruct import free_port, toy_entries
from tinygrad_llm.finetune import instruct
from tinygrad_llm.models.generate import generate
from tinygrad_llm.finetune.lora import load_adapter, merge_lora
from tinygrad_llm.models.gpt import GPT
from tests.conftest import assert_clean_exit, load_script, save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
ollama_stub = test_instruct.ollama_stub  # the fixture, shared
FINETUNE = ROOT / "examples" / "finetune_instructions.py"
CHAT = ROOT / "examples" / "chat.py"


finetune_script = load_script(FINETUNE)
finetune_main = finetune_script.main
chat_main = load_script(CHAT).main


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A data file of toy entries and a tiny model directory with its BPE beside it, as pretrain.py writes."""
    root = tmp_path_factory.mktemp("instruct")
    entries = toy_entries(40)
    (root / "data.json").write_text(json.dumps(entries), encoding="utf-8")
    text = "\n".join(instruct.prompt_text(e) + e["output"] for e in entries)
    save_tiny_model(root / "model", text * 3)
    return root


def cli(script, *args, stdin=None, timeout=120):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), *map(str, args)], input=stdin, check=False,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


# ---- a run and a chat ----------------------------------------------------------------------------


def test_finetune_run_then_chat(base, tmp_path, ollama_stub):
    entries = toy_entries(40)
    entries.insert(3, {"instruction": "No output here.", "input": ""})  # skipped, with a warning
    data = tmp_path / "data.json"
    data.write_text(json.dumps(entries), encoding="utf-8")
    out = tmp_path / "run"
    result = cli(FINETUNE, "--data", data, "--init-from", base / "model", "--epochs", 2, "--batch-size", 4,
                 "--lr", 3e-3, "--eval-every", 4, "--max-new-tokens", 6, "--out", out, "--judge-url", ollama_stub[0])
    assert result.returncode == 0, result.stderr
    assert "judge llama3: average score 73.00 over 4 of 4 responses" in result.stdout
    assert "warning: skipped 1 of 41 entries: entry 3 (no 'output')" in result.stderr
    assert "34 train, 2 val, 4 test entries" in result.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and records[-1]["step"] == 16
    assert records[-1]["train_loss"] < records[0]["train_loss"] and records[-1]["val_loss"] < records[0]["val_loss"]
    responses = json.loads((out / instruct.RESPONSES_FILE).read_text(encoding="utf-8"))
    assert len(responses) == 4
    assert all(set(r) == {"instruction", "input", "output", "model_response", "judge_score"} for r in responses)
    assert [r["judge_score"] for r in responses] == [73] * 4
    for name in ("config.json", "model.safetensors", "encoder.json", "vocab.bpe"):
        assert (out / "model" / name).is_file()
    assert_model_gives_the_responses(out)

    # chat.py with piped stdin: each line is answered as generate() answers its prompt; an empty line ends it
    chat = cli(CHAT, "--model", out / "model", "--max-new-tokens", 6, stdin="Say hello.\nAdd one to 7.\n\nignored\n")
    assert chat.returncode == 0, chat.stderr
    model, tok = instruct.load_model(out / "model")
    expected = ""
    for line in ("Say hello.", "Add one to 7."):
        ids = tok.encode(instruct.prompt_text({"instruction": line, "input": ""}))
        new = generate(model, ids, 6, eos_id=tok.eot_token)[len(ids):]
        expected += tok.decode(new.tolist()) + "\n\n"
    assert chat.stdout == expected


def assert_model_gives_the_responses(out):
    """The exported model/ answers the test entries as the run did."""
    responses = json.loads((out / instruct.RESPONSES_FILE).read_text(encoding="utf-8"))
    model, tok = instruct.load_model(out / "model")
    entries = [{k: r[k] for k in instruct.FIELDS} for r in responses]
    answers = instruct.generate_responses(model, tok, entries, max_new_tokens=6, progress=False)
    assert [a["model_response"] for a in answers] == [r["model_response"] for r in responses]


def test_lora_run_saves_an_adapter_and_exports_merged_weights(base, tmp_path):
    out = tmp_path / "run"
    result = cli(FINETUNE, "--data", base / "data.json", "--init-from", base / "model", "--lora", 2,
                 "--lora-alpha", 4, "--max-steps", 3, "--batch-size", 4, "--lr", 1e-2, "--max-new-tokens", 6,
                 "--out", out)
    assert result.returncode == 0, result.stderr
    assert "LoRA on 8 layers: trainable" in result.stdout
    assert_model_gives_the_responses(out)
    merged = GPT.from_pretrained(out / "model")
    rebuilt = GPT.from_pretrained(base / "model")
    load_adapter(rebuilt, out / "adapter.safetensors")
    merge_lora(rebuilt)
    untouched = GPT.from_pretrained(base / "model").state_dict()
    changed = 0
    for name, value in merged.state_dict().items():
        np.testing.assert_allclose(value, rebuilt.state_dict()[name], rtol=1e-5, atol=1e-6)
        changed += not np.array_equal(value, untouched[name])
    assert changed == 8  # the wrapped weights moved; embeddings, biases and LayerNorms stayed frozen


def outcome(out):
    """What a run ends with: its evaluation records (without their timings) and the test responses."""
    records = [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_sec", "elapsed")}
               for line in (out / "metrics.jsonl").read_text().splitlines()]
    return records, json.loads((out / instruct.RESPONSES_FILE).read_text(encoding="utf-8"))


def ctrl_c_after(step):
    """An on_step for Trainer: Ctrl-C (SIGINT to this process) once `step` is done."""
    def on_step(trainer):
        if trainer.step == step:
            os.kill(os.getpid(), signal.SIGINT)

    return on_step


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("flags", [[], ["--lora", "2"]], ids=["all", "lora"])
def test_a_stopped_and_resumed_fine_tuning_ends_as_an_uninterrupted_one(base, tmp_path, capsys, monkeypatch, flags):
    """Two epochs (8 steps) in one go, or stopped by Ctrl-C after step 3 and then --resume without --data
    (the settings come from the checkpoint): the same losses and answers, and the same model, bit for
    bit. The resumed run starts inside the first epoch and crosses into the second."""
    common = ["--data", base / "data.json", "--init-from", base / "model", "--batch-size", 8, "--lr", 3e-3,
              "--eval-every", 1, "--eval-batches", 1, "--max-new-tokens", 3, "--warmup", 2, *flags]
    assert finetune_main([*map(str, common), "--out", str(tmp_path / "full")]) == 0
    with monkeypatch.context() as m:
        m.setattr(finetune_script, "Trainer", partial(finetune_script.Trainer, on_step=ctrl_c_after(3)))
        capsys.readouterr()
        assert finetune_main([*map(str, common), "--out", str(tmp_path / "cut")]) == 130
    err = capsys.readouterr().err
    assert f"interrupted at step 3/8; checkpoint saved in {tmp_path / 'cut' / 'checkpoint.safetensors'}." in err
    assert f"examples/finetune_instructions.py --out {tmp_path / 'cut'} --resume" in err
    assert finetune_main(["--out", str(tmp_path / "cut"), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed at step 3/8 (epoch 1, batch 3)" in out, out
    assert outcome(tmp_path / "cut") == outcome(tmp_path / "full")
    assert [r["step"] for r in outcome(tmp_path / "cut")[0]] == list(range(9))
    assert (tmp_path / "cut" / "model" / "model.safetensors").read_bytes() == (
        tmp_path / "full" / "model" / "model.safetensors").read_bytes()


def test_data_is_required_unless_resuming(tmp_path, capsys):
    assert_clean_exit(finetune_main(["--out", str(tmp_path / "o")]), capsys,
                      "the following arguments are required: --data")


# ---- bad input -----------------------------------------------------------------------------------


def finetune(base, tmp_path, *args, data=None):
    data = data if data is not None else base / "data.json"
    return finetune_main(["--data", str(data), "--init-from", str(base / "model"), "--out", str(tmp_path / "o"),
                          *map(str, args)])


def write(tmp_path, text):
    path = tmp_path / "d.json"
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_data_file(base, tmp_path, capsys):
    assert_clean_exit(finetune(base, tmp_path, data=tmp_path / "nope.json"), capsys, "nope.json")


def test_invalid_json(base, tmp_path, capsys):
    assert_clean_exit(finetune(base, tmp_path, data=write(tmp_path, '[{"instruction": ')), capsys, "not valid JSON")


def test_not_a_list(base, tmp_path, capsys):
    assert_clean_exit(finetune(base, tmp_path, data=write(tmp_path, '{"data": []}')), capsys, "not a list")


def test_all_entries_bad(base, tmp_path, capsys):
    data = write(tmp_path, json.dumps([{"instruction": "a"}, {"input": 1}]))
    assert_clean_exit(finetune(base, tmp_path, data=data), capsys, "none of the 2 entries", "entry 0", "entry 1")


def test_on_bad_error_names_the_entry(base, tmp_path, capsys):
    entries = toy_entries(10)
    entries[6]["input"] = None
    data = write(tmp_path, json.dumps(entries))
    assert_clean_exit(finetune(base, tmp_path, "--on-bad", "error", data=data), capsys, "entry 6", "'input'")


@pytest.mark.parametrize("flags, words", [
    (["--lr", "0"], "--lr"),
    (["--max-length", "1"], "--max-length"),
    (["--max-length", "500"], "context length 128"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lora", "0"], "--lora"),
    (["--batch-size", "64"], "batch_size=64"),  # more than the 34 training entries
])
def test_bad_flags(base, tmp_path, capsys, flags, words):
    assert_clean_exit(finetune(base, tmp_path, *flags), capsys, words)


def test_unwritable_out(base, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    code = finetune_main(["--data", str(base / "data.json"), "--init-from", str(base / "model"),
                          "--out", str(tmp_path / "file" / "o")])
    assert_clean_exit(code, capsys)


def test_init_from_a_directory_without_a_model(base, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = finetune_main(["--data", str(base / "data.json"), "--init-from", str(tmp_path / "empty"),
                          "--out", str(tmp_path / "o")])
    assert_clean_exit(code, capsys, "config.json")


def test_judge_that_cannot_be_reached(base, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert_clean_exit(finetune(base, tmp_path, "--judge-url", url), capsys, "cannot reach the judge", url)


def test_chat_on_a_missing_model_directory(tmp_path, capsys):
    assert_clean_exit(chat_main(["--model", str(tmp_path / "nope")]), capsys, "nope")


# ---- a Llama-family model in its chat template -----------------------------------------------------


def test_llama_lora_run_merged_directory_loads_in_ours_and_transformers(tmp_path):
    """A tiny random Llama that transformers writes, with a ChatML tokenizer the tokenizers library trains,
    fine-tuned with --lora 2: model/ holds the merged weights and the tokenizer's files; ours and transformers
    load it with equal logits and ids, it equals the base with the adapter merged, and it answers the test
    entries as the run did."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from tinygrad_llm.models.pretrained import load_pretrained

    base_dir = test_instruct.tiny_chat_llama(tmp_path / "base")
    data = tmp_path / "data.json"
    data.write_text(json.dumps(toy_entries(40)), encoding="utf-8")
    out = tmp_path / "run"
    result = cli(FINETUNE, "--data", data, "--init-from", base_dir, "--lora", 2, "--max-steps", 3, "--batch-size", 4,
                 "--lr", 1e-2, "--max-new-tokens", 6, "--mask-prompt", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "prompts in the model's chat template" in result.stdout and "LoRA on 15 layers" in result.stdout
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / "model" / name).is_file()
    assert_model_gives_the_responses(out)

    merged, tok = load_pretrained(out / "model")
    rebuilt, _ = load_pretrained(base_dir)
    load_adapter(rebuilt, out / "adapter.safetensors")
    merge_lora(rebuilt)
    untouched = load_pretrained(base_dir)[0].state_dict()
    changed = 0
    for name, value in merged.state_dict().items():
        np.testing.assert_allclose(value, rebuilt.state_dict()[name], rtol=1e-5, atol=1e-6)
        changed += not np.array_equal(value, untouched[name])
    assert changed == 15  # 7 Linear layers in each of the 2 blocks and the untied head; embeddings, norms frozen

    theirs = transformers.AutoModelForCausalLM.from_pretrained(out / "model").eval()
    their_tok = transformers.AutoTokenizer.from_pretrained(out / "model")
    messages = test_instruct.instruct.chat_messages(toy_entries(1)[0])
    ids = tok.apply_chat_template(messages)
    assert their_tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False) == ids
    with torch.no_grad():
        expected = theirs(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(merged(np.array([ids])).data, expected, atol=1e-4, rtol=0)
