"""Classify texts with a classifier saved by examples/finetune_classifier.py.

    python examples/classify.py "You have won a prize! Call 0800 now" "see you at 6?"
    cat messages.txt | python examples/classify.py --model runs/classify/model

Prints one line per text: label, probability, text (tab-separated). Texts come from the arguments, or,
without any, from stdin, one per line (blank lines are skipped). Bad input prints one line,
`error: ...`, and exits with status 2.
"""

import sys

from autograd import DeviceError
from autograd.checkpoint import CheckpointError
from tinygrad_llm.finetune.classifier import GPTClassifier
from tinygrad_llm.support.cli import DEVICES, Parser, positive_int


def build_parser():
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("texts", nargs="*", help="texts to classify; none: read stdin, one per line")
    p.add_argument("--model", default="runs/classify/model", help="the classifier's directory")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="where the model runs: cpu, or cuda (CuPy and a GPU)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    return p


def run(argv):
    args = build_parser().parse_args(argv)
    model = GPTClassifier.from_pretrained(args.model, device=args.device)
    texts = args.texts or [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ValueError("no texts to classify: give them as arguments, or on stdin one per line")
    for text, (label, prob) in zip(texts, model.classify(texts, args.batch_size)):
        print(f"{label}\t{prob:.4f}\t{text}")
    return 0


def main(argv=None):
    try:
        return run(argv)
    except (ValueError, OSError, DeviceError, CheckpointError) as e:
        print(f"error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
