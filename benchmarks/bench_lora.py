"""LoRA against full and last-block fine-tuning on the spam task (book chapter 6 and appendix E).

Runs examples/finetune_classifier.py once per trainable part, each in its own process, with the same
data, split, starting model, epochs and seed, and prints one table: test accuracy, trainable parameters,
the mean training step (evaluation excluded: only the initial and final evaluations run, outside the
timed loop) and the process's peak resident memory.

    python benchmarks/bench_lora.py --data ../shared/data/SMSSpamCollection.tsv --init-from runs/pretrain/model

Extra arguments after `--` go to every run (e.g. `-- --epochs 3 --max-length 64`). Run it on a quiet
machine: the step times are compared with each other, in one run.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "finetune_classifier.py"
MODES = {  # label: (--trainable, the flag of its learning rate)
    "full fine-tuning": ("all", "lr_full"),
    "last block + head (book ch. 6)": ("last-block", "lr_last_block"),
    "LoRA on every Linear, head in full": ("lora", "lr_lora"),
}


def run(flags, out):
    """Run one fine-tuning; returns (results.json as a dict, peak RSS in MiB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *flags, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS alone
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(flags)} failed with status {proc.returncode}:\n{output[-2000:]}")
    return json.loads((out / "results.json").read_text()), usage.ru_maxrss / 1024  # KiB on Linux


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the SMS Spam Collection TSV")
    p.add_argument("--init-from", default="runs/pretrain/model", help="the pretrained model directory")
    p.add_argument("--lora-rank", default="16")
    p.add_argument("--lora-alpha", default="16")
    # each method at a learning rate that suits it (the book: 5e-5 for its last block, 5e-4 for LoRA)
    p.add_argument("--lr-full", default="3e-4")
    p.add_argument("--lr-last-block", default="1e-3")
    p.add_argument("--lr-lora", default="1e-3")
    p.add_argument("extra", nargs="*", help="more flags for every run, after --")
    args = p.parse_args()
    common = ["--data", args.data, "--init-from", args.init_from, "--eval-every", "1000000",
              "--lora-rank", args.lora_rank, "--lora-alpha", args.lora_alpha, *args.extra]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (label, (trainable, lr)) in enumerate(MODES.items()):
            print(f"running {label} ...", file=sys.stderr, flush=True)
            results, peak = run(common + ["--trainable", trainable, "--lr", getattr(args, lr)], Path(tmp) / str(k))
            rows.append((label, results, peak))
    full_step = rows[0][1]["train_seconds"] / rows[0][1]["steps"]
    print(f"\n{rows[0][1]['steps']} steps each; flags: {' '.join(common)}\n")
    print("| trainable part | lr | trainable parameters | test accuracy | step (s) | step vs full | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for label, r, peak in rows:
        step = r["train_seconds"] / r["steps"]
        print(f"| {label} | {r['args']['lr']:g} | {r['trainable_params']:,} of {r['total_params']:,} | "
              f"{100 * r['test_acc']:.2f} % | {step:.3f} | {step / full_step:.2f}x | {peak:,.0f} |")


if __name__ == "__main__":
    main()
