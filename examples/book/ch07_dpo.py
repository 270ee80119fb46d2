"""Book chapter 7, bonus: preference tuning with DPO (ch07/04_preference-tuning-with-dpo), the data, the
collate's masks, the log-probabilities and the loss of a policy equal to its reference.

Prints what the book's DPO notebook prints where it does not depend on trained weights, each next to the
book's value. Read tinygrad_llm/finetune/preference.py (the entries, PreferenceDataset, custom_collate_fn,
sequence_logprobs, dpo_loss, DPOObjective, evaluate_dpo) and examples/finetune_preferences.py (the training
run) beside it. The tuning itself takes minutes: `examples/finetune_preferences.py --data
instruction-data-with-preference.json` runs it (docs/preference.md has the figures).

    python examples/book/ch07_dpo.py [--data-dir ../shared/data]
"""

import math

import numpy as np

from _book import heading, parse_args, show
import autograd.functional as F
from autograd import Tensor
from tinygrad_llm.finetune import preference as dpo
from tinygrad_llm.finetune.instruct import encode_text, format_input, load_entries, split_entries
from tinygrad_llm.models.gpt import GPT, GPTConfig
from tinygrad_llm.text.tokenizer import get_tokenizer

BOOK_PROMPT_0 = [21106, 318, 281, 12064, 326, 8477, 257, 4876, 13, 19430, 257, 2882, 326, 20431, 32543, 262, 2581,
                 13, 198, 198, 21017, 46486, 25, 198, 36, 2100, 4985, 262, 1708, 9546, 416, 25449, 340, 656, 262,
                 24993, 1813, 13, 198, 198, 21017, 23412, 25, 198, 19503, 521, 14610, 1545]


def main(argv=None):
    args = parse_args(__doc__, needs=("instruction-data-with-preference.json", "gpt2/encoder.json", "gpt2/vocab.bpe"),
                      argv=argv)
    data = load_entries(args.data_dir / "instruction-data-with-preference.json")

    heading("1. The preference data")
    show("Number of entries", len(data), 1100)
    good, bad = dpo.check_entries(data)
    show("malformed entries", len(bad), 0)
    show("data[50]", data[50], {"instruction": "Identify the correct spelling of the following word.",
                                "input": "Ocassion", "output": "The correct spelling is 'Occasion.'",
                                "rejected": "The correct spelling is obviously 'Occasion.'",
                                "chosen": "The correct spelling is 'Occasion.'"})
    train, val, test = split_entries(good)
    show("Training set length", len(train), 935)
    show("Validation set length", len(val), 55)
    show("Test set length", len(test), 110,
         note="the book splits the file in order; ours shuffles first (seed 123), as finetune_instructions.py "
              "does with instruction-data.json, which lists the same instructions in the same order: the same "
              "test entries")

    heading("2. Batches: prompt, chosen and rejected, and the masks")
    tokenizer = get_tokenizer(args.data_dir / "gpt2")
    show("batch['prompt'][0]", encode_text(tokenizer, format_input(data[0])), BOOK_PROMPT_0)
    batch = dpo.custom_collate_fn(dpo.PreferenceDataset(data[:2], tokenizer).examples, allowed_max_length=1024)
    show("chosen inputs", batch.chosen.shape, (2, 81),
         note="the same for another reason: the book pads to the longest plus one, ours to the longest with its "
              "end-of-text, which the book's texts lack")
    chosen = tokenizer.decode(batch.chosen[0][batch.chosen_mask[0]].tolist())
    show("chosen[0][chosen_mask[0]]", chosen,
         "### Response:\nThe spelling of the given phrase \"freind\" is incorrect, the correct spelling is \"friend\".",
         note="the mask selects the response and its end-of-text; the book's, the response header and the response")

    heading("3. Log-probabilities (compute_logprobs) on the book's toy logits")
    logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], dtype=np.float32)
    targets = np.array([0, 2])
    picked = np.take_along_axis(F.log_softmax(Tensor(logits)).numpy(), targets[:, None], axis=1)[:, 0]
    show("manual loss (gather)", f"{-picked.mean():.4f}", "1.4185")
    show("cross_entropy", f"{F.cross_entropy(Tensor(logits), targets).item():.4f}", "1.4185")
    # the same two predictions as a sequence: token 1 (id 0) after position 0, token 2 (id 2) after position 1
    toy_model = lambda ids: Tensor(logits[None])  # noqa: E731  (B, T - 1, V) for ids of (1, 3)
    lp = dpo.sequence_logprobs(toy_model, np.array([[1, 0, 2]]), np.array([[False, True, True]]))
    show("-sequence_logprobs", f"{-lp.item():.4f}", "1.4185")
    show("gather([[1, 2], [3, 4]], [[1, 1], [0, 1]])",
         np.take_along_axis(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1, 1], [0, 1]]), axis=-1).tolist(),
         [[2.0, 2.0], [3.0, 4.0]])

    heading("4. The DPO loss of a policy equal to its reference")
    # any weights give these numbers: the policy is its reference (the book's GPT-2 355M after chapter 7)
    model = GPT(GPTConfig.preset("cpu-tiny", vocab_size=50257, context_length=1024), seed=123)
    objective = dpo.DPOObjective(dpo.frozen_copy(model), beta=0.1)
    loss, chosen_rewards, rejected_rewards = objective.batch(model, batch)
    show("compute_dpo_loss_batch", (f"{loss.item():.4f}", f"{chosen_rewards.item():.1f}",
                                    f"{rejected_rewards.item():.1f}"), ("0.6931", "0.0", "0.0"))
    show("ln 2", f"{math.log(2):.4f}", "0.6931")
    loader = dpo.preference_loader(train, tokenizer, 8, train=True)
    val_loader = dpo.preference_loader(val, tokenizer, 8, train=False)
    res = {name: dpo.evaluate_dpo(model, ld, objective, 5) for name, ld in (("train", loader), ("val", val_loader))}
    show("Training loss", f"{res['train']['loss']:.4f}", "0.6931")
    show("Validation loss", f"{res['val']['loss']:.4f}", "0.6931")
    show("Train reward margin", res["train"]["reward_margin"], 0.0)
    show("Val reward margin", res["val"]["reward_margin"], 0.0)

    heading("5. Training")
    print("examples/finetune_preferences.py --data instruction-data-with-preference.json tunes the model that "
          "examples/finetune_instructions.py wrote (one epoch, lr 5e-6 for GPT-2-sized models, beta 0.1 as the "
          "book), logs the losses and reward margins, and writes the reference's and the policy's test answers "
          "side by side. The book, GPT-2 355M on a GPU: val loss 0.693 -> 0.610, val reward margin 0 -> 1.98.")


if __name__ == "__main__":
    main()
