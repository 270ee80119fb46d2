"""Book chapter 4: implementing a GPT model from scratch, layer norm, GELU, the feed-forward network, shortcut
connections, the transformer block, the 124M model and greedy generation.

Prints what the book's chapter 4 prints, at the same points, next to the book's value. Values drawn from
random weights differ (the book's come from PyTorch's generator, ours from NumPy's); counts, sizes and
shapes are the book's. Read tinygrad_llm/models/gpt.py (MLP, Block, GPT: the book's FeedForward,
TransformerBlock and GPTModel, listings 4.4, 4.6 and 4.7, under GPT-2's names), autograd/reference.py
(layer_norm and gelu as the book writes them, listings 4.2 and 4.3; the fused ones are in
autograd/functional/normalization.py and activations.py) and tinygrad_llm/models/generate.py
(generate_text_simple, listing 4.8) beside it. Building the 124M model takes a few seconds.

    python examples/book/ch04.py [--data-dir ../shared/data]
"""

import numpy as np

from _book import heading, parse_args, show
from autograd import Tensor, nn
from autograd import functional as F
from tinygrad_llm.models.generate import generate
from tinygrad_llm.models.gpt import GPT, MLP, Block, GPTConfig
from tinygrad_llm.text.tokenizer import get_tokenizer


def main(argv=None):
    args = parse_args(__doc__, needs=("gpt2/encoder.json", "gpt2/vocab.bpe"), argv=argv)
    tokenizer = get_tokenizer(str(args.data_dir / "gpt2"))
    # GPT_CONFIG_124M: vocab 50257, context 1024, emb_dim 768, 12 heads, 12 layers, dropout 0.1, no qkv bias
    cfg = GPTConfig.preset("book-124m")
    print("GPT_CONFIG_124M:", cfg)

    heading("4.1 Coding an LLM architecture")
    batch = np.array([tokenizer.encode("Every effort moves you"), tokenizer.encode("Every day holds a")])
    show("batch", batch.tolist(), [[6109, 3626, 6100, 345], [6109, 1110, 6622, 257]])

    heading("4.2 Normalizing activations with layer normalization")
    rng = np.random.default_rng(123)
    layer = nn.Sequential(nn.Linear(5, 6, rng=rng), nn.ReLU())
    out = layer(Tensor(rng.standard_normal((2, 5), dtype=np.float32)))
    print("out:", out)
    mean, var = out.mean(axis=-1, keepdims=True), out.var(axis=-1, keepdims=True)
    out_norm = (out - mean) / var.sqrt()
    print("Normalized layer outputs:", out_norm)
    show("Mean of the normalized rows", rounded(out_norm.mean(axis=-1)), [0.0, 0.0])
    show("Variance of the normalized rows", rounded(out_norm.var(axis=-1)), [1.0, 1.0])
    out_ln = nn.LayerNorm(6)(out)  # the book's LayerNorm: biased variance, eps 1e-5, scale and shift
    show("LayerNorm: mean of the rows", rounded(out_ln.mean(axis=-1)), [0.0, 0.0])
    show("LayerNorm: biased variance of the rows", rounded(out_ln.var(axis=-1, correction=0)), [0.9995, 0.9997],
         note="eps 1e-5 in the denominator pulls the variance just below 1; by how much depends on the random rows")

    heading("4.3 A feed forward network with GELU activations")
    x = Tensor(np.linspace(-3, 3, 7, dtype=np.float32))
    print("x:        ", x)
    print("GELU(x):  ", F.gelu(x), " (GPT-2's tanh approximation, the book's GELU)")
    print("ReLU(x):  ", x.relu())
    ffn = MLP(cfg, np.random.default_rng(123))  # c_fc 768 -> 3072, GELU, c_proj 3072 -> 768
    show("FeedForward output shape", ffn(Tensor(np.random.default_rng(1).random((2, 3, 768), dtype=np.float32))).shape,
         (2, 3, 768))

    heading("4.4 Adding shortcut connections")
    sample_input = Tensor([[1.0, 0.0, -1.0]])
    for use_shortcut in (False, True):
        means = gradient_means(sample_input, use_shortcut)
        print(f"use_shortcut={use_shortcut}:", ", ".join(f"layers.{i}.0.weight {m:.6f}" for i, m in enumerate(means)))
    print("(book, without shortcuts: 0.000202, 0.000120, 0.000715, 0.001399, 0.005050; with: 0.221698, 0.206941, "
          "0.328970, 0.266573, 1.325854; its weights are PyTorch's draws, so the values differ, not the pattern: "
          "without shortcuts the gradient fades towards the first layer)")

    heading("4.5 Connecting attention and linear layers in a transformer block")
    block = Block(cfg, np.random.default_rng(123))
    x = Tensor(np.random.default_rng(123).random((2, 4, 768), dtype=np.float32))
    show("Input shape", x.shape, (2, 4, 768))
    show("Output shape", block(x).shape, (2, 4, 768))

    heading("4.6 Coding the GPT model")
    model = GPT(cfg, seed=123)
    out = model(batch)
    print("Input batch:\n", Tensor(batch))
    show("Output shape", out.shape, (2, 4, 50257))
    print(out)
    total_params = model.num_parameters()
    show("Total number of parameters", f"{total_params:,}", "163,009,536")
    show("Token embedding layer shape (wte)", model.wte.weight.shape, (50257, 768))
    show("Output layer shape (lm_head)", model.lm_head.weight.shape, (50257, 768))
    show("Number of trainable parameters considering weight tying",
         f"{total_params - model.lm_head.weight.numel():,}", "124,412,160")
    show("Total size of the model", f"{total_params * 4 / (1024 * 1024):.2f} MB", "621.83 MB")

    heading("4.7 Generating text")
    encoded = tokenizer.encode("Hello, I am")
    show("encoded", encoded, [15496, 11, 314, 716])
    show("encoded_tensor.shape", Tensor(encoded).unsqueeze(0).shape, (1, 4))
    model.eval()  # disable dropout
    out = generate(model, encoded, max_new_tokens=6)  # greedy: the argmax of each next-token distribution
    print("Output:", out.tolist(), "(book: [15496, 11, 314, 716, 27018, 24086, 47843, 30961, 42348, 7267], from its "
          "own random weights)")
    show("Output length", len(out), 10)
    print(tokenizer.decode(out.tolist()), "  (book: Hello, I am Featureiman Byeswickattribute argue)")


def rounded(t):
    """A tensor's values to 4 decimals, as a list (-0.0 made 0.0)."""
    return [round(v, 4) + 0.0 for v in t.tolist()]


def gradient_means(x, use_shortcut, sizes=(3, 3, 3, 3, 3, 1)):
    """The book's ExampleDeepNeuralNetwork: five Linear+GELU layers, optionally with shortcuts; the mean
    absolute gradient of each layer's weight after an MSE loss against 0."""
    rng = np.random.default_rng(123)
    layers = [nn.Sequential(nn.Linear(a, b, rng=rng), nn.GELU()) for a, b in zip(sizes, sizes[1:])]
    for layer in layers:
        y = layer(x)
        x = x + y if use_shortcut and x.shape == y.shape else y
    (x * x).mean().backward()  # MSELoss(output, target 0)
    return [float(np.abs(layer[0].weight.grad).mean()) for layer in layers]


if __name__ == "__main__":
    main()
