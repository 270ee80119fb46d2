"""examples/finetune_instructions.py on a Llama-family model: a LoRA fine-tuning of a tiny random Llama that
transformers writes (with a ChatML tokenizer.json), stopped by Ctrl-C and resumed with --resume, ends as the
uninterrupted run does, bit for bit: the same losses, answers, adapter and merged model. (GPT's run is held
to the same in tests/test_instruct_cli.py, whose helpers these are.)"""

import json
import sys
from functools import partial

import pytest

from tests import test_instruct
from tests.test_instruct_cli import ctrl_c_after, finetune_main, finetune_script, outcome
from tinygrad_llm.finetune.lora import ADAPTER_FILE


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The toy entries' data file and a tiny random Llama directory with a tokenizer.json."""
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("llama-resume")
    (root / "data.json").write_text(json.dumps(test_instruct.toy_entries(40)), encoding="utf-8")
    test_instruct.tiny_chat_llama(root / "llama")
    return root


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_stopped_and_resumed_llama_lora_run_ends_as_an_uninterrupted_one(base, tmp_path, capsys, monkeypatch):
    """Two epochs (8 steps) in one go, or stopped after step 3 and resumed without --data: the same
    evaluation records and test answers, and the same adapter and model/ files byte for byte."""
    common = ["--data", base / "data.json", "--init-from", base / "llama", "--lora", 4, "--batch-size", 8,
              "--lr", 3e-3, "--eval-every", 1, "--eval-batches", 1, "--max-new-tokens", 3, "--warmup", 2]
    assert finetune_main([*map(str, common), "--out", str(tmp_path / "full")]) == 0
    with monkeypatch.context() as m:
        m.setattr(finetune_script, "Trainer", partial(finetune_script.Trainer, on_step=ctrl_c_after(3)))
        capsys.readouterr()
        assert finetune_main([*map(str, common), "--out", str(tmp_path / "cut")]) == 130
    assert "interrupted at step 3/8" in capsys.readouterr().err
    assert finetune_main(["--out", str(tmp_path / "cut"), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "prompts in the model's chat template" in out and "resumed at step 3/8 (epoch 1, batch 3)" in out, out
    records, responses = outcome(tmp_path / "cut")
    assert (records, responses) == outcome(tmp_path / "full")
    assert [r["step"] for r in records] == list(range(9)) and records[-1]["train_loss"] < records[0]["train_loss"]
    for name in (ADAPTER_FILE, "model/model.safetensors", "model/config.json", "model/tokenizer.json"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


def test_a_trainers_llama_model_folder_holds_its_tokenizer_json_and_loads_back(base, tmp_path):
    """The model/ a training run exports (Trainer.export_model, every fine-tuning command's) for a
    Llama-family model: config.json, model.safetensors and tokenizer.json with its chat template, which
    load_pretrained reads back to the same logits and ids; no GPT-2 encoder.json/vocab.bpe beside them."""
    import numpy as np

    from tinygrad_llm import load_pretrained
    from tinygrad_llm.training.run_folder import RunFolder

    model, tok = load_pretrained(str(base / "llama"))
    where = RunFolder(tmp_path).export_model(model, tok)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in where.iterdir()}
    assert not (where / "encoder.json").exists() and not (where / "vocab.bpe").exists()
    again, tok_again = load_pretrained(str(where))
    ids = np.array([tok.encode("Hello there, how are you?")])
    assert tok_again.encode("Hello there, how are you?") == ids[0].tolist()
    assert tok_again.chat_template == tok.chat_template
    np.testing.assert_array_equal(again(ids).data, model(ids).data)
