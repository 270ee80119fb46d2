"""Book chapter 5, section 5.4 (saving and loading), for a whole run: what a training run leaves in its
folder, and how it is read back.

    out_dir/checkpoint.safetensors   model, optimizer, schedule, data position and metadata (Trainer.save_checkpoint)
    out_dir/metrics.jsonl            one JSON line per evaluation (NaN written as null: `json_safe`), with
                                     "per_step": the loss, grad norm and lr of each step since the line before
    out_dir/loss.png                 train and validation loss (`plot_metrics`, with matplotlib), and beside
                                     it lr.png, grad_norm.png and for fine-tuning accuracy.png or reward.png
                                     (tinygrad_llm/viz/report.py, which draws them again from metrics.jsonl)
    out_dir/tokenizer/               the BPE's files, written once per run (`tokenizer_record` names them)
    out_dir/model/                   the final model in Hugging Face's layout (Trainer.export_model)

`RunFolder` writes them for the loop (tinygrad_llm/training/trainer.py), each file through
`atomic_write`, so a run killed at any instant leaves the previous version of a file or the new one.
A checkpoint and the files it needs are one unit: the tokenizer's files are written once (and again only
when they differ), and the checkpoint records the tokenizer's fingerprint.

`read_checkpoint_metadata` reads a checkpoint's training state without loading the model, and
`checkpoint_tokenizer` the tokenizer it was trained with, checked against the fingerprint it recorded.
"""

import json
import math
from pathlib import Path

from autograd.checkpoint import CheckpointError, load_state, read_metadata, remove_stale_temporaries, save_state, write_text
from autograd.viz import save_figure
from tinygrad_llm.text.tokenizer import BPETokenizer, get_tokenizer, tokenizer_fingerprint
from tinygrad_llm.viz import report

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"


def json_safe(record):
    """`record` with each NaN or infinite float replaced by None, also inside its lists and dicts. JSON
    has no NaN or Infinity (Python's json writes them, but they make the line invalid JSON for other
    readers), so metrics.jsonl and the checkpoint's records hold null where a value was not a finite number."""
    if isinstance(record, dict):
        return {k: json_safe(v) for k, v in record.items()}
    if isinstance(record, list):
        return [json_safe(v) for v in record]
    return None if isinstance(record, float) and not math.isfinite(record) else record


def new_per_step():
    """An evaluation record's "per_step": each step since the record before, its training loss (the mean
    over its micro-batches), its gradient norm before clipping (None where the run neither clipped nor
    skipped, so never computed it) and the learning rate its update used. The Trainer fills it from the
    values it reads at log points: no extra host sync."""
    return {"step": [], "loss": [], "grad_norm": [], "lr": []}


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
        return save_figure(report.loss_figure(records), path, dpi=120)
    except ImportError:
        return None


class RunFolder:
    """The files a run writes in `path` (only rank 0 of a data-parallel run writes)."""

    def __init__(self, path):
        self.path = Path(path)
        self._tokenizer_on_disk = None  # the folder where this tokenizer's files are known to be written

    def prepare(self, is_main=True):
        """Create the folder; in the writer's process, remove the temporary files of a writer that was
        killed mid-write."""
        self.path.mkdir(parents=True, exist_ok=True)
        for folder in (self.path, self.path / "tokenizer", self.path / "model"):
            if is_main:  # the writer's folder: only rank 0 writes there
                remove_stale_temporaries(folder)

    def write_metrics(self, records):
        """metrics.jsonl: one strict-JSON line per evaluation record, rewritten whole through atomic_write
        (a few hundred short lines at most), so a kill never leaves half a line."""
        write_text(self.path / METRICS, "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in records))

    def plot(self, records):
        """loss.png and the report's other pictures beside it; the paths written, [] without matplotlib."""
        try:
            return report.write_report(self.path, records, glance=False)
        except ImportError:
            return []

    def save_checkpoint(self, model, optimizer, scheduler, tokenizer, extra):
        """checkpoint.safetensors with `extra` as its metadata, after the tokenizer's files (once) when it
        is a BPE of ours. Returns the checkpoint's path."""
        self.path.mkdir(parents=True, exist_ok=True)
        record = tokenizer_record(tokenizer)
        if record is not None and record["kind"] == "bpe":
            self._write_tokenizer_once(tokenizer, self.path / record["path"])
        path = self.path / CHECKPOINT
        save_state(path, model, optimizer, scheduler, extra=extra)
        return path

    def _write_tokenizer_once(self, tokenizer, folder):
        """The tokenizer's files in `folder`, written only when they are not there already: rewriting
        them at every checkpoint would give a kill one more chance to land between two files. Each file
        is written atomically, and the checkpoint written after them records their fingerprint."""
        if self._tokenizer_on_disk == folder:
            return
        fingerprint = tokenizer_fingerprint(tokenizer)
        try:
            same = tokenizer_fingerprint(BPETokenizer.load(folder)) == fingerprint
        except (OSError, ValueError):  # not there yet, or from a run that was killed or replaced
            same = False
        if not same:
            tokenizer.save(folder)
        self._tokenizer_on_disk = folder

    def load_checkpoint(self, model, optimizer, scheduler, decay_all):
        """Load the checkpoint into the model, optimizer and schedule; returns its `extra` metadata. Where
        the optimizer groups differ because of TrainConfig.decay_all, the error says what to resume with."""
        try:
            return load_state(self.path / CHECKPOINT, model, optimizer, scheduler)
        except CheckpointError as e:
            raise CheckpointError(f"{e}{self._groups_hint(decay_all)}") from None

    def _groups_hint(self, decay_all):
        try:
            saved = read_checkpoint_metadata(self.path)["train_config"]["decay_all"]
        except (OSError, CheckpointError, KeyError, TypeError):
            return ""
        if saved == decay_all:
            return ""
        return (f"\n  the checkpoint was trained with TrainConfig(decay_all={saved}) and this Trainer has "
                f"decay_all={decay_all}: resume with decay_all={saved}")

    def export_model(self, model, tokenizer):
        """model/ in Hugging Face's layout, with the tokenizer's files beside it, so examples/generate.py,
        `load_pretrained` and transformers can load it: a GPT with GPT-2's encoder.json and vocab.bpe
        when its tokenizer is a BPE of ours; a Llama-family model with tokenizer.json and its chat
        template when its tokenizer is one (`pretrained.save_model`). Returns its path."""
        from tinygrad_llm.text.hf_tokenizer import HFTokenizer

        if isinstance(tokenizer, HFTokenizer):
            from tinygrad_llm.models.pretrained import save_model

            return save_model(model, tokenizer, self.path / "model")
        model.save_pretrained(self.path / "model")
        record = tokenizer_record(tokenizer)
        if record is not None and record["kind"] == "bpe":
            tokenizer.save(self.path / "model")
        return self.path / "model"
