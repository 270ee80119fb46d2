"""Book appendix E: parameter-efficient fine-tuning with LoRA, the book's parameter counts, and what LoRA does.

Prints what the book's appendix E prints, at the same points, next to the book's value. Read
tinygrad_llm/finetune/lora.py (LoRALinear, apply_lora, merge_lora, the adapter file) and
tinygrad_llm/finetune/classifier.py (the classification head it is applied to) beside it. The book fine-tunes
GPT-2's published weights, which are not downloaded here: the counts do not depend on the weights' values,
so a GPT-2-sized model with fresh weights gives the same counts; the training itself is
`examples/finetune_classifier.py --lora 16` (and `benchmarks/bench_lora.py` compares it with full
fine-tuning).

    python examples/book/appendix_e.py
"""

import numpy as np

from _book import heading, parse_args, show
from autograd import Tensor
from tinygrad_llm.finetune.classifier import GPTClassifier
from tinygrad_llm.finetune.lora import LoRALinear, apply_lora, lora_layers, merge_lora
from tinygrad_llm.models.gpt import GPT, GPTConfig


def trainable(model):
    return sum(int(p.size) for p in model.parameters() if p.requires_grad)


def main(argv=None):
    parse_args(__doc__, argv=argv)

    heading("E.4 Parameter-efficient fine-tuning with LoRA")
    print(f"LoRALinear: {LoRALinear.__doc__.splitlines()[0]}")  # the book's LinearWithLoRA
    model = GPTClassifier(GPT(GPTConfig.preset("gpt2-small"), seed=123), num_classes=2, labels=("ham", "spam"))
    show("Total trainable parameters before", f"{trainable(model):,}", "124,441,346")
    model.requires_grad_(False)
    show("Total trainable parameters after", f"{trainable(model):,}", "0")
    report = apply_lora(model, rank=16, alpha=16)  # every Linear, the classification head's too, as the book
    show("Total trainable LoRA parameters", f"{trainable(model):,}", "2,666,528",
         note="the book's attention has separate W_query, W_key, W_value; ours one fused c_attn (768 -> 2304), "
              "whose adapter is 768*16 + 16*2304 = 49,152 numbers instead of 3 x (768*16 + 16*768) = 73,728: "
              "24,576 fewer per block, 294,912 fewer over 12 blocks")
    show("LoRA layers", len(report.wrapped), 73,
         note="the book wraps W_query, W_key, W_value, out_proj and the two feed-forward layers in each "
              "block: 6; ours c_attn, c_proj, c_fc, mlp.c_proj: 4")
    print(model.transformer.h[0].attn)

    heading("What LoRA changes, on a small model")
    small = GPT(GPTConfig.preset("cpu-tiny", vocab_size=97, context_length=16), seed=0)
    ids = np.random.default_rng(0).integers(0, 97, (2, 8))
    before = small(ids).numpy()
    apply_lora(small, rank=4, alpha=8)
    show("largest change of the logits when wrapped (B = 0)", float(np.abs(small(ids).numpy() - before).max()))
    rng = np.random.default_rng(1)
    for _, lora in lora_layers(small):  # as if trained: non-zero B
        lora.lora_B.data[...] = rng.standard_normal(lora.lora_B.shape).astype(np.float32) * 0.1
    adapted = small(ids).numpy()
    merge_lora(small)  # W += (alpha / rank) (A B)^T: a plain model again
    show("largest difference, merged against adapted", f"{np.abs(small(ids).numpy() - adapted).max():.1e}",
         note="float32 rounding: the merged model computes the same function with one matrix per layer")
    x = Tensor(rng.standard_normal((1, 64)).astype(np.float32))
    show("a merged layer is a plain Linear again", type(small.h[0].attn.c_attn).__name__ + f", output {small.h[0].attn.c_attn(x).shape}")


if __name__ == "__main__":
    main()
