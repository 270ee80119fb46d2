"""Data-parallel training (tinygrad_llm/support/distributed.py): rank detection, gradient buckets, and, under
`mpiexec -n 2` where mpi4py and an mpiexec are installed (the `mpi` extra), two ranks that train exactly
as one process with twice the accumulation, a rank that falls out of step or dies, and resumes across
different numbers of ranks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest

from autograd.checkpoint import load_checkpoint
from autograd.nn import Parameter
from autograd.optim import SGD
from tests.conftest import assert_clean_error
from tinygrad_llm.support.distributed import (Communicator, DistributedError, GradientBuckets, LaunchInfo,
                                      launch_info)
from tinygrad_llm.training.trainer import TrainConfig, Trainer
from tinygrad_llm.training.run_folder import CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "examples" / "pretrain.py"
WORKER = ROOT / "tests" / "distributed_worker.py"
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
for launcher_variable in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"):
    ENV.pop(launcher_variable, None)  # the children decide for themselves whether they are ranks


# ---- without MPI --------------------------------------------------------------------------------


def test_launch_info_reads_each_launchers_variables():
    assert launch_info({}) == LaunchInfo(0, 1, 0)
    assert launch_info({"PMI_RANK": "1", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1"}) == LaunchInfo(1, 4, 1)
    assert launch_info({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8",
                        "OMPI_COMM_WORLD_LOCAL_RANK": "1"}) == LaunchInfo(5, 8, 1)
    assert launch_info({"MV2_COMM_WORLD_RANK": "2", "MV2_COMM_WORLD_SIZE": "3"}) == LaunchInfo(2, 3, 2)
    with pytest.raises(DistributedError, match=r"PMI_RANK=4 is outside 0 \.\. PMI_SIZE-1=3"):
        launch_info({"PMI_RANK": "4", "PMI_SIZE": "4"})


def _parameters(shapes):
    rng = np.random.default_rng(0)
    params = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    for p in params:
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
    return params


def test_gradient_buckets_split_by_size_and_round_trip():
    # 40-byte buckets: (3,2)=24 B and (4,)=16 B share one, (5,3)=60 B is larger than a bucket, (2,)=8 B
    params = _parameters([(3, 2), (4,), (5, 3), (2,)])
    grads = [p.grad.copy() for p in params]
    buckets = GradientBuckets(params, bucket_bytes=40)
    assert buckets.plan == [[(0, 0, 6), (1, 6, 4)], [(2, 0, 15)], [(3, 0, 2)]]
    first = buckets.pack()
    np.testing.assert_array_equal(first[0], np.concatenate([grads[0].ravel(), grads[1]]))
    assert [b.dtype for b in first] == [np.float32] * 3
    for b in first:
        b *= 2
    buckets.unpack()
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(p.grad, 2 * g)
    again = buckets.pack()
    assert [id(b) for b in again] == [id(b) for b in first]  # the same buffers every step


def test_a_parameter_without_a_gradient_is_named():
    params = _parameters([(2,), (3,)])
    params[1].grad = None
    with pytest.raises(DistributedError, match="h.bias has no gradient in this step"):
        GradientBuckets(params, ["h.weight", "h.bias"]).pack()


def test_one_process_collectives_leave_arrays_as_they_are():
    comm = Communicator()
    a = np.arange(3, dtype=np.float32)
    comm.allreduce_mean_([a])
    np.testing.assert_array_equal(a, [0, 1, 2])
    assert comm.any_(True) and not comm.any_(False) and comm.is_main
    assert comm.first_difference([("w", a)]) is None and comm.pids() == [os.getpid()]


def test_a_plain_run_never_imports_mpi4py():
    code = ("import sys; from tinygrad_llm.support.distributed import init_communicator; import tinygrad_llm.training.trainer\n"
            "print(type(init_communicator()).__name__, 'mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["Communicator", "False"], out.stderr


def test_accumulation_must_split_over_the_ranks():
    comm = Communicator(LaunchInfo(rank=0, size=2))
    with pytest.raises(ValueError, match=r"grad_accum_steps=3 micro-batches per step do not split over 2 ranks: "
                                         r"use a multiple of 2"):
        Trainer(None, [], None, TrainConfig(grad_accum_steps=3, max_steps=1), optimizer=SGD(_parameters([(1,)])),
                comm=comm)


def _dropout_masks(model):
    """The mask each Dropout module of `model` draws next, as bytes (drawing it advances the generators)."""
    from autograd import Tensor
    from autograd.nn import Dropout

    model.train()
    return [(m(Tensor(np.ones(64, dtype=np.float32))).numpy() == 0).tobytes()
            for _, m in model.named_modules() if isinstance(m, Dropout)]


def test_each_rank_draws_its_own_dropout_masks_and_rank_0_those_of_one_process():
    from tests.distributed_worker import build

    masks = [_dropout_masks(build(None, 2, Communicator(LaunchInfo(rank=r, size=2)), drop_rate=0.5).model)
             for r in (0, 1)]
    alone = _dropout_masks(build(None, 2, drop_rate=0.5).model)
    assert masks[0] == alone  # one process, or rank 0 of many: the masks it always drew
    assert len(masks[1]) == len(alone) == 5  # the embeddings', and per block the attention weights' and the residual's
    assert all(a != b for a, b in zip(masks[0], masks[1]))


def test_a_rank_the_checkpoint_never_had_gets_masks_of_its_own(tmp_path):
    """A 1-process checkpoint resumed by 2 ranks: rank 1 cannot take a saved stream, and must not replay
    rank 0's; a 2-rank checkpoint holds each rank's generators, and the same rank takes its own back."""
    from tests.distributed_worker import build

    one = build(tmp_path / "one", 2, max_steps=2, drop_rate=0.5)
    one.fit()
    resumed = [build(tmp_path / "one", 2, Communicator(LaunchInfo(rank=r, size=2)), drop_rate=0.5)
               for r in (0, 1)]
    for trainer in resumed:
        trainer.resume()
    assert resumed[0].model.rng_states() == one.model.rng_states()
    masks = [_dropout_masks(t.model) for t in resumed]
    assert all(a != b for a, b in zip(*masks))


def test_a_launcher_whose_mpi_is_not_mpi4pys_is_a_clean_error(tmp_path):
    """Open MPI's variables with no Open MPI behind them: without mpi4py the hint installs it, with
    mpi4py (MPICH) the process sees itself alone and says so."""
    env = {**ENV, "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}
    result = subprocess.run([sys.executable, str(PRETRAIN), "--out", str(tmp_path / "o")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert_clean_error(result, "rank 0 of 2 ranks" if _mpi4py() is None else "the launcher started 2 ranks")


# ---- under mpiexec ------------------------------------------------------------------------------


def _mpi4py():
    try:
        import mpi4py
    except ImportError:
        return None
    return mpi4py


def _mpiexec():
    """The mpiexec beside this python (a venv with the `mpi` extra), else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.is_file() else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(_mpi4py() is None or _mpiexec() is None,
                               reason="needs mpi4py and mpiexec: pip install -e '.[mpi]'")


def mpirun(n, *args, timeout=120):
    return subprocess.run([_mpiexec(), "-n", str(n), sys.executable, *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _params(out_dir):
    tensors, _ = load_checkpoint(Path(out_dir) / CHECKPOINT)
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def assert_same_parameters(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        np.testing.assert_allclose(pa[name], pb[name], rtol=1e-4, atol=1e-6, err_msg=name)


@needs_mpi
@pytest.mark.parametrize("grad_accum", [2, 4])
def test_two_ranks_train_as_one_process_with_the_same_accumulation(grad_accum, tmp_path):
    """2 ranks x k micro-batches each (k = 1, 2) = one process with 2k: the same losses and parameters
    to float32 rounding. Every step is clipped, so this holds only if the clip sees the averaged gradient."""
    from tests.distributed_worker import build

    result = mpirun(2, WORKER, tmp_path / "two", grad_accum)
    assert result.returncode == 0, result.stderr
    one = build(tmp_path / "one", grad_accum)
    one.fit()
    two_losses = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert len(two_losses) == 4
    np.testing.assert_allclose(two_losses, one.step_losses, rtol=1e-5)
    assert_same_parameters(tmp_path / "two", tmp_path / "one")


@needs_mpi
def test_two_ranks_with_dropout_draw_different_masks_and_resume_bit_exactly(tmp_path):
    """With dropout, 2 ranks stopped after 2 steps and resumed on 2 ranks end exactly where 2 ranks that
    never stopped end: the checkpoint held each rank's own dropout generators."""
    full = mpirun(2, WORKER, tmp_path / "full", 2, "--dropout", "--max-steps", 4)
    half = mpirun(2, WORKER, tmp_path / "half", 2, "--dropout", "--max-steps", 2)
    assert full.returncode == 0 and half.returncode == 0, full.stderr + half.stderr
    rest = mpirun(2, WORKER, tmp_path / "half", 2, "--dropout", "--max-steps", 4, "--resume")
    assert rest.returncode == 0, rest.stderr
    rng = json.loads((tmp_path / "full" / "rng.json").read_text())
    assert None not in rng["end"][0].values() and rng["end"][0] != rng["end"][1]  # each rank drew its own
    half_rng = json.loads((tmp_path / "half" / "rng.json").read_text())
    full_losses = json.loads((tmp_path / "full" / "losses.json").read_text())
    assert json.loads((tmp_path / "half" / "losses.json").read_text()) == full_losses[2:]  # bit for bit
    assert half_rng["end"] == rng["end"]
    pa, pb = _params(tmp_path / "half"), _params(tmp_path / "full")
    assert all(np.array_equal(pa[name], pb[name]) for name in pa)


@needs_mpi
def test_check_sync_stops_with_the_step_and_the_parameter(tmp_path):
    from tests.distributed_worker import PERTURBED

    result = mpirun(2, WORKER, tmp_path / "o", 2, "--perturb-at", 2, timeout=60)
    assert result.returncode != 0
    expected = f"error: after step 2 the ranks hold different parameters, first {PERTURBED}"
    assert f"rank 0: {expected}" in result.stderr and f"rank 1: {expected}" in result.stderr, result.stderr


TINY = ["--data", "CORPUS", "--config", "cpu-tiny", "--context-length", "16", "--batch-size", "2", "--vocab-size",
        "300", "--eval-batches", "1", "--sample-tokens", "3", "--schedule", "constant", "--warmup", "0",
        "--eval-every", "2", "--grad-accum", "2"]


@pytest.fixture
def tiny(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(topics["for"] + topics["while"], encoding="utf-8")
    return [str(corpus) if a == "CORPUS" else a for a in TINY]


def _eval_losses(out_dir):
    return {r["step"]: (r["train_loss"], r["val_loss"])
            for r in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines())}


@needs_mpi
def test_resume_with_another_number_of_ranks_equals_an_uninterrupted_run(tiny, tmp_path):
    """A 2-rank checkpoint resumed by 1 process, and a 1-process checkpoint resumed by 2 ranks, end where
    one process that never stopped ends; rank 0 alone prints."""
    one = lambda *a: subprocess.run([sys.executable, str(PRETRAIN), *map(str, a)], cwd=ROOT, env=ENV,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    runs = {
        "full": [one(*tiny, "--max-steps", 6, "--out", tmp_path / "full")],
        "two_then_one": [mpirun(2, PRETRAIN, *tiny, "--max-steps", 3, "--out", tmp_path / "two_then_one"),
                         one("--out", tmp_path / "two_then_one", "--resume", "--max-steps", 6)],
        "one_then_two": [one(*tiny, "--max-steps", 3, "--out", tmp_path / "one_then_two"),
                         mpirun(2, PRETRAIN, "--out", tmp_path / "one_then_two", "--resume", "--max-steps", 6)],
    }
    for results in runs.values():
        for r in results:
            assert r.returncode == 0, r.stderr
    assert runs["two_then_one"][0].stdout.count("done: 3 steps") == 1  # rank 1 stays silent
    assert "resumed at step 3/6" in runs["one_then_two"][1].stdout
    full = _eval_losses(tmp_path / "full")
    for name in ("two_then_one", "one_then_two"):
        resumed = _eval_losses(tmp_path / name)
        assert sorted(resumed) == [0, 2, 3, 4, 6]
        for step in (4, 6):
            np.testing.assert_allclose(resumed[step], full[step], rtol=1e-5, err_msg=f"{name} step {step}")
        assert_same_parameters(tmp_path / name, tmp_path / "full")


@needs_mpi
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_killed_rank_stops_the_job_and_the_checkpoint_still_loads(tiny, tmp_path):
    out = tmp_path / "o"
    proc = subprocess.Popen([_mpiexec(), "-n", "2", sys.executable, str(PRETRAIN), *tiny, "--max-steps", "100000",
                             "--eval-every", "100000", "--checkpoint-every", "1", "--out", str(out)], cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        ids_line = proc.stdout.readline()  # "data parallel over MPI: 2 ranks, process ids rank 0: ..., rank 1: ..."
        assert "process ids" in ids_line, ids_line
        rank1_pid = int(ids_line.rsplit("rank 1: ", 1)[1])
        deadline = time.time() + 60
        while not (out / CHECKPOINT).exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a few more steps, checkpoints among them
        killed = time.time()
        os.kill(rank1_pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
        stopped = time.time() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert stopped < 30
    assert f"PID {rank1_pid}" in rest, rest  # the launcher names the dead process; ids_line says it is rank 1
    tensors, meta = load_checkpoint(out / CHECKPOINT)
    assert meta["extra"]["step"] >= 1 and "model.wte.weight" in tensors


@needs_mpi
def test_without_grad_accum_two_ranks_take_one_micro_batch_each(tiny, tmp_path):
    """`mpiexec -n 2 python examples/pretrain.py` with no --grad-accum just works: one micro-batch per
    rank, said in the first lines, and recorded so that a resume on one process keeps the global batch."""
    args = tiny[:tiny.index("--grad-accum")]  # the flag left out
    result = mpirun(2, PRETRAIN, *args, "--max-steps", 2, "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    assert "2 micro-batches of 2 per step, 1 on each rank (--grad-accum not given: one per rank)" in result.stdout
    _, meta = load_checkpoint(tmp_path / "o" / CHECKPOINT)
    assert meta["extra"]["train_config"]["grad_accum_steps"] == 2
    assert meta["extra"]["metadata"]["args"]["grad_accum"] == 2
    alone = subprocess.run([sys.executable, str(PRETRAIN), *args, "--max-steps", "1", "--out", str(tmp_path / "one")],
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert alone.returncode == 0, alone.stderr
    assert load_checkpoint(tmp_path / "one" / CHECKPOINT)[1]["extra"]["train_config"]["grad_accum_steps"] == 1
