"""One optimizer step's gradients, and the data-parallel share of it.

A step is `grad_accum_steps` micro-batches: forward, loss, backward each, the gradients summing up, then
(several ranks) averaged over the ranks, (float16) unscaled, and clipped. `GradientStep` computes them
and returns a `StepGradients`; the update itself, and whether it is made, is the Trainer's.

No step turns a device value into a Python number: the loss and norm stay device scalars in
`PendingLosses` until a log point, where they are read all at once.

Data-parallel runs (tinygrad_llm/support/distributed.py): each rank computes its share of the step's
micro-batches, and the gradients are averaged before clipping, so every rank makes the same update.
"""

from typing import NamedTuple

from autograd import backend
from autograd.optim import clip_grad_norm_, grad_norm
from tinygrad_llm.support.distributed import DistributedError, GradientBuckets
from tinygrad_llm.training.loss import batches


class StepGradients(NamedTuple):
    """What `GradientStep` leaves besides the gradients themselves."""

    loss: object  # this rank's mean loss over its micro-batches, a device scalar
    norm: object  # the gradient norm before clipping, a device scalar; None when it was not computed
    tokens: int  # tokens in the step's micro-batches, every rank's share counted
    position: tuple  # (epoch, index of the next batch): where the data goes on after this step
    overflowed: bool  # float16 gradients overflowed: neither clipped nor to be used


def micro_batches(loader, epoch, index):
    """(batch, epoch and index of the batch after it) forever, from batch `index` of `epoch`."""
    while True:
        any_batch = False
        for batch in batches(loader, epoch, index):
            any_batch = True
            index += 1
            yield batch, epoch, index
        if not any_batch and index == 0:
            raise ValueError("the train loader yields no batches")
        epoch, index = epoch + 1, 0


class GradientStep:
    """The gradients of one step over `grad_accum_steps` micro-batches from a `micro_batches` stream.

    This rank's share of each step: micro-batches rank*k .. rank*k + k - 1 of the step's
    grad_accum_steps = size * k; the others are drawn from the stream (so every rank stays at the
    same data position) and left to their ranks.
    """

    def __init__(self, model, optimizer, config, loss_fn, tokens_fn, comm, scaler):
        accum = config.grad_accum_steps
        if accum % comm.size:
            raise ValueError(f"grad_accum_steps={accum} micro-batches per step do not split over {comm.size} ranks: "
                             f"use a multiple of {comm.size} (each rank then runs grad_accum_steps / {comm.size})")
        self.model, self.optimizer, self.config = model, optimizer, config
        self.loss_fn, self.tokens_fn, self.comm, self.scaler = loss_fn, tokens_fn, comm, scaler
        self._local_accum = accum // comm.size
        self._my_micro_batches = range(comm.rank * self._local_accum, (comm.rank + 1) * self._local_accum)
        self._buckets = None  # GradientBuckets, made on the first step

    def __call__(self, stream, step):
        """Accumulate the gradients of step `step` (counted from 0) and clip them. No parameter has
        changed yet. With several ranks the loss is this rank's mean (averaged over the ranks when it is
        read). With a scaler the loss is multiplied by the loss scale before backward and the gradients
        divided by it after the averaging, before anything reads them."""
        cfg, model = self.config, self.model
        scale = 1.0 / self._local_accum
        backward_scale = scale * (self.scaler.scale_value if self.scaler is not None else 1.0)
        total, tokens = None, 0
        for i in range(cfg.grad_accum_steps):
            batch, epoch, index = next(stream)
            tokens += self.tokens_fn(batch)
            if i not in self._my_micro_batches:  # another rank's share of the global batch
                continue
            loss = self.loss_fn(model, batch)
            (loss * backward_scale if backward_scale != 1.0 else loss).backward()
            total = loss.data * scale if total is None else total + loss.data * scale
        if self.comm.size > 1:
            self._average_gradients()
        if self.scaler is not None:
            # the ranks agree, as on a non-finite skip: one rank skipping alone would leave the others apart
            if self.comm.any_(self.scaler.unscale_(self.optimizer._params())):
                return StepGradients(total, None, tokens, (epoch, index), True)
        norm = None
        # clip_after_warmup: appendix D's `if global_step >= warmup_steps`, the steps after the warmup steps
        # 0 .. warmup_steps - 1 (the printed book had `>`, which skipped one more)
        known = self.scaler.norm if self.scaler is not None else None  # unscale_ just computed it
        if cfg.grad_clip > 0 and not (cfg.clip_after_warmup and step < cfg.warmup_steps):
            norm = clip_grad_norm_(self.optimizer._params(), cfg.grad_clip, norm=known)
        elif cfg.on_nonfinite == "skip":  # skipping needs the norm even without clipping
            norm = known if known is not None else grad_norm(self.optimizer._params())
        return StepGradients(total, norm, tokens, (epoch, index), False)

    def parameter_names(self):
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names.get(id(p), f"parameter {i}") for i, p in enumerate(self.optimizer._params())]

    def _average_gradients(self):
        """Every gradient replaced by its mean over the ranks, through reused flat buckets."""
        if self._buckets is None:
            self._buckets = GradientBuckets(self.optimizer._params(), self.parameter_names())
        self._buckets.average_(self.comm)

    def check_sync(self, step):
        """Stop with the step and the first parameter whose values differ between the ranks."""
        params = self.optimizer._params()
        name = self.comm.first_difference(zip(self.parameter_names(), (p.data for p in params)))
        if name is not None:
            raise DistributedError(f"after step {step} the ranks hold different parameters, first {name}: "
                                   "the ranks did not make the same update")


class PendingLosses:
    """The (step, loss, grad norm or None) device scalars of the steps not yet read."""

    def __init__(self):
        self._items = []

    def __len__(self):
        return len(self._items)

    def add(self, step, loss, norm):
        self._items.append((step, loss, norm))

    def read(self, comm):
        """(steps, losses, norms) as Python numbers, in one device read, and forget them. With several
        ranks the losses are averaged over them in one call (every rank reads at the same steps); the
        norms are the same on every rank, taken after the gradients were averaged."""
        items, self._items = self._items, []
        steps = [step for step, _, _ in items]
        scalars = [loss for _, loss, _ in items] + [norm for _, _, norm in items if norm is not None]
        values = backend.to_host(backend.get_array_module(scalars[0]).stack(scalars))
        if comm.size > 1:
            comm.allreduce_mean_([values[:len(steps)]])  # in place: a contiguous host view
        values = [float(x) for x in values]
        losses, norms = values[:len(steps)], iter(values[len(steps):])
        return steps, losses, [next(norms) if norm is not None else None for _, _, norm in items]
