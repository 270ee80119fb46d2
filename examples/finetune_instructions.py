"""Fine-tune a pretrained GPT or Llama-family model to follow instructions (book chapter 7), then answer the test split.

    python examples/pretrain.py                                             # a model in runs/pretrain/model
    python examples/finetune_instructions.py --data instruction-data.json  # fine-tune it, out in runs/instruct
    python examples/chat.py --model runs/instruct/model                     # talk to it
    python examples/finetune_instructions.py --data instruction-data.json --lora 16 \
        --init-from SmolLM2-135M-Instruct.Q4_1.gguf                         # a Llama-family model, in its chat template

--data is a JSON list of {"instruction", "input", "output"} entries (the book's instruction-data.json,
Alpaca's layout) or one such object per line. It is shuffled with --seed and split 85 % train, 10 % test,
5 % validation. --init-from takes a model directory (config.json + model.safetensors, with the tokenizer's
encoder.json and vocab.bpe beside them, as examples/pretrain.py writes into runs/pretrain/model) or a
published GPT-2 (gpt2, gpt2-medium, ...; downloaded once), or any source `tinygrad_llm.load_pretrained`
takes: a Llama-family .gguf file, Hugging Face directory or hub name. A model whose tokenizer has a chat
template is trained and asked in that template (the instruction and input as the user's turn, the output
as the assistant's), the others in the book's Alpaca prompt. After training, the test entries with the
model's answers go to --out/instruction-data-with-response.json; with --judge-url a local Ollama server
scores them from 0 to 100. With --lora R only rank-R adapters are trained: --out/adapter.safetensors
holds them alone, and --out/model the merged weights, a plain model that chat.py loads (for the Llama
family in Hugging Face's layout with the tokenizer's files, which transformers loads too). --resume continues
the run in --out with the settings it was started with (--data and the rest need not be given again).

Bad input (a missing or malformed data file, no usable entry, a bad entry with --on-bad error, a flag out
of range, an output folder that cannot be written, a model directory without a model, a judge that cannot
be reached) prints one line, `error: ...`, and exits with status 2. Entries with a missing or non-string
field are skipped with a warning naming them (--on-bad skip, the default).
"""

import sys
import time

from tinygrad_llm.finetune import instruct, judge
from tinygrad_llm.finetune.lora import ADAPTER_FILE, apply_lora, merge_lora, save_adapter
from tinygrad_llm.models.gpt import GPT
from tinygrad_llm.models.gpt2_weights import PRETRAINED
from tinygrad_llm.models.pretrained import is_gpt2_source, save_tokenizer_files
from tinygrad_llm.support import cli
from tinygrad_llm.support.cli import (FlagError, add_device_flags, add_lora_flags, add_run_flags,
                                      add_training_flags, check_max_length, data_fingerprint, done_line, fit,
                                      int_at_least, nonnegative_int, parse_training_args, run_main, run_settings,
                                      start_run, train_config)
from tinygrad_llm.training.trainer import Trainer

COMMAND = "examples/finetune_instructions.py"  # recorded in the checkpoint: another command cannot resume its run
BOOK_LR = 5e-5  # the book's, for GPT-2 medium's published weights
# examples/pretrain.py's cpu-small model fine-tuned for 2 epochs: val loss 1.93 at 1e-3, 1.76 at 3e-3, 1.85 at 6e-3
SMALL_MODEL_LR = 3e-3
RESUMABLE = cli.RESUMABLE | {"eval_batches", "max_new_tokens", "judge_url", "judge_model"}


def build_parser(suppress=False):
    """The argument parser; with `suppress`, flags not given on the command line are left out (used to
    tell which flags override a resumed run's settings). --data is required unless --resume (checked
    by `run`)."""
    p, d = cli.training_parser(__doc__, suppress)
    a = p.add_argument
    a("--data", default=d(None), metavar="PATH",
      help="JSON list (or JSON lines) of instruction/input/output entries (required, unless --resume)")
    a("--init-from", default=d("runs/pretrain/model"), metavar="SOURCE",
      help="a model directory, a published GPT-2 name, a Llama-family .gguf file or hub name "
           "(default: examples/pretrain.py's output)")
    a("--tokenizer", default=d(None), help="gpt2 or a directory with encoder.json and vocab.bpe "
                                           "(default: the model directory's, else gpt2)")
    add_device_flags(p)
    add_training_flags(p, lr=None, epochs=2, eval_every=50,
                       lr_help=f"default: the book's 5e-5 for published weights (GPT-2, the Llama family), "
                               f"{SMALL_MODEL_LR:g} otherwise, the best of those tried on examples/pretrain.py's model")
    a("--max-length", type=int_at_least(2), default=d(None),
      help="cut examples to this many tokens, at least 2: an input and its next token (default: the model's context)")
    a("--mask-prompt", action="store_true", default=d(False),
      help="train on the responses only (the prompt's targets are ignored)")
    a("--eval-batches", type=nonnegative_int, default=d(5), help="batches per split in each evaluation (0: all)")
    a("--max-new-tokens", type=nonnegative_int, default=d(256), help="longest answer generated for a test entry")
    a("--on-bad", default=d("skip"), choices=["skip", "error"],
      help="entries with a missing or non-string field: leave them out with a warning, or stop")
    add_lora_flags(p, lora_help=f"--out/{ADAPTER_FILE} holds them alone, model/ the merged weights")
    a("--judge-url", default=d(None), metavar="URL",
      help=f"score the answers with Ollama at URL (e.g. {judge.DEFAULT_URL})")
    a("--judge-model", default=d(judge.DEFAULT_MODEL))
    add_run_flags(p, out="runs/instruct", out_help="checkpoint, metrics.jsonl, loss.png, model/, the test responses")
    return p


def run(argv):
    args, saved = parse_training_args(build_parser, argv, COMMAND, RESUMABLE)
    if args.data is None:
        raise FlagError("the following arguments are required: --data")
    if args.lr is None:
        published = args.init_from in PRETRAINED or not is_gpt2_source(args.init_from)
        args.lr = BOOK_LR if published else SMALL_MODEL_LR
    out = start_run(args, resume=saved is not None)
    if args.judge_url:
        judge.check_judge(args.judge_url, args.judge_model)  # before training, not after

    entries = instruct.load_entries(args.data)
    fingerprint = data_fingerprint([args.data], saved, out)
    good, bad = instruct.check_entries(entries, args.on_bad)
    if bad:
        print(f"warning: skipped {len(bad)} of {len(entries)} entries: {instruct.describe_bad(bad)}",
              file=sys.stderr)
    split = instruct.split_entries(good, seed=args.seed)
    model, tok = instruct.load_model(args.init_from, args.device, args.tokenizer)
    gpt = isinstance(model, GPT)
    context = model.config.context_length
    max_length = check_max_length(args.max_length, context)

    if args.lora:
        print(apply_lora(model, args.lora, args.lora_alpha, seed=args.seed))  # wraps every Linear, freezes the rest
    loader = lambda entries, train: instruct.instruction_loader(  # noqa: E731
        entries, tok, args.batch_size, train=train, max_length=max_length, mask_prompt=args.mask_prompt,
        seed=args.seed)
    train = loader(split.train, True)
    val = loader(split.val, False) if split.val else None
    longer = sum(len(x.ids) > max_length for x in train.dataset.examples)
    print(f"{len(split.train)} train, {len(split.val)} val, {len(split.test)} test entries; "
          f"model {model.num_parameters():,} parameters, context {context}; {len(train)} batches per epoch, "
          f"lr {args.lr:g}; {longer} train examples longer than --max-length {max_length} are cut; prompts in "
          + ("the model's chat template" if instruct.uses_chat_template(tok) else "the Alpaca format"))

    config = train_config(args, eval_batches=args.eval_batches or None, log_every=5)
    metadata = {"command": COMMAND, "args": run_settings(args), "data_fingerprint": fingerprint}
    # a GPT-2 BPE is saved beside the checkpoint; a Llama-family tokenizer is read from --init-from again
    trainer = Trainer(model, train, val, config, tokenizer=tok if gpt else None, metadata=metadata)
    records = fit(trainer, out, __file__, resume=saved is not None)
    if records is None:  # Ctrl-C, reported
        return 130
    summary = lambda r: f"train loss {r['train_loss']:.3f}" + (  # noqa: E731
        f", val loss {r['val_loss']:.3f}" if r["val_loss"] is not None else "")
    print(done_line(trainer, records, summary) + (" (response tokens only: --mask-prompt)" if args.mask_prompt else ""))

    if not gpt:  # the trainer wrote model/ in Hugging Face's layout; a Llama's tokenizer files go beside it
        print(f"model (LoRA merged) written to {save_tokenizer_files(tok, out / 'model', args.init_from)}")
    if args.lora:  # model/ already holds the merged weights (save_pretrained merges them)
        print(f"LoRA adapter written to {save_adapter(model, out / ADAPTER_FILE)}")
        merge_lora(model)  # plain Linear layers again: the responses below come from what model/ holds
    start = time.perf_counter()
    responses = instruct.generate_responses(model, tok, split.test, args.max_new_tokens)
    path = instruct.write_json(out / instruct.RESPONSES_FILE, responses)
    print(f"{len(responses)} test responses in {time.perf_counter() - start:.0f} s, written to {path}")
    for entry in responses[:3]:
        asked = (instruct.chat_messages(entry)[0]["content"] if instruct.uses_chat_template(tok)
                 else instruct.format_input(entry))
        print(instruct.response_report(asked, entry, [("Model response", entry["model_response"])]))
    if args.judge_url and responses:
        scores = judge.score_responses(responses, args.judge_model, args.judge_url)
        for entry, score in zip(responses, scores):
            entry["judge_score"] = score
        instruct.write_json(path, responses)
        scored = [s for s in scores if s is not None]
        mean = f"{sum(scored) / len(scored):.2f}" if scored else "n/a"
        print(f"judge {args.judge_model}: average score {mean} over {len(scored)} of {len(scores)} responses")
    print(f"outputs in {out}/: model/ (for examples/chat.py), {instruct.RESPONSES_FILE}, metrics.jsonl, "
          f"checkpoint.safetensors{', ' + ADAPTER_FILE if args.lora else ''}")
    return 0


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
