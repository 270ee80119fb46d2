"""Book chapter 6, sections 6.4-6.8: fine-tuning for classification, a GPT with a class head.

`GPTClassifier` holds a `GPT` under `transformer` and replaces its vocabulary head by `score`, a
Linear(emb_dim, num_classes) (the names of Hugging Face's GPT2ForSequenceClassification). The head reads
the final LayerNorm's output at one position of each sequence:

- "last-token" (the default): the last real token, at index length - 1. Causal attention makes it the
  one position that has seen the whole message, and the pads after it change nothing there.
- "last-position": the last position, T - 1, as the book does. With right padding that is a pad for
  every message shorter than the batch, so what the head reads depends on the padding.

    model = GPTClassifier(GPT.from_pretrained("runs/pretrain/model"), num_classes=2, labels=("ham", "spam"))
    set_trainable(model, "last-block")              # the book's choice: last block, final LayerNorm, head
    loss = classification_loss(model, (ids, lengths, labels))
    model.save_pretrained("runs/classify/model")    # config.json, model.safetensors, tokenizer files
    GPTClassifier.from_pretrained("runs/classify/model").classify(["You won a prize! Call now"])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np

import autograd.functional as F
from autograd import Tensor, backend, nn, no_grad
from autograd.checkpoint import FileFormatError, load_tensors, save_tensors, write_text
from tinygrad_llm.finetune.classify_data import ClassificationDataset, encode_texts, pad_batch
from tinygrad_llm.text.data import DataLoader
from tinygrad_llm.finetune.lora import merged_state_dict
from tinygrad_llm.models.gpt import GPT, GPTConfig

POOLS = ("last-token", "last-position")
TRAINABLE = ("all", "last-block", "head", "lora")
CONFIG, WEIGHTS = "config.json", "model.safetensors"


@dataclass(frozen=True)
class ClassifierConfig:
    """The GPT's config and what the head adds: class names, the position read, the pad id and the
    length inputs are cut to (the training length), and the tokenizer (its files lie beside it)."""

    gpt: GPTConfig
    labels: tuple
    pool: str = "last-token"
    pad_id: int | None = None
    max_length: int | None = None
    tokenizer: dict | None = None  # {"kind": "bpe"}: encoder.json + vocab.bpe beside; or {"kind": "tiktoken", "name"}

    def __post_init__(self):
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}; got {self.pool!r}")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"a classifier needs at least two distinct labels, got {list(self.labels)}")
        if self.max_length is not None and not 0 < self.max_length <= self.gpt.context_length:
            raise ValueError(f"max_length {self.max_length} must be in 1..{self.gpt.context_length} (context length)")

    @property
    def num_classes(self):
        return len(self.labels)

    def to_dict(self):
        return {**asdict(self), "labels": list(self.labels), "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        num_classes = d.pop("num_classes", None)
        config = cls(**{**d, "gpt": GPTConfig.from_dict(d["gpt"]), "labels": tuple(d["labels"])})
        if num_classes is not None and num_classes != config.num_classes:
            raise ValueError(f"num_classes {num_classes} does not match the {config.num_classes} labels")
        return config


class GPTClassifier(nn.Module):
    """A GPT whose vocabulary head is replaced by `score`, a Linear(emb_dim, num_classes).

    gpt: a GPT (its weights are kept; an untied lm_head is dropped, it would be dead weight) or a
    GPTConfig (a new GPT drawn from `seed`). labels: the class names (default "0", "1", ...).
    `tokenizer` (an attribute, not a module) is saved beside the weights and used by `classify`.
    """

    def __init__(self, gpt, num_classes=2, *, labels=None, pool="last-token", pad_id=None, max_length=None,
                 tokenizer=None, seed=0):
        super().__init__()
        if isinstance(gpt, GPTConfig):
            gpt = GPT(gpt, seed=seed)
        labels = tuple(labels) if labels is not None else tuple(str(k) for k in range(num_classes))
        if len(labels) != num_classes:
            raise ValueError(f"{len(labels)} labels for {num_classes} classes")
        if not gpt.config.tie_weights and "lm_head" in gpt._modules:
            del gpt.lm_head  # the vocabulary head of an untied GPT: not used by a classifier
        self.transformer = gpt
        rng = np.random.default_rng(seed)
        self.score = nn.Linear(gpt.config.emb_dim, num_classes, rng=rng).to(gpt.wte.weight.device)
        self.tokenizer = tokenizer
        self.config = ClassifierConfig(gpt.config, labels, pool, pad_id, max_length, _tokenizer_record(tokenizer))

    def forward(self, ids, lengths=None):
        """Class logits (B, num_classes) of ids (B, T); `lengths` (B,) are the rows' real lengths (the
        rest is padding). Without lengths every row counts as T tokens long."""
        ids = ids.data if isinstance(ids, Tensor) else ids
        B, T = ids.shape
        h = self.transformer.hidden_states(ids)  # (B, T, C)
        pos = classified_positions(np.full(B, T) if lengths is None else lengths, T, self.config.pool, h.device)
        # one fancy index, no loop over the batch: row b's hidden state at pos[b]
        x = h[backend.xp_for(h.device).arange(B), pos]  # (B, T, C) -> (B, C)
        return self.score(x)  # (B, C) -> (B, num_classes)

    # ---- inference ----------------------------------------------------------------------------------

    def predict_proba(self, texts, batch_size=32):
        """Class probabilities (N, num_classes), a NumPy array, of `texts` (needs `tokenizer`)."""
        if self.tokenizer is None:
            raise ValueError("this classifier has no tokenizer; set model.tokenizer first")
        tokens = encode_texts(self.tokenizer, texts)
        if not all(tokens):
            raise ValueError(f"text {[bool(t) for t in tokens].index(False)} is empty")
        cfg = self.config
        dataset = ClassificationDataset(tokens, np.zeros(len(tokens)), cfg.max_length or cfg.gpt.context_length)
        loader = classification_loader(dataset, batch_size, self.config.pool, pad_id=cfg.pad_id or 0,
                                       shuffle=False, drop_last=False)
        with nn.eval_mode(self), no_grad():
            probs = [F.softmax(self(ids, lengths), axis=-1).numpy() for ids, lengths, _ in loader]
        return np.concatenate(probs)

    def classify(self, texts, batch_size=32):
        """[(label, probability)] of each text: the most probable class and its probability."""
        probs = self.predict_proba(texts, batch_size)
        best = probs.argmax(axis=1)
        return [(self.config.labels[k], float(p[k])) for k, p in zip(best, probs)]

    # ---- saving and loading -------------------------------------------------------------------------

    def save_pretrained(self, directory):
        """Write `directory`/config.json, model.safetensors and, for a BPE of ours, its encoder.json and
        vocab.bpe. Each file is written atomically (autograd.checkpoint.atomic_write), the config last. A
        LoRA layer is written as the plain Linear it amounts to (`lora.merged_state_dict`), as
        weights.save_pretrained does: the saved classifier loads without LoRA."""
        tensors = merged_state_dict(self)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.config.tokenizer == {"kind": "bpe"}:
            self.tokenizer.save(directory)
        save_tensors(directory / WEIGHTS, tensors, {"format": "tinygrad_llm.GPTClassifier"})
        write_text(directory / CONFIG, json.dumps(self.config.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        """The classifier saved in `directory` by `save_pretrained`, with its tokenizer, in eval mode."""
        from tinygrad_llm.text.tokenizer import BPETokenizer, get_tokenizer

        directory = Path(directory)
        if not (directory / CONFIG).is_file():
            raise FileNotFoundError(f"no classifier in {directory}: {directory / CONFIG} not found")
        try:
            d = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{directory / CONFIG} is not valid JSON ({e})") from None
        if not isinstance(d, dict) or "gpt" not in d or "labels" not in d:
            raise ValueError(f"{directory / CONFIG} is not a classifier's config (no 'gpt' and 'labels'); "
                             "a language model loads with GPT.from_pretrained")
        try:
            config = ClassifierConfig.from_dict(d)
        except TypeError as e:  # a key this version does not know
            raise ValueError(f"{directory / CONFIG}: {e}") from None
        record = config.tokenizer
        tokenizer = None
        if record == {"kind": "bpe"}:
            tokenizer = BPETokenizer.load(directory)
        elif record is not None:
            if not (isinstance(record, dict) and record.get("kind") == "tiktoken" and isinstance(record.get("name"), str)):
                raise FileFormatError(f"{directory / CONFIG}: the field tokenizer is {record!r:.80}; expected "
                                      '{"kind": "bpe"} or {"kind": "tiktoken", "name": "gpt2"}')
            tokenizer = get_tokenizer(record["name"])
        model = cls(config.gpt, config.num_classes, labels=config.labels, pool=config.pool, pad_id=config.pad_id,
                    max_length=config.max_length, tokenizer=tokenizer)
        tensors, _ = load_tensors(directory / WEIGHTS)
        model.load_state_dict(tensors)
        return model.to(device).eval()


def classified_positions(lengths, T, pool, device="cpu"):
    """The index the head reads in each row of a batch padded to T tokens, from the rows' real lengths:
    length - 1 for "last-token", T - 1 for "last-position".
    lengths [3, 1], T=3 -> [2, 0] (last-token) or [2, 2] (last-position)."""
    lengths = np.asarray(lengths) if not hasattr(lengths, "shape") else lengths
    if isinstance(lengths, np.ndarray) and (lengths.ndim != 1 or lengths.min() < 1 or lengths.max() > T):
        raise ValueError(f"lengths must be a vector of values in 1..{T}, got {lengths.tolist()}")
    if pool == "last-position":
        return backend.xp_for(device).full(len(lengths), T - 1)
    return backend.to_device(lengths, device) - 1


def _tokenizer_record(tokenizer):
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "save"):
        return {"kind": "bpe"}
    return {"kind": "tiktoken", "name": tokenizer.name}


# ---------------------------------------------------------------------------------------------------
# Which parameters train


def set_trainable(model, which, *, lora_rank=16, lora_alpha=16.0, seed=0):
    """Freeze `model` (a GPTClassifier) except the part that trains, and return a one-line summary:
    "all": every parameter; "last-block": the last transformer block, the final LayerNorm and the head
    (the book's choice); "head": the head alone; "lora": LoRA adapters (rank, alpha) on every Linear, the
    head's included, as the book's appendix E does, plus the head's own weight and bias.

    subtle: the book freezes the head under LoRA too, leaving its randomly initialised weight and bias
    fixed and training only its adapter. The head is new, has nothing pretrained to preserve, and is
    smaller than its own adapter (emb_dim * num_classes numbers, against rank * (emb_dim + num_classes)),
    so here it trains in full."""
    if which not in TRAINABLE:
        raise ValueError(f"trainable must be one of {', '.join(TRAINABLE)}; got {which!r}")
    if which == "lora":
        from tinygrad_llm.finetune.lora import apply_lora

        return str(apply_lora(model, lora_rank, lora_alpha, targets="all", trainable=("score.*",), seed=seed))
    model.requires_grad_(which == "all")
    if which == "last-block":
        model.transformer.h[-1].requires_grad_(True)
        model.transformer.ln_f.requires_grad_(True)
    model.score.requires_grad_(True)
    n, total = model.num_parameters(trainable=True), model.num_parameters()
    return f"trainable: {which}, {n:,} of {total:,} parameters ({100 * n / total:.2f}%)"


# ---------------------------------------------------------------------------------------------------
# Batches, loss and accuracy


def classification_loader(dataset, batch_size, pool, pad_id, shuffle=True, drop_last=True, seed=0):
    """A DataLoader of (ids, lengths, labels) batches padded with `pad_id`. "last-token" pads each batch
    to its longest item (what comes after a row's last token cannot change it: attention is causal);
    "last-position" pads to the dataset's max_length, as the book does, so the position it reads does
    not depend on which messages share a batch."""
    pad_to = dataset.max_length if pool == "last-position" else None
    return DataLoader(dataset, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                      collate_fn=partial(pad_batch, pad_id=pad_id, pad_to=pad_to))


def classification_loss(model, batch):
    """Cross-entropy of the class logits of an (ids, lengths, labels) batch."""
    ids, lengths, labels = batch
    return F.cross_entropy(model(ids, lengths), labels)  # (B, K) against (B,)


def batch_examples(batch):
    """Real (non-pad) tokens in an (ids, lengths, labels) batch: the trainer's tokens_fn."""
    return int(batch[1].sum())


def accuracy(model, loader, max_batches=None):
    """The fraction of examples in the first `max_batches` batches of `loader` (all when None) whose most
    probable class is their label; in eval mode without gradients, summed on the device, one sync.
    The loader (a DataLoader) is read from the start of its epoch 0, as `evaluate` reads it."""
    correct, n = None, 0
    with nn.eval_mode(model), no_grad():
        for ids, lengths, labels in islice(loader.iter_from(0), max_batches):
            logits = model(ids, lengths).data
            hits = (logits.argmax(axis=1) == backend.to_device(labels, backend.device_of(logits))).sum()
            correct = hits if correct is None else correct + hits
            n += len(labels)
    return float(correct) / n if n else float("nan")


def accuracy_hook(train_loader, val_loader=None, max_batches=None):
    """An `on_eval(trainer, record)` for Trainer: adds train_acc (and val_acc) over `max_batches` batches
    to each evaluation's record and logs them."""

    def on_eval(trainer, record):
        record["train_acc"] = accuracy(trainer.model, train_loader, max_batches)
        line = f"step {trainer.step}: train accuracy {100 * record['train_acc']:.2f}%"
        if val_loader is not None:
            record["val_acc"] = accuracy(trainer.model, val_loader, max_batches)
            line += f", val accuracy {100 * record['val_acc']:.2f}%"
        trainer.log(line)

    return on_eval


__all__ = [
    "POOLS", "TRAINABLE", "ClassifierConfig", "GPTClassifier", "classified_positions", "set_trainable",
    "classification_loader",
    "classification_loss", "batch_examples", "accuracy", "accuracy_hook",
]
