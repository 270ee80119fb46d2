"""LoRA against full and last-block fine-tuning on the spam task (book chapter 6 and appendix E).

Runs examples/finetune_classifier.py once per trainable part, each in its own process, with the same
data, split, starting model, epochs and seed, and prints one table: test accuracy, trainable parameters,
the mean training step (evaluation excluded: only the initial and final evaluations run, outside the
timed loop) and the process's peak resident memory.

    python benchmarks/bench_lora.py --data ../shared/data/SMSSpamCollection.tsv --init-from runs/pretrain/model

Extra arguments after `--` go to every run (e.g. `-- --epochs 3 --max-length 64`). Run it on a quiet
machine: the step times are compared with each other, in one run.

At GPT-2 124M's size (the book's appendix E setting) a whole fine-tuning does not fit a CPU session, so
`--steps N --config gpt2-small` times N training steps of each part on the same spam batches instead
(GPT-2's tokenizer, batch 8, fresh weights: the time of a step does not depend on their values):

    python benchmarks/bench_lora.py --data ../shared/data/SMSSpamCollection.tsv --steps 5 --config gpt2-small \
        --tokenizer ../shared/data/gpt2
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


def time_steps(args):
    """One trainable part's steps on the spam batches, in this process: prints a JSON line with the
    median step time, the parameter counts and the peak RSS."""
    import resource
    import statistics
    import time

    if not __package__:
        sys.path.insert(0, str(ROOT))
    from autograd import backend
    from autograd.optim import AdamW
    from tinygrad_llm.finetune.classifier import GPTClassifier, classification_loader, classification_loss, set_trainable
    from tinygrad_llm.finetune.classify_data import classification_splits, read_labeled_tsv
    from tinygrad_llm.models.gpt import GPT, GPTConfig
    from tinygrad_llm.text.tokenizer import get_tokenizer
    from tinygrad_llm.training.trainer import param_groups

    backend.keep_freed_memory()
    tok = get_tokenizer(args.tokenizer)
    data = read_labeled_tsv(args.data)
    gpt = GPT(GPTConfig.preset(args.config, vocab_size=tok.n_vocab), seed=0)
    train, _, _ = classification_splits(data, tok, 123, None, gpt.config.context_length)
    model = GPTClassifier(gpt, 2, labels=("ham", "spam"), pad_id=tok.eot_token)
    set_trainable(model, args.worker, lora_rank=int(args.lora_rank), lora_alpha=float(args.lora_alpha))
    opt = AdamW(param_groups(model, 0.1), lr=1e-4)
    batches = classification_loader(train, 8, "last-token", tok.eot_token, seed=123).iter_from(0)
    times = []
    for k in range(args.steps + 1):  # the first step warms up
        batch = next(batches)
        t = time.perf_counter()
        classification_loss(model, batch).backward()
        opt.step()
        opt.zero_grad()
        if k:
            times.append(time.perf_counter() - t)
    print(json.dumps({"step": statistics.median(times), "trainable": model.num_parameters(trainable=True),
                      "total": model.num_parameters(), "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def steps_table(args):
    rows = []
    for label, (trainable, _) in MODES.items():
        print(f"timing {label} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", trainable, "--data", args.data,
               "--steps", str(args.steps), "--config", args.config, "--tokenizer", args.tokenizer,
               "--lora-rank", args.lora_rank, "--lora-alpha", args.lora_alpha]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            sys.exit(f"error: {label} failed:\n{proc.stderr[-2000:]}")
        rows.append((label, json.loads(proc.stdout.strip().splitlines()[-1])))
    full = rows[0][1]["step"]
    print(f"\n{args.config}, spam batches of 8 (GPT-2 tokenizer), median of {args.steps} steps after one warm-up\n")
    print("| trainable part | trainable parameters | step (s) | step vs full | peak RSS (MiB) |")
    print("|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['trainable']:,} of {r['total']:,} | {r['step']:.3f} | {r['step'] / full:.2f}x | "
              f"{r['rss_mib']:,.0f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the SMS Spam Collection TSV")
    p.add_argument("--steps", type=int, default=None, help="time this many steps of each part instead of "
                   "fine-tuning to the end (with --config and --tokenizer)")
    p.add_argument("--config", default="gpt2-small", help="with --steps: the model preset")
    p.add_argument("--tokenizer", default="gpt2", help="with --steps: gpt2 or a directory with GPT-2's files")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--init-from", default="runs/pretrain/model", help="the pretrained model directory")
    p.add_argument("--lora-rank", default="16")
    p.add_argument("--lora-alpha", default="16")
    # each method at a learning rate that suits it (the book: 5e-5 for its last block, 5e-4 for LoRA)
    p.add_argument("--lr-full", default="3e-4")
    p.add_argument("--lr-last-block", default="1e-3")
    p.add_argument("--lr-lora", default="1e-3")
    p.add_argument("extra", nargs="*", help="more flags for every run, after --")
    args = p.parse_args()
    if args.worker:
        return time_steps(args)
    if args.steps:
        return steps_table(args)
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
