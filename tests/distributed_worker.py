"""A tiny training run for tests/test_distributed.py: the test runs it under `mpiexec -n N`, and calls
`build` itself for the one-process run it compares against.

    mpiexec -n 2 python tests/distributed_worker.py OUT_DIR GRAD_ACCUM [--perturb-at STEP]
    mpiexec -n 2 python tests/distributed_worker.py OUT_DIR GRAD_ACCUM --dropout [--max-steps N] [--resume]

writes OUT_DIR/checkpoint.safetensors (rank 0) and OUT_DIR/losses.json (the step losses rank 0
reports). --perturb-at adds 1e-3 to one weight of rank 1 after that step, with --check-sync 1 on: the
run must stop with the step and the parameter's name. --dropout trains with dropout 0.1 at a constant learning rate (so a shorter run is the start of a
longer one) and writes
OUT_DIR/rng.json: every rank's dropout generator states at the end.
"""

import json
import sys
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from any folder
    sys.path.insert(0, str(ROOT))

from autograd.checkpoint import write_text  # noqa: E402
from tinygrad_llm.text.data import DataLoader, GPTDataset  # noqa: E402
from tinygrad_llm.support.distributed import DistributedError, init_communicator  # noqa: E402
from tinygrad_llm.models.gpt import GPT, GPTConfig  # noqa: E402
from tinygrad_llm.training.trainer import TrainConfig, Trainer  # noqa: E402

PERTURBED = "h.1.mlp.c_fc.weight"


def build(out_dir, grad_accum, comm=None, max_steps=4, check_sync=0, drop_rate=0.0, schedule="cosine"):
    """A 2-layer GPT over random ids, with a small grad_clip so that every step is clipped: clipping
    before the all-reduce instead of after it would change the result."""
    ids = np.random.default_rng(0).integers(0, 64, 2000).astype(np.int64)
    model = GPT(GPTConfig.preset("cpu-tiny", vocab_size=64, context_length=16, emb_dim=32, drop_rate=drop_rate),
                seed=3)
    train = DataLoader(GPTDataset(ids, 16, 16), batch_size=2, shuffle=True, seed=5)
    cfg = TrainConfig(lr=3e-3, warmup_steps=1, max_steps=max_steps, grad_clip=0.05, grad_accum_steps=grad_accum,
                      eval_every=1000, eval_batches=1, log_every=3, out_dir=str(out_dir), progress=False,
                      check_sync=check_sync, schedule=schedule)
    return Trainer(model, train, None, cfg, log=None, comm=comm)


def _flag(argv, name):
    return int(argv[argv.index(name) + 1]) if name in argv else None


def main(argv):
    out_dir, grad_accum = Path(argv[0]), int(argv[1])
    perturb_at = _flag(argv, "--perturb-at")
    dropout = "--dropout" in argv
    comm = init_communicator()
    max_steps = _flag(argv, "--max-steps") or (6 if perturb_at else 4)
    trainer = build(out_dir, grad_accum, comm, max_steps=max_steps, check_sync=1 if perturb_at else 0,
                    drop_rate=0.1 if dropout else 0.0, schedule="constant" if dropout else "cosine")
    if "--resume" in argv:
        trainer.resume()

    def perturb(trainer):
        if trainer.step == perturb_at and comm.rank == 1:
            dict(trainer.model.named_parameters())[PERTURBED].data[0, 0] += 1e-3

    trainer.on_step = perturb if perturb_at else None
    try:
        trainer.fit()
    except DistributedError as e:  # every rank finds the difference at the same step: each stops by itself
        print(f"rank {comm.rank}: error: {e}", file=sys.stderr)
        return 3
    except BaseException:  # a failure of this rank alone: stop the others, waiting for it in a collective
        traceback.print_exc()
        comm.abort(1)
    end = comm.gather_text(json.dumps(trainer.model.rng_states()))
    if comm.is_main:
        write_text(out_dir / "losses.json", json.dumps(trainer.step_losses))
        if dropout:
            write_text(out_dir / "rng.json", json.dumps({"end": [json.loads(t) for t in end]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
