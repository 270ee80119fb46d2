"""Every number-valued flag of every example is checked by argparse before any work starts: a value out
of range, NaN or infinity gives one `error:` line naming the flag and status 2, at once (no data read,
no tokenizer trained)."""

import argparse
import importlib.util
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import assert_clean_error
from tinygrad_llm.support.cli import finite_float, fraction, int_at_least, positive_float, probability

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["pretrain", "generate", "finetune_classifier", "classify", "finetune_instructions", "chat"]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"example_flags_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXAMPLES = {name: load_script(name) for name in SCRIPTS}
NOT_A_NUMBER, INFINITE = "nan", "inf"

# (script, flag): values each refused. Integers: one below the range and a non-integer; floats: NaN,
# infinity and one out of range.
BAD = {
    ("pretrain", "--vocab-size"): ["256", "2.5"], ("pretrain", "--context-length"): ["0"],
    ("pretrain", "--batch-size"): ["0", "-3"], ("pretrain", "--grad-accum"): ["0"],
    ("pretrain", "--epochs"): ["0"], ("pretrain", "--max-steps"): ["-1", "many"],
    ("pretrain", "--lr"): ["0", "-1e-3", NOT_A_NUMBER, INFINITE, "-inf"],
    ("pretrain", "--min-lr"): ["-1", NOT_A_NUMBER, INFINITE], ("pretrain", "--warmup"): ["-1"],
    ("pretrain", "--weight-decay"): ["-0.1", NOT_A_NUMBER, INFINITE],
    ("pretrain", "--grad-clip"): ["-1", NOT_A_NUMBER, INFINITE],
    ("pretrain", "--train-ratio"): ["0", "1", "1.5", NOT_A_NUMBER], ("pretrain", "--eval-every"): ["0"],
    ("pretrain", "--eval-batches"): ["0"], ("pretrain", "--log-every"): ["0"],
    ("pretrain", "--checkpoint-every"): ["-1"], ("pretrain", "--sample-tokens"): ["-1"],
    ("pretrain", "--temperature"): ["-0.5", NOT_A_NUMBER, INFINITE], ("pretrain", "--top-k"): ["0"],
    ("pretrain", "--seed"): ["-1"], ("pretrain", "--check-sync"): ["-1", "1.5"],
    ("pretrain", "--dtype"): ["bf16", "float64", "half"],
    ("pretrain", "--lora"): ["0", "2.5"], ("pretrain", "--lora-alpha"): ["0", NOT_A_NUMBER, INFINITE],
    ("generate", "--max-new-tokens"): ["-1"], ("generate", "--temperature"): ["-1", NOT_A_NUMBER, INFINITE],
    ("generate", "--top-k"): ["0"], ("generate", "--top-p"): ["0", "1.01", NOT_A_NUMBER],
    ("generate", "--seed"): ["-1"],
    ("finetune_classifier", "--vocab-size"): ["100"], ("finetune_classifier", "--epochs"): ["0"],
    ("finetune_classifier", "--lr"): ["0", NOT_A_NUMBER, INFINITE], ("finetune_classifier", "--batch-size"): ["0"],
    ("finetune_classifier", "--max-length"): ["0"], ("finetune_classifier", "--lora-rank"): ["0"],
    ("finetune_classifier", "--lora-alpha"): ["0", NOT_A_NUMBER, INFINITE],
    ("finetune_classifier", "--eval-every"): ["0"], ("finetune_classifier", "--eval-batches"): ["0"],
    ("finetune_classifier", "--seed"): ["-1"], ("finetune_classifier", "--max-steps"): ["-1", "many"],
    ("finetune_classifier", "--warmup"): ["-1"], ("finetune_classifier", "--weight-decay"): ["-0.1", NOT_A_NUMBER],
    ("finetune_classifier", "--dtype"): ["bf16", "float64"], ("finetune_classifier", "--lora"): ["0", "2.5"],
    ("classify", "--batch-size"): ["0"],
    ("finetune_instructions", "--epochs"): ["0"], ("finetune_instructions", "--max-steps"): ["-1"],
    ("finetune_instructions", "--lr"): ["0", NOT_A_NUMBER, INFINITE],
    ("finetune_instructions", "--weight-decay"): ["-1", NOT_A_NUMBER, INFINITE],
    ("finetune_instructions", "--warmup"): ["-1"], ("finetune_instructions", "--batch-size"): ["0"],
    ("finetune_instructions", "--max-length"): ["1"], ("finetune_instructions", "--eval-every"): ["0"],
    ("finetune_instructions", "--eval-batches"): ["-1"], ("finetune_instructions", "--max-new-tokens"): ["-1"],
    ("finetune_instructions", "--lora"): ["0"], ("finetune_instructions", "--lora-alpha"): ["0", NOT_A_NUMBER],
    ("finetune_instructions", "--seed"): ["-1"], ("finetune_instructions", "--dtype"): ["bf16", "half"],
    ("chat", "--max-new-tokens"): ["-1"], ("chat", "--temperature"): ["-1", NOT_A_NUMBER, INFINITE],
    ("chat", "--top-k"): ["0"], ("chat", "--seed"): ["-1"],
}
REQUIRED = {"finetune_instructions": ["--data", "unused.json"]}
WRITERS = {"pretrain", "finetune_classifier", "finetune_instructions"}  # the programs with an --out folder


def numeric_flags(script):
    """The flags of `script` whose values argparse converts (type=): every number-valued one."""
    parser = EXAMPLES[script].build_parser()
    return {a.option_strings[-1] for a in parser._actions if a.option_strings and a.type is not None}


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_table_covers_every_number_flag(script):
    assert numeric_flags(script) == {flag for s, flag in BAD if s == script}


@pytest.mark.parametrize("script, flag, value", [(s, f, v) for (s, f), values in BAD.items() for v in values])
def test_a_bad_value_is_one_line_naming_the_flag_before_any_work(script, flag, value, capsys, tmp_path):
    argv = [*REQUIRED.get(script, []), f"{flag}={value}"]  # flag=value: "-1" is a value, not a flag
    if script in WRITERS:
        argv += ["--out", str(tmp_path / "out")]
    start = time.perf_counter()
    code = EXAMPLES[script].main(argv)
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert_clean_error(SimpleNamespace(returncode=code, stderr=err), f"argument {flag}:", repr(value))
    assert seconds < 0.5, f"{seconds:.2f} s: work started before the flags were checked"
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_types_take_good_values_and_say_what_they_want():
    assert int_at_least(2)("2") == 2 and positive_float("1e-3") == 1e-3 and fraction("0.9") == 0.9
    assert probability("1") == 1.0 and finite_float(-1, 1)("-1") == -1.0
    for parse, text, words in [(positive_float, "nan", "a positive finite number, got 'nan'"),
                               (fraction, "1", "between 0 and 1"), (int_at_least(1), "1.5", "an integer >= 1"),
                               (finite_float(-1, 1, high_open=True), "1", "a finite number >= -1 and < 1")]:
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            parse(text)
