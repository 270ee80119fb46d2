"""Book chapter 5, section 5.2, and appendix D, sections D.1-D.3: the settings of a training run.

`TrainConfig` holds every setting of `Trainer` (tinygrad_llm/training/trainer.py); `param_groups` splits
the parameters into AdamW's decayed and undecayed groups; `total_steps` counts the run's steps, and
`lr_schedule` turns the config into the learning rate of each step: constant (the book's chapter 5), or appendix D's linear warmup (D.1) and
cosine decay (D.2). Gradient clipping (D.3) is `grad_clip` and `clip_after_warmup`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from autograd.amp import COMPUTE_DTYPES
from autograd.optim import cosine_with_warmup


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
        """The config of `to_dict()`'s dict. A key this version does not know is an error that names it, as
        in GPTConfig.from_dict: a setting from a newer version, dropped, would train differently from the
        run that wrote it. Keys missing from `d` (a dict from an older version) take their defaults."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
        return cls(**d)


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


def total_steps(cfg, train_loader):
    """The steps of a run: max_steps, else the epochs' batches over grad_accum_steps."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    try:
        return cfg.epochs * len(train_loader) // cfg.grad_accum_steps
    except TypeError:
        raise ValueError("a train loader without len() needs max_steps") from None


def lr_schedule(cfg, total_steps):
    """step (counted from 0) -> lr. Without `initial_lr` the schedule is evaluated one step on, so the
    first step gets lr / warmup_steps and the cosine ends at min_lr on the last step; with it, the
    step itself, as appendix D counts: the first step gets initial_lr."""
    min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
    start, shift = (0.0, 1) if cfg.initial_lr is None else (cfg.initial_lr, 0)
    if cfg.schedule == "constant":
        if not cfg.warmup_steps:
            return lambda s: cfg.lr
        return lambda s: start + (cfg.lr - start) * min(1.0, (s + shift) / cfg.warmup_steps)
    return lambda s: cosine_with_warmup(s + shift, max_lr=cfg.lr, total_steps=total_steps,
                                        warmup_steps=cfg.warmup_steps, min_lr=min_lr, initial_lr=start)
