"""Pretrain a GPT on a text corpus (book chapter 5).

With no arguments it runs offline on a CPU: a small model ("cpu-small") on Python's own
help topics (`pydoc_data`, part of the standard library), with a byte-level BPE trained on them.

    .venv/bin/python examples/pretrain.py                                   # the default run, in runs/pretrain
    .venv/bin/python examples/pretrain.py --data book.txt --max-steps 2000  # your text (files, a dir, a URL)
    .venv/bin/python examples/pretrain.py --out runs/pretrain --resume      # continue where a run stopped
    .venv/bin/mpiexec -n 2 .venv/bin/python examples/pretrain.py                 # data parallel, 2 ranks

Data parallel (the `mpi` extra): started by mpiexec/mpirun, each rank computes its share of the
--grad-accum micro-batches of every step (a multiple of the number of ranks; one per rank when the flag
is not given), the gradients are averaged over MPI, each rank draws its own dropout masks, and rank 0
alone prints and writes. The global batch does not depend on the number of
ranks, so a run resumes with any number that divides --grad-accum. If one rank fails, every rank stops.

Bad input (a flag out of range, NaN or infinite, missing or empty data, non-UTF-8 text, a corpus shorter
than one window, an output folder that cannot be written or that holds an earlier run without --resume or
--overwrite, a corrupt checkpoint, data changed since the checkpoint, "cuda" without a GPU, an unknown
preset, --tf32 off the GPU, --dtype bf16) prints one line, `error: ...`, and exits with status 2, as do running out of
device memory (the line says what to make smaller) and a run whose loss or gradient norm turns NaN or
infinite (nothing is saved over the last good checkpoint; --on-nonfinite skip skips such steps
instead). Ctrl-C stops at the end of the step, saves a checkpoint and exits with status 130; a
second Ctrl-C stops at once, and the last line says whether the checkpoint was saved.

The corpus is read and tokenized in chunks into an array of 2-byte ids (4 for vocabularies over 65,536
tokens), and split into training and validation ids by --train-ratio; the checkpoint records each file's
size and sha256, and --resume refuses data that changed since. A run starts by naming the device and its
memory and ends with the peak memory it used there (on a GPU: what CuPy's memory pool held).
"""

import hashlib
import os
import sys
import traceback
import urllib.error
from pathlib import Path

from autograd import DeviceError, backend  # before NumPy: backend sets OpenBLAS's thread timeout
import numpy as np  # noqa: E402
from tinygrad_llm.text.data import (DataLoader, GPTDataset, encode_pieces, file_fingerprint, read_chunks, text_files,
                               train_val_split)
from tinygrad_llm.models.gpt import GPT, PRESETS, GPTConfig
from tinygrad_llm.text.tokenizer import BPETokenizer, get_tokenizer, tokenizer_fingerprint
from tinygrad_llm.training.trainer import TrainConfig, Trainer
from tinygrad_llm.training.run_folder import checkpoint_tokenizer
from tinygrad_llm.finetune.lora import ADAPTER_FILE, apply_lora, save_adapter
from tinygrad_llm.support import cli
from tinygrad_llm.support.cli import (add_device_flags, add_lora_flags, add_run_flags, add_training_flags,
                                      check_same_data, check_writable, claim_run_folder, fraction, int_at_least,
                                      nonnegative_float, nonnegative_int, one_line, parse_training_args, positive_int,
                                      prepare_device, report_interrupt, resume_training, run_main, run_settings)
from tinygrad_llm.support.download import default_cache_dir, download_file
from tinygrad_llm.support.distributed import Communicator, DistributedError, init_communicator

COMMAND = "examples/pretrain.py"  # recorded in the checkpoint: another command cannot resume its run
DEFAULT_CORPUS = "pydoc"  # Python's help topics, from the standard library
# flags that a resumed run may change; the rest (model, data, tokenizer) come from the checkpoint
RESUMABLE = cli.RESUMABLE | {"eval_batches", "log_every", "checkpoint_every", "sample_prompt", "sample_tokens",
                             "temperature", "top_k", "on_nonfinite", "check_sync"}
BPE_SAMPLE_CHARS = 8 << 20  # the BPE is trained on at most this much of the start of the training text
DEVICE_CHOICES = cli.DEVICES  # the tests add "strict", the simulated device, to run out of its memory


def build_parser(suppress=False):
    """The argument parser; with `suppress`, flags not given on the command line are left out (used to
    tell which flags override a resumed run's settings)."""
    p, d = cli.training_parser(__doc__, suppress)
    a = p.add_argument
    a("--data", nargs="+", default=d([DEFAULT_CORPUS]), metavar="PATH_OR_URL",
      help="text files, a directory of *.txt, or a URL (downloaded once); default: Python's help topics")
    a("--tokenizer", default=d(None), help="'gpt2' (tiktoken) or a directory with encoder.json + vocab.bpe; "
      "default: a BPE trained on the training text")
    a("--vocab-size", type=int_at_least(257), default=d(2048),
      help="vocabulary of the BPE trained when --tokenizer is not given (the 256 bytes and <|endoftext|> at least)")
    a("--config", default=d("cpu-small"), help=f"model preset: {', '.join(PRESETS)}")
    a("--context-length", type=positive_int, default=d(None), help="override the preset's context length")
    a("--init-from", default=d(None), metavar="gpt2|PATH", help="start from pretrained weights")
    add_device_flags(p, devices=DEVICE_CHOICES)
    add_training_flags(p, lr=2e-3, epochs=6, warmup=10, eval_every=100,
                       weight_decay_help="on every parameter with --decay-all",
                       batch_size_help="--grad-accum batches make one step")
    a("--grad-accum", type=positive_int, default=d(None),
      help="micro-batches per optimizer step, over all ranks together; default: one per rank (1 in one process)")
    a("--min-lr", type=nonnegative_float, default=d(None), help="end of the cosine schedule (default lr/10)")
    a("--schedule", default=d("cosine"), choices=["cosine", "constant"])
    a("--decay-all", action="store_true", default=d(False),
      help="decay every parameter, biases and LayerNorm too, as the book does")
    a("--grad-clip", type=nonnegative_float, default=d(1.0), help="max gradient norm; 0 turns clipping off")
    a("--train-ratio", type=fraction, default=d(0.9), help="share of the tokens used for training")
    a("--eval-batches", type=positive_int, default=d(5))
    a("--log-every", type=positive_int, default=d(5))
    a("--checkpoint-every", type=nonnegative_int, default=d(0), help="0: only at the end and on Ctrl-C")
    a("--sample-prompt", default=d(None))
    a("--sample-tokens", type=nonnegative_int, default=d(40))
    a("--temperature", type=nonnegative_float, default=d(0.8), help="sampling temperature of the samples (0: greedy)")
    a("--top-k", type=positive_int, default=d(40))
    a("--on-nonfinite", default=d("error"), choices=["error", "skip"],
      help="a step whose loss or gradient norm is NaN or infinite: stop with an error (nothing saved over the "
           "last good checkpoint), or skip its update")
    add_lora_flags(p, lora_help=f"--out/{ADAPTER_FILE} holds them alone, model/ the merged weights")
    add_run_flags(p, out="runs/pretrain", out_help="checkpoint, metrics.jsonl, loss.png, model/")
    a("--check-sync", type=nonnegative_int, default=d(0), metavar="K",
      help="data-parallel runs: every K steps, stop with an error if the ranks' parameters differ (a debug check)")
    return p


def fetch(url):
    """A local copy of `url`, downloaded once into the cache."""
    name = Path(url.split("?")[0].rstrip("/")).name or "data.txt"
    dest = default_cache_dir() / "data" / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            download_file(url, dest)
        except (urllib.error.URLError, OSError) as e:
            raise OSError(f"could not download {url} ({one_line(getattr(e, 'reason', e))}); "
                          "download it yourself and pass the local path to --data") from None
    return dest


class Corpus:
    """The training text, read in pieces, never whole: the files of --data (or Python's help topics) in
    order, "\n\n" between two files. `fingerprint` is each file's size and sha256 (read once now, which
    also checks that the files are UTF-8)."""

    SEPARATOR = "\n\n"

    def __init__(self, sources):
        if sources == [DEFAULT_CORPUS]:
            from pydoc_data.topics import topics

            text = "\n\n".join(topics[k] for k in sorted(topics))
            data = text.encode("utf-8")
            self.files, self._text = [], text
            self.fingerprint = [{"file": "pydoc_data.topics", "bytes": len(data),
                                 "sha256": hashlib.sha256(data).hexdigest()}]
        else:
            paths = [fetch(s) if s.startswith(("http://", "https://")) else Path(s) for s in sources]
            self.files, self._text = text_files(paths), None
            self.fingerprint = [file_fingerprint(p) for p in self.files]
        self.bytes = sum(f["bytes"] for f in self.fingerprint)
        if self.bytes == 0:
            raise ValueError(f"the corpus {' '.join(sources)} is empty")

    def pieces(self):
        """The text in pieces of about 1 MB, cut where the tokenizer cuts anyway (see `read_chunks`)."""
        if self._text is not None:
            yield self._text
            return
        for k, path in enumerate(self.files):
            if k:
                yield self.SEPARATOR
            yield from read_chunks(path)

    def head(self, chars):
        """The first `chars` characters (or all of a shorter text), for training a tokenizer."""
        out, n = [], 0
        for piece in self.pieces():
            out.append(piece[:chars - n])
            n += len(out[-1])
            if n >= chars:
                break
        return "".join(out)


def windows(ids, context, what):
    if len(ids) < context + 1:
        raise ValueError(f"the {what} text is {len(ids)} tokens, shorter than one window of {context} + 1; "
                         "use a longer corpus or a smaller --context-length")
    return GPTDataset(ids, context, stride=context)


def setup(args, saved=None, comm=None):
    """Tokenizer, model and loaders from the arguments (and a checkpoint's metadata when resuming)."""
    prepare_device(args.device, args.tf32)
    info = backend.device_info(args.device)
    print(f"device {args.device}: {info['name']}, {size(info['total_memory'])} memory"
          + (", float32 matmuls in TF32" if info["tf32"] else ""))
    if saved is None and args.init_from is None and args.config not in PRESETS:
        raise ValueError(f"unknown preset {args.config!r}; choose one of: {', '.join(PRESETS)}")
    out = Path(args.out)
    check_writable(out, probe=f".write-test-{os.getpid()}")  # one per process: ranks of a distributed run probe at once
    if comm is None or comm.is_main:  # one rank replaces an earlier run, the others wait for it
        claim_run_folder(out, resume=saved is not None, overwrite=args.overwrite)
    if comm is not None:
        comm.barrier()
    corpus = Corpus(args.data)
    if saved is not None:  # the checkpoint's own tokenizer, and the data it was trained on
        check_same_data(corpus.fingerprint, saved, out)
        tok = checkpoint_tokenizer(out, saved)
    elif args.tokenizer is not None or args.init_from is not None:
        tok = get_tokenizer(args.tokenizer or "gpt2")
    else:  # trained on the start of the training part (the split below is by tokens; this is close)
        sample = corpus.head(min(BPE_SAMPLE_CHARS, int(args.train_ratio * corpus.bytes)))
        print(f"training a {args.vocab_size}-token BPE on {len(sample):,} characters")
        tok = BPETokenizer.train(sample, args.vocab_size)
        del sample
    ids = encode_pieces(corpus.pieces(), tok, allowed_special={"<|endoftext|>"})
    train_ids, val_ids = train_val_split(ids, args.train_ratio)  # views, no copy

    if saved is not None:
        model = GPT(GPTConfig.from_dict(saved["model_config"]), seed=args.seed)
    elif args.init_from is not None:
        model = GPT.from_pretrained(args.init_from)
    else:
        overrides = {"vocab_size": tok.n_vocab}
        if args.context_length:
            overrides["context_length"] = args.context_length
        model = GPT(GPTConfig.preset(args.config, **overrides), seed=args.seed)
    if tok.n_vocab > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tok.n_vocab} tokens, the model only {model.config.vocab_size}")
    context = min(args.context_length or model.config.context_length, model.config.context_length)
    if args.lora:  # before resume, which loads the adapters too
        print(apply_lora(model, args.lora, args.lora_alpha, seed=args.seed))  # wraps every Linear, freezes the rest
    model.to(args.device)
    train = DataLoader(windows(train_ids, context, "training"), args.batch_size, shuffle=True, drop_last=True,
                       seed=args.seed)
    val = DataLoader(windows(val_ids, context, "validation"), args.batch_size, shuffle=False, drop_last=False)
    print(f"{len(train_ids):,} training and {len(val_ids):,} validation tokens; "
          f"model {model.num_parameters():,} parameters, context {context}, {len(train)} batches per epoch")
    return tok, model, train, val, corpus


def size(nbytes):
    """Bytes for a reader: GiB from one GiB up, MiB below."""
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def out_of_memory(args, error):
    """The one line for a run that ran out of device memory: what to make smaller."""
    accum = args.grad_accum
    return DeviceError(
        f"out of memory on device {args.device!r}: {one_line(error).rstrip('.')}. Make the run smaller: a lower "
        f"--batch-size (now {args.batch_size}; raise --grad-accum, now {accum}, by the same factor to keep "
        f"the global batch of {args.batch_size * accum} sequences), a shorter --context-length, or a smaller "
        "model (--config)")


def train_config(args, prompt):
    return TrainConfig(
        lr=args.lr, min_lr=args.min_lr, warmup_steps=args.warmup, schedule=args.schedule,
        weight_decay=args.weight_decay, decay_all=args.decay_all, grad_clip=args.grad_clip,
        grad_accum_steps=args.grad_accum, epochs=args.epochs, max_steps=args.max_steps,
        eval_every=args.eval_every, eval_batches=args.eval_batches, log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, sample_prompt=prompt, sample_tokens=args.sample_tokens,
        sample_temperature=args.temperature, sample_top_k=args.top_k, out_dir=args.out, seed=args.seed,
        on_nonfinite=args.on_nonfinite, check_sync=args.check_sync, dtype=args.dtype)


def check_ranks_agree(comm, tok, train):
    """Every rank built the same tokenizer and training tokens (each trains its own BPE from the same
    text), or a DistributedError naming what differs."""
    fingerprint = np.frombuffer(tokenizer_fingerprint(tok).encode(), dtype=np.uint8)
    different = comm.first_difference([("tokenizer", fingerprint), ("training tokens", train.dataset.token_ids)])
    if different is not None:
        raise DistributedError(f"the ranks built different {different}; run every rank on the same data and settings")


def run(argv, comm=None):
    comm = comm if comm is not None else Communicator()  # this process alone unless a launcher started ranks
    args, saved = parse_training_args(build_parser, argv, COMMAND, RESUMABLE)
    one_per_rank = args.grad_accum is None
    if one_per_rank:  # one micro-batch per rank, recorded as a number: a resume keeps the global batch
        args.grad_accum = comm.size
    if comm.size > 1:
        print(f"data parallel over {comm.backend_name}: {comm.size} ranks, process ids "
              + ", ".join(f"rank {r}: {pid}" for r, pid in enumerate(comm.pids())))
        print(f"{args.grad_accum} micro-batches of {args.batch_size} per step, {args.grad_accum // comm.size} "
              "on each rank" + (" (--grad-accum not given: one per rank)" if one_per_rank else ""))
        if args.device != "cpu":
            raise ValueError("distributed training runs on the CPU (MPI): drop --device cuda, or run one process")
    prompt = args.sample_prompt
    if prompt is None:
        prompt = "The built-in function" if args.data == [DEFAULT_CORPUS] else "Every effort moves you"
    try:
        return train_and_report(args, saved, prompt, comm)
    except Exception as e:  # setup or training ran out of device memory: say what to make smaller
        if backend.is_out_of_memory(e):
            raise out_of_memory(args, e) from None
        raise


def train_and_report(args, saved, prompt, comm):
    """Set up, train and print the summary: 0, or 130 after Ctrl-C."""
    tok, model, train, val, corpus = setup(args, saved, comm)
    check_ranks_agree(comm, tok, train)
    metadata = {"command": COMMAND, "args": run_settings(args), "data_fingerprint": corpus.fingerprint}
    trainer = Trainer(model, train, val, train_config(args, prompt), tokenizer=tok, metadata=metadata, comm=comm)
    if saved is not None:
        resume_training(trainer)
    try:
        records = trainer.fit()
    except KeyboardInterrupt:
        if not comm.is_main:  # every rank stopped at this step; rank 0 says so
            cli.ignore_further_ctrl_c()
            return 130
        report_interrupt(trainer, args.out, __file__)
        return 130
    if not comm.is_main:
        return 0
    first, last = records[0], records[-1]
    print(f"done: {trainer.step} steps, {trainer.tokens_seen:,} tokens in {trainer.elapsed:.0f} s; "
          f"train loss {first['train_loss']:.3f} -> {last['train_loss']:.3f}, "
          f"val loss {first['val_loss']:.3f} -> {last['val_loss']:.3f}")
    if trainer.scaler is not None:
        print(f"float16: final loss scale {trainer.scaler.scale_value:g}, {trainer.scaler.skipped_steps} steps "
              "skipped for overflowing gradients")
    if args.lora:  # model/ holds the merged weights (save_pretrained merges them); the adapters alone are small
        print(f"LoRA adapters written to {save_adapter(model, Path(args.out) / ADAPTER_FILE)}")
    print(f"peak memory on device {args.device}: {size(backend.peak_memory(args.device))}")
    print(f"outputs in {args.out}/: checkpoint.safetensors, metrics.jsonl, model/ (Hugging Face layout)"
          + (", loss.png" if (Path(args.out) / "loss.png").exists() else " (pip install matplotlib for loss.png)"))
    return 0


def run_ranks(comm, argv):
    """run() on one rank of a distributed job. Rank 0 speaks for the job: the others' standard output
    goes nowhere (their errors still reach stderr). A rank that fails alone would leave the others
    waiting in the next all-reduce forever, so any failure stops the whole job (MPI_Abort); Ctrl-C
    (status 130) reaches every rank, which stop together after rank 0 saved a checkpoint."""
    if not comm.is_main:
        sys.stdout = open(os.devnull, "w")
    try:
        status = run_main(lambda a: run(a, comm), argv)
    except DistributedError as e:  # the ranks disagree (--check-sync): each of them raises it
        print(f"error: {one_line(e)}", file=sys.stderr)
        status = 1
    except BaseException:
        traceback.print_exc()
        status = 1
    if status not in (0, 130):
        print(f"rank {comm.rank} of {comm.size} failed (status {status}): stopping every rank", file=sys.stderr)
        comm.abort(status)
    return status


def main(argv=None):
    backend.keep_freed_memory()  # reuse freed memory: fresh pages for each step's temporaries are slow
    try:
        comm = init_communicator()  # a single process unless an MPI launcher started several
    except DistributedError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    if comm.size > 1:
        return run_ranks(comm, argv)
    return run_main(lambda a: run(a, comm), argv)


if __name__ == "__main__":
    sys.exit(main())
