"""Talk to an instruction-tuned model: each line you type is wrapped in the Alpaca prompt and the answer is
printed token by token as it is generated.

    python examples/chat.py --model runs/instruct/model
    echo "Name three primary colors." | python examples/chat.py --model runs/instruct/model

Every turn is answered on its own (the template has no room for a conversation). An empty line or Ctrl-D
ends the chat. A model directory that is missing or holds no model prints one line, `error: ...`, and
exits with status 2.
"""

import sys

from tinygrad_llm import instruct
from tinygrad_llm.support.cli import DEVICES, Parser, nonnegative_float, nonnegative_int, positive_int, run_main
from tinygrad_llm.models.generate import decode_stream, stream


def build_parser():
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/instruct/model", help="a fine-tuned model directory")
    p.add_argument("--tokenizer", default=None, help="gpt2 or a directory with encoder.json and vocab.bpe "
                                                     "(default: the model directory's, else gpt2)")
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


def run(argv=None):
    args = parse_args(argv)
    model, tok = instruct.load_model(args.model, args.device, args.tokenizer)
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type an instruction; an empty line or Ctrl-D ends the chat.")
    for line in lines(interactive):
        ids = instruct.encode_text(tok, instruct.prompt_text({"instruction": line, "input": ""}))
        budget = instruct.response_budget(model, ids, args.max_new_tokens)
        tokens = stream(model, ids, budget, temperature=args.temperature, top_k=args.top_k,
                        eos_id=instruct.end_of_text(tok), seed=args.seed)
        for piece in decode_stream(tok, tokens):
            print(piece, end="", flush=True)
        print("\n")
    return 0


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
