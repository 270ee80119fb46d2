"""Preference-tune an instruction-following model with DPO (the book's chapter 7 bonus), then answer the test split.

    python examples/pretrain.py                                                    # runs/pretrain/model
    python examples/finetune_instructions.py --data instruction-data.json         # runs/instruct/model
    python examples/finetune_preferences.py --data instruction-data-with-preference.json   # runs/preference

--data is a JSON list of {"instruction", "input", "chosen", "rejected"} entries ("output", the reference
answer, is optional: the book's instruction-data-with-preference.json has it) or one such object per
line. It is shuffled with --seed and split as finetune_instructions.py splits its data (85 % train, 10 %
test, 5 % validation: for the book's two files, which list the same instructions in the same order, the
same test entries). --init-from takes a model directory (as finetune_instructions.py writes into
runs/instruct/model), a published GPT-2 name, or a Llama-family source (a Hugging Face directory, a .gguf
file, a hub name), whose chat template then frames the prompts. The reference model is a second, frozen
copy of --init-from (or of --reference); with --lora R it is the same weights with the adapters switched
off, so only one model is in memory. Each evaluation logs the DPO loss and the reward margins (chosen
minus rejected reward, on train and validation batches). After training, the test entries with the
reference's and the policy's answers go to --out/preference-data-with-response.json.

Bad input (a missing or malformed data file, no usable entry, a bad entry with --on-bad error, a flag out
of range, --beta <= 0, a reference whose vocabulary differs from the policy's, --reference with --lora,
an output folder that cannot be written, a model directory without a model) prints one line,
`error: ...`, and exits with status 2. Entries with a missing, non-string or empty field are skipped with
a warning naming them (--on-bad skip, the default).
"""

import sys
import time

from tinygrad_llm.finetune import instruct
from tinygrad_llm.finetune import preference as dpo
from tinygrad_llm.finetune.lora import ADAPTER_FILE, adapters_disabled, apply_lora, merge_lora, save_adapter
from tinygrad_llm.support import cli
from tinygrad_llm.support.cli import (FlagError, add_device_flags, add_lora_flags, add_run_flags,
                                      add_training_flags, check_max_length, data_fingerprint, done_line, fit,
                                      int_at_least, nonnegative_int, parse_training_args, positive_float, run_main,
                                      run_settings, start_run, train_config)
from tinygrad_llm.training.trainer import Trainer

COMMAND = "examples/finetune_preferences.py"  # recorded in the checkpoint: another command cannot resume its run
BOOK_LR = 5e-6  # the book's, for GPT-2 medium (355M) fine-tuned on instructions
LARGE_MODEL = 100_000_000  # parameters from which the book's lr is the default
SMALL_MODEL_LR = 1e-4  # examples/pretrain.py + finetune_instructions.py model, one epoch: at 1e-3 the margin grows more (val 1.50 against 0.27) but both rewards fall about 5 nats a token and the answers break up (docs/preference.md)
RESUMABLE = cli.RESUMABLE | {"eval_batches", "max_new_tokens"}


def build_parser(suppress=False):
    """The argument parser; with `suppress`, flags not given on the command line are left out (used to
    tell which flags override a resumed run's settings). --data is required unless --resume."""
    p, d = cli.training_parser(__doc__, suppress)
    a = p.add_argument
    a("--data", default=d(None), metavar="PATH",
      help="JSON list (or JSON lines) of instruction/input/chosen/rejected entries (required, unless --resume)")
    a("--init-from", default=d("runs/instruct/model"), metavar="DIR|SOURCE",
      help="the model to tune: a model directory, a GPT-2 name, or a Llama-family directory, .gguf file or hub "
           "name (default: examples/finetune_instructions.py's output)")
    a("--reference", default=d(None), metavar="DIR|SOURCE",
      help="the frozen reference model (default: a copy of --init-from; not with --lora, whose reference is "
           "the base weights with the adapters off)")
    a("--tokenizer", default=d(None), help="GPT-2 family: gpt2 or a directory with encoder.json and vocab.bpe "
                                           "(default: the model directory's, else gpt2)")
    a("--beta", type=positive_float, default=d(0.1),
      help="DPO's beta: how far the policy may move from the reference (the book's 0.1; typically 0.1 to 0.5)")
    add_device_flags(p)
    add_training_flags(p, lr=None, epochs=1, eval_every=20, weight_decay=0.01,
                       lr_help=f"default: the book's {BOOK_LR:g} for models of {LARGE_MODEL // 10**6}M parameters "
                               f"or more, {SMALL_MODEL_LR:g} below (measured on examples/pretrain.py's model)",
                       weight_decay_help="default: the book's 0.01")
    a("--max-length", type=int_at_least(2), default=d(None),
      help="cut prompt + response to this many tokens (default: the model's context)")
    a("--eval-batches", type=nonnegative_int, default=d(5),
      help="batches per split in each evaluation, the book's eval_iter (0: all)")
    a("--max-new-tokens", type=nonnegative_int, default=d(256), help="longest answer generated for a test entry")
    a("--on-bad", default=d("skip"), choices=["skip", "error"],
      help="entries with a missing, non-string or empty field: leave them out with a warning, or stop")
    add_lora_flags(p, lora_help=f"the reference is the base with the adapters off (one model in memory); "
                                f"--out/{ADAPTER_FILE} holds them alone, model/ the merged weights")
    add_run_flags(p, out="runs/preference",
                  out_help=f"checkpoint, metrics.jsonl, loss.png, model/, {dpo.RESPONSES_FILE}")
    return p


def reward_hook(objective, train, val, eval_batches):
    """on_eval: the book's evaluate_dpo_loss_loader, the rewards and margins of the evaluation batches
    added to the record and printed."""
    def on_eval(trainer, record):
        line = []
        for name, loader in (("train", train), ("val", val)):
            if loader is None:
                continue
            result = dpo.evaluate_dpo(trainer.model, loader, objective, eval_batches or None)
            for key in ("chosen_reward", "rejected_reward", "reward_margin"):
                record[f"{name}_{key}"] = result[key]
            line.append(f"{name} {result['reward_margin']:.3f}")
        trainer.log(f"step {trainer.step} reward margins (chosen minus rejected reward): {', '.join(line)}")

    return on_eval


def run(argv):
    args, saved = parse_training_args(build_parser, argv, COMMAND, RESUMABLE)
    if args.data is None:
        raise FlagError("the following arguments are required: --data")
    if args.lora and args.reference is not None:
        raise ValueError("--reference and --lora: with --lora the reference is --init-from's own weights with the "
                         "adapters off; leave out --reference, or train without --lora")
    out = start_run(args, resume=saved is not None)

    entries = instruct.load_entries(args.data)
    fingerprint = data_fingerprint([args.data], saved, out)
    good, bad = dpo.check_entries(entries, args.on_bad)
    if bad:
        print(f"warning: skipped {len(bad)} of {len(entries)} entries: {instruct.describe_bad(bad)}",
              file=sys.stderr)
    split = instruct.split_entries(good, seed=args.seed)
    model, tok = dpo.load_model(args.init_from, args.device, args.tokenizer)
    reference = None
    if not args.lora:  # the book's way: a second model, loaded from its source and frozen
        reference = dpo.load_reference(args.reference or args.init_from, args.device)
        dpo.check_vocabularies(model, reference)
    dpo.disable_dropout(model)
    if args.lr is None:
        args.lr = BOOK_LR if model.num_parameters() >= LARGE_MODEL else SMALL_MODEL_LR
    context = model.config.context_length
    max_length = check_max_length(args.max_length, context)

    if args.lora:
        print(apply_lora(model, args.lora, args.lora_alpha, seed=args.seed))  # wraps every Linear, freezes the rest
    loader = lambda entries, train: dpo.preference_loader(  # noqa: E731
        entries, tok, args.batch_size, train=train, max_length=max_length, seed=args.seed)
    train = loader(split.train, True)
    val_set = dpo.PreferenceDataset(split.val, tok, max_length)
    val = loader(val_set, False) if len(val_set) else None  # none left when every prompt fills --max-length
    dropped = len(train.dataset.dropped) + len(val_set.dropped)
    longer = sum(len(x.prompt) + max(len(x.chosen), len(x.rejected)) > max_length for x in train.dataset.examples)
    print(f"{len(split.train)} train, {len(split.val)} val, {len(split.test)} test entries; "
          f"model {model.num_parameters():,} parameters, context {context}; {len(train)} batches per epoch, "
          f"lr {args.lr:g}, beta {args.beta:g}; reference: "
          f"{'the adapters off' if args.lora else 'a frozen copy of ' + str(args.reference or args.init_from)}; "
          f"{longer} train examples longer than --max-length {max_length} are cut"
          + (f", {dropped} whose prompt fills it are left out" if dropped else ""))

    objective = dpo.DPOObjective(reference, args.beta)
    config = train_config(args, eval_batches=args.eval_batches or None, log_every=5)
    metadata = {"command": COMMAND, "args": run_settings(args), "data_fingerprint": fingerprint}
    trainer = Trainer(model, train, val, config, loss_fn=objective, tokenizer=tok, metadata=metadata,
                      on_eval=reward_hook(objective, train, val, args.eval_batches))
    records = fit(trainer, out, __file__, resume=saved is not None)
    if records is None:  # Ctrl-C, reported
        return 130

    def summary(r):
        val_text = (f", val loss {r['val_loss']:.3f}, val reward margin {r['val_reward_margin']:.3f}"
                    if r["val_loss"] is not None else "")
        return f"train loss {r['train_loss']:.3f}, train reward margin {r['train_reward_margin']:.3f}{val_text}"

    print(done_line(trainer, records, summary))

    start = time.perf_counter()
    if args.lora:
        with adapters_disabled(model):
            answered = dpo.generate_responses(model, tok, split.test, args.max_new_tokens, key="reference_response")
        print(f"LoRA adapter written to {save_adapter(model, out / ADAPTER_FILE)}")
        merge_lora(model)  # plain Linear layers again: the responses below come from what model/ holds
    else:
        answered = dpo.generate_responses(reference, tok, split.test, args.max_new_tokens, key="reference_response")
    responses = dpo.generate_responses(model, tok, answered, args.max_new_tokens, progress=False)
    path = instruct.write_json(out / dpo.RESPONSES_FILE, responses)
    print(f"{len(responses)} test responses of the reference and the policy in {time.perf_counter() - start:.0f} s, "
          f"written to {path}")
    for entry in responses[:3]:
        print(instruct.response_report(instruct.format_input(entry), entry, [
            ("Reference model response", entry["reference_response"]), ("Policy model response", entry["model_response"])]))
    print(f"outputs in {out}/: model/, {dpo.RESPONSES_FILE}, metrics.jsonl, checkpoint.safetensors"
          f"{', ' + ADAPTER_FILE if args.lora else ''}")
    return 0


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
