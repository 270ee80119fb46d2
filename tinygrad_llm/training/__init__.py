"""Book chapter 5 and appendix D: the training loop, its checkpoints and its run folder.

    loss.py         lm_loss and evaluate: the book's calc_loss_batch and calc_loss_loader (section 5.1.3)
    simple.py       train_simple: the book's train_model_simple (section 5.2, listing 5.3)
    trainer.py      Trainer: the same loop made robust, beside it
    config.py       TrainConfig, param_groups, the learning-rate schedule (appendix D)
    step.py         one step's gradients (accumulation, clipping, the data-parallel share)
    nonfinite.py    NonFiniteError and the on_nonfinite policy; float16 overflow skips
    interrupts.py   Ctrl-C handling
    run_folder.py   what a run leaves in its folder, and how it is read back
"""

from tinygrad_llm.training.config import TrainConfig, lr_schedule, param_groups
from tinygrad_llm.training.loss import batch_tokens, evaluate, lm_loss
from tinygrad_llm.training.nonfinite import NonFiniteError
from tinygrad_llm.training.simple import evaluate_model, generate_and_print_sample, train_simple
from tinygrad_llm.training.step import StepGradients
from tinygrad_llm.training.trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "NonFiniteError", "evaluate", "lm_loss", "batch_tokens", "param_groups",
           "lr_schedule", "train_simple", "evaluate_model", "generate_and_print_sample", "StepGradients"]
