"""What a training run leaves in its folder, and how it is read back.

    out_dir/checkpoint.safetensors   model, optimizer, schedule, data position and metadata (Trainer.save_checkpoint)
    out_dir/metrics.jsonl            one JSON line per evaluation (NaN written as null: `json_safe`)
    out_dir/loss.png                 train and validation loss (`plot_metrics`, with matplotlib)
    out_dir/tokenizer/               the BPE's files, written once per run (`tokenizer_record` names them)
    out_dir/model/                   the final model in Hugging Face's GPT-2 layout (Trainer.export_model)

`read_checkpoint_metadata` reads a checkpoint's training state without loading the model, and
`checkpoint_tokenizer` the tokenizer it was trained with, checked against the fingerprint it recorded.
The loop that writes all this is tinygrad_llm/training/trainer.py.
"""

import math
from pathlib import Path

from autograd.checkpoint import CheckpointError, atomic_write, read_metadata
from tinygrad_llm.text.tokenizer import BPETokenizer, get_tokenizer, tokenizer_fingerprint

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"


def json_safe(record):
    """`record` with each NaN or infinite float replaced by None. JSON has no NaN or Infinity (Python's
    json writes them, but they make the line invalid JSON for other readers), so metrics.jsonl and the
    checkpoint's records hold null where a value was not a finite number."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def tokenizer_record(tokenizer):
    """How a checkpoint names its tokenizer: {"kind": "bpe", "path": "tokenizer"} (files saved beside it)
    or {"kind": "tiktoken", "name": ...}."""
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "save"):
        return {"kind": "bpe", "path": "tokenizer"}
    return {"kind": "tiktoken", "name": tokenizer.name}


def checkpoint_tokenizer(out_dir, extra):
    """The tokenizer a checkpoint was trained with (its `extra` metadata, from `read_checkpoint_metadata`):
    read from its files beside the checkpoint, or tiktoken's by name; None when it has none. Its
    fingerprint must be the one the checkpoint recorded, else CheckpointError: the files beside it were
    changed or belong to another run, and the ids the model learned would mean other text."""
    record = extra.get("tokenizer")
    if record is None:
        return None
    if record["kind"] == "bpe":
        where = Path(out_dir) / record["path"]
        try:
            tok = BPETokenizer.load(where)
        except (OSError, ValueError) as e:  # missing, or a JSON that does not parse
            raise CheckpointError(f"the tokenizer files of {Path(out_dir) / CHECKPOINT} in {where} cannot be read "
                                  f"({e}); restore them, or start the run over") from None
    else:
        where, tok = record["name"], get_tokenizer(record["name"])
    expected = extra.get("tokenizer_fingerprint")
    if expected is not None and tokenizer_fingerprint(tok) != expected:
        raise CheckpointError(f"the tokenizer in {where} is not the one {Path(out_dir) / CHECKPOINT} was trained "
                              f"with (fingerprint {tokenizer_fingerprint(tok)}, expected {expected}); restore "
                              "its files, or start the run over")
    return tok


def read_checkpoint_metadata(out_dir):
    """The `extra` metadata of `out_dir`'s checkpoint (step, configs, tokenizer, ...), without loading
    the model. Raises FileNotFoundError or CheckpointError."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} not found")
    meta = read_metadata(path)
    extra = meta.get("extra") if isinstance(meta, dict) else None
    if not isinstance(extra, dict) or "step" not in extra:
        raise CheckpointError(f"checkpoint {path} holds no training state (was it written by Trainer?)")
    return extra


def plot_metrics(records, path):
    """Train and validation loss against tokens seen, as a PNG. Returns the path, or None when
    matplotlib (the optional `plot` extra) is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tokens = [r["tokens_seen"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(tokens, [r["train_loss"] for r in records], label="train")
    if any(r.get("val_loss") is not None for r in records):
        ax.plot(tokens, [r.get("val_loss") for r in records], linestyle="-.", label="validation")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path
