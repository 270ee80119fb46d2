"""Mixed precision: matrix products in float16, everything the optimizer touches in float32.

Two pieces, as in PyTorch's `torch.amp`:

- `compute_in(model, np.float16)` sets `compute_dtype` on every `nn.Linear` of `model` (restoring the
  old values when the block ends). Each Linear then casts its input, weight and bias to float16, multiplies
  there and casts the result back (see `nn.Linear`). The parameters, their gradients and AdamW's moments
  stay float32: the "master weights", which small updates could not change if they were rounded to
  float16 (1 + 1e-4 == 1 in float16). LayerNorm, GELU, attention's softmax, the residual stream, the tied
  head (x @ wte^T, not a Linear) and the cross-entropy stay float32 too.

- `GradScaler`: float16's smallest normal number is 6e-5 and its largest 65504. Gradients inside the
  float16 products are often smaller than the first (they underflow to 0), so the loss is multiplied by a
  large `scale` before backward, which moves them up by the same factor; `unscale_` divides the float32
  gradients by it again before clipping and the update. A scale too large makes a gradient overflow to
  inf: then the step's update is skipped and the scale halved (`update(found_inf=True)`); after
  `growth_interval` good steps in a row it is doubled, to find the largest scale that still fits.

One training step in float16 (what a training loop built on this does):

    with compute_in(model, np.float16):
        loss = loss_fn(model, batch)
        scaler.scale(loss).backward()
        found_inf = scaler.unscale_(params)      # the step's one host read
        if not found_inf:
            clip_grad_norm_(params, 1.0, norm=scaler.norm)
            optimizer.step()
        optimizer.zero_grad()
        scaler.update(found_inf)

bfloat16 is not offered: NumPy has no bfloat16 dtype, so it could not be tested on the CPU or the strict
device.
"""

import contextlib
import math

import numpy as np

from autograd import nn
from autograd.optim import grad_norm

# the names TrainConfig and the command-line flags accept -> the dtype of the matrix products
COMPUTE_DTYPES = {"float32": None, "float16": np.float16}


def _linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def cast_linears(model, dtype):
    """Set `compute_dtype = dtype` (None: back to float32) on every nn.Linear in `model`; returns how
    many there are. The parameters are not touched."""
    linears = _linears(model)
    for m in linears:
        m.compute_dtype = None if dtype is None else np.dtype(dtype)
    return len(linears)


@contextlib.contextmanager
def compute_in(model, dtype):
    """Within the block, `model`'s Linear layers compute in `dtype` (`cast_linears`); afterwards each
    has its previous `compute_dtype` again, so a model trained in float16 generates in float32 after."""
    linears = _linears(model)
    previous = [m.compute_dtype for m in linears]
    cast_linears(model, dtype)
    try:
        yield model
    finally:
        for m, old in zip(linears, previous):
            m.compute_dtype = old


class GradScaler:
    """Dynamic loss scaling for float16 training.

    scale(loss) -> loss * scale; unscale_(params) divides each gradient by the scale in place and returns
    True when some gradient is NaN or infinite (found_inf); update(found_inf) then halves the scale
    (`backoff_factor`) and counts a skipped step, or after `growth_interval` finite steps in a row doubles
    it (`growth_factor`). The scale is a Python float, a power of two with the default factors, so the
    scaling and unscaling are exact.

    >>> s = GradScaler(init_scale=8.0, growth_interval=2)
    >>> s.update(True); s.scale_value, s.skipped_steps
    (4.0, 1)
    >>> s.update(False); s.update(False); s.scale_value
    8.0
    """

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be a positive finite number, got {init_scale}")
        if not growth_factor > 1 or not 0 < backoff_factor < 1:
            raise ValueError(f"growth_factor must be > 1 and backoff_factor in (0, 1), got {growth_factor} "
                             f"and {backoff_factor}")
        if growth_interval < 1:
            raise ValueError(f"growth_interval must be at least 1, got {growth_interval}")
        self.scale_value = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.good_steps = 0  # finite steps since the scale last changed
        self.skipped_steps = 0  # steps whose gradients overflowed, over the whole run
        self.norm = None  # the global gradient norm the last unscale_ found

    def scale(self, loss):
        """The loss times the scale, to call backward on (a Python float: the loss keeps its dtype)."""
        return loss * self.scale_value

    def unscale_(self, parameters):
        """Divide every gradient by the scale, in place, and return True when any is NaN or infinite.
        Finiteness is read from the global gradient norm, which is finite exactly when every gradient is:
        one host read per step, not one per parameter. The norm is kept as `self.norm` (on the device),
        so clipping can use it instead of computing it again: `clip_grad_norm_(params, 1.0, norm=...)`."""
        parameters = [p for p in parameters if p.grad is not None]
        inverse = 1.0 / self.scale_value
        for p in parameters:
            p.grad *= inverse  # float32 times a Python float stays float32
        self.norm = grad_norm(parameters)
        return not math.isfinite(float(self.norm))  # the host read

    def update(self, found_inf):
        """After a step: halve the scale when the gradients overflowed, double it after growth_interval
        good steps in a row."""
        if found_inf:
            self.scale_value *= self.backoff_factor
            self.good_steps = 0
            self.skipped_steps += 1
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale_value *= self.growth_factor
            self.good_steps = 0

    def state_dict(self):
        """JSON-serializable: what a resumed run needs to go on with the same scale."""
        return {"scale": self.scale_value, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "good_steps": self.good_steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state):
        try:
            scale = float(state["scale"])
            good, skipped = int(state["good_steps"]), int(state["skipped_steps"])
            growth, backoff = float(state["growth_factor"]), float(state["backoff_factor"])
            interval = int(state["growth_interval"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a GradScaler state ({type(e).__name__}: {e}): {state!r}") from None
        self.__init__(scale, growth, backoff, interval)  # checks the values
        self.good_steps, self.skipped_steps = good, skipped


__all__ = ["COMPUTE_DTYPES", "cast_linears", "compute_in", "GradScaler"]
