"""benchmarks/gpu.py, the GPU benchmark, end to end on the CPU: one measurement in-process (no PyTorch
needed), and the whole table with its PyTorch peers where torch and transformers are installed (they are
not in the test extra, so CI mostly skips that one; benchmarks/gpu_session.sh runs it for real on a GPU)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--device", "cpu", "--config", "tiny", "--steps", "2", "--warmup", "0", "--new-tokens", "4"]


def bench(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_one_measurement_of_ours_is_a_json_line():
    proc = bench("--one", "train:ours", *SMOKE, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["spec"], result["device"], result["batch"], result["context"]) == ("train:ours", "cpu", 2, 64)
    assert len(result["times_s"]) == 2 and result["median_s"] > 0
    assert result["tokens_per_s"] == pytest.approx(2 * 64 / result["median_s"])
    assert result["peak_bytes"] > 0 and result["device_name"].endswith("cores")


def test_generation_produces_the_tokens_it_times():
    proc = bench("--one", "gen:ours", *SMOKE, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tokens_per_s"] == pytest.approx(4 / result["median_s"]) and result["batch"] == 1


def test_the_whole_table_on_the_cpu(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    proc = bench(*SMOKE, "--save", tmp_path / "results.json", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith("# GPU benchmark: ours vs PyTorch on ")
    assert "| work | ours | peer | ours/peer |" in out
    results = {r["spec"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert results["train:ours-tf32"] == {"spec": "train:ours-tf32", "skipped": "TF32 is GPU only"}
    for spec in ("train:ours", "train:hf", "train:hf-bf16", "gen:ours", "gen:hf"):
        assert results[spec]["tokens_per_s"] > 0, results[spec]
    rows = [line for line in out.splitlines() if line.startswith("| train step, float32 | ours: ")]
    assert len(rows) == 2 and rows[0].endswith("x |")  # ours against hf, with a ratio
    if "skipped" not in results["train:book"]:
        assert "llms_from_scratch" in results["train:book"]["notes"]
