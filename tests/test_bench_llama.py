"""benchmarks/bench_llama.py on a tiny random Llama that transformers writes: each measurement runs and does
the work it names for ours and transformers, the floor reads every weight matrix of the model once, and
the report takes each ratio within its round. (Timings are measured by benchmarks/, never asserted.)"""

import numpy as np
import pytest

from benchmarks import bench_llama
from tinygrad_llm.models.llama import Llama
from tinygrad_llm.models.llama_config import LlamaConfig


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random LlamaForCausalLM directory (4 query heads on 2 KV heads, tied head), float32."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   tie_word_embeddings=True)
    directory = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory, safe_serialization=True)
    return directory


def _args(directory, *extra):
    return ["--model", str(directory), "--new-tokens", "6", "--warmup-tokens", "2", "--prefill-tokens", "20",
            "--batch", "2", "--context", "8", "--repeat", "1", "--warmup", "0", "--json", *extra]


@pytest.mark.parametrize("impl", ["ours", "hf"])
def test_each_measurement_does_its_work(tiny_dir, impl, capsys):
    for work, tokens in (("decode", 6), ("prefill", 20), ("train", 2 * 8)):
        result = bench_llama.main(_args(tiny_dir, "--impl", impl, "--work", work))
        assert (result["impl"], result["work"], result["tokens"]) == (impl, work, tokens)
        assert result["median_s"] > 0 and result["peak_rss_mib"] > 0
        assert np.isclose(result["tokens_per_s"] * result["median_s"], tokens)
    assert capsys.readouterr().out.count('"bench": "llama"') == 3  # one JSON line each


def test_prompt_is_the_chat_template_or_seeded_ids(tiny_dir, smollm2_gguf):
    assert bench_llama.prompt_ids(tiny_dir) == bench_llama.prompt_ids(tiny_dir)  # no tokenizer: seeded ids
    ids = bench_llama.prompt_ids(smollm2_gguf)
    assert len(ids) == 37 and ids[:3] == [1, 9690, 198]  # "<|im_start|>system\n": SmolLM2's template


def test_floor_reads_every_weight_matrix_once():
    cfg = LlamaConfig.preset("tiny-qwen3")
    products = bench_llama.llama_decode_products(cfg)
    model = Llama(cfg)
    matrices = sum(p.data.size for name, p in model.named_parameters() if not name.endswith("norm.weight"))
    assert sum(count * k * n for count, m, k, n in products) == matrices  # the tied head counted once, as read


def test_floor_measurement_of_a_directory(tiny_dir):
    result = bench_llama.main(["--model", str(tiny_dir), "--impl", "floor", "--bandwidth-floats", str(1 << 16),
                               "--json"])
    d = result["decode"]
    assert np.isclose(d["tokens_per_s"] * d["token_s"], 1.0) and result["bandwidth_tokens_per_s"] > 0
    assert result["weight_mib"] == 4 * (2 * (32 * 32 * 2 + 32 * 16 * 2 + 32 * 48 * 3) + 32 * 64) / 2**20


def test_report_takes_the_median_of_ratios_within_each_round(tiny_dir, monkeypatch, capsys):
    """A machine that is three times slower in one round slows ours and transformers alike: the table shows
    the median of each round's ratio, ours as % of that round's floor, and the goals against them."""
    slow = [1.0, 3.0, 1.1]
    calls = []

    def fake_run_json(script, args, env=None, timeout=None):
        impl = args[args.index("--impl") + 1]
        work = args[args.index("--work") + 1] if "--work" in args else "floor"
        rnd = sum(1 for c in calls if c == (impl, work))
        calls.append((impl, work))
        f = slow[rnd]
        assert script == "bench_llama.py" and "OPENBLAS_CORETYPE" not in (env or {})
        if impl == "floor":
            return {"impl": "floor", "decode": {"tokens_per_s": 50 / f, "token_s": 0.02 * f, "weight_mib": 513,
                                                "gemv_gbs": 27.0}, "bandwidth_gbs": 30.0,
                    "bandwidth_tokens_per_s": 55 / f, "weight_mib": 513, "blas": "b"}
        seconds = {("ours", "decode"): 5.0, ("hf", "decode"): 10.0, ("ours", "prefill"): 1.0, ("hf", "prefill"): 0.8,
                   ("ours", "train"): 4.0, ("hf", "train"): 6.0}[(impl, work)] * f
        tokens = {"decode": 200, "prefill": 512, "train": 1024}[work]
        return {"impl": impl, "work": work, "median_s": seconds, "tokens_per_s": tokens / seconds,
                "peak_rss_mib": 700.0 + rnd, "blas": "b", "notes": "n"}

    monkeypatch.setattr(bench_llama.common, "run_json", fake_run_json)
    monkeypatch.setattr(bench_llama.common, "module_available", lambda name: True)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    bench_llama.main(["--model", str(tiny_dir), "--rounds", "3"])
    out = capsys.readouterr().out
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in out.splitlines() if line.startswith("| ")}
    decode = cells["decode, KV cache, greedy, tokens/s"]
    assert decode[1] == "36.4 tok/s (5.50 s)"  # the median round: 200 tokens in 5.5 s
    assert decode[3] == "2.00x" and decode[4] == "80 % (45 tok/s)"  # 40 of 50 tok/s in every round
    assert cells["prefill, tokens/s"][3] == "0.80x" and cells["train step (forward + backward + AdamW)"][3] == "1.50x"
    assert decode[5] == "702 MiB"  # the largest peak
    assert "goal: decode speed-up >= 1.5x: 2.00x, met" in out and "decode % of floor >= 85 %: 80.00 %, NOT met" in out
    assert "prefill speed-up > 1x: 0.80x, NOT met" in out and "train-step speed-up > 1x: 1.50x, met" in out
    assert "OPENBLAS_CORETYPE=Haswell; removed for the measurements" in out
    assert len([c for c in calls if c == ("floor", "floor")]) == 3
