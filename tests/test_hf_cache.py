"""GPT.from_pretrained("gpt2") finds weights already in the Hugging Face cache (as transformers or
huggingface-cli leave them) and loads them offline without a download; offline with nothing cached is one
clear error. The cache here is a folder in the real layout, holding a tiny checkpoint the test writes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tinygrad_llm.models.gpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
REVISION = "607a30d783dfa663caf39e06633721c8d4cfcd7e"


def fake_hf_cache(cache, repo="openai-community/gpt2"):
    """models--{org}--{name}/refs/main -> the revision, snapshots/{revision}/ -> the files."""
    model = GPT(GPTConfig.preset("cpu-tiny", vocab_size=60, context_length=16), seed=3)
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    model.save_pretrained(repo_dir / "snapshots" / REVISION)
    return model


def load_offline(cache, code="m = GPT.from_pretrained('gpt2'); print(m.config.vocab_size, m.wte.weight.numpy()[1, :3].tolist())"):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", "from tinygrad_llm.models.gpt import GPT\n" + code],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_gpt2_loads_from_the_hugging_face_cache_offline(tmp_path):
    model = fake_hf_cache(tmp_path / "hub")
    r = load_offline(tmp_path / "hub")
    assert r.returncode == 0, r.stderr
    vocab, row = r.stdout.split(" ", 1)
    assert int(vocab) == 60
    np.testing.assert_array_equal(np.array(eval(row), dtype=np.float32), model.wte.weight.numpy()[1, :3])


def test_an_old_cache_under_the_name_gpt2_is_found_too(tmp_path):
    model = fake_hf_cache(tmp_path / "hub", repo="gpt2")
    loaded = GPT.from_pretrained("gpt2", cache_dir=tmp_path / "hub")
    np.testing.assert_array_equal(loaded.wte.weight.numpy(), model.wte.weight.numpy())


def test_offline_with_nothing_cached_is_one_clear_error(tmp_path):
    r = load_offline(tmp_path / "empty", "from tinygrad_llm.support.cli import run_main\n"
                                         "raise SystemExit(run_main(lambda argv: GPT.from_pretrained('gpt2')))")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: gpt2's weights are not in the Hugging Face cache "
                                                   f"{tmp_path / 'empty'} and downloads are off (HF_HUB_OFFLINE)")


def test_no_network_with_nothing_cached_is_one_clear_error(tmp_path):
    """Downloads on but the hub unreachable (a closed local port stands in for a machine without
    network): one `error:` line, without the client's warning per failed request before it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_CACHE": str(tmp_path / "empty"),
           "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2", "OPENBLAS_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    code = ("from tinygrad_llm.models.gpt import GPT\nfrom tinygrad_llm.support.cli import run_main\n"
            "raise SystemExit(run_main(lambda argv: GPT.from_pretrained('gpt2')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                       check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not download gpt2's weights"), r.stderr
