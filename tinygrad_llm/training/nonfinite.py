"""A training step whose loss or gradient norm is NaN or infinite, and what the run does about it.

on_nonfinite="error" (the default) stops the run with `NonFiniteError` when the losses are read
(`check`, at every log point, evaluation, checkpoint and export), so nothing computed after the
divergence is saved. on_nonfinite="skip" reads each step's loss and norm before its update (`keep`)
and drops the update of a step where either is not finite, until more than `max_nonfinite_skips`
steps in a row were dropped.

Float16 gradients that overflowed (`overflowed`) are the loss scaler's business, not divergence: the
step is dropped and the scale halved, before either check. Only an overflow at a scale of 1 or below,
gradients that do not fit float16 unscaled, stops the run.
"""

import math

from autograd import backend


class NonFiniteError(ValueError):
    """A training step whose loss or gradient norm is NaN or infinite: the run diverged."""


def nonfinite_words(loss, norm):
    """What was not finite in a step, with the other value: 'the loss is nan (grad norm 3.2)'."""
    norm_text = "not computed" if norm is None else f"{norm:g}"
    if not math.isfinite(loss):
        return f"the loss is {loss} (grad norm {norm_text})"
    return f"the grad norm is {norm} (loss {loss:g})"


def last_checkpoint(saved_step):
    return "no checkpoint yet" if saved_step is None else f"last checkpoint: step {saved_step}"


class NonFinitePolicy:
    """TrainConfig's on_nonfinite and max_nonfinite_skips for one run; `skipped_steps` lists the steps
    whose update was dropped. With several ranks the ranks agree on each skip (`comm.any_`): one rank
    skipping alone would leave the others apart."""

    def __init__(self, config, comm, log):
        self.on_nonfinite, self.max_skips = config.on_nonfinite, config.max_nonfinite_skips
        self.comm, self.log = comm, log
        self.skipped_steps = []
        self._skips_in_a_row = 0

    def overflowed(self, step, optimizer, scaler, saved_step):
        """float16 gradients overflowed at this step's loss scale: drop them and log the skip (the
        scaler halves its scale with the step's other counters)."""
        optimizer.zero_grad()
        self.skipped_steps.append(step)
        scale = scaler.scale_value
        if scale <= 1.0:
            raise NonFiniteError(f"the float16 gradients of step {step} overflowed even at loss scale {scale:g}: "
                                 f"the run diverged; nothing was saved after it ({last_checkpoint(saved_step)}). "
                                 "Lower the learning rate, or train in float32 (--dtype float32)")
        self.log(f"step {step}: float16 gradients overflowed at loss scale {scale:g}: step skipped, loss scale "
                 f"now {scale * scaler.backoff_factor:g}")

    def keep(self, step, loss, norm, optimizer, saved_step):
        """Whether this step's update is made. on_nonfinite="skip": read the step's loss and gradient norm
        (one host read per step, not per micro-batch: the price of deciding before the update) and
        return False, after dropping the gradients and logging the skip, when either is not finite."""
        if self.on_nonfinite != "skip":
            return True
        values = backend.to_host(backend.get_array_module(loss).stack([loss, norm]))
        # the loss is this rank's own: the ranks agree on skipping, or they would drift apart
        if not self.comm.any_(not all(math.isfinite(float(v)) for v in values)):
            self._skips_in_a_row = 0
            return True
        optimizer.zero_grad()
        self.skipped_steps.append(step)
        self._skips_in_a_row += 1
        what = nonfinite_words(float(values[0]), float(values[1]))
        if self._skips_in_a_row > self.max_skips:
            raise NonFiniteError(f"{self._skips_in_a_row} steps in a row (up to step {step}) were skipped: {what}; "
                                 f"the run diverged; nothing was saved after it ({last_checkpoint(saved_step)}). "
                                 "Lower the learning rate")
        self.log(f"step {step}: {what}: step skipped (no update of the parameters or the optimizer state)")
        return False

    def check(self, steps, losses, norms, saved_step):
        """on_nonfinite="error": raise NonFiniteError for the first of these steps (read from the device)
        whose loss or gradient norm is not finite. With "skip" such steps were dropped as they came."""
        if self.on_nonfinite != "error":
            return
        for step, loss, norm in zip(steps, losses, norms):
            if not math.isfinite(loss) or (norm is not None and not math.isfinite(norm)):
                raise NonFiniteError(f"training diverged at step {step}: {nonfinite_words(loss, norm)}. Nothing "
                                     f"was saved after it ({last_checkpoint(saved_step)}). "
                                     "Lower the learning rate, or skip such steps with on_nonfinite='skip' "
                                     "(--on-nonfinite skip)")
