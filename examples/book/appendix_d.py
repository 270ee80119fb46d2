"""Book appendix D: adding bells and whistles to the training loop, learning-rate warmup, cosine decay and
gradient clipping.

Prints what the book's appendix D prints, at the same points, next to the book's value. The learning
rates are the book's exactly: each sequence is printed beside the one its loop computes. Read
autograd/optim.py (cosine_with_warmup, clip_grad_norm_, LRScheduler) and tinygrad_llm/training/config.py
(TrainConfig's initial_lr, warmup_steps, min_lr, grad_clip and clip_after_warmup) beside it.
The gradient-clipping example uses the small model of examples/book/ch05.py, not the 124M one, and its
values differ from the book's (random weights). --train runs the book's 15-epoch training with these
settings on that small model (135 steps, a minute or two).

    python examples/book/appendix_d.py [--data-dir ../shared/data] [--train]
"""

import math

import numpy as np

from _book import heading, parse_args, show
from autograd.optim import AdamW, clip_grad_norm_, cosine_with_warmup
from tinygrad_llm.text.data import create_dataloader, train_val_split
from tinygrad_llm.models.generate import generate
from tinygrad_llm.models.gpt import GPT, GPTConfig
from tinygrad_llm.text.tokenizer import get_tokenizer
from tinygrad_llm.training.trainer import TrainConfig, Trainer, lm_loss


def add_arguments(p):
    p.add_argument("--train", action="store_true", help="run the 135 training steps (a minute or two)")


def books_loop(total_steps, warmup_steps, initial_lr, peak_lr, min_lr=None):
    """The lr of each step as appendix D's loop computes it: global_step from -1, incremented first;
    linear warmup, then the cosine (or, with min_lr None, the peak: its first loop)."""
    lrs, global_step = [], -1
    lr_increment = (peak_lr - initial_lr) / warmup_steps
    for _ in range(total_steps):
        global_step += 1
        if global_step < warmup_steps:
            lr = initial_lr + global_step * lr_increment
        elif min_lr is None:
            lr = peak_lr
        else:
            progress = (global_step - warmup_steps) / (total_steps - warmup_steps)
            lr = min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        lrs.append(lr)
    return lrs


def main(argv=None):
    args = parse_args(__doc__, needs=("the-verdict.txt", "gpt2/encoder.json", "gpt2/vocab.bpe"), argv=argv,
                      add_arguments=add_arguments)
    tokenizer = get_tokenizer(str(args.data_dir / "gpt2"))
    text_data = (args.data_dir / "the-verdict.txt").read_text(encoding="utf-8")
    train_data, val_data = train_val_split(text_data, 0.90)
    train_loader = create_dataloader(train_data, tokenizer, batch_size=2, max_length=256, stride=256,
                                     shuffle=True, drop_last=True, seed=123)
    val_loader = create_dataloader(val_data, tokenizer, batch_size=2, max_length=256, stride=256,
                                   shuffle=False, drop_last=False)

    heading("D.1 Learning rate warmup")
    n_epochs, initial_lr, peak_lr = 15, 0.0001, 0.01
    total_steps = len(train_loader) * n_epochs
    warmup_steps = int(0.2 * total_steps)  # 20% warmup
    show("total steps (9 batches x 15 epochs)", total_steps, 135)
    show("warmup_steps", warmup_steps, 27)
    # the warmup-then-constant schedule: TrainConfig(schedule="constant", initial_lr=..., warmup_steps=...)
    constant = lr_sequence(train_loader, TrainConfig(lr=peak_lr, initial_lr=initial_lr, warmup_steps=warmup_steps,
                                                     schedule="constant", epochs=n_epochs))
    book = books_loop(total_steps, warmup_steps, initial_lr, peak_lr)
    print_lrs("warmup, then constant", constant, book)

    heading("D.2 Cosine decay")
    min_lr = 0.1 * initial_lr
    ours = [cosine_with_warmup(step, max_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps,
                               min_lr=min_lr, initial_lr=initial_lr) for step in range(total_steps)]
    book = books_loop(total_steps, warmup_steps, initial_lr, peak_lr, min_lr)
    print_lrs("cosine_with_warmup(step) for step 0, 1, ...", ours, book)
    print(f"(steps counted from 1 would start at {ours[1]:.3g} and end at {min_lr:g}, one step early all along)")

    heading("D.3 Gradient clipping")
    cfg = GPTConfig.preset("book-124m", context_length=256, emb_dim=64, n_layers=2, n_heads=4)
    model = GPT(cfg, seed=123)
    input_batch, target_batch = next(iter(train_loader))
    lm_loss(model, (input_batch, target_batch)).backward()
    print(f"find_highest_gradient(model): {highest_gradient(model):.4f}   (book: tensor(0.0446), its 124M model)")
    params = list(model.parameters())
    norm = float(clip_grad_norm_(params, max_norm=1.0))
    print(f"after clip_grad_norm_(max_norm=1.0): {highest_gradient(model):.4f}   (book: tensor(0.0201))")
    if norm <= 1.0:  # this small model's gradient is already shorter than 1: show the scaling with a smaller max
        print(f"  (the global gradient norm is {norm:.4f}, below 1.0, so nothing was scaled; the book's 124M model "
              f"had a longer gradient. With max_norm={norm / 2:.4f}, half the norm:)")
        clip_grad_norm_(params, max_norm=norm / 2)
        print(f"  after clip_grad_norm_(max_norm={norm / 2:.4f}): {highest_gradient(model):.4f}, half of before")

    heading("D.4 The modified training function")
    # the book's call: peak_lr 0.001, initial_lr 1e-5, min_lr 1e-5, AdamW(weight_decay=0.1) on every
    # parameter, clipping at 1.0 from the end of warmup on, evaluation on 1 batch every 5 steps
    train_config = TrainConfig(lr=0.001, initial_lr=1e-5, min_lr=1e-5, warmup_steps=warmup_steps, grad_clip=1.0,
                               clip_after_warmup=True, weight_decay=0.1, decay_all=True, epochs=n_epochs,
                               eval_every=5, eval_batches=1, progress=False)
    print("TrainConfig:", train_config)
    track = lr_sequence(train_loader, train_config)
    print_lrs("the Trainer's lr of each step", track, books_loop(total_steps, warmup_steps, 1e-5, 0.001, 1e-5))
    if not args.train:
        print("(pass --train to run the 135 steps; the book's run, on its 124M model, goes from Ep 1 (Iter 000000): "
              "Train loss 10.969, Val loss 10.938 to Ep 15 (Iter 000130): Train loss 1.312, Val loss 6.158)")
        return
    model = GPT(cfg, seed=123)
    start = tokenizer.encode("Every effort moves you")

    def report(trainer, record):
        print(f"Ep {trainer.epoch + 1} (Iter {record['step']:06d}): Train loss {record['train_loss']:.3f}, "
              f"Val loss {record['val_loss']:.3f}")

    def sample(trainer):
        if trainer.batch_index == len(train_loader):
            print(tokenizer.decode(generate(model, start, max_new_tokens=50).tolist()).replace("\n", " "))

    Trainer(model, train_loader, val_loader, train_config, log=None, on_eval=report, on_step=sample).fit()


def lr_sequence(train_loader, config):
    """The lr a Trainer with `config` gives each of its steps (read from its schedule; nothing is trained)."""
    model = GPT(GPTConfig.preset("cpu-tiny", vocab_size=8, context_length=4), seed=0)
    trainer = Trainer(model, train_loader, config=config, optimizer=AdamW(model.parameters(), lr=config.lr), log=None)
    return [trainer.scheduler.lr_fn(step) for step in range(trainer.total_steps)]


def print_lrs(label, ours, book):
    fmt = lambda lrs: ", ".join(f"{lr:.3g}" for lr in lrs)  # noqa: E731
    print(f"{label}: {len(ours)} steps")
    print(f"  steps 0-3: {fmt(ours[:4])}; steps 25-28: {fmt(ours[25:29])}; last 2: {fmt(ours[-2:])}")
    show("  equal to the book's loop at every step", np.allclose(ours, book, rtol=1e-12, atol=0), True)


def highest_gradient(model):
    """The book's find_highest_gradient: the largest gradient entry of any parameter."""
    return max(float(p.grad.max()) for p in model.parameters() if p.grad is not None)


if __name__ == "__main__":
    main()
