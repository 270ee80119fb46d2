"""The benchmark floor's arithmetic: the FLOPs it times are the step's, the parameters it counts are the
model's. (The timings themselves are measured by benchmarks/, never asserted in tests.)"""

import numpy as np

from benchmarks import common, floor
from benchmarks.bench_train_step import build_ours


def test_step_products_are_three_forwards_of_the_book_flop_count():
    dims = {"emb_dim": 48, "n_heads": 4, "n_layers": 3, "vocab_size": 101}
    B, T, C, L, V = 2, 8, 48, 3, 101
    N = B * T
    forward = L * (24 * N * C * C + 4 * B * T * T * C) + 2 * N * C * V  # x@W (12C^2 per token per layer), QK^T, PV, head
    flops = sum(count * 2 * bt * m * k * n for count, bt, m, k, n in floor.step_products(dims, B, T))
    assert flops == 3 * forward


def test_decode_products_read_every_weight_matrix_once():
    dims = {"emb_dim": 48, "n_heads": 4, "n_layers": 3, "vocab_size": 101}
    weights = sum(count * k * n for count, m, k, n in floor.decode_products(dims))
    assert weights == 3 * 12 * 48 * 48 + 48 * 101


def test_floor_counts_the_parameters_the_benchmarked_model_has():
    for config in ("small-book", "small-hf"):
        batch, context = common.default_shape(config)
        model, *_ = build_ours(config, 1, context, 0.0)
        assert floor.count_params(config, context) == sum(p.data.size for p in model.parameters())


def test_floor_is_a_sum_of_positive_measured_parts():
    dims = {"emb_dim": 32, "n_heads": 2, "n_layers": 1, "vocab_size": 64}
    t = floor.train_floor("small-hf", 2, 8, dims=dims, n_params=10_000, bandwidth_floats=1 << 16,
                          min_time=1e-4)
    assert t["floor_s"] == t["matmul_s"] + t["optimizer_s"] and t["matmul_s"] > 0 and t["optimizer_s"] > 0
    assert t["matmul_gflop"] == sum(c * 2 * bt * m * k * n for c, bt, m, k, n in floor.step_products(dims, 2, 8)) / 1e9
    d = floor.decode_floor("small-hf", dims=dims, repeat=2)
    assert np.isclose(d["tokens_per_s"] * d["token_s"], 1.0)


def test_run_all_rounds_report_the_median_of_ratios_taken_within_each_round(monkeypatch, capsys):
    """A machine that slows down for a round slows ours and the peer alike: the ratios come from within
    each round and the table shows their median, not a ratio of medians from different minutes."""
    from benchmarks import run_all

    slow = {0: 1.0, 1: 3.0, 2: 1.1}  # the machine's speed in each round: round 2 is three times slower
    calls = []

    def fake_run_json(script, args, env=None, timeout=None):
        impl = args[args.index("--impl") + 1] if "--impl" in args else "floor"
        config = args[args.index("--config") + 1]
        rnd = sum(1 for c in calls if c == (script, impl, config))
        calls.append((script, impl, config))
        f = slow[rnd]
        if script == run_all.FLOOR:
            return {"train": {"floor_s": 0.5 * f, "matmul_s": 0.45 * f, "matmul_gflop": 100, "matmul_gflops": 200,
                              "optimizer_s": 0.05 * f, "bandwidth_gbs": 20.0},
                    "decode": {"tokens_per_s": 400 / f, "weight_mib": 61, "gemv_gbs": 20.0}, "blas": "b"}
        seconds = {"ours": 1.0, "book": 2.0, "hf": 1.5, "book-kv": 2.0, "ours-nocache": 8.0, "book-nocache": 20.0}[impl] * f
        return {"impl": impl, "median_s": seconds, "tokens_per_s": 1000 / seconds, "peak_rss_mib": 100.0 + rnd,
                "blas": "b", "notes": "n"}

    monkeypatch.setattr(run_all.common, "run_json", fake_run_json)
    monkeypatch.setattr(run_all.common, "module_available", lambda name: True)  # the peers, faked too
    run_all.main(["--quick", "--rounds", "3"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| train step, small (book style)"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "1.100 s (909 tok/s)"  # the median of 1.0, 3.0, 1.1
    assert cells[3] == "2.00x"  # every round's ratio is 2.0, whatever its speed
    assert cells[4] == "2.00 (0.550 s)"  # ours / floor within each round: 1.0 / 0.5
    assert cells[5] == "102 MiB"  # peak memory: the largest
    assert "3 rounds: every figure is the median over the rounds" in out
    assert run_all.fmt_result([None, None], "train") == "skipped"  # the peer is not installed
    assert run_all.fmt_result([{"error": "exit 1"}, None], "train") == "error"
    assert len([c for c in calls if c == (run_all.TRAIN, "ours", "small-book")]) == 3
    row = next(line for line in out.splitlines() if line.startswith("| generate, small: recompute"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "2.50x" and cells[4] == "-"  # 20 s against 8 s; no decode floor for a recompute
    calls.clear()
    run_all.main(["--quick", "--only", "generate"])
    assert {c[0] for c in calls} == {run_all.GEN, run_all.FLOOR}  # no training step measured


def test_raw_decode_loop_computes_the_models_logits():
    """benchmarks/raw_decode.py's framework-free loop is a fair bound only if it computes the same model:
    its logits for each new token equal the model's with a KV cache (also with the transposed head)."""
    from autograd import no_grad
    from benchmarks.raw_decode import RawDecoder
    from tinygrad_llm.models.gpt import KVCache
    from tests.conftest import tiny_gpt

    model = tiny_gpt(97, 16, qkv_bias=True, tie_weights=True).eval()
    rng = np.random.default_rng(0)
    for name, p in model.named_parameters():  # GPT-2's init zeroes the biases and sets the norms to one
        if name.endswith("bias") or ".ln_" in name or name.startswith("ln_f"):
            p.data[...] = rng.standard_normal(p.data.shape, dtype=np.float32) * 0.5 + (1.0 if name.endswith("weight") else 0.0)
    ids = rng.integers(0, 97, (1, 5))
    for transposed in (False, True):
        raw = RawDecoder(model, transposed_head=transposed)
        ours, theirs = KVCache(model.config, 1), KVCache(model.config, 1)
        with no_grad():
            model(ids, ours), model(ids, theirs)
            for token in (3, 41, 96, 0):
                expected = model(np.array([[token]]), ours).numpy()[0, -1]
                np.testing.assert_allclose(raw.step(token, theirs), expected, rtol=1e-4, atol=1e-5)
        assert theirs.length == ours.length == 9
