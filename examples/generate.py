"""Generate text from GPT-2's weights, a model of ours or a Llama-family model, printing tokens as they come.

    .venv/bin/python examples/generate.py --model gpt2 --prompt "Every effort moves you" --max-new-tokens 40
    .venv/bin/python examples/generate.py --model out/my-run --temperature 0.8 --top-k 50 --top-p 0.95 --seed 1
    .venv/bin/python examples/generate.py --model SmolLM2-135M-Instruct.Q4_1.gguf --chat \
        --prompt "What is the capital of France?"

--model takes every source `tinygrad_llm.load_pretrained` takes: a published GPT-2 name (gpt2,
gpt2-medium, gpt2-large, gpt2-xl: downloaded once into the cache), a directory in Hugging Face's layout
(config.json + model.safetensors: GPT-2's, as written by `model.save_pretrained(dir)` and by the training
scripts, or a Llama-family one with its tokenizer.json), a Llama-family .gguf file (SmolLM2, Llama 3,
Qwen3), or a hub name (owner/name, downloaded once through huggingface_hub's cache). A GPT-2 directory that
also holds tokenizer files (encoder.json + vocab.bpe) is read with that tokenizer; otherwise GPT-2's
(tiktoken, which downloads its files on first use; offline pass --tokenizer DIR with GPT-2's encoder.json
and vocab.bpe). A Llama-family model brings its own tokenizer; --chat wraps the prompt in its chat
template as one user turn and prints the answer alone, up to the model's end-of-turn token.

Bad input (an unknown source, a hub name while offline, a corrupt file) prints one line, `error: ...`,
and exits with status 2.
"""

import sys
import time
from pathlib import Path

from autograd import backend
from tinygrad_llm.support.cli import DEVICES, Parser, nonnegative_float, nonnegative_int, positive_int, probability, run_main
from tinygrad_llm.models.generate import decode_stream, stream
from tinygrad_llm.models.gpt import GPT
from tinygrad_llm.models.pretrained import is_gpt2_source, load_pretrained
from tinygrad_llm.text.tokenizer import ENDOFTEXT, get_tokenizer


def build_parser():
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt2", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, a model directory, "
                                                   "a .gguf file or a hub name (owner/name)")
    p.add_argument("--prompt", default="Every effort moves you")
    p.add_argument("--chat", action="store_true",
                   help="ask the prompt as a user turn in the model's chat template; print the answer")
    p.add_argument("--max-new-tokens", type=nonnegative_int, default=50)
    p.add_argument("--temperature", type=nonnegative_float, default=0.0, help="0 picks the most likely token (greedy)")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=probability, default=None, help="sample among the most likely tokens holding mass p")
    p.add_argument("--seed", type=nonnegative_int, default=None)
    p.add_argument("--device", default="cpu", choices=DEVICES, help="where the model runs: cpu, or cuda (CuPy and a GPU)")
    p.add_argument("--no-cache", action="store_true", help="recompute every position each step (no KV cache)")
    p.add_argument("--tokenizer", default=None, help="GPT-2 models: gpt2 or a directory with encoder.json and "
                                                     "vocab.bpe (default: the model directory's, else gpt2)")
    p.add_argument("--cache-dir", default=None, help="where downloaded weights are kept")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def load(args):
    """(model, tokenizer, prompt ids, the ids generation stops at, whether the prompt is echoed)."""
    if not is_gpt2_source(args.model):
        if args.tokenizer is not None:
            raise ValueError(f"--tokenizer is for GPT-2 models; {args.model} brings its own tokenizer")
        model, tok = load_pretrained(args.model, device=args.device, cache_dir=args.cache_dir)
        if tok is None:
            raise ValueError(f"{args.model} holds no tokenizer to turn the prompt into ids")
        if args.chat:
            if tok.chat_template is None:
                raise ValueError(f"{args.model} has no chat template: leave out --chat to continue the prompt")
            ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
        else:
            ids = tok.encode(args.prompt, add_special_tokens=True) or [i for i in (tok.bos_token_id,) if i is not None]
        return model, tok, ids, set(tok.stop_ids), not args.chat
    if args.chat:
        raise ValueError(f"{args.model} is a GPT-2, which has no chat template; use examples/chat.py for the "
                         "Alpaca prompt of a model fine-tuned by examples/finetune_instructions.py")
    model = GPT.from_pretrained(args.model, cache_dir=args.cache_dir, device=args.device)
    tok_name = args.tokenizer
    if tok_name is None:
        here = Path(args.model)
        tok_name = str(here) if (here / "encoder.json").is_file() and (here / "vocab.bpe").is_file() else "gpt2"
    tokenizer = get_tokenizer(tok_name)
    if tokenizer.n_vocab > model.config.vocab_size:
        raise ValueError(f"tokenizer {tok_name} has {tokenizer.n_vocab} tokens, the model only "
                         f"{model.config.vocab_size}; pass the model's own tokenizer with --tokenizer")
    eos = tokenizer.eot_token
    ids = tokenizer.encode(args.prompt, allowed_special={ENDOFTEXT}) or ([eos] if eos is not None else [])
    return model, tokenizer, ids, eos, True


def run(argv=None):
    args = parse_args(argv)
    backend.keep_freed_memory()  # reuse freed memory: fresh pages for each step's temporaries are slow
    model, tokenizer, ids, stop, echo = load(args)
    if not ids:
        raise ValueError("the prompt is empty and the tokenizer has no token to start from")
    if echo:
        print(args.prompt, end="", flush=True)
    new = []

    def tokens():
        for t in stream(model, ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, eos_id=stop, seed=args.seed, use_cache=not args.no_cache):
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
