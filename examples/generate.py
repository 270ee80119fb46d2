"""Generate text from GPT-2's weights or a model of ours, printing tokens as they come.

    .venv/bin/python examples/generate.py --model gpt2 --prompt "Every effort moves you" --max-new-tokens 40
    .venv/bin/python examples/generate.py --model out/my-run --temperature 0.8 --top-k 50 --top-p 0.95 --seed 1

--model takes a published name (gpt2, gpt2-medium, gpt2-large, gpt2-xl: downloaded once into the cache)
or a directory in Hugging Face's GPT-2 layout (config.json + model.safetensors), as written by
`model.save_pretrained(dir)` and by the training script. A directory that also holds tokenizer files
(encoder.json + vocab.bpe) is read with that tokenizer; otherwise GPT-2's (tiktoken, which downloads its
files on first use; offline pass --tokenizer DIR with GPT-2's encoder.json and vocab.bpe).
"""

import sys
import time
from pathlib import Path

from autograd import backend
from tinygrad_llm.support.cli import DEVICES, Parser, nonnegative_float, nonnegative_int, positive_int, probability, run_main
from tinygrad_llm.models.generate import decode_stream, stream
from tinygrad_llm.models.gpt import GPT
from tinygrad_llm.text.tokenizer import ENDOFTEXT, get_tokenizer


def build_parser():
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt2", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a checkpoint directory")
    p.add_argument("--prompt", default="Every effort moves you")
    p.add_argument("--max-new-tokens", type=nonnegative_int, default=50)
    p.add_argument("--temperature", type=nonnegative_float, default=0.0, help="0 picks the most likely token (greedy)")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=probability, default=None, help="sample among the most likely tokens holding mass p")
    p.add_argument("--seed", type=nonnegative_int, default=None)
    p.add_argument("--device", default="cpu", choices=DEVICES, help="where the model runs: cpu, or cuda (CuPy and a GPU)")
    p.add_argument("--no-cache", action="store_true", help="recompute every position each step (no KV cache)")
    p.add_argument("--tokenizer", default=None, help="gpt2 or a directory with encoder.json and vocab.bpe "
                                                     "(default: the model directory's, else gpt2)")
    p.add_argument("--cache-dir", default=None, help="where downloaded weights are kept")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def run(argv=None):
    args = parse_args(argv)
    backend.keep_freed_memory()  # reuse freed memory: fresh pages for each step's temporaries are slow
    model = GPT.from_pretrained(args.model, cache_dir=args.cache_dir, device=args.device)
    tok_name = args.tokenizer
    if tok_name is None:
        here = Path(args.model)
        has_files = (here / "encoder.json").is_file() and (here / "vocab.bpe").is_file()
        tok_name = str(here) if has_files else "gpt2"
    tokenizer = get_tokenizer(tok_name)
    if tokenizer.n_vocab > model.config.vocab_size:
        raise ValueError(f"tokenizer {tok_name} has {tokenizer.n_vocab} tokens, the model only "
                         f"{model.config.vocab_size}; pass the model's own tokenizer with --tokenizer")
    eos = tokenizer.eot_token
    ids = tokenizer.encode(args.prompt, allowed_special={ENDOFTEXT}) or ([eos] if eos is not None else [])
    if not ids:
        raise ValueError("the prompt is empty and the tokenizer has no <|endoftext|> to start from")
    print(args.prompt, end="", flush=True)
    new = []

    def tokens():
        for t in stream(model, ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, eos_id=eos, seed=args.seed, use_cache=not args.no_cache):
            new.append(t)
            yield t

    start = time.perf_counter()
    for piece in decode_stream(tokenizer, tokens()):
        print(piece, end="", flush=True)
    seconds = time.perf_counter() - start
    print()
    print(f"[{len(new)} tokens in {seconds:.2f} s, {len(new) / seconds:.1f} tokens/s]", file=sys.stderr)
    return 0


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
