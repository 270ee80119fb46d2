"""Book chapter 5, section 5.2, listing 5.3: the book's training loop, `train_model_simple`, as printed.

Each epoch goes once over the training loader; each batch is one step: zero the gradients, the loss
(`lm_loss`, the book's calc_loss_batch), backward, an optimizer step. Every `eval_freq` steps
`evaluate_model` measures the mean loss over `eval_iter` batches of each loader (`evaluate`, the book's
calc_loss_loader) and prints it; after each epoch `generate_and_print_sample` prints 50 greedy tokens
from `start_context`.

    optimizer = AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    train_losses, val_losses, tokens_seen = train_simple(
        model, train_loader, val_loader, optimizer, num_epochs=10, eval_freq=5, eval_iter=5,
        start_context="Every effort moves you", tokenizer=tokenizer)

The book's `device` argument is gone: the model's arrays say where they live (autograd/backend.py).

`Trainer` (tinygrad_llm/training/trainer.py) is the same loop made robust: learning-rate schedules,
clipping, gradient accumulation, checkpoints and an exact resume, Ctrl-C, float16, NaN handling, several
processes. With a constant lr, no clipping and the same optimizer it computes the same losses
(tests/test_train.py holds the two equal).
"""

from tinygrad_llm.models.generate import generate
from tinygrad_llm.training.loss import evaluate, lm_loss


def train_simple(model, train_loader, val_loader, optimizer, num_epochs, eval_freq, eval_iter, start_context,
                 tokenizer):
    """Train `model` for `num_epochs` over `train_loader`, printing the losses every `eval_freq` steps and
    a sample after each epoch. Returns the train losses, validation losses and tokens seen of each
    evaluation. The first evaluation is after the first step (`global_step` starts at -1, as the book's)."""
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    for epoch in range(num_epochs):
        model.train()  # dropout on
        for input_batch, target_batch in train_loader:  # each pass over a DataLoader is its next epoch
            optimizer.zero_grad()  # the gradients of the previous step
            loss = lm_loss(model, (input_batch, target_batch))
            loss.backward()
            optimizer.step()
            tokens_seen += input_batch.size
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        generate_and_print_sample(model, tokenizer, start_context)
    return train_losses, val_losses, track_tokens_seen


def evaluate_model(model, train_loader, val_loader, eval_iter):
    """The mean loss over the first `eval_iter` batches of each loader, in eval mode without gradients
    (`evaluate` switches the mode and restores it)."""
    return evaluate(model, train_loader, eval_iter), evaluate(model, val_loader, eval_iter)


def generate_and_print_sample(model, tokenizer, start_context):
    """Print 50 tokens greedily generated from `start_context`, on one line."""
    print(sample_text(model, tokenizer, start_context, 50))


def sample_text(model, tokenizer, prompt, max_new_tokens, *, temperature=0.0, top_k=None, eos_id=None, seed=None):
    """`prompt` and up to `max_new_tokens` tokens generated after it, as text with newlines as spaces. A
    prompt too long for the model's context keeps its last tokens, leaving room for the new ones."""
    ids = tokenizer.encode(prompt, allowed_special="all")
    context = getattr(getattr(model, "config", None), "context_length", None)
    keep = max(1, context - max_new_tokens) if context else len(ids)
    ids = ids[-keep:]
    out = generate(model, [ids], min(max_new_tokens, (context or 1 << 30) - len(ids)), temperature=temperature,
                   top_k=top_k, eos_id=eos_id, seed=seed)
    return tokenizer.decode(out[0].tolist()).replace("\n", " ")
