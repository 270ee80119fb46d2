"""Book chapter 5, section 5.2, and appendix D: the training loop (pretraining here; the fine-tuning
steps reuse it with their own batches and loss).

One optimizer step is `grad_accum_steps` micro-batches: forward, loss, backward each, then gradient
clipping, an AdamW update and the next learning rate. Every `eval_every` steps the loop measures the
mean loss over a few training and validation batches (`evaluate`, the one loss-over-a-loader helper),
generates a sample, and appends a line to `metrics.jsonl`.

No step turns a device value into a Python number: the losses stay device scalars until a log point
(every `log_every` steps, an evaluation, a checkpoint), where they are read all at once.

Checkpoints (`out_dir/checkpoint.safetensors`, written atomically by `autograd.checkpoint.save_state`)
hold the model, the optimizer, the schedule's step, the dropout generators, and in their metadata the
step, the data position (epoch, batch within it), tokens seen, the configs, the tokenizer and the
metrics so far. The data order is a function of seed and epoch (`DataLoader.iter_from`), so a resumed
run sees the same batches, with the same dropout masks, as one that never stopped: its losses are the
same bit for bit on the CPU.

A checkpoint and the files it needs are one unit: the tokenizer's files are written once (and again only
when they differ), and the checkpoint records the tokenizer's fingerprint, which `run_folder.checkpoint_tokenizer`
checks at resume. Every file goes through `atomic_write`, so a run killed at any instant leaves the
previous checkpoint or the new one; the temporary files of a killed writer are removed by the next `fit`.

Ctrl-C asks the loop to stop at the next step boundary, then it saves a checkpoint and raises
KeyboardInterrupt. A second Ctrl-C cuts the current step short (as if it never started) and still saves;
while a checkpoint is being written or the parameters updated, it waits for that to finish, so a
checkpoint is never cut in half. `saved_step` says which step the last checkpoint of this session holds.

A loss or gradient norm that is NaN or infinite stops the run with `NonFiniteError` before anything is
saved (on_nonfinite="error"), or skips that step's update (on_nonfinite="skip").

Mixed precision (TrainConfig(dtype="float16"), autograd/amp.py): the Linear layers multiply in float16
while the parameters, gradients and AdamW state stay float32; the loss is scaled before backward and the
gradients unscaled before clipping. A step whose float16 gradients overflowed is skipped (parameters and
optimizer state unchanged, the schedule moving on) and the scale halved: that is the scaler at work, not
divergence, so it is handled before the non-finite checks above, which still stop a NaN loss.

Data-parallel runs pass `comm` (tinygrad_llm/support/distributed.py): each rank computes its share of the
step's micro-batches, the gradients are averaged before clipping, and rank 0 alone evaluates and writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields
from itertools import islice
from pathlib import Path

from tqdm.auto import tqdm

import autograd.functional as F
from autograd import backend, nn, no_grad
from autograd.amp import COMPUTE_DTYPES, GradScaler, compute_in
from autograd.checkpoint import CheckpointError, load_state, remove_stale_temporaries, save_state, write_text
from autograd.optim import AdamW, LRScheduler, clip_grad_norm_, cosine_with_warmup, grad_norm
from tinygrad_llm.support.distributed import Communicator, DistributedError, GradientBuckets
from tinygrad_llm.training.run_folder import (CHECKPOINT, METRICS, json_safe, plot_metrics, read_checkpoint_metadata,
                                     tokenizer_record)
from tinygrad_llm.text.tokenizer import BPETokenizer, tokenizer_fingerprint


@dataclass
class TrainConfig:
    lr: float = 4e-4
    min_lr: float | None = None  # the cosine schedule's floor; None: lr / 10
    warmup_steps: int = 0
    # None: warm up from lr / warmup_steps to lr over the first warmup_steps steps, the cosine reaching
    # min_lr at the last step. A number: appendix D's schedule, step s (from 0) at
    # initial_lr + s * (lr - initial_lr) / warmup_steps, then the cosine towards min_lr
    initial_lr: float | None = None
    schedule: str = "cosine"  # "cosine" (after warmup) or "constant" (the book's chapter 5)
    weight_decay: float = 0.1
    decay_all: bool = False  # True: decay every parameter (the book); False: only 2-D weights (nanoGPT)
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 0.0  # max global gradient norm; 0 turns clipping off
    clip_after_warmup: bool = False  # True: clip only from step warmup_steps on (counting from 0), as appendix D
    grad_accum_steps: int = 1  # micro-batches per step, over all ranks together in a distributed run
    epochs: int = 1
    max_steps: int | None = None  # when set, the run stops here instead of after `epochs`
    eval_every: int = 100
    eval_batches: int | None = 5  # batches per loader in each evaluation; None: all of them
    log_every: int = 10  # steps between progress-bar updates (each reads the losses from the device)
    checkpoint_every: int = 0  # steps between checkpoints; 0: only at the end and on Ctrl-C
    sample_prompt: str | None = None
    sample_tokens: int = 50
    sample_temperature: float = 0.0
    sample_top_k: int | None = None
    out_dir: str | None = None
    seed: int = 0  # for sampling; data order and dropout have their own seeds
    progress: bool = True
    # a step whose loss or gradient norm is NaN or infinite: "error" stops the run (NonFiniteError) before
    # anything more is saved; "skip" leaves parameters and optimizer state as they were and goes on, until
    # more than max_nonfinite_skips steps in a row were skipped
    on_nonfinite: str = "error"
    max_nonfinite_skips: int = 5
    check_sync: int = 0  # distributed runs: every this many steps, check all ranks hold the same parameters
    # "float16": the Linear layers' matrix products in float16 with dynamic loss scaling (autograd/amp.py);
    # parameters, gradients and optimizer state stay float32 either way
    dtype: str = "float32"

    def __post_init__(self):
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.on_nonfinite not in ("error", "skip"):
            raise ValueError(f"on_nonfinite must be 'error' or 'skip', got {self.on_nonfinite!r}")
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(repr, COMPUTE_DTYPES))}, got {self.dtype!r}")
        if self.check_sync < 0:
            raise ValueError(f"check_sync must be >= 0 (0: never), got {self.check_sync}")
        if self.grad_accum_steps < 1 or self.eval_every < 1 or self.log_every < 1:
            raise ValueError("grad_accum_steps, eval_every and log_every must be at least 1")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.warmup_steps < 0 or self.checkpoint_every < 0 or self.max_nonfinite_skips < 0:
            raise ValueError("warmup_steps, checkpoint_every and max_nonfinite_skips must not be negative")
        # `x <= 0` is False for NaN, so each number is first checked to be finite
        numbers = {"lr": self.lr, "weight_decay": self.weight_decay, "grad_clip": self.grad_clip, "eps": self.eps,
                   "min_lr": self.min_lr, "initial_lr": self.initial_lr, "sample_temperature": self.sample_temperature}
        for name, value in numbers.items():
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.eps <= 0:
            raise ValueError("lr and eps must be positive; weight_decay and grad_clip non-negative")
        for name in ("min_lr", "initial_lr"):
            if numbers[name] is not None and numbers[name] < 0:
                raise ValueError(f"{name} must be non-negative (or None), got {numbers[name]}")
        self.betas = tuple(self.betas)
        if len(self.betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class NonFiniteError(ValueError):
    """A training step whose loss or gradient norm is NaN or infinite: the run diverged."""


# ---------------------------------------------------------------------------------------------------
# Losses


def lm_loss(model, batch):
    """Next-token cross-entropy of an (inputs, targets) batch of (B, T) ids."""
    inputs, targets = batch
    return F.cross_entropy(model(inputs), targets)  # (B, T, V) against (B, T)


def batch_tokens(batch):
    """Tokens in a batch: the size of its inputs (the first element of a tuple)."""
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.size)


def _batches(loader, epoch, start=0):
    """Batches of `epoch` from index `start`: the loader's `iter_from` when it has one (a DataLoader),
    else a new pass over the iterable, skipping the first `start`."""
    if hasattr(loader, "iter_from"):
        return loader.iter_from(epoch, start)
    return islice(iter(loader), start, None)


def evaluate(model, loader, max_batches=None, loss_fn=lm_loss):
    """Mean of `loss_fn` over the first `max_batches` batches of `loader` (all when None), in eval mode
    without gradients; the model's train/eval mode is restored. NaN for an empty loader. A DataLoader
    is read from the start of its epoch 0, so every evaluation sees the same batches."""
    total, n = None, 0
    with nn.eval_mode(model), no_grad():
        for batch in islice(_batches(loader, 0), max_batches):
            loss = loss_fn(model, batch).data
            total = loss.copy() if total is None else total + loss  # summed on the device
            n += 1
    return float(total) / n if n else math.nan  # one sync


def param_groups(model, weight_decay, decay_all=False):
    """AdamW groups: weight decay on 2-D weights (linear and embedding matrices), none on biases and
    LayerNorm weights (nanoGPT's rule, p.ndim >= 2); `decay_all` decays everything (the book's
    AdamW(weight_decay=0.1)). Frozen parameters (requires_grad False) are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if decay_all:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# ---------------------------------------------------------------------------------------------------
# The loop


class Trainer:
    """Trains `model` on `train_loader` (an iterable of batches; a DataLoader, with `iter_from` and
    `len`, for an exact resume), evaluating on `val_loader` if given.

    loss_fn(model, batch) -> scalar loss Tensor (next-token cross-entropy by default);
    tokens_fn(batch) -> tokens in a batch; tokenizer: for samples and saved with checkpoints;
    on_step(trainer) after each step, on_eval(trainer, record) after each evaluation, before the record
    is written (it may add keys, e.g. an accuracy); metadata: JSON-serializable, saved with each
    checkpoint (the CLI keeps its data settings there); log: where messages go; comm: the ranks of a
    data-parallel run (a tinygrad_llm.support.distributed.Communicator; default: this process alone).
    After `fit()`: `step_losses` (the training loss of each step this session), `records` (evaluations),
    `skipped_steps` (steps whose update was skipped: on_nonfinite="skip", or float16 gradients that
    overflowed), `saved_step` (the step of the last checkpoint written this session, None before the
    first), `scaler` (the GradScaler of a dtype="float16" run, else None).
    """

    def __init__(self, model, train_loader, val_loader=None, config=None, *, optimizer=None,
                 loss_fn=lm_loss, tokens_fn=batch_tokens, tokenizer=None, on_step=None, on_eval=None,
                 metadata=None, log=tqdm.write, comm=None):
        self.model, self.train_loader, self.val_loader = model, train_loader, val_loader
        self.config = cfg = config if config is not None else TrainConfig()
        self.loss_fn, self.tokens_fn, self.tokenizer = loss_fn, tokens_fn, tokenizer
        self.on_step, self.on_eval, self.metadata = on_step, on_eval, metadata or {}
        self.log = log or (lambda message: None)
        self.optimizer = optimizer or AdamW(
            param_groups(model, cfg.weight_decay, cfg.decay_all), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
            weight_decay=cfg.weight_decay)
        self.total_steps = self._total_steps()
        self.scheduler = LRScheduler(self.optimizer, self._lr_fn())
        self.step, self.epoch, self.batch_index, self.tokens_seen, self.elapsed = 0, 0, 0, 0, 0.0
        self.records, self.step_losses = [], []
        self._pending = []  # (step, loss, grad norm or None): device scalars of steps not yet read
        self.skipped_steps, self._skips_in_a_row = [], 0
        self.saved_step = None
        self._stop = False  # a Ctrl-C asked the loop to stop at the next step boundary
        self._critical = 0  # > 0 while a checkpoint is written or the parameters updated: Ctrl-C waits
        self._deferred_interrupt = False  # a second Ctrl-C came during such a write
        self._tokenizer_on_disk = None  # the folder where this tokenizer's files are known to be written
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else None
        self.comm = comm if comm is not None else Communicator()
        self._setup_data_parallel()
        self.scaler = GradScaler() if cfg.dtype == "float16" else None

    def _lr_fn(self):
        """step (counted from 0) -> lr. Without `initial_lr` the schedule is evaluated one step on, so the
        first step gets lr / warmup_steps and the cosine ends at min_lr on the last step; with it, the
        step itself, as appendix D counts: the first step gets initial_lr."""
        cfg = self.config
        min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
        start, shift = (0.0, 1) if cfg.initial_lr is None else (cfg.initial_lr, 0)
        if cfg.schedule == "constant":
            if not cfg.warmup_steps:
                return lambda s: cfg.lr
            return lambda s: start + (cfg.lr - start) * min(1.0, (s + shift) / cfg.warmup_steps)
        return lambda s: cosine_with_warmup(s + shift, max_lr=cfg.lr, total_steps=self.total_steps,
                                            warmup_steps=cfg.warmup_steps, min_lr=min_lr, initial_lr=start)

    def _total_steps(self):
        cfg = self.config
        if cfg.max_steps is not None:
            return cfg.max_steps
        try:
            return cfg.epochs * len(self.train_loader) // cfg.grad_accum_steps
        except TypeError:
            raise ValueError("a train loader without len() needs max_steps") from None

    # ---- data ---------------------------------------------------------------------------------------

    def _micro_batches(self):
        """(batch, epoch and index of the batch after it) forever, from the current data position."""
        epoch, index = self.epoch, self.batch_index
        while True:
            any_batch = False
            for batch in _batches(self.train_loader, epoch, index):
                any_batch = True
                index += 1
                yield batch, epoch, index
            if not any_batch and index == 0:
                raise ValueError("the train loader yields no batches")
            epoch, index = epoch + 1, 0

    # ---- data parallel (tinygrad_llm/support/distributed.py) -------------------------------------------------

    def _setup_data_parallel(self):
        """This rank's share of each step: micro-batches rank*k .. rank*k + k - 1 of the step's
        grad_accum_steps = size * k. Ranks other than 0 log nothing."""
        comm, accum = self.comm, self.config.grad_accum_steps
        if accum % comm.size:
            raise ValueError(f"grad_accum_steps={accum} micro-batches per step do not split over {comm.size} ranks: "
                             f"use a multiple of {comm.size} (each rank then runs grad_accum_steps / {comm.size})")
        self._local_accum = accum // comm.size
        self._my_micro_batches = range(comm.rank * self._local_accum, (comm.rank + 1) * self._local_accum)
        self._buckets = None  # GradientBuckets, made on the first step
        if not comm.is_main:
            self.log = lambda message: None

    def _parameter_names(self):
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names.get(id(p), f"parameter {i}") for i, p in enumerate(self.optimizer._params())]

    def _average_gradients(self):
        """Every gradient replaced by its mean over the ranks, through reused flat buckets."""
        if self._buckets is None:
            self._buckets = GradientBuckets(self.optimizer._params(), self._parameter_names())
        self._buckets.average_(self.comm)

    def _check_sync(self):
        """Stop with the step and the first parameter whose values differ between the ranks."""
        params = self.optimizer._params()
        name = self.comm.first_difference(zip(self._parameter_names(), (p.data for p in params)))
        if name is not None:
            raise DistributedError(f"after step {self.step} the ranks hold different parameters, first {name}: "
                                   "the ranks did not make the same update")

    # ---- one step -----------------------------------------------------------------------------------

    def _gradients(self, stream):
        """Accumulate gradients over grad_accum_steps micro-batches and clip them. Returns the step's mean
        loss and its gradient norm before clipping (device scalars; the norm None when it was not
        computed), the tokens it saw, the data position after it, and whether float16 gradients
        overflowed (then they are neither clipped nor to be used). No parameter has changed yet.
        With several ranks, each computes its own share of the micro-batches and the gradients are
        averaged before clipping; the loss is this rank's mean (averaged over the ranks in _sync_losses).
        With a scaler the loss is multiplied by the loss scale before backward and the gradients divided
        by it after the averaging, before anything reads them."""
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
            # the ranks agree, as in _finite_or_skip: one rank skipping alone would leave the others apart
            if self.comm.any_(self.scaler.unscale_(self.optimizer._params())):
                return total, None, tokens, (epoch, index), True
        norm = None
        # clip_after_warmup: appendix D's `if global_step >= warmup_steps`, the steps after the warmup steps
        # 0 .. warmup_steps - 1 (the printed book had `>`, which skipped one more); self.step is this step's index
        known = self.scaler.norm if self.scaler is not None else None  # unscale_ just computed it
        if cfg.grad_clip > 0 and not (cfg.clip_after_warmup and self.step < cfg.warmup_steps):
            norm = clip_grad_norm_(self.optimizer._params(), cfg.grad_clip, norm=known)
        elif cfg.on_nonfinite == "skip":  # skipping needs the norm even without clipping
            norm = known if known is not None else grad_norm(self.optimizer._params())
        return total, norm, tokens, (epoch, index), False

    def _update(self):
        """The optimizer step and the next learning rate."""
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.scheduler.step()

    def _skip_overflow(self, step):
        """float16 gradients overflowed at this step's loss scale: drop them and log the skip (the scaler
        halves its scale in `fit`, with the step's other counters). Overflows at a scale of 1 or below are
        not the scale's doing: gradients that do not fit float16 unscaled are divergence, NonFiniteError."""
        self.optimizer.zero_grad()
        self.skipped_steps.append(step)
        scale = self.scaler.scale_value
        if scale <= 1.0:
            raise NonFiniteError(f"the float16 gradients of step {step} overflowed even at loss scale {scale:g}: "
                                 f"the run diverged; nothing was saved after it ({self._last_checkpoint()}). Lower "
                                 "the learning rate, or train in float32 (--dtype float32)")
        self.log(f"step {step}: float16 gradients overflowed at loss scale {scale:g}: step skipped, loss scale "
                 f"now {scale * self.scaler.backoff_factor:g}")

    def _finite_or_skip(self, step, loss, norm):
        """on_nonfinite="skip": read this step's loss and gradient norm (one host read per step, not per
        micro-batch: the price of deciding before the update) and return False, after dropping the
        gradients and logging the skip, when either is not finite."""
        values = backend.to_host(backend.get_array_module(loss).stack([loss, norm]))
        # the loss is this rank's own: the ranks agree on skipping, or they would drift apart
        if not self.comm.any_(not all(math.isfinite(float(v)) for v in values)):
            self._skips_in_a_row = 0
            return True
        self.optimizer.zero_grad()
        self.skipped_steps.append(step)
        self._skips_in_a_row += 1
        what = _nonfinite_words(float(values[0]), float(values[1]))
        if self._skips_in_a_row > self.config.max_nonfinite_skips:
            raise NonFiniteError(f"{self._skips_in_a_row} steps in a row (up to step {step}) were skipped: {what}; "
                                 f"the run diverged; nothing was saved after it ({self._last_checkpoint()}). Lower the "
                                 f"learning rate")
        self.log(f"step {step}: {what}: step skipped (no update of the parameters or the optimizer state)")
        return False

    def _sync_losses(self):
        """Read the pending losses (and gradient norms) from the device: the one sync between log points.
        With several ranks the losses are averaged over them in one call (every rank calls this at the
        same steps; the norms are the same on every rank, taken after the gradients were averaged).
        With on_nonfinite="error", a NaN or infinite value raises NonFiniteError here, before anything is
        saved: every checkpoint, evaluation and export reads the losses first."""
        if not self._pending:
            return
        steps = [step for step, _, _ in self._pending]
        scalars = [loss for _, loss, _ in self._pending] + [norm for _, _, norm in self._pending if norm is not None]
        values = backend.to_host(backend.get_array_module(scalars[0]).stack(scalars))
        if self.comm.size > 1:
            self.comm.allreduce_mean_([values[:len(steps)]])  # in place: a contiguous host view
        values = [float(x) for x in values]
        losses, norms = values[:len(steps)], iter(values[len(steps):])
        norms = [next(norms) if norm is not None else None for _, _, norm in self._pending]
        self._pending = []
        self.step_losses.extend(losses)
        if self.config.on_nonfinite != "error":
            return  # skipped steps were logged as they happened
        for step, loss, norm in zip(steps, losses, norms):
            if not math.isfinite(loss) or (norm is not None and not math.isfinite(norm)):
                raise NonFiniteError(f"training diverged at step {step}: {_nonfinite_words(loss, norm)}. Nothing "
                                     f"was saved after it ({self._last_checkpoint()}). "
                                     "Lower the learning rate, or skip such steps with on_nonfinite='skip' "
                                     "(--on-nonfinite skip)")

    def _last_checkpoint(self):
        return "no checkpoint yet" if self.saved_step is None else f"last checkpoint: step {self.saved_step}"

    @contextlib.contextmanager
    def _uninterruptible(self):
        """A block that a second Ctrl-C must not cut in half (writing a checkpoint, updating the
        parameters): the signal handler only notes the press, and it takes effect, as KeyboardInterrupt,
        when the block has finished."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self._deferred_interrupt:  # only reached when the block succeeded
            self._deferred_interrupt = False
            raise KeyboardInterrupt

    # ---- fit ----------------------------------------------------------------------------------------

    def fit(self):
        """Train until max_steps (or the epochs) are done, then save a checkpoint and export the model.
        Returns the evaluation records. Raises KeyboardInterrupt after a Ctrl-C (having saved a checkpoint
        unless that failed: `saved_step == step` says whether it did) and NonFiniteError when the run
        diverged (nothing saved after the last good checkpoint). With dtype="float16" the model's Linear
        layers compute in float16 during the run (evaluations and samples included) and in whatever they
        did before after it."""
        if self.scaler is None:
            return self._fit()
        with compute_in(self.model, COMPUTE_DTYPES[self.config.dtype]):
            return self._fit()

    def _fit(self):
        cfg = self.config
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for folder in (self.out_dir, self.out_dir / "tokenizer", self.out_dir / "model"):
                if self.comm.is_main:  # the writer's folder: only rank 0 writes there
                    remove_stale_temporaries(folder)  # the leftovers of a run killed mid-write
        self.model.train()
        restore_sigint = self._install_sigint()
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step",
                   disable=not cfg.progress or not self.comm.is_main, dynamic_ncols=True)
        rng = None
        self.comm.broadcast_parameters_(self.model.parameters())  # rank 0's parameters on every rank
        try:
            if self.step == 0 and not self.records:
                if self.out_dir is not None and self.comm.is_main:
                    self._write_metrics()  # a fresh run: empty
                self.evaluate_and_log()
            stream = self._micro_batches()
            t_log, tokens_log, start_elapsed, t0 = time.perf_counter(), 0, self.elapsed, time.perf_counter()
            while self.step < self.total_steps:
                if self._stop and self.comm.size == 1:  # ranks stop only where they agreed to (below)
                    raise KeyboardInterrupt
                rng = self.model.rng_states()  # restored if a second Ctrl-C cuts this step short
                loss, norm, tokens, position, overflow = self._gradients(stream)
                step = self.step + 1
                if overflow:  # before the non-finite checks: the scaler's business, not divergence
                    self._skip_overflow(step)
                    finite = False
                else:
                    finite = cfg.on_nonfinite != "skip" or self._finite_or_skip(step, loss, norm)
                with self._uninterruptible():  # the update and the counters that say it happened, together
                    if self.scaler is not None:
                        self.scaler.update(overflow)
                    if finite:
                        self._update()
                    else:
                        self.scheduler.step()  # a skipped step still counts: the schedule moves on
                    self.step = step
                    self.epoch, self.batch_index = position
                    self.tokens_seen += tokens
                    tokens_log += tokens
                    self.elapsed = start_elapsed + time.perf_counter() - t0
                    self._pending.append((step, loss, norm))
                    rng = None
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    self._sync_losses()
                    now = time.perf_counter()
                    bar.set_postfix(loss=f"{self.step_losses[-1]:.3f}",
                                    tok_s=f"{tokens_log / max(now - t_log, 1e-9):,.0f}", refresh=False)
                    t_log, tokens_log = now, 0
                bar.update(1)
                if self.step % cfg.eval_every == 0 or self.step == self.total_steps:
                    self.evaluate_and_log()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.on_step is not None:
                    self.on_step(self)
                if cfg.check_sync and self.step % cfg.check_sync == 0:
                    self._check_sync()
                self._stop = self.comm.any_(self._stop)  # all ranks stop at the same step
                if self._stop:
                    raise KeyboardInterrupt
            self._sync_losses()
            if self.saved_step != self.step:  # the last step may have been a periodic checkpoint already
                self.save_checkpoint()
            self.export_model()
        except KeyboardInterrupt:
            self._critical += 1  # from here on a further Ctrl-C waits: this save must not be cut short
            try:
                bar.close()
                self.log(f"Ctrl-C: stopping at step {self.step}")
                if rng is not None:  # the step was cut short: as if it never started
                    self.model.set_rng_states(rng)
                    self.optimizer.zero_grad()
                if self.saved_step != self.step:
                    try:
                        self.save_checkpoint()
                    except (OSError, NonFiniteError) as e:  # the caller reports that nothing was saved
                        self.log(f"the checkpoint of step {self.step} was not saved: {' '.join(str(e).split())}")
            finally:
                self._critical -= 1
                self._deferred_interrupt = False
            raise
        finally:
            bar.close()
            restore_sigint()
        return self.records

    def _install_sigint(self):
        """The first Ctrl-C asks the loop to stop at the next step boundary (and save); a second one stops
        at once, except inside `_uninterruptible` blocks, which it lets finish first. The handler only
        sets flags: printing from a signal handler can collide with a print it interrupted."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            if not self._stop:
                self._stop = True
            elif self._critical:
                self._deferred_interrupt = True
            else:
                raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, previous)

    # ---- evaluation ---------------------------------------------------------------------------------

    def evaluate_and_log(self):
        """Evaluate, sample, log, and append the record to metrics.jsonl (and the plot)."""
        cfg = self.config
        self._sync_losses()
        if not self.comm.is_main:  # rank 0 evaluates alone; the others wait for it in the next step
            return None
        train_loss = evaluate(self.model, self.train_loader, cfg.eval_batches, self.loss_fn)
        val_loss = None
        if self.val_loader is not None:
            val_loss = evaluate(self.model, self.val_loader, cfg.eval_batches, self.loss_fn)
        record = {
            "step": self.step, "epoch": self.epoch, "tokens_seen": self.tokens_seen,
            "train_loss": train_loss, "val_loss": val_loss,
            "val_ppl": math.exp(min(val_loss, 700)) if val_loss is not None else None,
            "lr": self.optimizer.param_groups[0]["lr"],
            "tokens_per_sec": self.tokens_seen / self.elapsed if self.elapsed else None,
            "elapsed": round(self.elapsed, 3),
        }
        sample = self.sample()
        if sample is not None:
            record["sample"] = sample
        if self.on_eval is not None:
            self.on_eval(self, record)
        self.records.append(record)
        val = f", val loss {val_loss:.3f} (ppl {record['val_ppl']:.1f})" if val_loss is not None else ""
        self.log(f"step {self.step}/{self.total_steps} (epoch {self.epoch + 1}, {self.tokens_seen:,} tokens): "
                 f"train loss {train_loss:.3f}{val}")
        if sample is not None:
            self.log(f"  sample: {sample!r}")
        if self.out_dir is not None:
            with self._uninterruptible():
                self._write_metrics()
                plot_metrics(self.records, self.out_dir / "loss.png")
        return record

    def sample(self):
        """`sample_tokens` tokens generated from `sample_prompt`, as text; None without a prompt or a
        tokenizer."""
        cfg = self.config
        if not cfg.sample_prompt or self.tokenizer is None or cfg.sample_tokens <= 0:
            return None
        from tinygrad_llm.models.generate import generate

        ids = self.tokenizer.encode(cfg.sample_prompt, allowed_special="all")
        context = getattr(getattr(self.model, "config", None), "context_length", None)
        keep = max(1, context - cfg.sample_tokens) if context else len(ids)
        ids = ids[-keep:]
        out = generate(self.model, [ids], min(cfg.sample_tokens, (context or 1 << 30) - len(ids)),
                       temperature=cfg.sample_temperature, top_k=cfg.sample_top_k,
                       eos_id=getattr(self.tokenizer, "eot_token", None), seed=cfg.seed + self.step)
        return self.tokenizer.decode(out[0].tolist()).replace("\n", " ")

    # ---- checkpoints --------------------------------------------------------------------------------

    def export_model(self):
        """At the end of a run: out_dir/model in Hugging Face's GPT-2 layout, with the tokenizer's files
        beside it when it is a BPE of ours, so examples/generate.py and other tools can load it."""
        if self.out_dir is None or not hasattr(self.model, "save_pretrained"):
            return None
        self._sync_losses()  # a diverged run raises here and keeps the last good export
        if not self.comm.is_main:  # rank 0 writes for all
            return None
        with self._uninterruptible():
            self.model.save_pretrained(self.out_dir / "model")
            record = tokenizer_record(self.tokenizer)
            if record is not None and record["kind"] == "bpe":
                self.tokenizer.save(self.out_dir / "model")
        return self.out_dir / "model"

    def save_checkpoint(self):
        """Write out_dir/checkpoint.safetensors (and the tokenizer's files beside it, once). Returns the
        checkpoint's path, or None without an out_dir. Raises NonFiniteError, writing nothing, when a
        step since the last read diverged."""
        if self.out_dir is None:
            return None
        self._sync_losses()
        if not self.comm.is_main:  # rank 0 writes for all: every rank holds the same state
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = tokenizer_record(self.tokenizer)
        extra = {
            "step": self.step, "epoch": self.epoch, "batch_index": self.batch_index,
            "tokens_seen": self.tokens_seen, "elapsed": self.elapsed,
            "train_config": self.config.to_dict(),
            "model_config": self.model.config.to_dict() if hasattr(self.model, "config") else None,
            "tokenizer": record, "records": [json_safe(r) for r in self.records], "metadata": self.metadata,
            # what the tokenizer files beside it must be: checked by checkpoint_tokenizer at resume
            "tokenizer_fingerprint": tokenizer_fingerprint(self.tokenizer) if record is not None else None,
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }
        path = self.out_dir / CHECKPOINT
        with self._uninterruptible():
            if record is not None and record["kind"] == "bpe":
                self._write_tokenizer_once(self.out_dir / record["path"])
            save_state(path, self.model, self.optimizer, self.scheduler, extra=extra)
            self.saved_step = self.step
        return path

    def _write_tokenizer_once(self, folder):
        """The tokenizer's files in `folder`, written only when they are not there already: rewriting
        them at every checkpoint gave a kill one more chance to land between two files. Each file is
        written atomically, and the checkpoint written after them records their fingerprint."""
        if self._tokenizer_on_disk == folder:
            return
        fingerprint = tokenizer_fingerprint(self.tokenizer)
        try:
            same = tokenizer_fingerprint(BPETokenizer.load(folder)) == fingerprint
        except (OSError, ValueError):  # not there yet, or from a run that was killed or replaced
            same = False
        if not same:
            self.tokenizer.save(folder)
        self._tokenizer_on_disk = folder

    def _groups_hint(self, out_dir):
        """Where a checkpoint's optimizer groups differ because of `decay_all`, the setting to resume with."""
        try:
            saved = read_checkpoint_metadata(out_dir)["train_config"]["decay_all"]
        except (OSError, CheckpointError, KeyError, TypeError):
            return ""
        if saved == self.config.decay_all:
            return ""
        return (f"\n  the checkpoint was trained with TrainConfig(decay_all={saved}) and this Trainer has "
                f"decay_all={self.config.decay_all}: resume with decay_all={saved}")

    def resume(self, out_dir=None):
        """Load out_dir's checkpoint (default: config.out_dir) into this trainer: model, optimizer,
        schedule, dropout generators, data position, metrics; metrics.jsonl is cut back to match."""
        out_dir = Path(out_dir) if out_dir is not None else self.out_dir
        if out_dir is None:
            raise ValueError("resume needs an out_dir")
        path = out_dir / CHECKPOINT
        try:
            extra = load_state(path, self.model, self.optimizer, self.scheduler)
        except CheckpointError as e:
            raise CheckpointError(f"{e}{self._groups_hint(out_dir)}") from None
        try:
            self.step, self.epoch, self.batch_index = extra["step"], extra["epoch"], extra["batch_index"]
            self.tokens_seen, self.elapsed = extra["tokens_seen"], extra["elapsed"]
            self.records = list(extra["records"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {path} holds no training state (missing {e})") from None
        # a float16 run goes on with its loss scale; a float32 checkpoint resumed in float16 starts a new one
        if self.scaler is not None and extra.get("grad_scaler") is not None:
            try:
                self.scaler.load_state_dict(extra["grad_scaler"])
            except ValueError as e:
                raise CheckpointError(f"checkpoint {path}: {e}") from None
        if self.out_dir is not None and self.comm.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._write_metrics()
        self.saved_step = self.step
        return extra

    def _write_metrics(self):
        """out_dir/metrics.jsonl: one strict-JSON line per evaluation record, rewritten whole through
        atomic_write (a few hundred short lines at most), so a kill never leaves half a line."""
        write_text(self.out_dir / METRICS, "".join(json.dumps(json_safe(r), allow_nan=False) + "\n"
                                                   for r in self.records))


def _nonfinite_words(loss, norm):
    """What was not finite in a step, with the other value: 'the loss is nan (grad norm 3.2)'."""
    norm_text = "not computed" if norm is None else f"{norm:g}"
    if not math.isfinite(loss):
        return f"the loss is {loss} (grad norm {norm_text})"
    return f"the grad norm is {norm} (loss {loss:g})"


__all__ = ["TrainConfig", "Trainer", "NonFiniteError", "evaluate", "lm_loss", "batch_tokens", "param_groups"]
