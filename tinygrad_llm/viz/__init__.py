"""Pictures for learners, beside the book's chapters (matplotlib, the `plot` extra; each says in one line
what to install without it):

    tokens.py      chapter 2: a text split into its tokens (terminal colours, an HTML page, a picture)
    attention.py   chapter 3: every head of a layer as heat maps, the tokens on both axes
    report.py      chapters 5-7: a run folder at a glance from metrics.jsonl (loss, lr, grad norm, accuracy,
                   reward): python -m tinygrad_llm.viz.report runs/NAME

The autograd graph of appendix A is autograd/viz.py (`trace`, `record_modules`), which also holds the one
figure helper these use (`new_figure`, `save_figure`: files on the Agg canvas, no display needed).
The report is imported as `tinygrad_llm.viz.report` (not from here, so that `python -m` runs it as itself).
"""

from autograd.viz import PLOT_EXTRA, save_figure
from tinygrad_llm.viz.attention import attention_figure, attention_grid
from tinygrad_llm.viz.tokens import TokenSpan, color_tokens, token_spans, tokens_figure, tokens_html

__all__ = ["PLOT_EXTRA", "save_figure", "attention_figure", "attention_grid", "TokenSpan", "color_tokens", "token_spans", "tokens_figure", "tokens_html"]
