"""What the book scripts share: the --data-dir flag with its one-line error, and printing a value next
to the one the book prints.

The data folder holds the-verdict.txt (the book's corpus) and gpt2/ with GPT-2's encoder.json and
vocab.bpe (the tokenizer's files, read offline). By default it is ../shared/data beside the checkout.
"""

import argparse
import sys
from pathlib import Path

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SOURCES = {
    "instruction-data.json": "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json",
    "instruction-data-with-preference.json": "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",
    "SMSSpamCollection.tsv": "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip (the file SMSSpamCollection inside)",
    "the-verdict.txt": "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt",
    "gpt2/encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/encoder.json",
    "gpt2/vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/vocab.bpe",
}


def parse_args(doc, needs=(), argv=None, add_arguments=None):
    """The script's arguments; exits with one line and status 2 when a file it `needs` is not in --data-dir."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=doc.split("\n\n", 1)[1] if "\n\n" in doc else None)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="folder with the-verdict.txt and gpt2/{encoder.json,vocab.bpe} (default: ../shared/data "
                        "beside the checkout)")
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    missing = [name for name in needs if not (args.data_dir / name).is_file()]
    if missing:
        where = "; ".join(f"{name} from {SOURCES[name]}" for name in missing)
        print(f"error: {', '.join(missing)} not found in {args.data_dir}: download {where} "
              f"(keeping the gpt2/ folder), or pass --data-dir DIR", file=sys.stderr)
        sys.exit(2)
    return args


def plot_flag(parser, default, what):
    """--plot [FILE]: write `what` as a PNG (FILE, else `default` in the current folder)."""
    parser.add_argument("--plot", nargs="?", const=default, default=None, metavar="FILE",
                        help=f"draw {what} into FILE (default {default}; needs matplotlib)")


def write_picture(draw, path):
    """Run `draw()` (which writes `path`) and print where the picture is; without matplotlib, one line
    saying what to install."""
    try:
        draw()
    except ImportError as e:
        print(f"--plot: {e}")
        return None
    print(f"wrote {path}")
    return path


def heading(text):
    print(f"\n## {text}")


def show(label, ours, book=None, note=None):
    """`label: ours`, then what the book prints there (and why it differs, when it may)."""
    ours, book = str(ours), (None if book is None else str(book))
    tail = "" if book is None else ("   (book: same)" if ours == book else f"   (book: {book})")
    if "\n" in ours or (book is not None and "\n" in book):
        print(f"{label}:\n{ours}")
        if book is not None:
            print("book:" + (" same" if ours == book else f"\n{book}"))
    else:
        print(f"{label}: {ours}{tail}")
    if note:
        print(f"  ({note})")
