"""Book chapter 3: coding attention mechanisms, the attention weights of "Your journey starts with one step".

Prints what the book's chapter 3 prints, at the same points, each next to the book's value: simplified
self-attention (3.3), trainable weights (3.4), the causal mask and dropout (3.5), and multi-head
attention with each head's weights (3.6). Read autograd/reference.py (softmax) and
tinygrad_llm/models/gpt.py (`CausalSelfAttention.attend_reference`, the book's MultiHeadAttention of listing 3.5 on one fused
qkv projection; `GPT.attention_weights`) beside it. The numbers of 3.3 are exact; from 3.4 on the weight
matrices are drawn by NumPy's generator, not PyTorch's, so the values differ and the shapes agree.
`--plot` draws the heads of 3.6 as heat maps, the six words on both axes (tinygrad_llm/viz/attention.py,
needs matplotlib); with `--model` (a GPT-2 name, a model directory or a .gguf file) it draws that model's
heads of `--layer` reading `--prompt` instead.

    python examples/book/ch03.py [--plot [attention.png]] [--model gpt2 --prompt "..." --layer 0]
"""

import math

import numpy as np

from _book import heading, parse_args, plot_flag, show, write_picture
import autograd.reference as R
from autograd import Tensor, nn, no_grad
from tinygrad_llm.models.gpt import CausalSelfAttention, GPTConfig
from tinygrad_llm.viz import attention_figure, attention_grid, save_figure

WORDS = ["Your", "journey", "starts", "with", "one", "step"]

np.set_printoptions(precision=4, suppress=True)
# the book's three-dimensional embeddings of the six tokens
INPUTS = np.array([[0.43, 0.15, 0.89],   # Your     (x^1)
                   [0.55, 0.87, 0.66],   # journey  (x^2)
                   [0.57, 0.85, 0.64],   # starts   (x^3)
                   [0.22, 0.58, 0.33],   # with     (x^4)
                   [0.77, 0.25, 0.10],   # one      (x^5)
                   [0.05, 0.80, 0.55]],  # step     (x^6)
                  dtype=np.float32)

BOOK_WEIGHTS = """[[0.2098, 0.2006, 0.1981, 0.1242, 0.1220, 0.1452],
 [0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581],
 [0.1390, 0.2369, 0.2326, 0.1242, 0.1108, 0.1565],
 [0.1435, 0.2074, 0.2046, 0.1462, 0.1263, 0.1720],
 [0.1526, 0.1958, 0.1975, 0.1367, 0.1879, 0.1295],
 [0.1385, 0.2184, 0.2128, 0.1420, 0.0988, 0.1896]]"""


def fmt(array):
    return np.array2string(np.asarray(array), precision=4, floatmode="fixed", separator=", ")


def main(argv=None):
    args = parse_args(__doc__, argv=argv, add_arguments=add_arguments)
    inputs = Tensor(INPUTS)

    heading("3.3.1 A simple self-attention mechanism without trainable weights")
    query = inputs[1]  # "journey"
    attn_scores_2 = inputs @ query  # the dot product of every token with the query: (6, 3) @ (3,) -> (6,)
    show("attention scores of 'journey'", fmt(attn_scores_2.numpy()), "[0.9544, 1.4950, 1.4754, 0.8434, 0.7070, 1.0865]")
    attn_weights_2 = R.softmax(attn_scores_2, axis=0)
    show("attention weights (softmax)", fmt(attn_weights_2.numpy()), "[0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581]")
    show("sum", f"{attn_weights_2.sum().item():.4f}", "1.0000")
    context_vec_2 = attn_weights_2 @ inputs  # the weighted sum of the inputs: (6,) @ (6, 3) -> (3,)
    show("context vector of 'journey'", fmt(context_vec_2.numpy()), "[0.4419, 0.6515, 0.5683]")

    heading("3.3.2 Attention weights for all input tokens")
    attn_scores = inputs @ inputs.T  # (6, 3) @ (3, 6) -> (6, 6)
    attn_weights = R.softmax(attn_scores, axis=-1)
    show("attention weights", fmt(attn_weights.numpy()), BOOK_WEIGHTS)
    show("row sums", fmt(attn_weights.sum(axis=-1).numpy()), "[1.0000, 1.0000, 1.0000, 1.0000, 1.0000, 1.0000]")
    all_context_vecs = attn_weights @ inputs
    show("all context vectors, row 2", fmt(all_context_vecs.numpy()[1]), "[0.4419, 0.6515, 0.5683]")

    heading("3.4 Self-attention with trainable weights")
    rng = np.random.default_rng(123)
    d_in, d_out = 3, 2
    W_query, W_key, W_value = (nn.Linear(d_in, d_out, bias=False, rng=rng) for _ in range(3))
    queries, keys = W_query(inputs), W_key(inputs)  # (6, 3) -> (6, 2) each (W_value(inputs): the values)
    show("keys.shape", keys.shape, (6, 2))
    with no_grad():
        scores = queries @ keys.T  # (6, 2) @ (2, 6) -> (6, 6)
        weights = R.softmax(scores / math.sqrt(d_out), axis=-1)  # scaled by sqrt(d_k)
    show("attention weights (our random W_query, W_key)", fmt(weights.numpy()),
         note="the book's come from torch.manual_seed(123); each row sums to 1 here too")

    heading("3.5 Hiding future words with causal attention")
    mask = np.triu(np.ones((6, 6), dtype=bool), k=1)  # True above the diagonal: the tokens after each one
    masked = scores.masked_fill(mask, -math.inf)
    causal = R.softmax(masked / math.sqrt(d_out), axis=-1)
    show("causal attention weights", fmt(causal.numpy()), note="zero above the diagonal, each row sums to 1")
    dropout = nn.Dropout(0.5, seed=123)
    show("dropout(0.5) on a 6x6 matrix of ones", fmt(dropout(Tensor(np.ones((6, 6), np.float32))).numpy()),
         note="kept entries are scaled by 1/(1-0.5) = 2, as in the book; which ones are kept is random")

    heading("3.6 Multi-head attention")
    batch = Tensor(np.stack([INPUTS, INPUTS]))  # (2, 6, 3): the book's batch of two copies
    cfg = GPTConfig(vocab_size=1, context_length=6, emb_dim=3, n_heads=3, n_layers=1, drop_rate=0.0, qkv_bias=False)
    mha = CausalSelfAttention(cfg, np.random.default_rng(123))
    mha.record_weights = True  # keep the weights the reference path computes (the fused op keeps none)
    with no_grad():
        context_vecs = mha(batch)
    show("context_vecs.shape", context_vecs.shape, (2, 6, 2),
         note="the book's example projects to d_out=2; a GPT's attention keeps the width, here 3 = 3 heads x 1")
    for h in range(cfg.n_heads):
        show(f"head {h} attention weights (first sequence)", fmt(mha.attn_weights[0, h]))
    print("\nIn a GPT: tinygrad_llm.models.gpt.GPT.attention_weights(ids) returns these for every layer and head.")
    if args.plot and args.model is None:
        title = "3.6: each head's causal attention weights (our random W_query, W_key)"
        write_picture(lambda: save_figure(attention_figure(mha.attn_weights[0], WORDS, title=title), args.plot),
                      args.plot)
    elif args.plot:
        from tinygrad_llm.models.pretrained import load_pretrained

        model, tokenizer = load_pretrained(args.model)
        write_picture(lambda: save_figure(attention_grid(model, tokenizer, args.prompt, layer=args.layer,
                                                         title=f"{args.model}, layer {args.layer}"), args.plot),
                      args.plot)


def add_arguments(p):
    plot_flag(p, "attention.png", "each head's attention weights")
    p.add_argument("--model", help="with --plot: a model to draw instead (gpt2, a model directory, a .gguf file)")
    p.add_argument("--prompt", default=" ".join(WORDS), help="with --model: the text it reads")
    p.add_argument("--layer", type=int, default=0, help="with --model: which layer (negative: from the last)")


if __name__ == "__main__":
    main()
