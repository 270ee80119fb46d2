"""Ctrl-C during a training run: stop at a step boundary, never in the middle of a write.

The first Ctrl-C asks the loop to stop at the next step boundary (`stop_requested`); the loop then
saves a checkpoint and raises KeyboardInterrupt. A second one raises KeyboardInterrupt at once, cutting
the current step short, except inside an `uninterruptible()` block (writing a checkpoint, updating the
parameters): there it is noted and raised when the block has finished, so a checkpoint is never cut in
half. While the checkpoint after an interrupt is written (`holding()`), further presses wait and are
then dropped: that save must finish, and the KeyboardInterrupt is already on its way.
"""

import contextlib
import signal
import threading


class Interrupts:
    """The SIGINT handler of one Trainer and the flags it sets. The handler only sets flags: printing
    from a signal handler can collide with a print it interrupted."""

    def __init__(self):
        self.stop_requested = False  # a Ctrl-C asked the loop to stop at the next step boundary
        self._critical = 0  # > 0 inside uninterruptible() or holding(): a second Ctrl-C waits
        self._deferred = False  # a second Ctrl-C came during such a block

    def _handler(self, signum, frame):
        if not self.stop_requested:
            self.stop_requested = True
        elif self._critical:
            self._deferred = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self):
        """The handler in place for the block (only on the main thread: signals reach no other), the
        previous one back after it."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextlib.contextmanager
    def uninterruptible(self):
        """A block that a second Ctrl-C must not cut in half: the handler only notes the press, and it
        takes effect, as KeyboardInterrupt, when the block has finished."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self._deferred:  # only reached when the block succeeded
            self._deferred = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def holding(self):
        """The save after an interrupt: every further Ctrl-C waits for the block, and is then dropped."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
            self._deferred = False
