"""examples/pretrain.py in a subprocess: bad input gives one line and exit code 2; Ctrl-C saves and
exits 130; a run stopped and resumed ends with the losses of one that was not stopped."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from autograd import cuda_available
from tests.conftest import assert_clean_error

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "pretrain.py"
TINY = ["--config", "cpu-tiny", "--context-length", "16", "--batch-size", "2", "--vocab-size", "300",
        "--eval-batches", "1", "--sample-tokens", "3"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(topics["for"] + topics["while"], encoding="utf-8")
    return path


def cli(*args, timeout=120):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], check=False, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def test_missing_data(tmp_path):
    assert_clean_error(cli("--data", tmp_path / "nope.txt", "--out", tmp_path / "o", *TINY), "nope.txt")


def test_empty_data(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert_clean_error(cli("--data", tmp_path / "empty.txt", "--out", tmp_path / "o", *TINY), "empty")


def test_directory_without_text_files(tmp_path):
    (tmp_path / "d").mkdir()
    assert_clean_error(cli("--data", tmp_path / "d", "--out", tmp_path / "o", *TINY), "no *.txt")


def test_non_utf8_text(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait ".encode("latin-1") * 200)
    assert_clean_error(cli("--data", tmp_path / "latin1.txt", "--out", tmp_path / "o", *TINY), "UTF-8")


def test_corpus_shorter_than_one_window(tmp_path):
    (tmp_path / "short.txt").write_text("A few words only.")
    assert_clean_error(cli("--data", tmp_path / "short.txt", "--out", tmp_path / "o", *TINY), "window")


def test_unwritable_output_directory(corpus, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    assert_clean_error(cli("--data", corpus, "--out", tmp_path / "file" / "out", *TINY))


def test_corrupt_checkpoint(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "checkpoint.safetensors").write_bytes(b"\x00" * 5 + b"garbage")
    assert_clean_error(cli("--out", tmp_path / "o", "--resume"), "corrupt")


def test_resume_without_a_checkpoint(tmp_path):
    assert_clean_error(cli("--out", tmp_path / "o", "--resume"), "checkpoint")


def test_unknown_preset(corpus, tmp_path):
    assert_clean_error(cli("--data", corpus, "--out", tmp_path / "o", *TINY, "--config", "gpt5"), "gpt5")


@pytest.mark.skipif(cuda_available(), reason="CuPy and a GPU are here")
def test_cuda_without_cupy_or_gpu(corpus, tmp_path):
    assert_clean_error(cli("--data", corpus, "--out", tmp_path / "o", *TINY, "--device", "cuda"), "cuda")


def test_url_offline(tmp_path):
    # port 9 on localhost: refused at once, as any URL is without a network
    assert_clean_error(cli("--data", "http://127.0.0.1:9/corpus.txt", "--out", tmp_path / "o", *TINY),
                       "local path")


def test_argparse_errors_exit_2(tmp_path):
    result = cli("--max-steps", "many")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def losses(out):
    return [(r["step"], r["train_loss"], r["val_loss"])
            for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def test_stopped_and_resumed_run_matches_an_uninterrupted_one(corpus, tmp_path):
    common = ["--data", corpus, *TINY, "--schedule", "constant", "--warmup", "0", "--eval-every", "2"]
    full = cli(*common, "--max-steps", 6, "--out", tmp_path / "full")
    assert full.returncode == 0, full.stderr
    assert "done: 6 steps" in full.stdout
    part = cli(*common, "--max-steps", 3, "--out", tmp_path / "cut")
    assert part.returncode == 0, part.stderr
    resumed = cli("--out", tmp_path / "cut", "--resume", "--max-steps", 6)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 3/6" in resumed.stdout
    assert [s for s, *_ in losses(tmp_path / "cut")] == [0, 2, 3, 4, 6]
    full_losses = {s: rest for s, *rest in losses(tmp_path / "full")}
    for s, *rest in losses(tmp_path / "cut"):
        if s in full_losses:
            assert rest == full_losses[s]
    assert (tmp_path / "cut" / "model" / "model.safetensors").is_file()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_saves_a_checkpoint_and_exits_130(corpus, tmp_path):
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--data", str(corpus), *TINY, "--max-steps", "100000", "--eval-every", "1",
         "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            metrics = out / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    # the hint names this interpreter (a venv's python), not a bare `python` that may lack the packages
    hint = next(line for line in stderr.splitlines() if line.startswith("resume with: "))
    python = Path(sys.executable).absolute()
    python = python.relative_to(ROOT) if python.is_relative_to(ROOT) else python  # .venv/bin/python in a checkout
    assert hint == f"resume with: {python} examples/pretrain.py --out {out} --resume", hint
    meta_step = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert meta_step >= 2
    resumed = cli("--out", out, "--resume", "--max-steps", meta_step + 1)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {meta_step}/{meta_step + 1}" in resumed.stdout
