"""Book chapter 3, section 3.6 (multi-head attention), to look at: the weights of every head of a layer
as a grid of heat maps, the tokens on both axes (row: the token attending; column: the token it reads).

    fig = attention_grid(model, tokenizer, "Every effort moves you", layer=0)
    save_figure(fig, "attention.png")

`attention_grid` takes any model with `attention_weights(ids)`: ids (B, T) -> one host array
(B, n_heads, T, T) per layer, each row summing to 1 (GPT.attention_weights; a Llama model gives its query
heads' weights, each key/value head repeated for the query heads that share it). `attention_figure` draws
weights that are already computed: the book's `MultiHeadAttention` on six words (examples/book/ch03.py).
"""

import math

import numpy as np

from autograd.viz import new_figure


def token_labels(tokenizer, ids):
    """Each token's text for an axis: a leading space shown as a middle dot, a newline as \\n."""
    return [tokenizer.decode([int(i)]).replace("\n", "\\n").replace(" ", "\u00b7") for i in ids]


def attention_figure(weights, tokens, title=None, columns=None):
    """Heat maps of `weights` (n_heads, T, T), one per head, `tokens` (T labels) on both axes; the
    colour scale is shared, 0 to the largest weight drawn. Axes k holds head k (its image's array is
    weights[k]); `columns` heat maps a row (default 4, 2 past 12 tokens); up to 8 tokens, each weight is written in its cell (only up to the diagonal when the
    weights are causal)."""
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 3 or weights.shape[1:] != (len(tokens), len(tokens)):
        raise ValueError(f"attention_figure: weights of shape {weights.shape} do not fit {len(tokens)} tokens: "
                         "expected (n_heads, T, T)")
    n_heads, T = weights.shape[0], len(tokens)
    cols = min(columns or (4 if T <= 12 else 2), n_heads)
    rows = math.ceil(n_heads / cols)
    cell = max(1.8, min(5.0, 0.16 * T + 1.0))  # inches per heat map, its tick labels included
    fig = new_figure(cols * cell + 1.0, rows * (cell + 0.5) + (0.4 if title else 0.1))
    if hasattr(fig, "set_layout_engine"):  # matplotlib 3.6 on
        fig.set_layout_engine("constrained")
    else:
        fig.set_constrained_layout(True)
    vmax = float(weights.max()) or 1.0
    image = None
    for h in range(n_heads):
        ax = fig.add_subplot(rows, cols, h + 1)
        image = ax.imshow(weights[h], cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_title(f"head {h}", fontsize=9)
        size = 7 if T <= 24 else 5
        ax.set_xticks(range(T), tokens, rotation=90, fontsize=size)
        ax.set_yticks(range(T), tokens if h % cols == 0 else [""] * T, fontsize=size)
        ax.tick_params(length=0)
        if T <= 8:  # few tokens: the numbers too, as the book prints them
            for i in range(T):
                for j in range(i + 1 if np.all(np.triu(weights[h], 1) == 0) else T):
                    w = weights[h, i, j]
                    ax.text(j, i, f"{w:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if w > 0.6 * vmax else "white")
    fig.colorbar(image, ax=fig.axes, shrink=0.8, label="attention weight")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def attention_grid(model, tokenizer, text, layer=0, title=None, columns=None, **encode_options):
    """The heads of layer `layer` (negative: from the last) of `model` reading `text`, as heat maps.
    `model.attention_weights(ids)` gives the weights; `tokenizer` the ids and the axis labels."""
    ids = tokenizer.encode(text, **encode_options)
    weights = model.attention_weights(np.asarray([ids], dtype=np.int64))
    n_layers = len(weights)
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"layer {layer} does not exist: the model has {n_layers} layers (0 .. {n_layers - 1})")
    title = title if title is not None else f"layer {layer % n_layers}: {len(ids)} tokens"
    return attention_figure(weights[layer][0], token_labels(tokenizer, ids), title=title, columns=columns)
