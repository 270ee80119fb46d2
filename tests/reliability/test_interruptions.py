"""Reliability: a tiny pretraining run killed with SIGKILL at random instants while it checkpoints at
every step, interrupted by two Ctrl-Cs at random spacing, and run out of disk while saving. Every case
must leave a run that resumes (or an honest message), no temporary files behind, and exit 130 for Ctrl-C.

Random delays come from seeded generators (SEEDS), so a failure names a seed that replays it;
TINYGRAD_LLM_RELIABILITY_TRIES=20 tries more of them."""

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from pydoc_data.topics import topics

import pytest

import autograd.checkpoint as checkpoint
from autograd.checkpoint import load_checkpoint
from tinygrad_llm.training.run_folder import read_checkpoint_metadata

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "pretrain.py"
TINY = ["--config", "cpu-tiny", "--context-length", "16", "--batch-size", "2", "--vocab-size", "300",
        "--eval-batches", "1", "--sample-tokens", "3", "--eval-every", "1000", "--log-every", "1000"]
TRIES = int(os.environ.get("TINYGRAD_LLM_RELIABILITY_TRIES", "3"))
SEEDS = list(range(TRIES))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(topics["for"] + topics["while"], encoding="utf-8")
    return path


def start(*args):
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def run(*args, timeout=120):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def temporaries(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*.tmp-*"))


def wait_for(predicate, proc, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_kill_9_while_checkpointing_always_leaves_a_run_that_resumes(corpus, tmp_path):
    out = tmp_path / "o"
    first = run("--data", corpus, *TINY, "--max-steps", 2, "--checkpoint-every", 1, "--out", out)
    assert first.returncode == 0, first.stderr
    rng = random.Random(1234)
    leftovers = 0
    for attempt in range(TRIES):
        step = read_checkpoint_metadata(out)["step"]
        proc = start("--out", out, "--resume", "--max-steps", 100000)  # --checkpoint-every 1 from the checkpoint
        try:
            # once it is writing checkpoints (one a step), kill it at a random instant
            assert wait_for(lambda: read_checkpoint_metadata(out)["step"] > step, proc), proc.communicate()[1]
            time.sleep(rng.uniform(0, 0.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            proc.kill()
            proc.communicate()
        leftovers += bool(temporaries(out))
        meta = read_checkpoint_metadata(out)  # the previous or the new checkpoint, whole
        assert meta["step"] > step, f"attempt {attempt} (seed 1234)"
        load_checkpoint(out / "checkpoint.safetensors")
    step = read_checkpoint_metadata(out)["step"]
    resumed = run("--out", out, "--resume", "--max-steps", step + 1)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {step}/{step + 1}" in resumed.stdout
    assert temporaries(out) == []  # whatever the kills left, the resumed run removed


@pytest.mark.parametrize("seed", SEEDS)
def test_two_ctrl_c_exit_130_and_never_claim_a_checkpoint_that_is_not_there(corpus, tmp_path, seed):
    rng = random.Random(seed)
    out = tmp_path / "o"
    proc = start("--data", corpus, *TINY, "--max-steps", 100000, "--checkpoint-every", rng.choice([0, 1]),
                 "--out", out)
    try:
        metrics = out / "metrics.jsonl"
        assert wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, proc), proc.communicate()
        time.sleep(rng.uniform(0, 0.5))  # somewhere in a step
        proc.send_signal(signal.SIGINT)
        time.sleep(rng.choice([0, rng.uniform(0, 0.05), rng.uniform(0.05, 0.5)]))  # during or after the save
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, f"seed {seed}: {proc.returncode}\n{stderr}"
    assert "Traceback" not in stderr, f"seed {seed}: {stderr}"
    report = next(line for line in stderr.splitlines() if line.startswith("interrupted at step "))
    step = int(report.split("at step ")[1].split("/")[0])
    if "checkpoint saved in" in report:
        assert read_checkpoint_metadata(out)["step"] == step, f"seed {seed}: {report}"
        load_checkpoint(out / "checkpoint.safetensors")
    else:
        assert "the checkpoint was NOT saved" in report, f"seed {seed}: {report}"
    assert temporaries(out) == []


def test_a_full_disk_while_checkpointing_is_one_error_and_keeps_the_last_checkpoint(corpus, tmp_path, monkeypatch,
                                                                                   capsys):
    """Run in this process, with every write of the checkpoint's temporary file failing as a full disk
    does (ENOSPC); the files before it (metrics, tokenizer) are written."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("example_pretrain_disk", SCRIPT)
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    out = tmp_path / "o"
    assert pretrain.main(["--data", str(corpus), *TINY, "--max-steps", "2", "--out", str(out)]) == 0
    before = (out / "checkpoint.safetensors").read_bytes()
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f, name):
            self.f, self.name = f, name

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, attr):
            return getattr(self.f, attr)

        def write(self, data):
            if self.name.startswith(".checkpoint.safetensors.tmp-"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

    def fdopen(fd, *args, **kwargs):
        return FullDisk(real_fdopen(fd, *args, **kwargs), Path(os.readlink(f"/proc/self/fd/{fd}")).name)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell the checkpoint's temporary file by name")
    monkeypatch.setattr(checkpoint.os, "fdopen", fdopen)
    capsys.readouterr()
    code = pretrain.main(["--out", str(out), "--resume", "--max-steps", "4"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1, err
    assert "no space left on the disk" in lines[0] and "previous file is kept" in lines[0]
    assert (out / "checkpoint.safetensors").read_bytes() == before
    assert read_checkpoint_metadata(out)["step"] == 2 and temporaries(out) == []
