"""Book chapter 2: working with text data, from the-verdict.txt to token ids, sliding windows and embeddings.

Prints what the book's chapter 2 prints, at the same points, each next to the book's value. Read
tinygrad_llm/text/bpe.py (get_stats, merge), tinygrad_llm/text/tokenizer.py (byte-level BPE),
tinygrad_llm/text/gpt2_files.py (GPT-2's files), tinygrad_llm/text/data.py (GPTDataset, listing 2.5;
DataLoader; create_dataloader, listing 2.6) and autograd/nn.py (Embedding) beside it; tinygrad_llm/viz/tokens.py
shows the text of 2.5 split into its tokens (colours in a terminal, `|` between tokens elsewhere; `--ids` adds
each token's id, `--html FILE` writes the view as a web page, `--plot` as a picture, which needs matplotlib).

    python examples/book/ch02.py [--data-dir ../shared/data] [--ids] [--html tokens.html] [--plot [tokens.png]]
"""

import re
import sys
from pathlib import Path

import numpy as np

from _book import heading, parse_args, plot_flag, show, write_picture
from autograd import Tensor, nn
from tinygrad_llm.text.data import create_dataloader
from tinygrad_llm.text.tokenizer import get_tokenizer
from tinygrad_llm.viz import color_tokens, save_figure, token_spans, tokens_figure, tokens_html

BOOK_SPLIT = r'([,.:;?_!"()\']|--|\s)'  # the book's word-level pre-tokenizer (its section 2.2)
BOOK_INPUTS = [[40, 367, 2885, 1464], [1807, 3619, 402, 271], [10899, 2138, 257, 7026], [15632, 438, 2016, 257],
               [922, 5891, 1576, 438], [568, 340, 373, 645], [1049, 5975, 284, 502], [284, 3285, 326, 11]]
BOOK_TARGETS = [[367, 2885, 1464, 1807], [3619, 402, 271, 10899], [2138, 257, 7026, 15632], [438, 2016, 257, 922],
                [5891, 1576, 438, 568], [340, 373, 645, 1049], [5975, 284, 502, 284], [3285, 326, 11, 287]]


def add_arguments(p):
    p.add_argument("--ids", action="store_true", help="show each token's id beside it")
    p.add_argument("--html", type=Path, metavar="FILE", help="write the tokens of 2.5 as a web page")
    plot_flag(p, "tokens.png", "the tokens of 2.5")


def show_tokens(args, tokenizer, text):
    """The text of 2.5 cut into its tokens: what a reader sees of BPE."""
    spans = token_spans(tokenizer, text, allowed_special={"<|endoftext|>"})
    show("tokens joined are the text", "".join(s.text for s in spans) == text, True)
    if sys.stdout.isatty():
        print(color_tokens(spans, ids=args.ids))
    else:  # a file or a pipe: no colour codes, a bar between tokens
        print("|".join(s.text + (f"[{','.join(map(str, s.ids))}]" if args.ids else "") for s in spans))
    if args.html:
        args.html.write_text(tokens_html(spans, ids=args.ids, title="GPT-2's tokens"), encoding="utf-8")
        print(f"wrote {args.html}")
    if args.plot:
        write_picture(lambda: save_figure(tokens_figure(spans, ids=args.ids, title=f"{len(spans)} GPT-2 tokens"),
                                          args.plot), args.plot)


def main(argv=None):
    args = parse_args(__doc__, needs=("the-verdict.txt", "gpt2/encoder.json", "gpt2/vocab.bpe"), argv=argv,
                      add_arguments=add_arguments)
    raw_text = (args.data_dir / "the-verdict.txt").read_text(encoding="utf-8")

    heading("2.2 Tokenizing text")
    show("Total number of character", len(raw_text), 20479)
    print(raw_text[:99])
    # Sections 2.2-2.4 build a word-level tokenizer to show the idea; the library goes straight to BPE
    # (2.5), so the word-level one is the book's own few lines, here only for its counts and ids.
    preprocessed = [t.strip() for t in re.split(BOOK_SPLIT, raw_text) if t.strip()]
    show("tokens after splitting on words and punctuation", len(preprocessed), 4690)
    words = sorted(set(preprocessed))
    show("vocabulary size", len(words), 1130)
    vocab = {token: i for i, token in enumerate(words + ["<|endoftext|>", "<|unk|>"])}
    show("with <|endoftext|> and <|unk|>", len(vocab), 1132)
    text = " <|endoftext|> ".join(("Hello, do you like tea?", "In the sunlit terraces of the palace."))
    split = [t.strip() for t in re.split(BOOK_SPLIT, text) if t.strip()]
    show("SimpleTokenizerV2 ids", [vocab.get(t, vocab["<|unk|>"]) for t in split],
         [1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7])

    heading("2.5 Byte pair encoding (GPT-2's tokenizer, read from gpt2/encoder.json and vocab.bpe)")
    tokenizer = get_tokenizer(str(args.data_dir / "gpt2"))
    # the book's string joins "terraces" and "of" without a space (two literals side by side)
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces" "of someunknownPlace."
    integers = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    show("ids", integers, [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114,
                           1659, 617, 34680, 27271, 13])
    show("decoded", tokenizer.decode(integers), "Hello, do you like tea? <|endoftext|> In the sunlit terracesof "
                                                "someunknownPlace.")
    show_tokens(args, tokenizer, text)

    heading("2.6 Data sampling with a sliding window")
    enc_text = tokenizer.encode(raw_text)
    show("tokens in the-verdict.txt", len(enc_text), 5145)
    enc_sample = enc_text[50:]
    context_size = 4
    show("x", enc_sample[:context_size], [290, 4920, 2241, 287])
    show("y", enc_sample[1:context_size + 1], [4920, 2241, 287, 257])
    for i in range(1, context_size + 1):
        print(enc_sample[:i], "---->", enc_sample[i], "  ", tokenizer.decode(enc_sample[:i]), "---->",
              tokenizer.decode([enc_sample[i]]))
    ids = np.asarray(enc_text, dtype=np.int64)  # create_dataloader takes the text or, as here, its ids
    batches = iter(create_dataloader(ids, tokenizer, batch_size=1, max_length=4, stride=1, shuffle=False))
    first = [Tensor(a) for a in next(batches)]
    print("first_batch:", first)  # (inputs, targets): int64 tensors, which name their dtype here
    show("first batch", [t.tolist() for t in first], [[[40, 367, 2885, 1464]], [[367, 2885, 1464, 1807]]])
    show("second batch", [a.tolist() for a in next(batches)], [[[367, 2885, 1464, 1807]], [[2885, 1464, 1807, 3619]]])
    inputs, targets = next(iter(create_dataloader(ids, tokenizer, batch_size=8, max_length=4, stride=4,
                                                  shuffle=False)))
    print("Inputs:\n", Tensor(inputs))
    show("Inputs", inputs.tolist(), BOOK_INPUTS)
    show("Targets", targets.tolist(), BOOK_TARGETS)

    heading("2.7 Token embeddings")
    embedding_layer = nn.Embedding(6, 3, rng=np.random.default_rng(123))
    print("embedding_layer.weight:", embedding_layer.weight)
    print("(the book's values come from PyTorch's generator after torch.manual_seed(123); ours from NumPy's)")
    print("embedding_layer(ids [3]):", embedding_layer(np.array([3])), " (row 3 of the weight)")
    print("embedding_layer(ids [2, 3, 5, 1]):", embedding_layer(np.array([2, 3, 5, 1])))

    heading("2.8 Encoding word positions")
    output_dim, max_length = 256, 4
    token_embedding_layer = nn.Embedding(50257, output_dim, rng=np.random.default_rng(123))
    token_embeddings = token_embedding_layer(inputs)
    show("Inputs shape", inputs.shape, (8, 4), note="torch.Size([8, 4]) in the book")
    show("token embeddings", token_embeddings.shape, (8, 4, 256))
    pos_embedding_layer = nn.Embedding(max_length, output_dim, rng=np.random.default_rng(123))
    pos_embeddings = pos_embedding_layer(np.arange(max_length))
    show("position embeddings", pos_embeddings.shape, (4, 256))
    show("input embeddings", (token_embeddings + pos_embeddings).shape, (8, 4, 256))


if __name__ == "__main__":
    main()
