"""Book chapter 6: fine-tuning for classification, the SMS spam data, its balanced split, the padded batches,
and a GPT whose vocabulary head is replaced by two outputs.

Prints what the book's chapter 6 prints, at the same points, each next to the book's value. Read
tinygrad_llm/finetune/classify_data.py (reading, balancing, splitting, padding), tinygrad_llm/finetune/classifier.py
(GPTClassifier, which parts train, the loss and accuracy) and examples/finetune_classifier.py (the
training run) beside it. The book fine-tunes GPT-2's published weights, which are not downloaded here;
the training takes minutes, not seconds: `examples/finetune_classifier.py --data SMSSpamCollection.tsv`.

    python examples/book/ch06.py [--data-dir ../shared/data]
"""

import numpy as np

from _book import heading, parse_args, show
from autograd import no_grad
from tinygrad_llm.finetune.classifier import GPTClassifier, classification_loader, set_trainable
from tinygrad_llm.finetune.classify_data import balance_classes, classification_splits, read_labeled_tsv
from tinygrad_llm.models.gpt import GPT, GPTConfig
from tinygrad_llm.text.tokenizer import get_tokenizer


def main(argv=None):
    args = parse_args(__doc__, needs=("SMSSpamCollection.tsv", "gpt2/encoder.json", "gpt2/vocab.bpe"), argv=argv)
    data = read_labeled_tsv(args.data_dir / "SMSSpamCollection.tsv")

    heading("6.2 Preparing the dataset")
    counts = data.counts()
    show("ham, spam", (counts["ham"], counts["spam"]), (4825, 747),
         note="the file has 5,574 lines; the book reads it with pandas, whose CSV quoting (a field that "
              "starts with a double quote runs on to the next one) joins two ham lines into their neighbours")
    balanced = balance_classes(data.labels)
    show("balanced: ham, spam", tuple(int((data.labels[balanced] == k).sum()) for k in (0, 1)), (747, 747))
    tokenizer = get_tokenizer(args.data_dir / "gpt2")
    train, val, test = classification_splits(data, tokenizer)
    show("train, validation, test", (len(train), len(val), len(test)), (1045, 149, 300))

    heading("6.3 Creating data loaders")
    show("longest training message (tokens)", train.max_length, 120,
         note="which messages are in the training set depends on the random draws; the book's longest is 120")
    pad = tokenizer.eot_token
    show("pad id <|endoftext|>", pad, 50256)
    # the book pads every message to the longest; "last-position" keeps that, "last-token" pads each batch
    loaders = [classification_loader(ds, 8, "last-position", pad, shuffle=k == 0, drop_last=k == 0)
               for k, ds in enumerate((train, val, test))]
    show("training, validation, test batches", tuple(len(loader) for loader in loaders), (130, 19, 38))
    ids, lengths, labels = next(iter(loaders[0]))
    show("Input batch dimensions", ids.shape, (8, 120))
    show("Label batch dimensions", labels.shape, (8,))

    heading("6.5 Adding a classification head")
    cfg = GPTConfig.preset("cpu-tiny", vocab_size=tokenizer.n_vocab, context_length=train.max_length)
    model = GPTClassifier(GPT(cfg, seed=123), num_classes=2, labels=("ham", "spam"), pad_id=pad)
    print(f"score (the book's out_head): {model.score}")
    print(set_trainable(model, "last-block"))
    inputs = np.array([tokenizer.encode("Do you have time")])
    show("Inputs", inputs.tolist(), [[5211, 345, 423, 640]])
    with no_grad():
        hidden = model.transformer.hidden_states(inputs)  # (1, 4, C): every position's hidden state
        outputs = model(inputs)  # (1, 2): the head on the last token's, the only one that saw the whole text
    show("hidden states", hidden.shape, note="the book's head runs on every position: outputs (1, 4, 2)")
    show("Outputs dimensions", outputs.shape, (1, 2), note="ours reads one position per message first")
    print("examples/finetune_classifier.py trains it; examples/classify.py labels new messages.")


if __name__ == "__main__":
    main()
