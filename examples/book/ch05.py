"""Book chapter 5: pretraining on unlabeled data: the loss of next-token prediction, training on the-verdict.txt,
decoding with temperature and top-k, saving and loading.

Prints what the book's chapter 5 prints, at the same points, next to the book's value. To take seconds,
the training here is a small model of the book's shape (2 layers, 64 wide, the GPT-2 vocabulary, context
256, untied head, no qkv bias, dropout 0.1) for 1 epoch at lr 5e-3, instead of the 124M model for 10
epochs at lr 4e-4 (that run: docs/training.md, "Reproducing the book's run"). Values that come from
random weights or random draws differ from the book's (its generator is PyTorch's, ours NumPy's); the
counts, shapes and the decoding examples' numbers are the book's.

Read tinygrad_llm/training/simple.py (train_simple: the book's train_model_simple, listing 5.3),
tinygrad_llm/training/loss.py (lm_loss and evaluate: calc_loss_batch and calc_loss_loader), autograd/reference.py and
autograd/functional/losses.py (cross_entropy), tinygrad_llm/models/generate.py (generate and sample_next: the book's generate with temperature
and top-k) and autograd/checkpoint.py (save_state, load_state) beside it. tinygrad_llm/training/trainer.py is the
same loop made robust (schedules, checkpoints and an exact resume, Ctrl-C, float16): examples/pretrain.py runs it.

    python examples/book/ch05.py [--data-dir ../shared/data] [--epochs 1]
"""

import tempfile
from pathlib import Path

import numpy as np

from _book import heading, parse_args, show
from autograd import Tensor, cat, where
from autograd import functional as F
from autograd.checkpoint import load_state, save_state
from autograd.optim import AdamW
from tinygrad_llm.text.data import create_dataloader, train_val_split
from tinygrad_llm.models.generate import generate, sample_next
from tinygrad_llm.models.gpt import GPT, GPTConfig
from tinygrad_llm.text.tokenizer import get_tokenizer
from tinygrad_llm.training import evaluate, train_simple

# the book's toy vocabulary and next-token logits of section 5.3, and its sample counts
VOCAB = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you"]
NEXT_TOKEN_LOGITS = [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79]
BOOK_COUNTS = {1: [73, 0, 0, 582, 2, 0, 0, 343, 0], 0.1: [0, 0, 0, 985, 0, 0, 0, 15, 0],
               5: [165, 75, 42, 239, 71, 46, 32, 227, 103]}


def add_arguments(p):
    p.add_argument("--epochs", type=int, default=1, help="epochs of the short training (the book: 10)")


def main(argv=None):
    args = parse_args(__doc__, needs=("the-verdict.txt", "gpt2/encoder.json", "gpt2/vocab.bpe"), argv=argv,
                      add_arguments=add_arguments)
    tokenizer = get_tokenizer(str(args.data_dir / "gpt2"))
    cfg = GPTConfig.preset("book-124m", context_length=256, emb_dim=64, n_layers=2, n_heads=4)
    print("model:", cfg, "\n(the book's GPT_CONFIG_124M with context 256, but 64 wide and 2 layers of 4 heads)")
    model = GPT(cfg, seed=123).eval()

    heading("5.1.1 Using GPT to generate text")
    start = tokenizer.encode("Every effort moves you")
    print("Output text:\n", tokenizer.decode(generate(model, start, max_new_tokens=10).tolist()),
          "\n(untrained, so random tokens; the book's: ' rentingetic wasnم refres RexMeCHicular stren')")

    heading("5.1.2 Calculating the text generation loss")
    inputs = Tensor(np.array([[16833, 3626, 6100], [40, 1107, 588]]))  # "every effort moves", "I really like"
    targets = Tensor(np.array([[3626, 6100, 345], [1107, 588, 11311]]))  # " effort moves you", " really like chocolate"
    logits = model(inputs)
    probas = F.softmax(logits, axis=-1)
    show("probas shape", probas.shape, (2, 3, 50257))
    token_ids = probas.argmax(axis=-1, keepdims=True)
    show("Token IDs shape", token_ids.shape, (2, 3, 1))
    show("Targets batch 1", tokenizer.decode(targets[0].tolist()), " effort moves you")
    print("Outputs batch 1:", tokenizer.decode(token_ids[0].flatten().tolist()), "  (book: ' Armed heNetflix')")
    target_probas_1 = probas[0, [0, 1, 2], targets[0]]
    target_probas_2 = probas[1, [0, 1, 2], targets[1]]
    print("Text 1:", target_probas_1, "\nText 2:", target_probas_2,
          "\n(book: tensor([7.4541e-05, 3.1061e-05, 1.1563e-05]), tensor([1.0337e-05, 5.6776e-05, 4.7559e-06]))")
    log_probas = cat((target_probas_1, target_probas_2)).log()
    neg_avg_log_probas = -log_probas.mean()
    print("neg_avg_log_probas:", neg_avg_log_probas)
    logits_flat, targets_flat = logits.flatten(0, 1), targets.flatten()
    show("Flattened logits", logits_flat.shape, (6, 50257))
    show("Flattened targets", targets_flat.shape, (6,))
    loss = F.cross_entropy(logits_flat, targets_flat)
    show("cross_entropy", f"{loss.item():.4f}", "10.7940", note="random weights: near ln(50257) = 10.82")
    show("the same as -mean(log p)", f"{loss.item():.4f}" == f"{neg_avg_log_probas.item():.4f}", True)
    print("perplexity:", loss.exp(), "  (book: tensor(48725.8203))")

    heading("5.1.3 Calculating the training and validation set losses")
    text_data = (args.data_dir / "the-verdict.txt").read_text(encoding="utf-8")
    print(text_data[:99])
    print(text_data[-99:])
    show("Characters", len(text_data), 20479)
    show("Tokens", len(tokenizer.encode(text_data)), 5145)
    train_data, val_data = train_val_split(text_data, 0.90)  # by characters, as the book splits
    train_loader = create_dataloader(train_data, tokenizer, batch_size=2, max_length=256, stride=256,
                                     shuffle=True, drop_last=True, seed=123)
    val_loader = create_dataloader(val_data, tokenizer, batch_size=2, max_length=256, stride=256,
                                   shuffle=False, drop_last=False)
    show("Train loader", [x.shape for x, _ in train_loader], [(2, 256)] * 9)
    show("Validation loader", [x.shape for x, _ in val_loader], [(2, 256)])
    train_tokens, val_tokens = sum(x.size for x, _ in train_loader), sum(x.size for x, _ in val_loader)
    show("Training tokens", train_tokens, 4608)
    show("Validation tokens", val_tokens, 512)
    show("All tokens", train_tokens + val_tokens, 5120)
    print(f"Training loss: {evaluate(model, train_loader):.4f}   (book: 10.9876)")
    print(f"Validation loss: {evaluate(model, val_loader):.4f}   (book: 10.9811)")

    heading("5.2 Training an LLM")
    optimizer = AdamW(model.parameters(), lr=5e-3, weight_decay=0.1)
    print("AdamW on every parameter (weight decay 0.1), lr 5e-3 (book: 4e-4), "
          f"{args.epochs} epoch(s) (book: 10); losses on 5 batches every 5 steps (eval_freq=5, eval_iter=5)")
    train_loader.set_epoch(0)  # the two passes of 5.1.3 were epochs 0 and 1: train from epoch 0's order again
    train_losses, val_losses, tokens_seen = train_simple(
        model, train_loader, val_loader, optimizer, num_epochs=args.epochs, eval_freq=5, eval_iter=5,
        start_context="Every effort moves you", tokenizer=tokenizer)
    print("(book, 124M model at lr 4e-4: Step 000005 Train loss 8.066, Val loss 8.332; after 10 epochs, Step 000085: "
          "Train loss 0.569, Val loss 6.373)")

    heading("5.3 Decoding strategies to control randomness")
    model.eval()
    token_ids = generate(model, start, max_new_tokens=25)
    print("Output text:\n", tokenizer.decode(token_ids.tolist()))
    next_token_logits = Tensor(NEXT_TOKEN_LOGITS)
    probas = F.softmax(next_token_logits, axis=0)
    show("next token (argmax)", VOCAB[probas.argmax().item()], "forward")
    rng = np.random.default_rng(123)
    for temperature in (1, 0.1, 5):
        sampled = sample_next(np.tile(next_token_logits.numpy(), (1000, 1)), rng, temperature=temperature)
        counts = np.bincount(sampled, minlength=len(VOCAB))
        print(f"1,000 draws at temperature {temperature}: " + ", ".join(f"{c} x {w}" for c, w in zip(counts, VOCAB)))
        print("  (book: " + ", ".join(f"{c} x {w}" for c, w in zip(BOOK_COUNTS[temperature], VOCAB))
              + "; expected: " + ", ".join(f"{1000 * p:.0f}" for p in
                                             F.softmax(next_token_logits / temperature, axis=0).tolist()) + ")")
    top_logits, top_pos = next_token_logits.topk(3)
    show("Top logits", top_logits, "tensor([6.7500, 6.2800, 4.5100])")
    show("Top positions", top_pos.tolist(), [3, 7, 0])
    new_logits = where(next_token_logits < top_logits[-1], float("-inf"), next_token_logits)
    show("new_logits", new_logits, "tensor([4.5100,   -inf,   -inf, 6.7500,   -inf,   -inf,   -inf, 6.2800,   -inf])")
    show("topk_probas", F.softmax(new_logits, axis=0),
         "tensor([0.0615, 0.0000, 0.0000, 0.5775, 0.0000, 0.0000, 0.0000, 0.3610, 0.0000])")
    token_ids = generate(model, start, max_new_tokens=15, top_k=25, temperature=1.4, seed=123)
    print("Output text (top_k=25, temperature=1.4):\n", tokenizer.decode(token_ids.tolist()),
          "\n(book: 'Every effort moves you stand,\" she down.\" For Mrs. Gisburn! The women had')")

    heading("5.4 Loading and saving model weights")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model_and_optimizer.safetensors"
        save_state(path, model, optimizer)  # the book's torch.save({model, optimizer state dicts})
        again = GPT(cfg, seed=0)
        again_optimizer = AdamW(again.parameters(), lr=5e-3, weight_decay=0.1)
        load_state(path, again, again_optimizer)
        same = all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.parameters(), again.parameters()))
        show("weights after loading equal the saved ones", same, True)
    print("5.5: GPT.from_pretrained('gpt2') loads OpenAI's weights (a 500 MB download, not run here); "
          "examples/generate.py uses it.")


if __name__ == "__main__":
    main()
