"""Fine-tune a GPT to classify SMS messages as spam or ham (book chapter 6).

    python examples/finetune_classifier.py --data SMSSpamCollection.tsv   # from scratch
    python examples/classify.py "You have won a prize! Call 0800 now"     # spam  0.99...  You have won...
    python examples/finetune_classifier.py --data SMSSpamCollection.tsv --init-from runs/pretrain/model

The data (label<TAB>text per line; without --data the UCI archive is downloaded once) is balanced by
sampling ham down to the number of spam messages, split 70/10/20, tokenized and padded with
<|endoftext|>. A head of two outputs replaces the vocabulary head and reads the last real token of each
message (--pool last-position reads the last position, a pad for short messages, as the book does).

From pretrained weights (--init-from DIR, as examples/pretrain.py writes them, or gpt2) the book's
settings are the default: the last block, the final LayerNorm and the head train, at lr 5e-5. From
scratch (--init-from none, the default: a small GPT pretrained on Python's documentation classifies
spam worse than a new one) every parameter trains, at lr 3e-4, with a BPE trained on the training
messages unless --tokenizer names one.

--lora RANK trains rank-RANK LoRA adapters on every Linear layer and the head in full, instead of
--trainable's choice (the older spelling --trainable lora --lora-rank R still works, with a note to use
--lora R). --resume continues the run in --out with the settings it was started with (the model is built
again from its --init-from, then the checkpoint restores weights, optimizer and data position).

Outputs in --out: model/ (the classifier: config.json, model.safetensors and its tokenizer's files, which
examples/classify.py loads; with --lora the adapters merged in), metrics.jsonl (losses and accuracies),
checkpoint.safetensors, results.json, and with LoRA adapter.safetensors (A and B alone). Bad input
prints one line, `error: ...`, and exits with status 2.
"""

import argparse
import json
import sys
from pathlib import Path

from autograd.checkpoint import write_text
from tinygrad_llm.finetune.classifier import (POOLS, TRAINABLE, GPTClassifier, accuracy, accuracy_hook, batch_examples,
                                              classification_loader, classification_loss, set_trainable)
from tinygrad_llm.finetune.classify_data import (balanced_split, classification_splits, describe_lines,
                                                 download_sms_spam, read_labeled_tsv)
from tinygrad_llm.finetune.lora import ADAPTER_FILE, merge_lora, save_adapter
from tinygrad_llm.models.gpt import GPT, PRESETS, GPTConfig
from tinygrad_llm.support import cli
from tinygrad_llm.support.cli import (add_device_flags, add_lora_flags, add_run_flags, add_training_flags,
                                      data_fingerprint, fit, int_at_least, parse_training_args, positive_int,
                                      run_main, run_settings, shell_command, start_run, train_config)
from tinygrad_llm.text.tokenizer import BPETokenizer, get_tokenizer
from tinygrad_llm.training.trainer import Trainer

COMMAND = "examples/finetune_classifier.py"  # recorded in the checkpoint: another command cannot resume its run
# (trainable, lr) when the flags are not given: from scratch, and from pretrained weights (the book's)
SCRATCH_DEFAULTS, PRETRAINED_DEFAULTS = ("all", 3e-4), ("last-block", 5e-5)
DEFAULT_LORA_RANK = 16  # of the deprecated --trainable lora without --lora-rank
RESUMABLE = cli.RESUMABLE | {"eval_batches"}


def build_parser(suppress=False):
    """The argument parser; with `suppress`, flags not given on the command line are left out (used to
    tell which flags override a resumed run's settings)."""
    p, d = cli.training_parser(__doc__, suppress)
    a = p.add_argument
    a("--data", default=d(None), metavar="PATH",
      help="label<TAB>text file; default: download the UCI SMS Spam Collection")
    a("--init-from", default=d("none"), metavar="DIR|gpt2|none",
      help="a pretrained model directory (as examples/pretrain.py writes runs/pretrain/model, tokenizer files "
           "beside it), gpt2 (the published weights, downloaded once) or none (from scratch, --config; default)")
    a("--tokenizer", default=d(None), metavar="gpt2|DIR", help="'gpt2' (tiktoken) or a directory with encoder.json "
      "+ vocab.bpe; default: the one beside --init-from DIR, GPT-2's for gpt2, and for none a BPE trained on the "
      "training messages")
    a("--vocab-size", type=int_at_least(257), default=d(2048),
      help="vocabulary of the BPE trained with --init-from none")
    a("--config", default=d("cpu-small"), help=f"model preset with --init-from none: {', '.join(PRESETS)}")
    a("--max-length", type=positive_int, default=d(None), help="tokens kept per message; default: the longest "
      "training message, at most the context length")
    add_device_flags(p)
    add_training_flags(p, lr=None, epochs=5, eval_every=50,
                       lr_help="default: 3e-4 from scratch, 5e-5 (the book's) from pretrained weights")
    a("--eval-batches", type=positive_int, default=d(5), help="batches per split in each evaluation")
    a("--trainable", default=d(None), choices=TRAINABLE, help="the part that trains; default: all from scratch, "
      "last-block (the book's: last block, final LayerNorm, head) from pretrained weights. lora: deprecated, "
      "use --lora RANK")
    a("--lora-rank", type=positive_int, default=d(None), help=argparse.SUPPRESS)  # of the deprecated --trainable lora
    add_lora_flags(p, lora_help="the head trains in full (instead of --trainable)")
    a("--pool", default=d("last-token"), choices=POOLS, help="the position the head reads")
    add_run_flags(p, out="runs/classify", seed_help="balancing, split, head and data order")
    a("--on-bad", default=d("skip"), choices=["skip", "error"], help="malformed lines: skip them (listed) or stop")
    return p


def choose_trainable(args, quiet=False):
    """Fill in --trainable and --lr from --init-from where they are not given, and read the LoRA flags:
    --lora RANK means trainable "lora". The older spelling --trainable lora [--lora-rank R] means
    --lora R (16 without --lora-rank), with a note saying so unless `quiet`."""
    if args.trainable == "lora" and args.lora is None:
        args.lora = args.lora_rank or DEFAULT_LORA_RANK
        if not quiet:
            print(f"note: --trainable lora --lora-rank R is deprecated; use --lora {args.lora}")
    elif args.lora_rank is not None and args.lora_rank != args.lora:
        raise ValueError("--lora-rank only goes with the deprecated --trainable lora; use --lora RANK")
    if args.lora is not None:
        if args.trainable not in (None, "lora"):
            raise ValueError(f"--lora trains LoRA adapters and the head; it does not combine with --trainable "
                             f"{args.trainable}")
        args.trainable, args.lora_rank = "lora", None
    trainable, lr = SCRATCH_DEFAULTS if args.init_from == "none" else PRETRAINED_DEFAULTS
    args.trainable, args.lr = args.trainable or trainable, args.lr or lr


def load_model(args, train_texts):
    """(GPT, tokenizer) from --init-from and --tokenizer."""
    if args.init_from == "none":
        if args.config not in PRESETS:
            raise ValueError(f"unknown preset {args.config!r}; choose one of: {', '.join(PRESETS)}")
        if args.tokenizer is not None:
            tok = get_tokenizer(args.tokenizer)
        else:
            print(f"training a {args.vocab_size}-token BPE on the {len(train_texts):,} training messages")
            tok = BPETokenizer.train("\n".join(train_texts), args.vocab_size)
        return GPT(GPTConfig.preset(args.config, vocab_size=tok.n_vocab), seed=args.seed), tok
    if args.init_from == "gpt2":
        return GPT.from_pretrained("gpt2"), get_tokenizer(args.tokenizer or "gpt2")
    directory = Path(args.init_from)
    if not directory.is_dir():
        raise FileNotFoundError(f"--init-from {directory}: no such directory (a pretrained model directory, "
                                "gpt2 or none)")
    gpt = GPT.from_pretrained(directory)
    if args.tokenizer is not None:
        tok = get_tokenizer(args.tokenizer)
    elif (directory / "encoder.json").is_file() and (directory / "vocab.bpe").is_file():
        tok = BPETokenizer.load(directory)
    else:
        raise FileNotFoundError(f"{directory} holds no tokenizer (encoder.json + vocab.bpe); pass --tokenizer")
    if tok.n_vocab > gpt.config.vocab_size:
        raise ValueError(f"the tokenizer has {tok.n_vocab} tokens, the model only {gpt.config.vocab_size}")
    return gpt, tok


def run(argv):
    args, saved = parse_training_args(build_parser, argv, COMMAND, RESUMABLE)
    choose_trainable(args, quiet=saved is not None)
    out = start_run(args, resume=saved is not None)

    path = args.data or download_sms_spam()
    data = read_labeled_tsv(path, on_bad=args.on_bad)
    fingerprint = data_fingerprint([path], saved, out)
    gpt, tok = load_model(args, [data.texts[i] for i in balanced_split(data, args.seed)[0]])
    if tok.eot_token is None:
        raise ValueError("the tokenizer has no <|endoftext|> token to pad with")
    context = gpt.config.context_length
    note = lambda n, limit: print(f"note: the longest training message is {n} tokens; cut at the context length "
                                  f"{limit}")
    train_set, val_set, test_set = classification_splits(data, tok, args.seed, args.max_length, context, on_long=note)
    if data.skipped:  # after every check on the data, so that an error stays the one line on stderr
        print(f"warning: skipped {len(data.skipped)} malformed lines: {describe_lines(data.skipped)}", file=sys.stderr)
    print(f"{len(data):,} messages ({', '.join(f'{n:,} {k}' for k, n in data.counts().items())}); balanced and "
          f"split: {len(train_set)} train, {len(val_set)} val, {len(test_set)} test; max length {train_set.max_length}")

    model = GPTClassifier(gpt, len(data.label_names), labels=data.label_names, pool=args.pool, pad_id=tok.eot_token,
                          max_length=train_set.max_length, tokenizer=tok, seed=args.seed)
    summary = set_trainable(model, args.trainable, lora_rank=args.lora, lora_alpha=args.lora_alpha, seed=args.seed)
    print(f"{summary}; lr {args.lr:g}, epochs {args.epochs}")
    counts = {"trainable_params": model.num_parameters(trainable=True), "total_params": model.num_parameters()}
    model.to(args.device)
    loader = lambda ds, train: classification_loader(ds, args.batch_size, args.pool, tok.eot_token,
                                                     shuffle=train, drop_last=train, seed=args.seed)
    train, val, test = loader(train_set, True), loader(val_set, False), loader(test_set, False)
    config = train_config(args, schedule="constant", eval_batches=args.eval_batches)
    metadata = {"command": COMMAND, "args": run_settings(args), "data_fingerprint": fingerprint}
    trainer = Trainer(model, train, val, config, loss_fn=classification_loss, tokens_fn=batch_examples,
                      on_eval=accuracy_hook(train, val, args.eval_batches), metadata=metadata)
    if fit(trainer, out, __file__, resume=saved is not None) is None:  # Ctrl-C, reported
        return 130
    if args.trainable == "lora":  # model/ holds the merged weights already; the adapter alone is small
        save_adapter(model, out / ADAPTER_FILE)
        merge_lora(model)
    results = {"train_acc": accuracy(model, loader(train_set, False)), "val_acc": accuracy(model, val),
               "test_acc": accuracy(model, test),
               "train_seconds": round(trainer.elapsed, 1), "steps": trainer.step, "pool": args.pool,
               "trainable": args.trainable, **counts, "args": vars(args)}
    write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    print(f"done: {trainer.step} steps in {trainer.elapsed:.0f} s; accuracy: train {100 * results['train_acc']:.2f}%, "
          f"val {100 * results['val_acc']:.2f}%, test {100 * results['test_acc']:.2f}%")
    classify = shell_command(Path(__file__).with_name("classify.py"))
    print(f"classifier saved in {out / 'model'}; try: {classify} --model {out / 'model'} \"some text\"")
    return 0


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
