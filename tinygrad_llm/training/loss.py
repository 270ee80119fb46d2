"""Book chapter 5, section 5.1.3: the loss of a batch and the mean loss over a loader.

`lm_loss` is the book's `calc_loss_batch`: the next-token cross-entropy of one (inputs, targets) batch.
`evaluate` is its `calc_loss_loader`: the mean of that loss over the first batches of a loader, in eval
mode and without gradients. Both loops, `train_simple` and `Trainer`, measure their losses with these
two, and the fine-tuning steps pass their own `loss_fn` (classification, instructions) to the same
`evaluate`.
"""

import math
from itertools import islice

import autograd.functional as F
from autograd import nn, no_grad


def lm_loss(model, batch):
    """Next-token cross-entropy of an (inputs, targets) batch of (B, T) ids: the book's calc_loss_batch."""
    inputs, targets = batch
    return F.cross_entropy(model(inputs), targets)  # (B, T, V) against (B, T)


def batch_tokens(batch):
    """Tokens in a batch: the size of its inputs (the first element of a tuple)."""
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.size)


def batches(loader, epoch, start=0):
    """Batches of `epoch` from index `start`: the loader's `iter_from` when it has one (a DataLoader),
    else a new pass over the iterable, skipping the first `start`."""
    if hasattr(loader, "iter_from"):
        return loader.iter_from(epoch, start)
    return islice(iter(loader), start, None)


def evaluate(model, loader, max_batches=None, loss_fn=lm_loss):
    """Mean of `loss_fn` over the first `max_batches` batches of `loader` (all when None), in eval mode
    without gradients; the model's train/eval mode is restored. NaN for an empty loader. A DataLoader
    is read from the start of its epoch 0, so every evaluation sees the same batches. The book's
    calc_loss_loader, with the losses summed on the device and read once."""
    total, n = None, 0
    with nn.eval_mode(model), no_grad():
        for batch in islice(batches(loader, 0), max_batches):
            loss = loss_fn(model, batch).data
            total = loss.copy() if total is None else total + loss  # summed on the device
            n += 1
    return float(total) / n if n else math.nan  # one sync
