"""What the command-line programs in examples/ share: bad input is one line, `error: ...`, and exit
status 2, never a traceback; Ctrl-C before there is anything to save is status 130.

    def main(argv=None):
        return run_main(run, argv)   # run(argv) parses the flags and does the work; returns 0
"""

import sys

from autograd import DeviceError
from autograd.checkpoint import CheckpointError, FileFormatError
from tinygrad_llm.download import DownloadError

# what a user's input can raise: missing or unreadable files, bad values, a corrupt checkpoint, a device
# that is not there, a download that failed, a file that is malformed (FileFormatError, a ValueError, named
# for the reader). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, DeviceError, FileFormatError, CheckpointError, DownloadError)


def one_line(error):
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def run_main(run, argv=None):
    """run(argv), with USER_ERRORS printed as one `error:` line (status 2) and Ctrl-C as status 130."""
    try:
        return run(argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


__all__ = ["USER_ERRORS", "one_line", "run_main"]
