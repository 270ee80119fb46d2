"""Book chapter 5, section 5.2, and appendix D: the training loop, its checkpoints and its run folder."""

from tinygrad_llm.training.trainer import *  # noqa: F401,F403
from tinygrad_llm.training.trainer import __all__  # noqa: F401
