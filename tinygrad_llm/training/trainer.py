"""Book chapter 5, section 5.2, and appendix D, section D.4: the training loop, made robust.

The loop a learner reads first is `train_simple` (tinygrad_llm/training/simple.py, the book's
listing 5.3); `Trainer` runs the same steps and adds what a long run needs, each in its own module:

    config.py       TrainConfig, the optimizer's parameter groups, the learning-rate schedule (appendix D)
    step.py         one step's gradients over grad_accum_steps micro-batches, clipped; the data-parallel share
    nonfinite.py    a NaN or infinite loss or norm: stop (NonFiniteError) or skip the step; float16 overflow
    interrupts.py   Ctrl-C: stop at a step boundary, never in the middle of a write
    run_folder.py   the checkpoint, metrics.jsonl, loss.png, the tokenizer's files and model/

One optimizer step is `grad_accum_steps` micro-batches: forward, loss, backward each, then gradient
clipping, an AdamW update and the next learning rate. Every `eval_every` steps the loop measures the
mean loss over a few training and validation batches (`evaluate`), generates a sample, and appends a
line to `metrics.jsonl`, with the loss, gradient norm and learning rate of every step since the line
before (its "per_step"). The losses stay device scalars until a log point (every `log_every` steps, an
evaluation, a checkpoint), where they are read all at once.

Checkpoints (`out_dir/checkpoint.safetensors`, written atomically by `autograd.checkpoint.save_state`)
hold the model, the optimizer, the schedule's step, the dropout generators, and in their metadata the
step, the data position (epoch, batch within it), tokens seen, the configs, the tokenizer and the
metrics so far. The data order is a function of seed and epoch (`DataLoader.iter_from`), so a resumed
run sees the same batches, with the same dropout masks, as one that never stopped: its losses are the
same bit for bit on the CPU. The temporary files of a killed writer are removed by the next `fit`.

Ctrl-C asks the loop to stop at the next step boundary, then it saves a checkpoint and raises
KeyboardInterrupt. A second Ctrl-C cuts the current step short (as if it never started) and still saves.
`saved_step` says which step the last checkpoint of this session holds.

Mixed precision (TrainConfig(dtype="float16"), autograd/amp.py): the Linear layers multiply in float16
while the parameters, gradients and AdamW state stay float32; the loss is scaled before backward and the
gradients unscaled before clipping.

Data-parallel runs pass `comm` (tinygrad_llm/support/distributed.py): each rank computes its share of the
step's micro-batches, the gradients are averaged before clipping, and rank 0 alone evaluates and writes.
Each rank draws its own dropout masks (rank 0 the ones a single process would); the checkpoint keeps
every rank's generators, so a resume on as many ranks draws the same masks again.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

from tqdm.auto import tqdm

from autograd.amp import COMPUTE_DTYPES, GradScaler, compute_in
from autograd.checkpoint import CheckpointError
from autograd.optim import AdamW, LRScheduler
from tinygrad_llm.support.distributed import Communicator, distinct_dropout_streams
from tinygrad_llm.text.tokenizer import tokenizer_fingerprint
from tinygrad_llm.training.config import TrainConfig, lr_schedule, param_groups, total_steps
from tinygrad_llm.training.interrupts import Interrupts
from tinygrad_llm.training.loss import batch_tokens, evaluate, lm_loss
from tinygrad_llm.training.nonfinite import NonFiniteError, NonFinitePolicy
from tinygrad_llm.training.run_folder import CHECKPOINT, RunFolder, json_safe, new_per_step, tokenizer_record
from tinygrad_llm.training.simple import sample_text
from tinygrad_llm.training.step import GradientStep, PendingLosses, micro_batches


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
        self.total_steps = total_steps(cfg, train_loader)
        self.scheduler = LRScheduler(self.optimizer, lr_schedule(cfg, self.total_steps))
        self.step, self.epoch, self.batch_index, self.tokens_seen, self.elapsed = 0, 0, 0, 0, 0.0
        self.records, self.step_losses = [], []
        self._pending = PendingLosses()
        self._per_step = new_per_step()  # the steps since the last record, for its "per_step" (run_folder.py)
        self.saved_step = None
        self._rng_before_step = None  # the dropout generators before the step in progress
        self.interrupts = Interrupts()
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else None
        self.folder = RunFolder(self.out_dir) if self.out_dir is not None else None
        self.comm = comm if comm is not None else Communicator()
        if self.comm.rank > 0:  # each rank its own dropout masks; rank 0 draws what one process would
            distinct_dropout_streams(model, self.comm.rank)
        self.scaler = GradScaler() if cfg.dtype == "float16" else None
        self._gradients = GradientStep(model, self.optimizer, cfg, loss_fn, tokens_fn, self.comm, self.scaler)
        if not self.comm.is_main:  # ranks other than 0 log nothing
            self.log = lambda message: None
        self.nonfinite = NonFinitePolicy(cfg, self.comm, lambda message: self.log(message))
        self.skipped_steps = self.nonfinite.skipped_steps

    # ---- fit ----------------------------------------------------------------------------------------

    def fit(self):
        """Train until max_steps (or the epochs) are done, then save a checkpoint and export the model.
        Returns the evaluation records. Raises KeyboardInterrupt after a Ctrl-C (having saved a checkpoint
        unless that failed: `saved_step == step` says whether it did) and NonFiniteError when the run
        diverged (nothing saved after the last good checkpoint). With dtype="float16" the model's Linear
        layers compute in float16 during the run (evaluations and samples included) and in whatever they
        did before after it."""
        precision = (compute_in(self.model, COMPUTE_DTYPES[self.config.dtype]) if self.scaler is not None
                     else contextlib.nullcontext())
        with precision:
            if self.folder is not None:
                self.folder.prepare(self.comm.is_main)
            self.model.train()
            with self.interrupts.installed(), self._progress_bar() as bar:
                self.comm.broadcast_parameters_(self.model.parameters())  # rank 0's parameters on every rank
                try:
                    self._train(bar)
                except KeyboardInterrupt:
                    self._save_after_interrupt(bar)
                    raise
        return self.records

    def _progress_bar(self):
        cfg = self.config
        return contextlib.closing(tqdm(total=self.total_steps, initial=self.step, unit="step",
                                       disable=not cfg.progress or not self.comm.is_main, dynamic_ncols=True))

    def _train(self, bar):
        """The steps from the current one to the last, each followed by its log point, evaluation,
        checkpoint and hooks as due; then the last checkpoint and the model's export."""
        cfg = self.config
        self._rng_before_step = None
        if self.step == 0 and not self.records:
            if self.folder is not None and self.comm.is_main:
                self.folder.write_metrics(self.records)  # a fresh run: empty
            self.evaluate_and_log()
        stream = micro_batches(self.train_loader, self.epoch, self.batch_index)
        t_log, tokens_log, start_elapsed, t0 = time.perf_counter(), 0, self.elapsed, time.perf_counter()
        while self.step < self.total_steps:
            if self.interrupts.stop_requested and self.comm.size == 1:  # ranks stop where they agreed to (below)
                raise KeyboardInterrupt
            tokens_log += self._train_step(stream, start_elapsed, t0)
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
                self._gradients.check_sync(self.step)
            self.interrupts.stop_requested = self.comm.any_(self.interrupts.stop_requested)  # all ranks alike
            if self.interrupts.stop_requested:
                raise KeyboardInterrupt
        self._sync_losses()
        if self.saved_step != self.step:  # the last step may have been a periodic checkpoint already
            self.save_checkpoint()
        self.export_model()

    def _train_step(self, stream, start_elapsed, t0):
        """One optimizer step: the gradients, then the update (or its skip) together with the counters
        that say it happened. Returns the tokens it saw."""
        self._rng_before_step = self.model.rng_states()  # restored if a second Ctrl-C cuts this step short
        grads = self._gradients(stream, self.step)
        step = self.step + 1
        if grads.overflowed:  # before the non-finite checks: the scaler's business, not divergence
            self.nonfinite.overflowed(step, self.optimizer, self.scaler, self.saved_step)
            update = False
        else:
            update = self.nonfinite.keep(step, grads.loss, grads.norm, self.optimizer, self.saved_step)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step's update used
        with self.interrupts.uninterruptible():
            if self.scaler is not None:
                self.scaler.update(grads.overflowed)
            if update:
                self.optimizer.step()
                self.optimizer.zero_grad()
            self.scheduler.step()  # a skipped step still counts: the schedule moves on
            self.step = step
            self.epoch, self.batch_index = grads.position
            self.tokens_seen += grads.tokens
            self.elapsed = start_elapsed + time.perf_counter() - t0
            self._pending.add(step, grads.loss, grads.norm)
            self._per_step["lr"].append(lr)
            self._rng_before_step = None
        return grads.tokens

    def _save_after_interrupt(self, bar):
        """After a Ctrl-C: undo a step cut short and save, with every further Ctrl-C waiting for it."""
        with self.interrupts.holding():
            bar.close()
            self.log(f"Ctrl-C: stopping at step {self.step}")
            if self._rng_before_step is not None:  # the step was cut short: as if it never started
                self.model.set_rng_states(self._rng_before_step)
                self._rng_before_step = None
                self.optimizer.zero_grad()
            if self.saved_step != self.step:
                try:
                    self.save_checkpoint()
                except (OSError, NonFiniteError) as e:  # the caller reports that nothing was saved
                    self.log(f"the checkpoint of step {self.step} was not saved: {' '.join(str(e).split())}")

    def _sync_losses(self):
        """Read the pending losses (and gradient norms) from the device: the one sync between log points.
        With on_nonfinite="error", a NaN or infinite value raises NonFiniteError here, before anything is
        saved: every checkpoint, evaluation and export reads the losses first."""
        if not self._pending:
            return
        steps, losses, norms = self._pending.read(self.comm)
        self.step_losses.extend(losses)
        for key, values in (("step", steps), ("loss", losses), ("grad_norm", norms)):
            self._per_step[key].extend(values)
        self.nonfinite.check(steps, losses, norms, self.saved_step)

    # ---- evaluation ---------------------------------------------------------------------------------

    def evaluate_and_log(self):
        """Evaluate, sample, log, and append the record to metrics.jsonl (and the plot)."""
        cfg = self.config
        self._sync_losses()
        per_step, self._per_step = self._per_step, new_per_step()
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
        if per_step["step"]:
            record["per_step"] = per_step
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
        if self.folder is not None:
            with self.interrupts.uninterruptible():
                self.folder.write_metrics(self.records)
                self.folder.plot(self.records)
        return record

    def sample(self):
        """`sample_tokens` tokens generated from `sample_prompt`, as text; None without a prompt or a
        tokenizer."""
        cfg = self.config
        if not cfg.sample_prompt or self.tokenizer is None or cfg.sample_tokens <= 0:
            return None
        return sample_text(self.model, self.tokenizer, cfg.sample_prompt, cfg.sample_tokens,
                           temperature=cfg.sample_temperature, top_k=cfg.sample_top_k,
                           eos_id=getattr(self.tokenizer, "eot_token", None), seed=cfg.seed + self.step)

    # ---- checkpoints --------------------------------------------------------------------------------

    def export_model(self):
        """At the end of a run: out_dir/model in Hugging Face's GPT-2 layout, with the tokenizer's files
        beside it when it is a BPE of ours, so examples/generate.py and other tools can load it."""
        if self.folder is None or not hasattr(self.model, "save_pretrained"):
            return None
        self._sync_losses()  # a diverged run raises here and keeps the last good export
        if not self.comm.is_main:  # rank 0 writes for all
            return None
        with self.interrupts.uninterruptible():
            return self.folder.export_model(self.model, self.tokenizer)

    def save_checkpoint(self):
        """Write out_dir/checkpoint.safetensors (and the tokenizer's files beside it, once). Returns the
        checkpoint's path, or None without an out_dir. Raises NonFiniteError, writing nothing, when a
        step since the last read diverged."""
        if self.folder is None:
            return None
        self._sync_losses()
        # every rank's dropout generators, so that a resume on as many ranks draws the same masks
        rank_rng = ([json.loads(text) for text in self.comm.gather_text(json.dumps(self.model.rng_states()))]
                    if self.comm.size > 1 else None)
        if not self.comm.is_main:  # rank 0 writes for all: every rank holds the same parameters
            return None
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
            "rank_rng_states": rank_rng,
            "per_step": json_safe(self._per_step),  # the steps since the last record, which a resume goes on from
        }
        with self.interrupts.uninterruptible():
            path = self.folder.save_checkpoint(self.model, self.optimizer, self.scheduler, self.tokenizer, extra)
            self.saved_step = self.step
        return path

    def resume(self, out_dir=None):
        """Load out_dir's checkpoint (default: config.out_dir) into this trainer: model, optimizer,
        schedule, dropout generators, data position, metrics; metrics.jsonl is cut back to match."""
        out_dir = Path(out_dir) if out_dir is not None else self.out_dir
        if out_dir is None:
            raise ValueError("resume needs an out_dir")
        path = out_dir / CHECKPOINT
        extra = RunFolder(out_dir).load_checkpoint(self.model, self.optimizer, self.scheduler, self.config.decay_all)
        try:
            self.step, self.epoch, self.batch_index = extra["step"], extra["epoch"], extra["batch_index"]
            self.tokens_seen, self.elapsed = extra["tokens_seen"], extra["elapsed"]
            self.records = list(extra["records"])
            self._per_step = extra.get("per_step") or new_per_step()
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {path} holds no training state (missing {e})") from None
        # a float16 run goes on with its loss scale; a float32 checkpoint resumed in float16 starts a new one
        if self.scaler is not None and extra.get("grad_scaler") is not None:
            try:
                self.scaler.load_state_dict(extra["grad_scaler"])
            except ValueError as e:
                raise CheckpointError(f"checkpoint {path}: {e}") from None
        # the checkpoint restored rank 0's dropout generators everywhere: each rank takes its own back,
        # or, on a different number of ranks than it was saved with, fresh streams of its own
        rank_rng = extra.get("rank_rng_states")
        if rank_rng is not None and len(rank_rng) == self.comm.size:
            self.model.set_rng_states(rank_rng[self.comm.rank])
        elif self.comm.rank > 0:
            distinct_dropout_streams(self.model, self.comm.rank, self.step)
        if self.folder is not None and self.comm.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.folder.write_metrics(self.records)
        self.saved_step = self.step
        return extra


# what `from tinygrad_llm.training.trainer import ...` gave when the whole loop lived in this file
__all__ = ["TrainConfig", "Trainer", "NonFiniteError", "evaluate", "lm_loss", "batch_tokens", "param_groups"]
