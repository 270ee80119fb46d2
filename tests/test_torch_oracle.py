"""Our GPT against the book's PyTorch GPTModel given the same weights: the same loss and gradients.

An optional oracle: it runs where PyTorch is installed (`pip install -e ".[oracle]"`) and skips elsewhere
(CI does not install it). The book's model comes from its package, llms-from-scratch, where that is
installed, else from the transcription of its chapter 4 listing in tests/oracle/book_gpt.py."""

import numpy as np
import pytest

import autograd.functional as F
from tinygrad_llm.models.gpt import GPT, GPTConfig

torch = pytest.importorskip("torch", reason='PyTorch is not installed (pip install -e ".[oracle]" runs this test)')
try:
    from llms_from_scratch import ch04
except ImportError:  # the package pins numpy<2.1 and pulls in TensorFlow; the listing itself is enough
    from tests.oracle import book_gpt as ch04


def _copy_into_book_model(ours, theirs, c):
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    with torch.no_grad():
        theirs.tok_emb.weight.copy_(t(ours.wte.weight.data))
        theirs.pos_emb.weight.copy_(t(ours.wpe.weight.data))
        for block, tb in zip(ours.h, theirs.trf_blocks):
            w = block.attn.c_attn.weight.data  # (3C, C): the query, key and value weights stacked
            tb.att.W_query.weight.copy_(t(w[:c]))
            tb.att.W_key.weight.copy_(t(w[c : 2 * c]))
            tb.att.W_value.weight.copy_(t(w[2 * c :]))
            tb.att.out_proj.weight.copy_(t(block.attn.c_proj.weight.data))
            tb.att.out_proj.bias.copy_(t(block.attn.c_proj.bias.data))
            tb.ff.layers[0].weight.copy_(t(block.mlp.c_fc.weight.data))
            tb.ff.layers[0].bias.copy_(t(block.mlp.c_fc.bias.data))
            tb.ff.layers[2].weight.copy_(t(block.mlp.c_proj.weight.data))
            tb.ff.layers[2].bias.copy_(t(block.mlp.c_proj.bias.data))
            for ln, tln in ((block.ln_1, tb.norm1), (block.ln_2, tb.norm2)):
                tln.scale.copy_(t(ln.weight.data))
                tln.shift.copy_(t(ln.bias.data))
        theirs.final_norm.scale.copy_(t(ours.ln_f.weight.data))
        theirs.final_norm.shift.copy_(t(ours.ln_f.bias.data))
        theirs.out_head.weight.copy_(t(ours.lm_head.weight.data))


def test_loss_and_gradients_match_the_books_gpt_model():
    v, ctx, c, heads, layers = 300, 16, 32, 4, 2
    ours = GPT(GPTConfig(vocab_size=v, context_length=ctx, emb_dim=c, n_heads=heads, n_layers=layers,
                         drop_rate=0.0, qkv_bias=False, tie_weights=False, init="torch"), seed=1)
    theirs = ch04.GPTModel({"vocab_size": v, "context_length": ctx, "emb_dim": c, "n_heads": heads,
                            "n_layers": layers, "drop_rate": 0.0, "qkv_bias": False})
    _copy_into_book_model(ours, theirs, c)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, v, (2, ctx)), rng.integers(0, v, (2, ctx))

    loss = F.cross_entropy(ours(x), y)
    loss.backward()
    ref = torch.nn.functional.cross_entropy(theirs(torch.tensor(x)).flatten(0, 1), torch.tensor(y).flatten())
    ref.backward()

    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-6)
    tb = theirs.trf_blocks[0]
    pairs = [
        (ours.wte.weight.grad, theirs.tok_emb.weight.grad),
        (ours.wpe.weight.grad, theirs.pos_emb.weight.grad),
        (ours.h[0].attn.c_attn.weight.grad[:c], tb.att.W_query.weight.grad),
        (ours.h[0].attn.c_attn.weight.grad[2 * c :], tb.att.W_value.weight.grad),
        (ours.h[0].mlp.c_fc.weight.grad, tb.ff.layers[0].weight.grad),
        (ours.h[0].ln_1.weight.grad, tb.norm1.scale.grad),
        (ours.lm_head.weight.grad, theirs.out_head.weight.grad),
    ]
    for mine, ref_grad in pairs:
        np.testing.assert_allclose(mine, ref_grad.numpy(), rtol=1e-4, atol=1e-6)
