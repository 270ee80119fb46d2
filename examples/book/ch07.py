"""Book chapter 7: fine-tuning to follow instructions, the data, the Alpaca prompt, and the book's collate.

Prints what the book's chapter 7 prints, at the same points, each next to the book's value. Read
tinygrad_llm/finetune/instruct.py (format_input, the split, InstructionDataset, custom_collate_fn, the test
responses), tinygrad_llm/finetune/judge.py (scoring with a local model, section 7.8) and
examples/finetune_instructions.py (the training run) beside it. The fine-tuning itself takes minutes,
not seconds: `examples/finetune_instructions.py --data instruction-data.json` runs it.

    python examples/book/ch07.py [--data-dir ../shared/data]
"""

import numpy as np

from _book import heading, parse_args, show
import autograd.functional as F
from autograd import Tensor
from tinygrad_llm.finetune.instruct import custom_collate_fn, format_input, load_entries, split_entries
from tinygrad_llm.text.tokenizer import get_tokenizer


def main(argv=None):
    args = parse_args(__doc__, needs=("instruction-data.json", "gpt2/encoder.json", "gpt2/vocab.bpe"), argv=argv)
    data = load_entries(args.data_dir / "instruction-data.json")

    heading("7.2 Preparing a dataset for supervised instruction fine-tuning")
    show("Number of entries", len(data), 1100)
    show("Example entry", data[50], {"instruction": "Identify the correct spelling of the following word.",
                                     "input": "Ocassion", "output": "The correct spelling is 'Occasion.'"})
    model_input = format_input(data[50])
    desired_response = f"\n\n### Response:\n{data[50]['output']}"
    print(model_input + desired_response)
    print()
    print(format_input(data[999]) + f"\n\n### Response:\n{data[999]['output']}")  # no input: no "### Input:"
    train, val, test = split_entries(data)
    show("Training set length", len(train), 935)
    show("Validation set length", len(val), 55)
    show("Test set length", len(test), 110,
         note="the book splits the file in order; ours shuffles first (seed 123), with the same sizes")

    heading("7.3 Organizing data into training batches")
    tokenizer = get_tokenizer(args.data_dir / "gpt2")
    show("<|endoftext|>", tokenizer.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}), [50256])
    batch = ([0, 1, 2, 3, 4], [5, 6], [7, 8, 9])
    inputs, targets = custom_collate_fn(batch)
    show("inputs", inputs.tolist(), [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]])
    show("targets", targets.tolist(), [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100], [8, 9, 50256, -100, -100]])
    _, cut = custom_collate_fn(batch, allowed_max_length=3)
    show("targets, allowed_max_length=3", cut.tolist())

    # why -100: cross_entropy leaves those targets out of the mean
    logits_1 = Tensor(np.array([[-1.0, 1.0], [-0.5, 1.5]], dtype=np.float32))
    loss_1 = F.cross_entropy(logits_1, np.array([0, 1]))
    show("loss_1", f"{loss_1.item():.4f}", "1.1269")
    logits_2 = Tensor(np.array([[-1.0, 1.0], [-0.5, 1.5], [-0.5, 1.5]], dtype=np.float32))
    show("loss_2", f"{F.cross_entropy(logits_2, np.array([0, 1, 1])).item():.4f}", "0.7936")
    loss_3 = F.cross_entropy(logits_2, np.array([0, 1, -100]))
    show("loss_3", f"{loss_3.item():.4f}", "1.1269")
    show("loss_1 == loss_3", loss_1.item() == loss_3.item(), True)

    heading("7.5-7.8 Fine-tuning, responses and scoring")
    print("examples/finetune_instructions.py --data instruction-data.json fine-tunes, writes the test split's "
          "responses to instruction-data-with-response.json, and with --judge-url scores them with a local "
          "Ollama model; examples/chat.py answers typed instructions.")


if __name__ == "__main__":
    main()
