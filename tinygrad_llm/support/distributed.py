"""Data-parallel training: the same training step on N processes ("ranks"), each on its own share of
every global batch, with the gradients averaged between them before the optimizer update.

Started by an MPI launcher, which runs N copies of the same program and tells each one who it is
through environment variables:

    mpiexec -n 2 python examples/pretrain.py --grad-accum 2     # two ranks, one micro-batch each per step

How one optimizer step goes with N ranks and `grad_accum_steps` = K micro-batches per step (K a
multiple of N, k = K / N):
- every rank walks the same stream of batches (the order depends on the seed and epoch only), and rank
  r computes forward and backward on micro-batches r*k .. r*k + k - 1 of the step's K, scaling each
  loss by 1/k; the others it skips. The global batch is the one a single process with K micro-batches
  sees, whatever N is, so a checkpoint's data position (epoch, batch) means the same thing to any N.
- `GradientBuckets` copies the gradients into a few flat float32 buffers (~25 MB each, made once and
  reused every step), `Communicator.allreduce_mean_` sums each buffer over the ranks in place and divides
  by N, and the buffers are copied back into the gradients: every rank now holds the mean gradient of
  all K micro-batches, so gradient clipping and AdamW make the same update everywhere.
- the step's loss stays on each rank until a log point, where the pending losses of all ranks are
  averaged in one call: the loss reported is the global mean.

Parameters start equal (same seed) and are broadcast from rank 0 once at the start anyway, so a rank
whose initialisation differed cannot silently train a different model. Rank 0 alone evaluates,
samples, prints and writes files; the others stay silent.

The backends: `Communicator` is a single process (every collective returns its input), `MPICommunicator`
talks MPI through mpi4py's buffer interface (capital-letter methods: raw NumPy memory, no pickle). A
backend implements three primitives, `allreduce_(array, op)`, `broadcast_(array, root)` and `barrier()`,
plus `abort(status)`; everything else is written on top of them here. mpi4py is imported only when a
launcher started more than one rank.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np

from autograd import backend, nn

BUCKET_BYTES = 25 * 2**20  # PyTorch DDP's default bucket size

# (rank, size, local rank) as each launcher names them: MPICH's hydra and Intel MPI (PMI), Open MPI,
# MVAPICH. The first pair that is set wins.
LAUNCHER_VARIABLES = (
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK"),
)


class DistributedError(RuntimeError):
    """The ranks of a distributed run disagree (parameters, tokenizer) or cannot talk to each other."""


@dataclass(frozen=True)
class LaunchInfo:
    """Who this process is, as the launcher told it: rank (0 .. size - 1), size, and local_rank (its
    index among the ranks on this machine: the GPU it should use)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0


def launch_info(environ=None) -> LaunchInfo:
    """This process's rank, size and local rank from the launcher's environment variables; rank 0 of 1
    when no launcher set them.

        launch_info({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"})  # LaunchInfo(1, 2, 1)
    """
    env = os.environ if environ is None else environ
    for rank_var, size_var, local_var in LAUNCHER_VARIABLES:
        if rank_var in env and size_var in env:
            try:
                rank, size = int(env[rank_var]), int(env[size_var])
                local_rank = int(env.get(local_var, rank))
            except ValueError:
                raise DistributedError(f"the launcher's {rank_var}={env[rank_var]!r}, {size_var}={env[size_var]!r} "
                                       "are not numbers") from None
            if not 0 <= rank < size:
                raise DistributedError(f"the launcher's {rank_var}={rank} is outside 0 .. {size_var}-1={size - 1}")
            return LaunchInfo(rank, size, local_rank)
    return LaunchInfo()


# ---------------------------------------------------------------------------------------------------
# Communicators


class Communicator:
    """One process, rank 0 of 1: every collective leaves its arrays as they are. The base class of the
    real backends, which override the four primitives at the top; the rest is built on them."""

    backend_name = "single process"

    def __init__(self, info: LaunchInfo | None = None):
        info = info or LaunchInfo()
        self.rank, self.size, self.local_rank = info.rank, info.size, info.local_rank

    @property
    def is_main(self):
        """Rank 0: the one that prints, evaluates and writes files."""
        return self.rank == 0

    # ---- the primitives a backend implements ----------------------------------------------------------

    def allreduce_(self, array, op="sum"):
        """Replace `array` (contiguous) on every rank by its elementwise "sum", "min" or "max" over all
        ranks, in place. Returns `array`."""
        return array

    def broadcast_(self, array, root=0):
        """Overwrite `array` on every rank with rank `root`'s, in place. Returns `array`."""
        return array

    def barrier(self):
        """Return once every rank has called it."""

    def abort(self, status):
        """Stop every rank of the job now, with exit status `status` (a rank that fails alone would
        otherwise leave the others waiting in a collective forever)."""
        sys.exit(status)

    # ---- built on them ---------------------------------------------------------------------------------

    def allreduce_mean_(self, arrays):
        """Each array (float) replaced in place by its mean over the ranks: a sum, then a division by N."""
        for a in arrays:
            if self.size > 1:
                self.allreduce_(a, "sum")
                a *= a.dtype.type(1.0 / self.size)
        return arrays

    def any_(self, flag):
        """True on every rank when `flag` is true on at least one (a Ctrl-C that reached only some)."""
        if self.size == 1:
            return bool(flag)
        return bool(self.allreduce_(np.array([1 if flag else 0], dtype=np.int32), "max")[0])

    def broadcast_parameters_(self, parameters):
        """Every rank's parameter arrays overwritten with rank 0's."""
        if self.size > 1:
            for p in parameters:
                self.broadcast_(p.data, root=0)

    def first_difference(self, named_arrays):
        """The name of the first array whose bytes differ between the ranks, or None when all agree.
        Each rank hashes each array (BLAKE2b, 8 bytes as an int64); the elementwise min and max of
        those hashes over the ranks are equal exactly where every rank has the same bytes."""
        if self.size == 1:
            return None
        names, digests = [], []
        for name, array in named_arrays:
            names.append(name)
            host = np.ascontiguousarray(backend.to_host(array))
            digests.append(hashlib.blake2b(host.tobytes(), digest_size=8).digest())
        hashes = np.frombuffer(b"".join(digests), dtype=np.int64)
        low, high = self.allreduce_(hashes.copy(), "min"), self.allreduce_(hashes.copy(), "max")
        differ = np.flatnonzero(low != high)
        return names[differ[0]] if differ.size else None

    def gather_text(self, text):
        """Every rank's string, in rank order, on every rank (each rank's dropout generator states, for
        a checkpoint that resumes every rank exactly). Two sums: the lengths, then the UTF-8 bytes, each
        rank's in its own slot of a zeroed buffer."""
        if self.size == 1:
            return [text]
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        lengths = np.zeros(self.size, dtype=np.int64)
        lengths[self.rank] = data.size
        lengths = self.allreduce_(lengths, "sum")
        starts = np.concatenate([[0], np.cumsum(lengths)])
        buffer = np.zeros(int(starts[-1]), dtype=np.uint8)
        buffer[starts[self.rank]:starts[self.rank + 1]] = data
        buffer = self.allreduce_(buffer, "sum")
        return [buffer[starts[r]:starts[r + 1]].tobytes().decode("utf-8") for r in range(self.size)]

    def pids(self):
        """The process id of every rank, in rank order: a launcher reports a dead process by its id, and
        this says which rank that was."""
        pids = np.zeros(self.size, dtype=np.int64)
        pids[self.rank] = os.getpid()
        return self.allreduce_(pids, "sum").tolist()


class MPICommunicator(Communicator):
    """The ranks of an MPI job (mpiexec/mpirun/srun), through mpi4py's buffer interface: NumPy arrays
    are handed to MPI as raw memory (`Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)`), never pickled.
    Host (NumPy) arrays only: GPU arrays need a GPU backend (NCCL)."""

    backend_name = "MPI"

    def __init__(self, info: LaunchInfo):
        try:
            with warnings.catch_warnings():  # mpi4py warns of a foreign launcher; the check below says it in one line
                warnings.simplefilter("ignore", RuntimeWarning)
                from mpi4py import MPI  # starts MPI: only here, in a run a launcher made distributed
        except ImportError:
            raise DistributedError(
                f"this process is rank {info.rank} of {info.size} ranks started by an MPI launcher, but "
                f"mpi4py is not installed: pip install -e '.[mpi]' (mpi4py and an MPI library)") from None
        super().__init__(info)
        self._mpi, self.comm = MPI, MPI.COMM_WORLD
        if self.comm.Get_size() != info.size or self.comm.Get_rank() != info.rank:
            raise DistributedError(
                f"the launcher started {info.size} ranks but MPI sees rank {self.comm.Get_rank()} of "
                f"{self.comm.Get_size()}: the mpiexec that ran this is not the one of mpi4py's MPI library; "
                f"use the mpiexec installed beside this python ({os.path.dirname(sys.executable)})")
        self._ops = {"sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX}

    def _host_array(self, array):
        if type(array) is not np.ndarray or not array.flags.c_contiguous:
            raise DistributedError(f"MPICommunicator reduces contiguous NumPy arrays, got a "
                                   f"{type(array).__name__}: distributed training over MPI runs on the CPU")
        return array

    def allreduce_(self, array, op="sum"):
        self.comm.Allreduce(self._mpi.IN_PLACE, self._host_array(array), op=self._ops[op])
        return array

    def broadcast_(self, array, root=0):
        self.comm.Bcast(self._host_array(array), root=root)
        return array

    def barrier(self):
        self.comm.Barrier()

    def abort(self, status):
        sys.stderr.flush()
        self.comm.Abort(status)


def rank_dropout_seed(seed, rank, step=0):
    """The dropout seed of `rank` in a data-parallel run whose model drew `seed`: rank 0 of a fresh run
    keeps it (one process trains as it always did), every other (rank, step) gets its own."""
    if rank == 0 and step == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def distinct_dropout_streams(model, rank, step=0):
    """Reseed every Dropout module of `model` for `rank`, so that the ranks of a data-parallel run draw
    different dropout masks (with the same seed on every rank, each rank's micro-batch would get the
    same masks as every other's: N ranks would train like one with correlated noise). `step` > 0 gives
    a run resumed on more ranks than it was saved with fresh streams for the ranks it never had."""
    for _, module in model.named_modules():
        if isinstance(module, nn.Dropout) and module.seed is not None:
            module.reseed(rank_dropout_seed(module.seed, rank, step))


def init_communicator(environ=None) -> Communicator:
    """The communicator of this process: MPI when a launcher started more than one rank, else the
    single-process one (mpi4py is then never imported)."""
    info = launch_info(environ)
    if info.size == 1:
        return Communicator(info)
    return MPICommunicator(info)


# ---------------------------------------------------------------------------------------------------
# Gradient buckets


class GradientBuckets:
    """The gradients of `parameters` gathered into a few flat contiguous buffers for the all-reduce,
    and scattered back after it.

    One all-reduce per buffer instead of one per parameter (a GPT has ~150 of them, many tiny): each
    call has a fixed cost, so few large messages are faster. Buffers hold about `bucket_bytes` (a
    parameter larger than that gets a bucket of its own), one dtype each, in parameter order; they are
    allocated on the first `pack()` and reused by every step after (fresh memory is slow to fault in).

        buckets = GradientBuckets(model.parameters(), bucket_bytes=1 << 20)
        buckets.pack(); comm.allreduce_mean_(buckets.buffers); buckets.unpack()
    """

    def __init__(self, parameters, names=None, bucket_bytes=BUCKET_BYTES):
        self.parameters = list(parameters)
        self.names = list(names) if names is not None else [f"parameter {i}" for i in range(len(self.parameters))]
        self.plan = []  # per bucket: [(parameter index, offset, size), ...]
        bucket, bucket_bytes_used, dtype = [], 0, None
        for i, p in enumerate(self.parameters):
            nbytes = p.data.size * p.data.dtype.itemsize
            if bucket and (p.data.dtype != dtype or bucket_bytes_used + nbytes > bucket_bytes):
                self.plan.append(bucket)
                bucket, bucket_bytes_used = [], 0
            offset = sum(size for _, _, size in bucket)
            bucket.append((i, offset, p.data.size))
            bucket_bytes_used, dtype = bucket_bytes_used + nbytes, p.data.dtype
        if bucket:
            self.plan.append(bucket)
        self.buffers = []

    def _allocate(self):
        for bucket in self.plan:
            first = self.parameters[bucket[0][0]].data
            total = sum(size for _, _, size in bucket)
            self.buffers.append(backend.get_array_module(first).empty(total, dtype=first.dtype))

    def pack(self):
        """Copy every gradient into its place in the buffers. A parameter without a gradient is an error:
        the other ranks may have one, and the ranks must reduce the same buffers."""
        if not self.buffers:
            self._allocate()
        for buffer, bucket in zip(self.buffers, self.plan):
            for i, offset, size in bucket:
                grad = self.parameters[i].grad
                if grad is None:
                    raise DistributedError(
                        f"{self.names[i]} has no gradient in this step: in data-parallel training every "
                        "trainable parameter must take part in the loss (freeze it with requires_grad_(False))")
                buffer[offset:offset + size] = grad.reshape(-1)
        return self.buffers

    def unpack(self):
        """Copy the (reduced) buffers back into the gradients, in place."""
        for buffer, bucket in zip(self.buffers, self.plan):
            for i, offset, size in bucket:
                grad = self.parameters[i].grad
                grad[...] = buffer[offset:offset + size].reshape(grad.shape)

    def average_(self, comm):
        """Every gradient replaced by its mean over the ranks of `comm`."""
        self.pack()
        comm.allreduce_mean_(self.buffers)
        self.unpack()


__all__ = [
    "BUCKET_BYTES", "Communicator", "DistributedError", "GradientBuckets", "LaunchInfo", "MPICommunicator",
    "init_communicator", "launch_info", "rank_dropout_seed", "distinct_dropout_streams",
]
