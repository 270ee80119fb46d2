"""Book chapter 7, bonus material (ch07/04_preference-tuning-with-dpo): preference tuning with DPO.

After instruction fine-tuning, Direct Preference Optimization (Rafailov et al. 2023) aligns the model to
preferred answers. Each entry holds a prompt (instruction and input) and two responses, a `chosen` and a
`rejected` one. With the mean log-probability of a response under the policy (the model being trained)
and under a frozen reference (the model it started from), eq. 7 of the paper:

    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    loss = -log sigmoid(beta * logits)                    mean over the batch
    chosen_reward = policy_chosen - reference_chosen      (rejected_reward alike; the book's, without beta)

A policy equal to its reference has logits 0, so loss ln 2 = 0.6931 and both rewards 0; training pushes
the reward margin, chosen minus rejected, up. The pieces follow the book's notebook: `PreferenceDataset`,
`custom_collate_fn`, `compute_logprobs` (here `sequence_logprobs`, which runs the model too),
`compute_dpo_loss` (`dpo_loss`), `compute_dpo_loss_batch` (`DPOObjective.batch`) and
`compute_dpo_loss_loader` (`evaluate_dpo`); the robust loop is the shared Trainer with
`DPOObjective` as its loss_fn (examples/finetune_preferences.py).

    policy, tok = instruct.load_model("runs/instruct/model")
    objective = DPOObjective(frozen_copy(policy), beta=0.1)    # the book's reference: a second model
    batch = next(iter(preference_loader(entries, tok, 8, train=True)))
    loss, chosen, rejected = objective.batch(policy, batch)     # 0.6931, 0, 0 before any step

The reference can cost no second model: after `apply_lora(policy, ...)`, `DPOObjective(None)` computes
the reference with the adapters switched off (`lora.adapters_disabled`): the frozen base weights, which
are exactly the model the policy started from.

Departures from the book, each for a reason:
- The prompt is `instruct.prompt_text(entry)` (format_input and the "### Response:" header) tokenized
  apart from the response, as instruction fine-tuning here tokenizes it; the mask selects the response's
  tokens and the end-of-text appended to it (the book's mask also selects the header and leaves out the
  end, as its texts have none): the model is scored on what it would generate, stopping included.
- A tokenizer with a chat template (the Llama family's) gets the prompt in that template instead, the
  instruction and input as the user's message; the response is what the template writes for the
  assistant's turn, its end-of-turn token included.
- chosen and rejected are padded to one length (as in the book) and run as one batch of 2B sequences,
  and the model sees ids[:, :-1] only: the last position's logits predict nothing (the book computes
  them and cuts them off; causal attention makes the two equal).
- Dropout is switched off in the policy (`disable_dropout`, as the book's drop_rate 0.0 and TRL's
  disable_dropout do): with it, the policy's log-probabilities would be noisy against the reference's.
"""

from __future__ import annotations

import copy
from functools import partial
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import numpy as np

import autograd.functional as F
from autograd import Tensor, backend, nn, no_grad, ops
from tinygrad_llm.finetune import instruct
from tinygrad_llm.finetune.lora import adapters_disabled, lora_layers
from tinygrad_llm.models.generate import generate
from tinygrad_llm.text.data import DataLoader
from tinygrad_llm.training.loss import batches

FIELDS = ("instruction", "input", "chosen", "rejected")  # "output" (the reference answer) is optional
RESPONSES_FILE = "preference-data-with-response.json"

# ---------------------------------------------------------------------------------------------------
# Entries: reading (instruct.load_entries), checking, splitting (instruct.split_entries)


def entry_problem(entry) -> str | None:
    """Why `entry` is not a usable preference entry, or None: it needs the four FIELDS as strings, the
    two responses not blank, and "output", where present, a string."""
    problem = instruct.entry_problem(entry, FIELDS, optional=("output",))
    if problem is not None:
        return problem
    for field in ("chosen", "rejected"):
        if not entry[field].strip():
            return f"{field!r} is empty"
    return None


def check_entries(entries, on_bad="skip"):
    """(good entries, [(index, problem)] of the bad ones): `instruct.check_entries` with this module's
    `entry_problem`. on_bad="error" raises ValueError at the first bad entry, "skip" leaves them out;
    all entries bad is an error either way."""
    return instruct.check_entries(entries, on_bad, entry_problem,
                                  needs=f"string fields {', '.join(FIELDS)}, the responses not empty")


# ---------------------------------------------------------------------------------------------------
# Prompt and responses as token ids


def has_chat_template(tokenizer) -> bool:
    """Whether prompts go through the tokenizer's chat template (a Llama-family tokenizer that has one)."""
    return getattr(tokenizer, "chat_template", None) is not None and hasattr(tokenizer, "apply_chat_template")


def chat_messages(entry, response=None) -> list:
    """The entry as a conversation: the instruction (and input) as the user's turn, `response` as the
    assistant's when given."""
    user = entry["instruction"] + (f"\n\n{entry['input']}" if entry.get("input") else "")
    return [{"role": "user", "content": user}] + ([{"role": "assistant", "content": response}] if response else [])


def prompt_ids(tokenizer, entry) -> list:
    """The ids the model is asked with: the Alpaca prompt and response header, or the chat template's
    user turn and the assistant's header."""
    if has_chat_template(tokenizer):
        return list(tokenizer.apply_chat_template(chat_messages(entry), add_generation_prompt=True))
    return instruct.encode_text(tokenizer, instruct.prompt_text(entry))


def response_ids(tokenizer, entry, response) -> list:
    """The ids of `response` after the prompt, with what ends it: end-of-text, or what the chat template
    writes after an assistant's message (its end-of-turn token)."""
    if has_chat_template(tokenizer):
        prompt = tokenizer.apply_chat_template(chat_messages(entry), add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(chat_messages(entry, response), add_generation_prompt=False,
                                             tokenize=False)
        if full.startswith(prompt):  # the assistant's turn continues the prompt (ChatML, Llama 3)
            return list(tokenizer.encode(full[len(prompt):], allowed_special="all"))  # its special tokens
    return instruct.encode_text(tokenizer, response) + [instruct.end_of_text(tokenizer)]


# ---------------------------------------------------------------------------------------------------
# Batches


class PreferenceExample(NamedTuple):
    """One tokenized entry: the prompt's ids and each response's ids (its end token included)."""
    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray


class PreferenceDataset:
    """The book's PreferenceDataset: each entry tokenized once. With `max_length`, entries whose prompt
    alone fills it are left out (no response token would be left to score): `dropped` lists their
    positions in `entries`."""

    def __init__(self, entries, tokenizer, max_length=None):
        self.entries, self.examples, self.dropped = [], [], []
        ids = partial(np.asarray, dtype=np.int64)
        for i, entry in enumerate(entries):
            prompt = ids(prompt_ids(tokenizer, entry))
            if max_length is not None and len(prompt) >= max_length:
                self.dropped.append(i)
                continue
            self.entries.append(entry)
            self.examples.append(PreferenceExample(prompt, ids(response_ids(tokenizer, entry, entry["chosen"])),
                                                   ids(response_ids(tokenizer, entry, entry["rejected"]))))

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


class PreferenceBatch(NamedTuple):
    """(B, T) arrays: prompt + chosen and prompt + rejected ids, padded to one length, and the masks
    that are True on the response tokens alone (prompt and padding False)."""
    chosen: np.ndarray
    rejected: np.ndarray
    chosen_mask: np.ndarray
    rejected_mask: np.ndarray


def custom_collate_fn(batch, pad_token_id=50256, allowed_max_length=None) -> PreferenceBatch:
    """The book's DPO collate: each prompt followed by each response, all padded with `pad_token_id` to
    the longest (chosen and rejected alike), masks selecting the response tokens, all cut to
    `allowed_max_length`.

    >>> b = custom_collate_fn([PreferenceExample([1, 2], [3, 0], [4, 5, 0]), PreferenceExample([6], [7, 0], [0])],
    ...                       pad_token_id=0)
    >>> b.chosen.tolist(), b.chosen_mask.astype(int).tolist()
    ([[1, 2, 3, 0, 0], [6, 7, 0, 0, 0]], [[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])
    >>> b.rejected.tolist(), b.rejected_mask.astype(int).tolist()
    ([[1, 2, 4, 5, 0], [6, 0, 0, 0, 0]], [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]])
    """
    n = max(len(item.prompt) + max(len(item.chosen), len(item.rejected)) for item in batch)
    out = {}
    for key in ("chosen", "rejected"):
        ids = np.full((len(batch), n), pad_token_id, dtype=np.int64)  # (B, T)
        mask = np.zeros((len(batch), n), dtype=bool)
        for row, item in enumerate(batch):
            p, r = len(item.prompt), len(getattr(item, key))
            ids[row, :p] = item.prompt
            ids[row, p:p + r] = getattr(item, key)
            mask[row, p:p + r] = True  # the response (and its end token): prompt and padding stay False
        out[key], out[f"{key}_mask"] = ids[:, :allowed_max_length], mask[:, :allowed_max_length]
    return PreferenceBatch(**{k: np.ascontiguousarray(v) for k, v in out.items()})


def preference_loader(entries, tokenizer, batch_size, *, train, max_length=None, seed=123):
    """A DataLoader of PreferenceBatches over `entries` (or a PreferenceDataset of them): shuffled,
    incomplete last batch dropped, when `train` (the book's train_loader); in order and complete
    otherwise. Its `dataset.dropped` lists the entries left out because their prompt fills `max_length`."""
    dataset = entries if isinstance(entries, PreferenceDataset) else PreferenceDataset(entries, tokenizer, max_length)
    if not dataset:
        raise ValueError(f"no entry leaves room for its response: each of the {len(dataset.dropped)} prompts has "
                         f"{max_length} tokens or more (max_length; the model's context length caps it)")
    collate = partial(custom_collate_fn, pad_token_id=instruct.end_of_text(tokenizer), allowed_max_length=max_length)
    return DataLoader(dataset, batch_size, shuffle=train, drop_last=train, seed=seed, collate_fn=collate)


# ---------------------------------------------------------------------------------------------------
# Log-probabilities and the loss


def sequence_logprobs(model, ids, mask):
    """The mean log-probability of each sequence's selected tokens, a (B,) Tensor with gradients: the
    book's compute_logprobs(model(ids), ids, mask).

        lp_b = sum_t mask[b, t] log softmax(logits[b, t - 1])[ids[b, t]] / sum_t mask[b, t],   t >= 1

    Token t is predicted from the positions before it, so the model runs on ids[:, :-1] (the book runs
    it on all of ids and drops the last position's logits, which predict nothing)."""
    ids, mask = backend.to_host(getattr(ids, "data", ids)), backend.to_host(getattr(mask, "data", mask))
    logits = model(ids[:, :-1])  # (B, T - 1, V): position t - 1 predicts token t
    device = logits.device
    labels = backend.to_device(ids[:, 1:, None], device)  # (B, T - 1, 1)
    logp = ops.TakeAlongAxis.apply(F.log_softmax(logits, axis=-1), indices=labels, axis=-1)  # (B, T - 1, 1)
    selected = mask[:, 1:].astype(np.float64)  # (B, T - 1)
    counts = selected.sum(axis=1)
    if (counts == 0).any():
        raise ValueError(f"sequence_logprobs: rows {np.flatnonzero(counts == 0).tolist()} select no token")
    weights = Tensor((selected / counts[:, None]).astype(logits.data.dtype), device=device)  # each token 1 / its row's count
    return (logp.reshape(*selected.shape) * weights).sum(axis=1)  # (B,)


def check_beta(beta) -> float:
    """`beta` as a float; a ValueError unless it is a positive finite number."""
    if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and np.isfinite(beta) and beta > 0):
        raise ValueError(f"DPO's beta must be a positive number, got {beta!r}")
    return float(beta)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    """The book's compute_dpo_loss (DPO, eq. 7): (loss, chosen_rewards, rejected_rewards), each the mean
    over the batch of (B,) log-probabilities; the loss carries the gradient, the rewards none.

        loss = mean(-log sigmoid(beta * ((pc - pr) - (rc - rr)))),  rewards: mean(pc - rc), mean(pr - rr)

    beta (the paper's KL weight, typically 0.1 to 0.5) must be a positive finite number."""
    beta = check_beta(beta)
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)  # (B,)
    losses = -F.log_sigmoid(logits * beta)
    chosen_rewards = (policy_chosen - ref_chosen).detach()
    rejected_rewards = (policy_rejected - ref_rejected).detach()
    return losses.mean(), chosen_rewards.mean(), rejected_rewards.mean()


# ---------------------------------------------------------------------------------------------------
# The reference model, and a batch's loss


def frozen_copy(model):
    """The book's reference model: an independent copy of `model`, frozen and in eval mode."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


def disable_dropout(model):
    """Switch every dropout of `model` off (in place; train mode then computes what eval mode does), as
    the book's DPO notebook (drop_rate 0.0) and TRL's disable_dropout. Returns the model."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "drop_rate", None), float):  # GPT's attention reads its rate itself
            module.drop_rate = 0.0
    return model


def check_vocabularies(policy, reference):
    """A reference must score the policy's token ids: both need one vocabulary size."""
    p, r = policy.config.vocab_size, reference.config.vocab_size
    if p != r:
        raise ValueError(f"the reference model has a vocabulary of {r:,} tokens, the policy {p:,}: DPO compares "
                         "their log-probabilities of the same ids, so the reference must be the policy's base model")


class DPOObjective:
    """The DPO loss of a PreferenceBatch, as the Trainer's loss_fn(model, batch) -> loss.

    reference: a frozen model (`frozen_copy`, or the same weights loaded again), or None: the policy itself
    with its LoRA adapters switched off (the policy must have LoRA layers). Either way the reference
    runs in eval mode without gradients."""

    def __init__(self, reference=None, beta=0.1):
        self.reference, self.beta = reference, check_beta(beta)  # checked now, not at the first step

    def logprobs(self, model, batch):
        """(chosen, rejected) (B,) log-probabilities under `model`, from one forward pass over both."""
        ids = np.concatenate([batch.chosen, batch.rejected])  # (2B, T)
        lp = sequence_logprobs(model, ids, np.concatenate([batch.chosen_mask, batch.rejected_mask]))
        b = len(batch.chosen)
        return lp[:b], lp[b:]

    def reference_logprobs(self, model, batch):
        """(chosen, rejected) under the reference: the frozen model, or `model` with its adapters off."""
        with no_grad():
            if self.reference is not None:
                with nn.eval_mode(self.reference):
                    return self.logprobs(self.reference, batch)
            if not lora_layers(model):
                raise ValueError("DPOObjective(None) takes the policy with its LoRA adapters off as the reference, "
                                 "but the policy has no LoRA layers: apply_lora first, or pass a frozen copy")
            with nn.eval_mode(model), adapters_disabled(model):
                return self.logprobs(model, batch)

    def batch(self, model, batch):
        """The book's compute_dpo_loss_batch: (loss, chosen_rewards, rejected_rewards)."""
        ref_chosen, ref_rejected = self.reference_logprobs(model, batch)
        policy_chosen, policy_rejected = self.logprobs(model, batch)
        return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.beta)

    def __call__(self, model, batch):
        return self.batch(model, batch)[0]


def evaluate_dpo(model, loader, objective, max_batches=None) -> dict:
    """The book's compute_dpo_loss_loader: the mean loss, chosen and rejected rewards over the first
    `max_batches` batches (all when None), in eval mode without gradients, and the reward margin (chosen
    minus rejected). Summed on the device and read once; NaN for an empty loader."""
    total, n = None, 0
    with nn.eval_mode(model), no_grad():
        for batch in islice(batches(loader, 0), max_batches):
            values = [t.data for t in objective.batch(model, batch)]
            total = values if total is None else [a + b for a, b in zip(total, values)]
            n += 1
    loss, chosen, rejected = ([float(backend.to_host(v)) / n for v in total] if n else [float("nan")] * 3)
    return {"loss": loss, "chosen_reward": chosen, "rejected_reward": rejected, "reward_margin": chosen - rejected}


# ---------------------------------------------------------------------------------------------------
# Models


def _is_gpt2(source) -> bool:
    """A published GPT-2 name, or a directory that is not a Llama-family one (GPT.from_pretrained's errors
    then name what it lacks)."""
    from tinygrad_llm.models.gpt2_weights import PRETRAINED
    from tinygrad_llm.models.llama_weights import read_hf_config

    path = Path(source)
    return str(source) in PRETRAINED or (path.is_dir() and (
        not (path / "config.json").is_file() or read_hf_config(path).get("model_type", "gpt2") == "gpt2"))


def load_model(source, device="cpu", tokenizer=None):
    """(model, tokenizer) of `source`: a GPT-2-family model (a directory as examples/pretrain.py and
    finetune_instructions.py write them, or a published GPT-2 name) through `instruct.load_model`, with
    `tokenizer` where given; any other source (a Llama-family directory, a .gguf file, a hub name) through
    `load_pretrained`, with the tokenizer it holds."""
    from tinygrad_llm.models.pretrained import load_pretrained

    if _is_gpt2(source):
        return instruct.load_model(source, device, tokenizer)
    if tokenizer is not None:
        raise ValueError(f"--tokenizer is for GPT-2-family models; {source} brings its own tokenizer")
    model, tok = load_pretrained(source, device=device)
    if tok is None:
        raise ValueError(f"{source} holds no tokenizer (a Llama-family directory needs its tokenizer.json)")
    instruct.end_of_text(tok)
    return model, tok


def load_reference(source, device="cpu"):
    """The model of `source` alone (as `load_model` reads it; the policy's tokenizer serves both), frozen
    and in eval mode: the book's reference model, loaded a second time."""
    from tinygrad_llm.models.gpt import GPT
    from tinygrad_llm.models.pretrained import load_pretrained

    model = GPT.from_pretrained(source, device=device) if _is_gpt2(source) else load_pretrained(source, device=device)[0]
    model.requires_grad_(False)
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# Responses


def generate_responses(model, tokenizer, entries, max_new_tokens=256, key="model_response", progress=True) -> list:
    """Each entry with the model's greedy answer under `key` (new dicts): instruct.generate_responses for
    the Alpaca prompt, the same loop over the chat template's prompt for a tokenizer that has one."""
    if not has_chat_template(tokenizer):
        answered = instruct.generate_responses(model, tokenizer, entries, max_new_tokens, progress=progress)
        return [{**{k: v for k, v in a.items() if k != "model_response"}, key: a["model_response"]} for a in answered]
    out = []
    for entry in entries:
        ids = prompt_ids(tokenizer, entry)
        budget = instruct.response_budget(model, ids, max_new_tokens)
        new = generate(model, ids, budget, eos_id=instruct.end_of_text(tokenizer))[len(ids):] if budget else []
        out.append({**entry, key: tokenizer.decode([int(i) for i in new]).strip()})
    return out


__all__ = [
    "FIELDS", "RESPONSES_FILE", "entry_problem", "check_entries", "has_chat_template", "chat_messages", "prompt_ids",
    "response_ids", "PreferenceExample", "PreferenceDataset", "PreferenceBatch", "custom_collate_fn",
    "preference_loader", "sequence_logprobs", "check_beta", "dpo_loss", "frozen_copy", "disable_dropout", "check_vocabularies",
    "DPOObjective", "evaluate_dpo", "load_model", "load_reference", "generate_responses",
]
