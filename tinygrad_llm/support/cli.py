"""What the command-line programs in examples/ share: bad input is one line, `error: ...`, and exit
status 2, never a traceback; Ctrl-C is status 130.

    def main(argv=None):
        return run_main(run, argv)   # run(argv) parses the flags and does the work; returns 0

Flags are checked by argparse itself, before any work starts, with the `type=` factories below: a value
out of range, NaN or infinity is refused with a line naming the flag, e.g.

    error: argument --lr: must be a finite number > 0, got 'nan'
"""

import argparse
import math
import signal
import sys
from pathlib import Path

from autograd import DeviceError
from autograd.checkpoint import CheckpointError, FileFormatError
from tinygrad_llm.support.download import DownloadError
from tinygrad_llm.training.run_folder import CHECKPOINT

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
           "probability", "compute_dtype", "claim_run_folder"]
