"""What the command-line programs in examples/ share: bad input is one line, `error: ...`, and exit
status 2, never a traceback; Ctrl-C is status 130.

    def main(argv=None):
        return run_main(run, argv)   # run(argv) parses the flags and does the work; returns 0

Flags are checked by argparse itself, before any work starts, with the `type=` factories below: a value
out of range, NaN or infinity is refused with a line naming the flag, e.g.

    error: argument --lr: must be a finite number > 0, got 'nan'

Every training command builds its parser from the same groups, so that a flag means the same in each
(only its default may differ):

    p = Parser(description=...)
    add_device_flags(p)                                  # --device --tf32 --dtype
    add_training_flags(p, lr=2e-3, epochs=6, warmup=10)  # --lr --warmup --weight-decay --batch-size --epochs
                                                         # --max-steps --eval-every
    add_lora_flags(p)                                    # --lora RANK --lora-alpha
    add_run_flags(p, out="runs/pretrain")                # --out --resume --overwrite --seed

and runs the same way:

    args, saved = parse_training_args(build_parser, argv, COMMAND, RESUMABLE)  # --resume: the checkpoint's settings
    out = start_run(args, resume=saved is not None)      # the device, and --out writable and claimed
    trainer = Trainer(model, train, val, train_config(args, log_every=5), ...)
    records = fit(trainer, out, __file__, resume=saved is not None)   # None after Ctrl-C: exit 130
    print(done_line(trainer, records, summary))          # done: 12 steps in 30 s; before: ...; after: ...

where `resumed_args` takes the settings the checkpoint recorded, with the flags a resumed run may change
(RESUMABLE and the command's own) given on the command line over them.
"""

import argparse
import math
import os
import shlex
import signal
import sys
from pathlib import Path

from autograd import DeviceError, backend
from autograd.checkpoint import CheckpointError, FileFormatError
from tinygrad_llm.support.download import DownloadError
from tinygrad_llm.text.data import file_fingerprint
from tinygrad_llm.training.config import TrainConfig
from tinygrad_llm.training.run_folder import CHECKPOINT, read_checkpoint_metadata

# what a user's input can raise: missing or unreadable files, bad values, a corrupt checkpoint, a device
# that is not there, a download that failed, a file that is malformed (FileFormatError, a ValueError, named
# for the reader). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, DeviceError, FileFormatError, CheckpointError, DownloadError)


def one_line(error):
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def ignore_further_ctrl_c():
    """From here on Ctrl-C is ignored: called first thing where an interrupted program reports what it
    saved, so that another Ctrl-C can neither cut that report short nor turn the exit status 130 into a
    death by signal (-2)."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to set
        pass


def run_main(run, argv=None):
    """run(argv), with USER_ERRORS printed as one `error:` line (status 2) and Ctrl-C as status 130."""
    try:
        return run(argv)
    except KeyboardInterrupt:
        ignore_further_ctrl_c()
        print("\ninterrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------------
# Flags


class FlagError(ValueError):
    """A flag that argparse refused; its message names the flag."""


class Parser(argparse.ArgumentParser):
    """argparse with the programs' one-line contract: a bad flag raises FlagError (argparse's own message,
    which names the flag), which `run_main` prints as `error: ...` with status 2, without the usage
    block argparse would print and without leaving the process (so main(argv) returns 2 in a test too)."""

    def error(self, message):
        raise FlagError(message)


def int_at_least(low):
    """An argparse `type=`: an integer >= low. `int_at_least(1)("0")` raises ArgumentTypeError."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"  # what argparse calls the type in its messages
    return parse


def finite_float(low=None, high=None, *, low_open=False, high_open=False, wanted=None):
    """An argparse `type=`: a finite float within [low, high] (an open end with low_open/high_open;
    None: unbounded); `wanted` words the range in its message. float() accepts "nan" and "inf", and
    `nan <= 0` is False, so a plain `type=float` plus a `<= 0` check lets NaN through: this refuses both
    first.

        finite_float(0, low_open=True)("1e-3") == 0.001;  ("nan"), ("inf"), ("0") raise ArgumentTypeError
    """
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    wanted = wanted or "a finite number" + (" " + " and ".join(bounds) if bounds else "")

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if not math.isfinite(value) or (
                low is not None and (value <= low if low_open else value < low)) or (
                high is not None and (value >= high if high_open else value > high)):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = wanted
    return parse


positive_int = int_at_least(1)          # sizes, counts, periods
nonnegative_int = int_at_least(0)       # counts where 0 means none (or off), seeds
positive_float = finite_float(0, low_open=True, wanted="a positive finite number")  # learning rates, LoRA alpha
nonnegative_float = finite_float(0, wanted="a finite number >= 0")  # weight decay, gradient clip, temperature
fraction = finite_float(0, 1, low_open=True, high_open=True, wanted="a number between 0 and 1 (both excluded)")
probability = finite_float(0, 1, low_open=True, wanted="a number > 0 and <= 1")  # top-p


def compute_dtype(text):
    """An argparse `type=` for --dtype: "float32" or "float16" (also "fp32", "fp16"), returned as
    TrainConfig.dtype spells it. bfloat16 is refused with the reason: NumPy has no bfloat16, so that path
    could not be tested without a GPU.

        compute_dtype("fp16") == "float16";  ("bf16"), ("float64") raise ArgumentTypeError
    """
    names = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16"}
    if text in names:
        return names[text]
    if text in ("bf16", "bfloat16"):
        raise argparse.ArgumentTypeError(f"bfloat16 is not supported yet (NumPy has none, so it has not been "
                                         f"tested; it needs validating on a GPU): use float16, got {text!r}")
    raise argparse.ArgumentTypeError(f"must be float32 or float16, got {text!r}")


compute_dtype.__name__ = "float32 or float16"


# ---------------------------------------------------------------------------------------------------
# The flags every training command shares


DEVICES = ["cpu", "cuda"]
# what each shared flag means, the same in every training command: its help starts with these words
SHARED_HELP = {
    "--device": "where the model trains: cpu, or cuda (CuPy and a GPU)",
    "--tf32": "GPU only: float32 matmuls in TensorFloat-32 on the tensor cores (faster, less precise)",
    "--dtype": "float16: the Linear layers' matrix products in half precision with dynamic loss scaling; "
               "weights, gradients and optimizer state stay float32. Meant for GPUs: on the CPU it is slower",
    "--lr": "peak learning rate",
    "--warmup": "warmup steps: the learning rate rises linearly to --lr over them",
    "--weight-decay": "AdamW's decoupled weight decay, on the 2-D weights (matrices and embeddings)",
    "--batch-size": "examples per batch",
    "--epochs": "passes over the training data",
    "--max-steps": "stop after this many optimizer steps (overrides --epochs)",
    "--eval-every": "steps between evaluations",
    "--lora": "train rank-RANK LoRA adapters on every Linear layer instead of the weights themselves",
    "--lora-alpha": "LoRA's update is scaled by alpha / RANK",
    "--out": "output folder",
    "--resume": "continue the run saved in --out, with the settings it was started with",
    "--overwrite": "start a new run in an --out that holds one, replacing it",
    "--seed": "random seed",
}
# the shared flags that a resumed run may change; the others come from its checkpoint
RESUMABLE = {"device", "tf32", "dtype", "epochs", "max_steps", "eval_every"}


def training_parser(doc, suppress=False):
    """(parser, d) for a training command: the parser, described by the first paragraph of `doc`, and
    d(value), the default to give a flag. With `suppress`, flags not given on the command line are left
    out (every default is SUPPRESS): the parse that tells which flags override a resumed run's settings
    (`resumed_args`). The shared groups below read the same setting off the parser."""
    parser = Parser(description=doc.split("\n\n")[0], argument_default=argparse.SUPPRESS if suppress else None)
    return parser, lambda v: _default(parser, v)


def _default(parser, value):
    """`value`, or SUPPRESS in a parser that leaves out the flags not given (argument_default=SUPPRESS:
    the parse that tells which flags override a resumed run's settings)."""
    return argparse.SUPPRESS if parser.argument_default == argparse.SUPPRESS else value


def _help(flag, more=None):
    return SHARED_HELP[flag] + (f"; {more}" if more else "")


def add_device_flags(parser, *, devices=None):
    """--device, --tf32 (--no-tf32 turns it off when resuming a run that had it) and --dtype."""
    a, d = parser.add_argument, lambda v: _default(parser, v)
    a("--device", default=d("cpu"), choices=devices or DEVICES, help=_help("--device"))
    a("--tf32", action=argparse.BooleanOptionalAction, default=d(False),
      help=_help("--tf32", "--no-tf32 turns it off when resuming a run that had it"))
    a("--dtype", type=compute_dtype, default=d("float32"), metavar="float32|float16", help=_help("--dtype"))


def add_training_flags(parser, *, lr, epochs, batch_size=8, warmup=0, weight_decay=0.1, eval_every=50,
                       lr_help=None, weight_decay_help=None, batch_size_help=None):
    """--lr, --warmup, --weight-decay, --batch-size, --epochs, --max-steps, --eval-every, with this
    command's defaults (lr=None: the command chooses one after parsing, and lr_help says how)."""
    a, d = parser.add_argument, lambda v: _default(parser, v)
    a("--lr", type=positive_float, default=d(lr), help=_help("--lr", lr_help))
    a("--warmup", type=nonnegative_int, default=d(warmup), help=_help("--warmup"))
    a("--weight-decay", type=nonnegative_float, default=d(weight_decay),
      help=_help("--weight-decay", weight_decay_help))
    a("--batch-size", type=positive_int, default=d(batch_size), help=_help("--batch-size", batch_size_help))
    a("--epochs", type=positive_int, default=d(epochs), help=_help("--epochs"))
    a("--max-steps", type=nonnegative_int, default=d(None), help=_help("--max-steps"))
    a("--eval-every", type=positive_int, default=d(eval_every), help=_help("--eval-every"))


def add_lora_flags(parser, *, lora_help=None):
    """--lora RANK (default: no LoRA) and --lora-alpha."""
    a, d = parser.add_argument, lambda v: _default(parser, v)
    a("--lora", type=positive_int, default=d(None), metavar="RANK", help=_help("--lora", lora_help))
    a("--lora-alpha", type=positive_float, default=d(16.0), help=_help("--lora-alpha"))


def add_run_flags(parser, *, out, seed=123, out_help=None, seed_help=None):
    """--out, --resume, --overwrite and --seed."""
    a, d = parser.add_argument, lambda v: _default(parser, v)
    a("--out", default=d(out), help=_help("--out", out_help))
    a("--resume", action="store_true", default=d(False), help=_help("--resume"))
    a("--overwrite", action="store_true", default=d(False), help=_help("--overwrite"))
    a("--seed", type=nonnegative_int, default=d(seed), help=_help("--seed", seed_help))


def resumed_args(build_parser, argv, args, command, resumable=RESUMABLE):
    """On --resume: the settings the run in args.out was started with (its checkpoint's
    metadata["args"]; this parser's defaults for any an earlier version did not record), with the flags
    in `resumable` that this command line gives over them. Other flags given are ignored, and a note
    says which. `build_parser(suppress=True)` must leave out the flags not given. Returns
    (args, the checkpoint's metadata); `command` (the script's name, recorded in metadata["command"])
    keeps one command from resuming another's run."""
    if args.overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    saved = read_checkpoint_metadata(args.out)
    metadata = saved.get("metadata") or {}
    recorded = metadata.get("command", command)
    if recorded != command:
        raise ValueError(f"{args.out} holds a run of {recorded}, not of {command}: resume it with that command, "
                         "or choose another --out")
    given = vars(build_parser(suppress=True).parse_args(argv))
    defaults = vars(build_parser().parse_args([]))
    old = {k: v for k, v in (metadata.get("args") or {}).items() if k in defaults}
    settings = {**defaults, **old, **{k: v for k, v in given.items() if k in resumable}}
    ignored = sorted(k for k in given if k not in resumable | {"out", "resume"} and given[k] != settings[k])
    if ignored:
        print(f"note: resuming with the checkpoint's settings; ignoring --{', --'.join(ignored)}")
    return argparse.Namespace(**{**settings, "out": args.out, "resume": True, "overwrite": False}), saved


def parse_training_args(build_parser, argv, command, resumable=RESUMABLE):
    """(args, None) from the command line; with --resume, `resumed_args`: (the run's settings, the
    checkpoint's metadata)."""
    args = build_parser().parse_args(argv)
    if not args.resume:
        return args, None
    return resumed_args(build_parser, argv, args, command, resumable)


def run_settings(args):
    """The flags a run records in its checkpoint (metadata["args"]) for `resumed_args`."""
    return {k: v for k, v in vars(args).items() if k not in ("resume", "overwrite")}


def check_same_data(fingerprint, saved, out):
    """On --resume: the data (`fingerprint`, a list of {"file", "bytes", "sha256"}) must be what the
    checkpoint was trained on (its metadata["data_fingerprint"]), file by file."""
    recorded = saved.get("metadata", {}).get("data_fingerprint")
    if recorded is None or recorded == fingerprint:
        return  # a checkpoint of an earlier version records none
    for then, now in zip(recorded, fingerprint):
        if then != now:
            break
    else:
        then = now = None
    what = (f"{now['file']} was {then['bytes']:,} bytes (sha256 {then['sha256'][:12]}) and is now {now['bytes']:,} "
            f"bytes (sha256 {now['sha256'][:12]})" if then is not None else
            f"it was {len(recorded)} files and is now {len(fingerprint)}")
    raise ValueError(f"the training data changed since the checkpoint in {out}: {what}. Restore the data to "
                     f"resume, or start over with --overwrite (without --resume)")


def data_fingerprint(paths, saved, out):
    """The fingerprint a run records of its data files (`file_fingerprint` of each of `paths`), on
    --resume (`saved`: the checkpoint's metadata) checked against the one it recorded (check_same_data)."""
    fingerprint = [file_fingerprint(path) for path in paths]
    if saved is not None:
        check_same_data(fingerprint, saved, out)
    return fingerprint


def shell_command(script):
    """How to run `script` again: with this interpreter (the venv's python, relative when it lies
    under the working directory) and the script's path, as a shell would take them."""
    def short(path):
        path = Path(path).absolute()
        return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)

    return f"{shlex.quote(short(sys.executable))} {shlex.quote(short(script))}"


def report_interrupt(trainer, out, script):
    """What a training command prints on stderr after Ctrl-C stopped `trainer`: the step, whether the
    checkpoint in `out` was saved, and how to resume."""
    ignore_further_ctrl_c()  # this report must be whole, and the status 130
    path = Path(out) / CHECKPOINT
    resume = f"resume with: {shell_command(script)} --out {shlex.quote(str(out))} --resume"
    if trainer.saved_step == trainer.step:
        print(f"\ninterrupted at step {trainer.step}/{trainer.total_steps}; checkpoint saved in {path}.\n"
              f"{resume}", file=sys.stderr)
    elif trainer.saved_step is not None:
        print(f"\ninterrupted at step {trainer.step}/{trainer.total_steps}; the checkpoint was NOT saved: "
              f"{path} holds step {trainer.saved_step}.\n{resume}", file=sys.stderr)
    else:
        print(f"\ninterrupted at step {trainer.step}/{trainer.total_steps}; the checkpoint was NOT saved, "
              "and this run has none to resume from", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# A training run: the device and the run folder first, the training, the line that ends it


def prepare_device(device, tf32=False):
    """Before anything is loaded: TF32 switched on where asked (before the first CuPy import: CuPy reads
    the mode once), and "cuda" without a GPU a DeviceError now, not after minutes of setup."""
    if tf32:
        backend.enable_tf32(device)
    if device == "cuda":
        backend.xp_for("cuda")


def check_writable(out, probe=".write-test"):
    """Create the folder `out` and write and remove an empty file `probe` in it: a folder that cannot be
    written is an error before any work starts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / probe).write_text("")
    (out / probe).unlink()


def start_run(args, *, resume=False):
    """What a training command does before it reads anything: the device (`prepare_device`), and --out
    created, writable and claimed (`claim_run_folder`). Returns --out as a Path."""
    prepare_device(args.device, args.tf32)
    out = Path(args.out)
    check_writable(out)
    claim_run_folder(out, resume=resume, overwrite=args.overwrite)
    return out


def check_max_length(max_length, context):
    """--max-length against the model's `context` length: the context when the flag is not given, an
    error when it is longer."""
    if max_length is None:
        return context
    if max_length > context:
        raise ValueError(f"--max-length {max_length} is longer than the model's context length {context}")
    return max_length


def train_config(args, **settings):
    """The TrainConfig of the shared flags (add_training_flags, --dtype, --out, --seed), with a command's
    own `settings` (eval_batches, log_every, schedule, ...)."""
    return TrainConfig(lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup, epochs=args.epochs,
                       max_steps=args.max_steps, eval_every=args.eval_every, out_dir=str(Path(args.out)),
                       seed=args.seed, dtype=args.dtype, **settings)


def resume_training(trainer):
    """Restore `trainer`'s run from its checkpoint (the model must be built as at the start, LoRA layers
    included: the checkpoint restores the weights, optimizer and data position) and say where it stands."""
    trainer.resume()
    print(f"resumed at step {trainer.step}/{trainer.total_steps} (epoch {trainer.epoch + 1}, "
          f"batch {trainer.batch_index})")


def fit(trainer, out, script, *, resume=False):
    """trainer.fit()'s records, the run resumed first where `resume` (`resume_training`); None when Ctrl-C
    stopped it, after `report_interrupt` has said so (the command then exits with 130)."""
    if resume:
        resume_training(trainer)
    try:
        return trainer.fit()
    except KeyboardInterrupt:
        report_interrupt(trainer, out, script)
        return None


def done_line(trainer, records, summary):
    """The line a fine-tuning run ends with, `summary(record)` wording its first and last evaluations:
    'done: 12 steps in 30 s; before: train loss 2.104; after: train loss 1.532'."""
    return (f"done: {trainer.step} steps in {trainer.elapsed:.0f} s; before: {summary(records[0])}; "
            f"after: {summary(records[-1])}")


# ---------------------------------------------------------------------------------------------------
# Run folders


def claim_run_folder(out, *, resume=False, overwrite=False, can_resume=True):
    """Check that a new run may write into `out` before any work starts: a folder that holds a
    checkpoint is an earlier run, which a fresh run must not replace without a word. It needs --resume
    (where the program has it) or --overwrite; with --overwrite the old checkpoint is removed now, so
    that a new run stopped before its first checkpoint cannot be resumed as the old one."""
    checkpoint = Path(out) / CHECKPOINT
    if resume or not checkpoint.exists():
        return
    if not overwrite:
        how = "--resume to continue it or --overwrite" if can_resume else "--overwrite"
        raise ValueError(f"{out} holds an earlier run ({checkpoint.name}); pass {how} to replace it, or choose "
                         f"another --out")
    checkpoint.unlink()


__all__ = ["USER_ERRORS", "one_line", "run_main", "ignore_further_ctrl_c", "FlagError", "Parser", "int_at_least",
           "finite_float", "positive_int", "nonnegative_int", "positive_float", "nonnegative_float", "fraction",
           "probability", "compute_dtype", "claim_run_folder", "DEVICES", "SHARED_HELP", "RESUMABLE",
           "add_device_flags", "add_training_flags", "add_lora_flags", "add_run_flags", "resumed_args",
           "parse_training_args", "run_settings", "check_same_data", "data_fingerprint", "shell_command",
           "report_interrupt", "prepare_device", "check_writable", "start_run", "check_max_length", "train_config", "resume_training",
           "fit", "done_line"]
