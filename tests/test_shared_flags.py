"""The training commands speak one flag vocabulary: each one's --help lists the shared flags of
tinygrad_llm.support.cli with the same meaning (type, choices, metavar and the first words of the help),
and each flag does what it says in each command: a short run puts --lr, --warmup, --weight-decay,
--max-steps, --epochs, --eval-every, --dtype and --seed into the checkpoint's TrainConfig, and --lora RANK
--lora-alpha into the adapters; --resume means the same everywhere."""

import argparse
import importlib.util
import json
import re
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from autograd.checkpoint import load_checkpoint
from tests.conftest import assert_clean_error, tiny_gpt
from tests.test_instruct import toy_entries
from tinygrad_llm.finetune import instruct
from tinygrad_llm.support.cli import SHARED_HELP
from tinygrad_llm.text.tokenizer import BPETokenizer
from tinygrad_llm.training.run_folder import read_checkpoint_metadata

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["pretrain", "finetune_classifier", "finetune_instructions", "finetune_preferences"]
SHARED = ["--device", "--tf32", "--dtype", "--lr", "--warmup", "--weight-decay", "--batch-size", "--epochs",
          "--max-steps", "--eval-every", "--seed", "--out", "--resume", "--overwrite", "--lora", "--lora-alpha"]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"example_shared_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPTS = {name: load_script(name) for name in COMMANDS}


def main(name, argv):
    """A command's main(argv) in this process (pretrain's run, without its process-wide memory setting)."""
    script = SCRIPTS[name]
    argv = [str(a) for a in argv]
    return script.run_main(script.run, argv) if name == "pretrain" else script.main(argv)


def help_entries(name, capsys, monkeypatch):
    """{flag: (the flag's line in --help without its help, its help text)} from the command's --help,
    printed one flag a line (a wide terminal)."""
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as stop:
        main(name, ["--help"])
    assert stop.value.code == 0
    entries, flag = {}, None
    for line in capsys.readouterr().out.splitlines():
        m = re.match(r"  (--[\w-]+(?: (?!--)\S+)?(?:, --[\w-]+)?)(?:\s{2,}(.*))?$", line)
        if m:
            flag = m.group(1).split()[0].rstrip(",")
            entries[flag] = (m.group(1), m.group(2) or "")
        elif flag and line.startswith(" " * 8) and not entries[flag][1]:  # a long flag: its help on the next line
            entries[flag] = (entries[flag][0], line.strip())
    return entries


def actions(name):
    return {a.option_strings[0]: a for a in SCRIPTS[name].build_parser()._actions if a.option_strings}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_training_command_lists_the_shared_flags_with_their_shared_meaning(name, capsys, monkeypatch):
    entries = help_entries(name, capsys, monkeypatch)
    assert set(SHARED) <= set(entries), sorted(set(SHARED) - set(entries))
    assert set(SHARED) <= set(SHARED_HELP)
    for flag in SHARED:
        assert entries[flag][1].startswith(SHARED_HELP[flag]), (flag, entries[flag][1])
    assert entries["--lora"][0] == "--lora RANK" and entries["--dtype"][0] == "--dtype float32|float16"
    assert entries["--tf32"][0] == "--tf32, --no-tf32" and entries["--resume"][0] == "--resume"
    assert entries["--device"][0] == "--device {cpu,cuda}"


@pytest.mark.parametrize("flag", SHARED)
def test_a_shared_flag_is_parsed_alike_in_every_command(flag):
    """Type (the same function), choices, metavar, nargs and kind of action; only defaults may differ."""
    def meaning(action):
        return (action.type, action.choices, action.metavar, action.nargs, type(action))

    first, *rest = [meaning(actions(name)[flag]) for name in COMMANDS]
    assert all(m == first for m in rest), flag


def test_the_shared_flags_defaults_per_command():
    """What each command chooses where the flags are not given (lr None: chosen after parsing, from the
    model the run starts from)."""
    defaults = {name: vars(SCRIPTS[name].build_parser().parse_args([])) for name in COMMANDS}
    picked = {name: {k: d[k] for k in ("lr", "warmup", "weight_decay", "batch_size", "epochs", "eval_every",
                                       "max_steps", "seed", "out", "dtype", "device", "tf32", "lora", "lora_alpha")}
              for name, d in defaults.items()}
    same = {"weight_decay": 0.1, "batch_size": 8, "max_steps": None, "seed": 123, "dtype": "float32",
            "device": "cpu", "tf32": False, "lora": None, "lora_alpha": 16.0}
    assert picked == {
        "pretrain": {**same, "lr": 2e-3, "warmup": 10, "epochs": 6, "eval_every": 100, "out": "runs/pretrain"},
        "finetune_classifier": {**same, "lr": None, "warmup": 0, "epochs": 5, "eval_every": 50,
                                "out": "runs/classify"},
        "finetune_instructions": {**same, "lr": None, "warmup": 0, "epochs": 2, "eval_every": 50,
                                  "out": "runs/instruct"},
        "finetune_preferences": {**same, "lr": None, "warmup": 0, "epochs": 1, "eval_every": 20,
                                 "weight_decay": 0.01, "out": "runs/preference"},  # the book's one epoch, 0.01
    }


# ---- each flag does what it says, in each command ---------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Data for each command and a tiny model directory for the instructions."""
    root = tmp_path_factory.mktemp("shared")
    (root / "corpus.txt").write_text(topics["for"] + topics["while"], encoding="utf-8")
    ham, spam = ["see you at home tonight", "ok lar on my way"], ["win a free prize now", "urgent claim your cash"]
    (root / "sms.tsv").write_text("".join(f"ham\t{t} {k}\n" for k in range(6) for t in ham)
                                  + "".join(f"spam\t{t} {k}\n" for k in range(6) for t in spam), encoding="utf-8")
    entries = toy_entries(40)
    (root / "data.json").write_text(json.dumps(entries), encoding="utf-8")
    preferences = [{**e, "chosen": e["output"], "rejected": "No."} for e in entries]
    (root / "preferences.json").write_text(json.dumps(preferences), encoding="utf-8")
    tok = BPETokenizer.train("\n".join(instruct.prompt_text(e) + e["output"] for e in entries) * 3, 320)
    tiny_gpt(vocab_size=tok.n_vocab, context_length=64, seed=0).save_pretrained(root / "model")
    tok.save(root / "model")
    return root


def own_flags(name, root):
    """The flags that set a tiny run of each command going."""
    return {
        "pretrain": ["--data", root / "corpus.txt", "--config", "cpu-tiny", "--context-length", 16,
                     "--vocab-size", 300, "--eval-batches", 1, "--sample-tokens", 2],
        "finetune_classifier": ["--data", root / "sms.tsv", "--init-from", "none", "--config", "cpu-tiny",
                                "--vocab-size", 300, "--eval-batches", 1],
        "finetune_instructions": ["--data", root / "data.json", "--init-from", root / "model", "--eval-batches", 1,
                                  "--max-new-tokens", 2],
        "finetune_preferences": ["--data", root / "preferences.json", "--init-from", root / "model",
                                 "--eval-batches", 1, "--max-new-tokens", 2],
    }[name]


ADAPTERS = {"pretrain": "adapter.safetensors", "finetune_classifier": "adapter.safetensors",
            "finetune_instructions": "adapter.safetensors", "finetune_preferences": "adapter.safetensors"}


@pytest.mark.parametrize("name", COMMANDS)
def test_the_shared_flags_reach_the_training_config_and_lora(name, inputs, tmp_path, capsys):
    out = tmp_path / "o"
    shared = ["--lr", 1e-3, "--warmup", 3, "--weight-decay", 0.01, "--batch-size", 4, "--epochs", 3,
              "--max-steps", 2, "--eval-every", 1, "--seed", 7, "--dtype", "float16", "--device", "cpu",
              "--lora", 2, "--lora-alpha", 4, "--out", out]
    assert main(name, [*own_flags(name, inputs), *shared]) == 0, capsys.readouterr().err
    saved = read_checkpoint_metadata(out)
    config = saved["train_config"]
    assert {k: config[k] for k in ("lr", "warmup_steps", "weight_decay", "epochs", "max_steps", "eval_every",
                                   "dtype")} == {"lr": 1e-3, "warmup_steps": 3, "weight_decay": 0.01, "epochs": 3,
                                                 "max_steps": 2, "eval_every": 1, "dtype": "float16"}
    assert saved["step"] == 2 and [r["step"] for r in saved["records"]] == [0, 1, 2]
    assert saved["metadata"]["args"]["seed"] == 7 and saved["metadata"]["args"]["batch_size"] == 4
    tensors, meta = load_checkpoint(out / ADAPTERS[name])
    assert meta["rank"] == 2 and meta["alpha"] == 4.0
    assert all(v.shape[0] == 2 for k, v in tensors.items() if k.endswith(".lora_B"))  # B: (rank, out)
    assert "LoRA on" in capsys.readouterr().out


@pytest.mark.parametrize("name", COMMANDS)
def test_resume_means_the_same_in_every_command(name, inputs, tmp_path, capsys):
    out = tmp_path / "o"
    assert_clean_error(result(main(name, ["--out", out, "--resume", "--overwrite"]), capsys), "pass one of them")
    assert_clean_error(result(main(name, ["--out", out, "--resume"]), capsys), "no checkpoint to resume from")
    assert main(name, [*own_flags(name, inputs), "--max-steps", 1, "--batch-size", 4, "--out", out]) == 0
    capsys.readouterr()
    assert_clean_error(result(main(name, [*own_flags(name, inputs), "--max-steps", 1, "--batch-size", 4,
                                          "--out", out]), capsys), "holds an earlier run", "--resume", "--overwrite")
    other = COMMANDS[(COMMANDS.index(name) + 1) % len(COMMANDS)]  # another command cannot resume this run
    assert_clean_error(result(main(other, ["--out", out, "--resume"]), capsys),
                       f"holds a run of examples/{name}.py, not of examples/{other}.py")
    assert main(name, ["--out", out, "--resume", "--max-steps", 2, "--lr", 5]) == 0
    printed = capsys.readouterr().out
    assert "resumed at step 1/2" in printed and "note: resuming with the checkpoint's settings; ignoring --lr" in printed
    assert read_checkpoint_metadata(out)["step"] == 2


def result(code, capsys):
    """A return code and what was printed, as assert_clean_error reads a finished process."""
    return argparse.Namespace(returncode=code, stderr=capsys.readouterr().err)
