"""examples/pretrain.py and the device: it names the device and its memory at the start and the peak
memory used at the end; running out of device memory (simulated on the strict device) is one `error:`
line saying what to make smaller; --tf32 is refused off the GPU."""

import gc
import importlib.util
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from autograd.testing import memory
from tests.conftest import assert_clean_error
from tests.test_pretrain_cli import TINY, cli

ROOT = Path(__file__).resolve().parents[1]


def load_pretrain():
    spec = importlib.util.spec_from_file_location("pretrain_example", ROOT / "examples" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pretrain(monkeypatch):
    """The script as a module, with the strict simulated device among its --device choices."""
    module = load_pretrain()
    monkeypatch.setattr(module, "DEVICE_CHOICES", [*module.DEVICE_CHOICES, "strict"])
    return module


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(topics["for"] + topics["while"], encoding="utf-8")
    return path


def run(pretrain, capsys, *args):
    """pretrain's run under run_main, in this process, as a CompletedProcess for assert_clean_error."""
    code = pretrain.run_main(pretrain.run, list(map(str, args)))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_a_run_names_the_device_and_the_peak_memory_it_used(pretrain, capsys, corpus, tmp_path):
    result = run(pretrain, capsys, "--data", corpus, *TINY, "--max-steps", 1, "--out", tmp_path / "o",
                 "--device", "strict")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("device strict: strict (a simulated device in host memory), ")
    assert lines[0].endswith(" memory")
    peak = next(line for line in lines if line.startswith("peak memory on device strict: "))
    assert peak == f"peak memory on device strict: {pretrain.size(memory.peak)}"
    assert memory.peak > 4 * 120_320  # at least the float32 weights of cpu-tiny at this vocabulary


def test_running_out_of_device_memory_is_one_line_saying_what_to_reduce(pretrain, capsys, corpus, tmp_path):
    gc.collect()
    # room for the weights (about 0.5 MB) but not for AdamW's two moments besides them
    with memory.limited(memory.in_use + 1_000_000):
        result = run(pretrain, capsys, "--data", corpus, *TINY, "--max-steps", 2, "--out", tmp_path / "o",
                     "--device", "strict", "--grad-accum", 3)
    # the progress bar may have started on stderr before the error: set it aside, then the usual contract
    result.stderr = "\n".join(s for s in result.stderr.splitlines() if "%|" not in s)
    assert_clean_error(result, "out of memory on device 'strict': Out of memory allocating",
                       "a lower --batch-size (now 2; raise --grad-accum, now 3, by the same factor to keep "
                       "the global batch of 6 sequences)", "a shorter --context-length", "a smaller model (--config)")


def test_tf32_is_refused_on_the_cpu(corpus, tmp_path):
    result = cli("--data", corpus, "--out", tmp_path / "o", *TINY, "--tf32")
    assert_clean_error(result, "TF32", "needs device 'cuda', not 'cpu'")
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_tf32_is_off_by_default_and_a_flag_a_resumed_run_may_change(pretrain):
    parser = pretrain.build_parser()
    assert parser.parse_args([]).tf32 is False
    assert parser.parse_args(["--tf32", "--device", "cuda"]).tf32 is True
    # a run trained with --tf32 on a GPU can be resumed on the CPU: --no-tf32 overrides its setting
    given = vars(pretrain.build_parser(suppress=True).parse_args(["--device", "cpu", "--no-tf32"]))
    assert given == {"device": "cpu", "tf32": False} and "tf32" in pretrain.RESUMABLE


@pytest.mark.parametrize("script", ["finetune_classifier.py", "finetune_instructions.py"])
def test_the_fine_tuning_examples_refuse_tf32_on_the_cpu(script, tmp_path):
    """Refused before the data is read: the missing data file is never reached."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--data", tmp_path / "missing.json",
                             "--out", tmp_path / "o", "--tf32"], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, check=False)
    assert_clean_error(result, "TF32", "needs device 'cuda', not 'cpu'")
