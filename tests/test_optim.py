"""Optimizers against their update rules written out by hand in NumPy (float64), gradient clipping
against a float64 norm, and the learning-rate schedules at the points the book's appendix D fixes."""

import math

import numpy as np
import pytest

from autograd import backend, nn
from autograd.optim import SGD, AdamW, LRScheduler, clip_grad_norm_, constant, cosine_with_warmup

DEVICES = ["cpu", "strict"]


def make_params(device, shapes=((3, 4), (4,)), seed=0):
    rng = np.random.default_rng(seed)
    return [_param(rng.standard_normal(s).astype(np.float32), device) for s in shapes]


def _param(array, device):
    return nn.Parameter(backend.to_device(array, device))


def grads_for(step, shapes, seed=100):
    rng = np.random.default_rng(seed + step)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = backend.to_device(g.copy(), p.device)


@pytest.mark.parametrize("device", DEVICES)
def test_adamw_matches_the_rule_by_hand(device):
    shapes = ((3, 4), (4,))
    params = make_params(device, shapes)
    p0 = [backend.to_host(p.data).astype(np.float64) for p in params]
    groups = [{"params": [params[0]], "lr": 0.01, "weight_decay": 0.1}, {"params": [params[1]], "weight_decay": 0.0}]
    opt = AdamW(groups, lr=0.003, betas=(0.8, 0.95), eps=1e-6)
    hyper = [(0.01, 0.1), (0.003, 0.0)]
    b1, b2, eps = 0.8, 0.95, 1e-6
    ref = [p.copy() for p in p0]
    m = [np.zeros_like(p) for p in p0]
    v = [np.zeros_like(p) for p in p0]
    for t in range(1, 6):
        gs = grads_for(t, shapes)
        set_grads(params, gs)
        opt.step()
        for i, (lr, wd) in enumerate(hyper):
            g = gs[i].astype(np.float64)
            ref[i] = ref[i] - lr * wd * ref[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mhat, vhat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            ref[i] = ref[i] - lr * mhat / (np.sqrt(vhat) + eps)
    for p, r in zip(params, ref):
        assert p.data.dtype == np.float32
        np.testing.assert_allclose(backend.to_host(p.data), r, rtol=1e-5, atol=1e-6)
    st = opt.state_dict()["state"]
    assert st[0]["step"] == 5 and st[1]["step"] == 5


def test_adamw_updates_in_place_and_skips_missing_gradients():
    params = make_params("cpu")
    arrays = [p.data for p in params]
    opt = AdamW(params, lr=0.1)
    set_grads(params[:1], grads_for(0, ((3, 4),)))
    before = params[1].data.copy()
    opt.step()
    m0 = opt.state[id(params[0])]["exp_avg"]
    set_grads(params[:1], grads_for(1, ((3, 4),)))
    opt.step()
    assert params[0].data is arrays[0] and params[1].data is arrays[1]
    assert opt.state[id(params[0])]["exp_avg"] is m0 and opt.state[id(params[0])]["step"] == 2
    assert id(params[1]) not in opt.state
    np.testing.assert_array_equal(params[1].data, before)


def test_optimizer_zero_grad():
    params = make_params("cpu")
    opt = SGD(params, lr=0.1)
    set_grads(params, grads_for(0, ((3, 4), (4,))))
    opt.zero_grad(set_to_none=False)
    assert all(not p.grad.any() for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("device", DEVICES)
def test_sgd_with_momentum_matches_the_rule_by_hand(device):
    shapes = ((5,), (2, 2))
    params = make_params(device, shapes)
    ref = [backend.to_host(p.data).astype(np.float64) for p in params]
    opt = SGD(params, lr=0.05, momentum=0.9, weight_decay=0.01)
    buf = [None, None]
    for t in range(4):
        gs = grads_for(t, shapes)
        set_grads(params, gs)
        opt.step()
        for i in range(2):
            g = gs[i].astype(np.float64) + 0.01 * ref[i]
            buf[i] = g if buf[i] is None else 0.9 * buf[i] + g
            ref[i] = ref[i] - 0.05 * buf[i]
    for p, r in zip(params, ref):
        np.testing.assert_allclose(backend.to_host(p.data), r, rtol=1e-5, atol=1e-6)


def test_plain_sgd_is_a_gradient_step():
    (p,) = make_params("cpu", ((3,),))
    start = p.data.copy()
    p.grad = np.array([1.0, -2.0, 0.5], np.float32)
    SGD([p], lr=0.5).step()
    np.testing.assert_allclose(p.data, start - 0.5 * np.array([1.0, -2.0, 0.5]), rtol=1e-6)


def test_adamw_rejects_bad_groups():
    params = make_params("cpu")
    with pytest.raises(ValueError, match="more than one group"):
        AdamW([{"params": params}, {"params": params[:1]}])
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        AdamW([{"params": params, "momentum": 0.9}])
    with pytest.raises(ValueError, match="empty"):
        AdamW([])


def test_optimizer_state_dict_round_trip_continues_bit_for_bit():
    shapes = ((3, 4), (4,))
    a = make_params("cpu", shapes)
    b = make_params("cpu", shapes)
    opt_a = AdamW(a, lr=0.01)
    for t in range(3):
        set_grads(a, grads_for(t, shapes))
        opt_a.step()
    live = opt_a.state_dict()  # live buffers: copy them for a snapshot
    snapshot = {
        "param_groups": [dict(g) for g in live["param_groups"]],
        "state": {i: {k: v if k == "step" else v.copy() for k, v in s.items()} for i, s in live["state"].items()},
    }
    for p, q in zip(b, a):
        p.data[...] = q.data
    opt_b = AdamW(b, lr=0.5)
    opt_b.load_state_dict(snapshot)
    assert opt_b.param_groups[0]["lr"] == 0.01
    assert_lockstep(opt_a, opt_b, a, b, shapes, range(3, 6))


def assert_lockstep(opt_a, opt_b, a, b, shapes, steps):
    """Step two optimizers on the same gradients; their parameters must stay equal bit for bit."""
    for t in steps:
        set_grads(a, grads_for(t, shapes))
        set_grads(b, grads_for(t, shapes))
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        assert p.data.tobytes() == q.data.tobytes()


def test_optimizer_load_state_dict_rejects_a_mismatch():
    params = make_params("cpu")
    opt = AdamW(params)
    set_grads(params, grads_for(0, ((3, 4), (4,))))
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"parameter 0 exp_avg: expected shape \(3, 4\) float32, got \(4, 3\)"):
        AdamW(make_params("cpu")).load_state_dict(sd)
    with pytest.raises(ValueError, match="groups of sizes"):
        AdamW(make_params("cpu")[:1]).load_state_dict(sd)


def test_optimizer_state_with_other_groups_says_what_to_build():
    """A state saved from one group (the book's AdamW(model.parameters())) into two groups (decayed
    matrices, undecayed vectors): the error names both layouts and what to build."""
    params = make_params("cpu")
    one = AdamW(params, weight_decay=0.1)
    set_grads(params, grads_for(0, ((3, 4), (4,))))
    one.step()
    two = AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], weight_decay=0.1)
    with pytest.raises(ValueError) as e:
        two.load_state_dict(one.state_dict())
    message = str(e.value)
    assert "optimizer state has groups of sizes [2], this optimizer has [1, 1]" in message
    assert "group 0: 2 parameters, weight_decay=0.1" in message
    assert "build this one that way, as `AdamW(params, ...)` for one group" in message


# ---------------------------------------------------------------------------------------------------
# Clipping


@pytest.mark.parametrize("device", DEVICES)
def test_clip_grad_norm_scales_to_the_max_and_returns_the_norm(device):
    shapes = ((30, 40), (40,), (7,))
    params = make_params(device, shapes)
    gs = grads_for(0, shapes)
    set_grads(params, gs)
    expected = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in gs))
    norm = clip_grad_norm_(params, 1.0)
    assert abs(float(backend.to_host(norm)) - expected) <= 1e-5 * expected
    clipped = math.sqrt(sum(float((backend.to_host(p.grad).astype(np.float64) ** 2).sum()) for p in params))
    assert abs(clipped - 1.0) < 1e-5
    assert all(p.grad.dtype == np.float32 for p in params)
    # below the max: untouched
    set_grads(params, gs)
    clip_grad_norm_(params, 1e6)
    for p, g in zip(params, gs):
        np.testing.assert_array_equal(backend.to_host(p.grad), g)


def test_clip_grad_norm_precision_on_a_large_gradient():
    g = (np.random.default_rng(0).standard_normal(2_000_000) * 1e-3).astype(np.float32)
    p = nn.Parameter(np.zeros_like(g))
    p.grad = g.copy()
    expected = math.sqrt(float(np.dot(g.astype(np.float64), g.astype(np.float64))))
    assert abs(float(clip_grad_norm_([p], 1e9)) - expected) < 1e-6 * expected


def test_clip_grad_norm_ignores_missing_gradients():
    params = make_params("cpu")
    params[0].grad = np.full((3, 4), 2.0, np.float32)
    assert float(clip_grad_norm_(params, 100.0)) == pytest.approx(math.sqrt(12 * 4))


# ---------------------------------------------------------------------------------------------------
# Schedules


def test_cosine_with_warmup_at_its_landmarks():
    kw = {"max_lr": 1e-3, "total_steps": 110, "warmup_steps": 10, "min_lr": 1e-5, "initial_lr": 1e-4}
    assert cosine_with_warmup(0, **kw) == pytest.approx(1e-4)
    assert cosine_with_warmup(5, **kw) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert cosine_with_warmup(10, **kw) == pytest.approx(1e-3)
    assert cosine_with_warmup(60, **kw) == pytest.approx((1e-3 + 1e-5) / 2)
    assert cosine_with_warmup(110, **kw) == pytest.approx(1e-5)
    assert cosine_with_warmup(500, **kw) == pytest.approx(1e-5)
    lrs = [cosine_with_warmup(s, **kw) for s in range(111)]
    assert all(isinstance(x, float) for x in lrs)
    assert lrs[:11] == sorted(lrs[:11]) and lrs[10:] == sorted(lrs[10:], reverse=True)
    assert constant(123, 3e-4) == 3e-4


def test_cosine_with_warmup_matches_the_books_loop():
    """Appendix D's loop, as its code has it: global_step starts at -1 and is incremented before the lr
    is computed, so the steps count from 0 and the first lr is initial_lr. Its numbers: 9 batches x 15
    epochs = 135 steps, 27 of warmup, initial 1e-4, peak 0.01, min 1e-5."""
    peak_lr, initial_lr, total_steps = 0.01, 0.0001, 9 * 15
    warmup_steps, min_lr = int(0.2 * total_steps), 0.1 * initial_lr
    lr_increment = (peak_lr - initial_lr) / warmup_steps
    book, global_step = [], -1
    for _ in range(total_steps):
        global_step += 1
        if global_step < warmup_steps:
            lr = initial_lr + global_step * lr_increment
        else:
            progress = (global_step - warmup_steps) / (total_steps - warmup_steps)
            lr = min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        book.append(lr)
    ours = [cosine_with_warmup(s, max_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps,
                               min_lr=min_lr, initial_lr=initial_lr) for s in range(total_steps)]
    assert ours == pytest.approx(book, rel=1e-12)
    assert warmup_steps == 27 and ours[0] == pytest.approx(1e-4) and ours[27] == pytest.approx(0.01)
    assert f"{ours[1]:.3g}" == "0.000467"  # what counting from 1 would have given the first step
    assert ours[-1] > min_lr  # the cosine approaches min_lr; the step that would reach it is not taken


def test_scheduler_sets_every_group_keeping_its_ratio():
    params = make_params("cpu")
    opt = AdamW([{"params": params[:1]}, {"params": params[1:], "lr": 5e-4}], lr=1e-3)
    sched = LRScheduler(opt, lambda s: cosine_with_warmup(s, max_lr=2e-3, total_steps=10, warmup_steps=2))
    assert sched.get_last_lr() == [0.0, 0.0]
    sched.step()
    assert sched.get_last_lr() == pytest.approx([1e-3, 5e-4])
    sched.step()
    assert sched.get_last_lr() == pytest.approx([2e-3, 1e-3])
    other = LRScheduler(AdamW([{"params": params[:1]}, {"params": params[1:], "lr": 5e-4}], lr=1e-3),
                        sched.lr_fn)
    other.load_state_dict(sched.state_dict())
    assert other.get_last_lr() == sched.get_last_lr()


def test_blocked_and_whole_array_updates_agree_bit_for_bit():
    shapes = ((37, 5), (11,))
    a, b = make_params("cpu", shapes), make_params("cpu", shapes)
    opt_a, opt_b = AdamW(a, lr=0.01, block_size=16), AdamW(b, lr=0.01, block_size=None)
    assert_lockstep(opt_a, opt_b, a, b, shapes, range(3))


def test_threaded_block_updates_match_one_pass_bit_for_bit():
    """Large parameters are split into blocks shared between two threads; the split changes nothing."""
    rng = np.random.default_rng(1)
    shapes = [(300, 1000), (5000,), (7, 9)]
    a = [nn.Parameter(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    b = [nn.Parameter(p.data.copy()) for p in a]
    opt_a, opt_b = AdamW(a, lr=0.01, block_size=4096), AdamW(b, lr=0.01, block_size=None)
    for _ in range(3):
        for pa, pb in zip(a, b):
            g = rng.standard_normal(pa.shape).astype(np.float32)
            pa.grad, pb.grad = g, g.copy()
        opt_a.step()
        opt_b.step()
    assert opt_a._pool is not None  # the threaded path ran
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.data, pb.data)


def test_clip_grad_norm_with_a_known_norm_clips_as_without_it():
    from autograd.optim import grad_norm

    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(s).astype(np.float32) * 5 for s in ((4, 3), (7,))]
    runs = []
    for given in (False, True):
        params = [nn.Parameter(np.zeros_like(g)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g.copy()
        norm = clip_grad_norm_(params, 1.0, norm=grad_norm(params) if given else None)
        runs.append((float(norm), [p.grad for p in params]))
    assert runs[0][0] == runs[1][0] > 1.0
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)
