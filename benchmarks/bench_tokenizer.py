"""Tokenizer speed: train a byte-level BPE vocabulary and encode a corpus, ours beside HF
`tokenizers` and tiktoken when they are installed, all measured in this run.

    python benchmarks/bench_tokenizer.py [corpus.txt] [--vocab-size 1024] [--gpt2-dir DIR]

Default corpus: ../shared/data/tinyshakespeare.txt beside the checkout. "cold" encodes with an empty
pre-token cache (a fresh tokenizer), "warm" encodes the same text again. Each figure is the best of
three runs.
"""

import argparse
import time
from pathlib import Path

from tinygrad_llm.text.tokenizer import ENDOFTEXT, GPT2_PATTERN, BPETokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


REPEAT = 3


def timed(fn, *args, setup=None):
    """(result, best seconds of REPEAT runs); `setup` runs untimed before each, e.g. a fresh tokenizer."""
    best = float("inf")
    for _ in range(REPEAT):
        if setup is not None:
            fn = setup()
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return result, best


def bench_ours(text, vocab_size, gpt2_dir, rows, ids_of):
    tok, seconds = timed(BPETokenizer.train, text, vocab_size)
    rows.append((f"ours: train {vocab_size}", seconds, None))

    def fresh():
        return BPETokenizer(tok.vocab, tok.merges, tok.special_tokens).encode

    ids, seconds = timed(None, text, setup=fresh)
    rows.append((f"ours: encode, trained {vocab_size} (cold)", seconds, len(ids)))
    ids, seconds = timed(tok.encode, text)
    rows.append((f"ours: encode, trained {vocab_size} (warm)", seconds, len(ids)))
    ids_of["ours, trained"] = ids
    if gpt2_dir:
        gpt2 = BPETokenizer.load(gpt2_dir)
        ids, seconds = timed(None, text, setup=lambda: BPETokenizer(gpt2.vocab, gpt2.merges).encode)
        rows.append(("ours: encode, GPT-2 (cold)", seconds, len(ids)))
        ids, seconds = timed(gpt2.encode, text)
        rows.append(("ours: encode, GPT-2 (warm)", seconds, len(ids)))
        ids_of["ours, GPT-2"] = ids
    return tok


def bench_hf(path, text, vocab_size, gpt2_dir, rows):
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        print("HF tokenizers not installed (pip install tokenizers): skipped")
        return
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = byte_level
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[ENDOFTEXT], show_progress=False)
    _, seconds = timed(tok.train, [str(path)], trainer)  # on all cores, which ours does not use
    rows.append((f"HF tokenizers: train {vocab_size}", seconds, None))
    encoding, seconds = timed(tok.encode, text)
    rows.append((f"HF tokenizers: encode, trained {vocab_size}", seconds, len(encoding.ids)))
    if gpt2_dir:
        gpt2 = Tokenizer(models.BPE.from_file(str(gpt2_dir / "encoder.json"), str(gpt2_dir / "vocab.bpe")))
        gpt2.pre_tokenizer = byte_level
        encoding, seconds = timed(gpt2.encode, text)
        rows.append(("HF tokenizers: encode, GPT-2", seconds, len(encoding.ids)))
        lines = text.splitlines(keepends=True)
        encodings, seconds = timed(gpt2.encode_batch, lines)
        rows.append(("HF tokenizers: encode_batch(lines), GPT-2", seconds, sum(len(e.ids) for e in encodings)))


def bench_tiktoken(text, trained, gpt2_dir, rows, ids_of):
    try:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    except ImportError:
        print("tiktoken not installed: skipped")
        return
    # Our trained ranks (ids in merge order) in tiktoken's form: the same encoder, in Rust.
    ranks = {token: i for i, token in trained.vocab.items()}
    enc = tiktoken.Encoding(name="trained", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    ids, seconds = timed(enc.encode_ordinary, text)
    rows.append((f"tiktoken: encode, trained {trained.n_vocab} (our ranks)", seconds, len(ids)))
    ids_of["tiktoken, trained"] = ids
    if gpt2_dir:
        ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2_dir / "vocab.bpe"), str(gpt2_dir / "encoder.json"))
        enc = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                special_tokens={ENDOFTEXT: 50256})
        ids, seconds = timed(enc.encode_ordinary, text)
        rows.append(("tiktoken: encode, GPT-2", seconds, len(ids)))
        ids_of["tiktoken, GPT-2"] = ids


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="?", type=Path, default=SHARED / "tinyshakespeare.txt")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--gpt2-dir", type=Path, default=SHARED / "gpt2",
                        help="folder holding GPT-2's encoder.json and vocab.bpe (skipped when absent)")
    args = parser.parse_args()
    text = args.corpus.read_text(encoding="utf-8")
    megabytes = len(text.encode("utf-8")) / 1e6
    gpt2_dir = args.gpt2_dir if (args.gpt2_dir / "vocab.bpe").exists() else None
    print(f"corpus: {args.corpus} ({megabytes:.2f} MB)")

    rows, ids_of = [], {}
    trained = bench_ours(text, args.vocab_size, gpt2_dir, rows, ids_of)
    bench_hf(args.corpus, text, args.vocab_size, gpt2_dir, rows)
    bench_tiktoken(text, trained, gpt2_dir, rows, ids_of)

    print(f"\n| {'what':<45} | {'seconds':>8} | {'MB/s':>6} | {'tokens':>8} |")
    print(f"|{'-' * 47}|{'-' * 9}:|{'-' * 7}:|{'-' * 9}:|")
    for what, seconds, n_tokens in rows:
        rate = f"{megabytes / seconds:6.2f}" if n_tokens is not None else ""
        tokens = f"{n_tokens:8,}" if n_tokens is not None else ""
        print(f"| {what:<45} | {seconds:8.3f} | {rate:>6} | {tokens:>8} |")
    for vocab in ("trained", "GPT-2"):
        if f"tiktoken, {vocab}" in ids_of:
            same = ids_of[f"ours, {vocab}"] == ids_of[f"tiktoken, {vocab}"]
            print(f"ours and tiktoken give the same ids, {vocab} vocabulary: {same}")


if __name__ == "__main__":
    main()
