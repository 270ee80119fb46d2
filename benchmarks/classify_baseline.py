"""A bag-of-words baseline for the spam classifier: logistic regression in NumPy on the same balanced
70/10/20 split as examples/finetune_classifier.py, to say what accuracy a GPT has to beat.

    python benchmarks/classify_baseline.py --data SMSSpamCollection.tsv

Features: a 0/1 vector of the lowercased words (runs of letters and digits) seen in the training set.
Full-batch gradient descent on the mean cross-entropy plus a small L2 penalty.
"""

import argparse
import re

import numpy as np

from tinygrad_llm.finetune.classify_data import balance_classes, read_labeled_tsv, split_indices


def bag_of_words(texts, vocab):
    x = np.zeros((len(texts), len(vocab)), dtype=np.float32)
    for i, text in enumerate(texts):
        x[i, [vocab[w] for w in set(re.findall(r"[a-z0-9]+", text.lower())) if w in vocab]] = 1.0
    return x


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="label<TAB>text file")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--l2", type=float, default=1e-4)
    args = p.parse_args(argv)
    data = read_labeled_tsv(args.data)
    keep = balance_classes(data.labels, args.seed)
    texts, labels = [data.texts[i] for i in keep], data.labels[keep]
    train, val, test = split_indices(len(keep), args.seed)
    vocab = {w: k for k, w in enumerate(sorted({w for i in train for w in re.findall(r"[a-z0-9]+", texts[i].lower())}))}
    x, y = bag_of_words(texts, vocab), labels.astype(np.float32)
    w, b = np.zeros(len(vocab), dtype=np.float32), 0.0
    for _ in range(args.steps):  # gradient descent on mean cross-entropy + l2/2 |w|^2
        p_spam = 1 / (1 + np.exp(-(x[train] @ w + b)))
        g = p_spam - y[train]
        w -= args.lr * (x[train].T @ g / len(train) + args.l2 * w)
        b -= args.lr * g.mean()
    acc = lambda idx: float((((x[idx] @ w + b) > 0) == (y[idx] > 0.5)).mean())
    print(f"bag of words ({len(vocab):,} words), logistic regression: train {100 * acc(train):.2f}%, "
          f"val {100 * acc(val):.2f}%, test {100 * acc(test):.2f}%")


if __name__ == "__main__":
    main()
