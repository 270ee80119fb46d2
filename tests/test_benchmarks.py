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
