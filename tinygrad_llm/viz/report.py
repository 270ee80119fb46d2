"""A run at a glance: the pictures of a run folder, drawn from its metrics.jsonl.

    python -m tinygrad_llm.viz.report runs/NAME     # writes them again, and report.png with all in one

writes, beside metrics.jsonl,

    loss.png        train and validation loss against tokens seen (each evaluation)
    lr.png          the learning rate of every step (the schedule: warmup, cosine)
    grad_norm.png   the gradient norm of every step, before clipping (runs that clip or skip)
    accuracy.png    fine-tuning's accuracies (a record's keys ending in "_acc" or holding "accuracy")
    reward.png      preference tuning's rewards (a record's keys holding "reward")
    report.png      all of them in one picture (the command only; the Trainer writes the others)

The Trainer writes the first five at each evaluation (RunFolder.plot). The per-step values are each
record's "per_step" (tinygrad_llm/training/run_folder.py, `new_per_step`); a run from before it had them
gets the learning rate at its evaluations and no gradient norms. `series(records)` is what is drawn, as
numbers: a test holds each picture's lines equal to it, and it equal to metrics.jsonl.
"""

import json
import math
import sys
from pathlib import Path

from autograd.viz import PLOT_EXTRA, new_figure, save_figure

METRICS_FILE = "metrics.jsonl"  # the name RunFolder writes (run_folder.METRICS; a test holds them equal)


def read_metrics(run):
    """The records of `run` (a run folder, or its metrics.jsonl), one dict per line."""
    path = Path(run)
    if path.is_dir():
        path = path / METRICS_FILE
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _points(pairs):
    """(xs, ys) of the pairs whose y is a finite number (a null in metrics.jsonl is not drawn)."""
    kept = [(x, y) for x, y in pairs if _finite(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def _per_step(records, key):
    return [(s, v) for r in records if r.get("per_step") for s, v in zip(r["per_step"]["step"], r["per_step"][key])]


def _is_accuracy(key):
    return key.endswith("_acc") or "accuracy" in key


def series(records):
    """What the report draws: {panel: {line name: (xs, ys)}}, only panels with something to draw.

    loss: train and val loss (x: tokens seen); lr, grad_norm, step_loss: each step's (x: step, from
    "per_step"; lr falls back to the evaluations' "lr"); accuracy, reward: the evaluations' values of the
    keys that name them (x: step)."""
    out = {}
    loss = {name: _points([(r.get("tokens_seen"), r.get(name)) for r in records])
            for name in ("train_loss", "val_loss")}
    out["loss"] = {k: v for k, v in loss.items() if v[0]}
    steps = {"lr": _points(_per_step(records, "lr")),
             "grad_norm": _points(_per_step(records, "grad_norm")),
             "step_loss": _points(_per_step(records, "loss"))}
    if not steps["lr"][0]:  # a run from before "per_step": the rate at each evaluation
        steps["lr"] = _points([(r.get("step"), r.get("lr")) for r in records])
    for name, xy in steps.items():
        out[name] = {name: xy} if xy[0] else {}
    keys = sorted({k for r in records for k, v in r.items() if _finite(v)})
    for panel, wanted in (("accuracy", _is_accuracy), ("reward", lambda k: "reward" in k)):
        out[panel] = {k: _points([(r.get("step"), r.get(k)) for r in records]) for k in keys if wanted(k)}
        out[panel] = {k: v for k, v in out[panel].items() if v[0]}
    return {panel: lines for panel, lines in out.items() if lines}


AXES = {  # panel: (title, x label, y label, file)
    "loss": ("loss", "tokens seen", "loss", "loss.png"),
    "lr": ("learning rate", "step", "lr", "lr.png"),
    "grad_norm": ("gradient norm before clipping", "step", "norm", "grad_norm.png"),
    "step_loss": ("training loss of each step", "step", "loss", None),
    "accuracy": ("accuracy", "step", "accuracy", "accuracy.png"),
    "reward": ("reward", "step", "reward", "reward.png"),
}
LEGEND = {"train_loss": "train", "val_loss": "validation"}


def draw_panel(ax, panel, lines):
    """One panel's lines on a matplotlib Axes, one line per series, in the order of `series`."""
    title, xlabel, ylabel, _ = AXES[panel]
    for name, (xs, ys) in lines.items():
        style = "-." if name == "val_loss" else "-"
        ax.plot(xs, ys, style, label=LEGEND.get(name, name), linewidth=1.2, marker="." if len(xs) < 30 else None)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=8)


def panel_figure(panel, lines, size=(6, 4)):
    fig = new_figure(*size)
    draw_panel(fig.add_subplot(), panel, lines)
    fig.tight_layout()
    return fig


def loss_figure(records):
    """loss.png's figure: train and validation loss against tokens seen."""
    return panel_figure("loss", series(records).get("loss", {}))


def glance_figure(records, title=None):
    """Every panel with something to draw, in a grid of two columns: report.png."""
    drawn = series(records)
    panels = [p for p in AXES if p in drawn]
    cols = 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // cols)
    fig = new_figure(5.2 * cols, 3.2 * rows)
    for k, panel in enumerate(panels):
        draw_panel(fig.add_subplot(rows, cols, k + 1), panel, drawn[panel])
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def write_report(run_dir, records=None, glance=True):
    """The pictures of `run_dir` from `records` (default: its metrics.jsonl); returns the paths written.
    Raises ImportError, saying what to install, without matplotlib."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir) if records is None else records
    drawn, written = series(records), []
    for panel, (_, _, _, name) in AXES.items():
        if name is not None and (panel in drawn or panel == "loss"):
            written.append(save_figure(panel_figure(panel, drawn.get(panel, {})), run_dir / name, dpi=120))
    if glance:
        written.append(save_figure(glance_figure(records, title=run_dir.name), run_dir / "report.png", dpi=100))
    return written


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m tinygrad_llm.viz.report", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a run folder holding metrics.jsonl (runs/NAME)")
    args = p.parse_args(argv)
    if not (args.run / METRICS_FILE).is_file():
        print(f"error: {args.run / METRICS_FILE} not found: pass a run folder written by the Trainer", file=sys.stderr)
        return 2
    try:
        paths = write_report(args.run)
    except ImportError:
        print(f"error: {PLOT_EXTRA}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
