"""examples/finetune_preferences.py: a short DPO run end to end (against a frozen copy and with --lora),
and each kind of bad input giving one line `error: ...` and status 2. Everything runs the script's
main() in this process."""

import json
import math
from pathlib import Path

import pytest

from tests.conftest import assert_clean_exit, captured, load_script, save_tiny_model, tiny_gpt
from tests.test_preference import toy_preferences
from tinygrad_llm.finetune import instruct
from tinygrad_llm.finetune import preference as dpo

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "finetune_preferences.py"
script = load_script(SCRIPT)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Preference data and a tiny model directory with its BPE beside it, as finetune_instructions.py writes."""
    root = tmp_path_factory.mktemp("preference")
    entries = toy_preferences(40)
    (root / "data.json").write_text(json.dumps(entries), encoding="utf-8")
    text = "\n".join(instruct.prompt_text(e) + e["chosen"] + e["rejected"] for e in entries)
    tok = save_tiny_model(root / "model", text * 3)
    tiny_gpt(vocab_size=tok.n_vocab + 5, context_length=128, seed=0).save_pretrained(root / "other")
    return root


def run(*args):
    return script.main([str(a) for a in args])


def records_of(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("flags", [[], ["--lora", "2", "--lora-alpha", "4"]], ids=["frozen-copy", "lora"])
def test_a_run_raises_the_margin_and_writes_both_models_answers(base, tmp_path, capsys, flags):
    out = tmp_path / "run"
    code = run("--data", base / "data.json", "--init-from", base / "model", "--batch-size", 4, "--max-steps", 8,
               "--lr", 3e-3, "--beta", 0.5, "--eval-every", 4, "--eval-batches", 2, "--max-new-tokens", 4,
               "--out", out, *flags)
    printed = captured(code, capsys)
    assert code == 0, printed.stderr
    assert "34 train, 2 val, 4 test entries" in printed.stdout
    assert ("reference: the adapters off" if flags else "reference: a frozen copy of") in printed.stdout
    records = records_of(out)
    assert [r["step"] for r in records] == [0, 4, 8]
    first, last = records[0], records[-1]
    assert first["val_loss"] == pytest.approx(math.log(2), abs=1e-6) and first["val_reward_margin"] == 0.0
    assert first["train_reward_margin"] == 0.0
    assert last["val_reward_margin"] > 0.2 and last["val_loss"] < first["val_loss"]
    assert last["train_reward_margin"] > last["val_reward_margin"] / 2
    assert "done: 8 steps" in printed.stdout and "val reward margin 0.000; after:" in printed.stdout
    responses = json.loads((out / dpo.RESPONSES_FILE).read_text(encoding="utf-8"))
    assert len(responses) == 4
    assert all(set(r) == {"instruction", "input", "output", "chosen", "rejected", "reference_response",
                          "model_response"} for r in responses)
    assert "Reference model response:" in printed.stdout and "Policy model response:" in printed.stdout
    # the exported model/ is the policy: it answers the test entries as the run did
    model, tok = instruct.load_model(out / "model")
    again = dpo.generate_responses(model, tok, [{k: r[k] for k in ("instruction", "input")} for r in responses], 4,
                                   progress=False)
    assert [a["model_response"] for a in again] == [r["model_response"] for r in responses]
    # and the reference answers as the model we started from
    start, _ = instruct.load_model(base / "model")
    before = dpo.generate_responses(start, tok, responses, 4, key="reference_response", progress=False)
    assert [b["reference_response"] for b in before] == [r["reference_response"] for r in responses]
    assert (out / "adapter.safetensors").is_file() == bool(flags)


def test_bad_entries_are_skipped_with_their_index_or_stop_the_run(base, tmp_path, capsys):
    entries = toy_preferences(40)
    entries[3] = {**entries[3], "chosen": ""}
    del entries[5]["rejected"]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    out = tmp_path / "run"
    code = run("--data", data, "--init-from", base / "model", "--max-steps", 1, "--batch-size", 4,
               "--eval-batches", 1, "--max-new-tokens", 0, "--out", out)
    printed = captured(code, capsys)
    assert code == 0, printed.stderr
    assert "warning: skipped 2 of 40 entries: entry 3 ('chosen' is empty), entry 5 (no 'rejected')" in printed.stderr
    assert_clean_exit(run("--data", data, "--init-from", base / "model", "--on-bad", "error", "--out", tmp_path / "other"),
                      capsys, "entry 3: 'chosen' is empty")


def test_bad_input_is_one_line_and_status_2(base, tmp_path, capsys):
    data, model = base / "data.json", base / "model"
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps([{"instruction": "x", "input": "", "chosen": " ", "rejected": "y"}]))
    cases = [
        ((), "the following arguments are required: --data"),
        (("--data", data, "--beta", 0), "--beta: must be a positive finite number, got '0'"),
        (("--data", data, "--beta", -1), "--beta: must be a positive finite number"),
        (("--data", data, "--beta", "nan"), "--beta: must be a positive finite number"),
        (("--data", empty, "--init-from", model), "none of the 1 entries is usable: entry 0 ('chosen' is empty)"),
        (("--data", tmp_path / "missing.json", "--init-from", model), "missing.json"),
        (("--data", data, "--init-from", model, "--reference", base / "other"),
         "the reference model has a vocabulary of"),
        (("--data", data, "--init-from", model, "--reference", model, "--lora", 2), "--reference and --lora"),
        (("--data", data, "--init-from", model, "--max-length", 500), "longer than the model's context length 128"),
        (("--data", data, "--init-from", tmp_path), "config.json"),
    ]
    for args, words in cases:
        assert_clean_exit(run(*args, "--out", tmp_path / "o"), capsys, words)
