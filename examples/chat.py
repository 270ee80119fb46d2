"""Talk to an instruction-tuned model: a multi-turn chat in the model's own chat template (SmolLM2, Llama 3,
Qwen3), or the Alpaca prompt for a GPT of ours; the answer is printed token by token as it is generated.

    python examples/chat.py --model SmolLM2-135M-Instruct.Q4_1.gguf
    python examples/chat.py --model runs/instruct/model
    echo "What is the capital of France?" | python examples/chat.py --model SmolLM2-135M-Instruct.Q4_1.gguf

--model takes every source `tinygrad_llm.load_pretrained` takes: a .gguf file, a model directory (GPT-2's
layout, as examples/finetune_instructions.py writes it, or a Llama-family one with its tokenizer.json), a
GPT-2 name or a hub name (owner/name). With a chat template the whole conversation so far is rendered
each turn (`apply_chat_template(messages, add_generation_prompt=True)`, exactly as transformers renders
it) and the answer stops at the model's end-of-turn token (`tokenizer.stop_ids`); --system puts a system
message first. A GPT without a template answers each line on its own in the Alpaca prompt it was
fine-tuned with. The KV cache is kept from turn to turn (a `PrefixCache`, which records the ids it holds):
a turn feeds the model only the ids after the longest common prefix of its prompt and those, normally the
last answer's last token (never fed: generation stopped) and the new message; where a template renders an
earlier turn anew otherwise, the ids from there on are computed again. An empty line or Ctrl-D ends the
chat. A source that is missing, holds no model, or is a hub name while offline prints one line,
`error: ...`, and exits with status 2.
"""

import sys

from tinygrad_llm.finetune import instruct
from tinygrad_llm.support.cli import DEVICES, Parser, nonnegative_float, nonnegative_int, positive_int, run_main
from tinygrad_llm.models.generate import PrefixCache, decode_stream, stream


def build_parser():
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/instruct/model",
                   help="a .gguf file, a model directory, a GPT-2 name or a hub name (owner/name)")
    p.add_argument("--tokenizer", default=None, help="GPT-2 models: gpt2 or a directory with encoder.json and "
                                                     "vocab.bpe (default: the model directory's, else gpt2)")
    p.add_argument("--system", default=None, help="a system message before the conversation (chat templates only)")
    p.add_argument("--max-new-tokens", type=nonnegative_int, default=256)
    p.add_argument("--temperature", type=nonnegative_float, default=0.0, help="0 picks the most likely token (greedy)")
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--seed", type=nonnegative_int, default=None)
    p.add_argument("--device", default="cpu", choices=DEVICES, help="where the model runs: cpu, or cuda (CuPy and a GPU)")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def lines(interactive):
    """Typed lines until an empty one or end of input."""
    while True:
        try:
            line = input("> ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not line.strip():
            return
        yield line.strip()


def prompt_ids(tok, messages, line):
    """The ids to answer `line` from: with a chat template, the conversation `messages` (the new user turn
    appended to it) rendered with the assistant's header after it; else `line` alone in the Alpaca prompt."""
    if not instruct.uses_chat_template(tok):
        return instruct.encode_text(tok, instruct.prompt_text({"instruction": line, "input": ""}))
    messages.append({"role": "user", "content": line})
    return tok.apply_chat_template(messages, add_generation_prompt=True)


def run(argv=None):
    args = parse_args(argv)
    model, tok = instruct.load_model(args.model, args.device, args.tokenizer)
    chat = instruct.uses_chat_template(tok)
    if args.system is not None and not chat:
        raise ValueError(f"--system needs a chat template; {args.model}'s tokenizer has none (Alpaca prompts)")
    messages = [{"role": "system", "content": args.system}] if args.system is not None else []
    cache = PrefixCache(model)  # one per chat, on the model's device: each turn feeds only the ids it has not seen
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Type {'a message' if chat else 'an instruction'}; an empty line or Ctrl-D ends the chat.")
    for line in lines(interactive):
        ids = prompt_ids(tok, messages, line)
        budget = instruct.response_budget(model, ids, args.max_new_tokens)
        if budget == 0:
            print(f"[the conversation fills the model's context of {model.config.context_length} tokens; "
                  "start a new chat]\n", file=sys.stderr)
            return 0
        answer = []

        def tokens():
            for t in stream(model, ids, budget, temperature=args.temperature, top_k=args.top_k,
                            eos_id=instruct.stop_ids(tok), seed=args.seed, cache=cache):
                answer.append(t)
                yield t

        for piece in decode_stream(tok, tokens()):
            print(piece, end="", flush=True)
        print("\n")
        if chat:  # the next turn is rendered with this answer in the conversation
            messages.append({"role": "assistant", "content": instruct.decode_response(tok, answer)})
    return 0


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
