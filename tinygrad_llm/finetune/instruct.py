"""Book chapter 7, sections 7.2-7.7: instruction fine-tuning, teach a pretrained GPT to answer in the Alpaca format.

A data set is a list of entries {"instruction", "input", "output"}. Each becomes one text:

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:            <- only when input is not empty
    {input}

    ### Response:
    {output}

The model is trained on that text with the ordinary next-token loss, one end-of-text token appended so it
learns to stop. Batches are padded with end-of-text to their longest example; the padding after the first
end-of-text is left out of the loss (target -100), and with `mask_prompt` the prompt is too, so the loss
is over the response alone (the book's exercise 7.2). After training, the model answers the test split's
prompts (greedy, up to the first end-of-text or a full context), and a larger local model can score the
answers (`tinygrad_llm.finetune.judge`).

The prompt is `format_input(entry) + RESPONSE_HEADER`, built by `prompt_text` for training, for the test
responses and for chat alike. It is tokenized apart from the output, so the ids a model is trained on
start with exactly the ids it is given when asked. Two small departures from the book follow: the model
is asked with the "### Response:" header already written (the book lets it write the header and cuts it
off), and `mask_prompt` masks the header too (the book's exercise 7.2 masks format_input's tokens only),
so a masked loss is over exactly the tokens the model generates.

Beyond the book: a model whose tokenizer has a chat template (SmolLM2, Llama 3, Qwen3: see
tinygrad_llm/text/chat.py) is trained and asked in its own template instead of the Alpaca one. The user
message is the instruction, and the input after a blank line when there is one (`chat_messages`); the
assistant message is the output. An example's ids are the template's ids for that two-turn conversation
(`apply_chat_template(..., add_generation_prompt=False)`) up to the end-of-turn token the template writes
after the answer; the collate appends that token (`end_of_response`) as it appends GPT-2's end-of-text, so
a batch row is exactly what the template gives, and the prompt (what `mask_prompt` masks) is exactly the
ids the model is given when asked (`apply_chat_template(user turn, add_generation_prompt=True)`). The answer
is generated up to any of the tokenizer's stop ids (`stop_ids`: <|im_end|>, <|eot_id|>, ...).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from autograd.checkpoint import write_text
from tinygrad_llm.text.data import DataLoader
from tinygrad_llm.models.generate import generate
from tinygrad_llm.models.gpt import GPT
from tinygrad_llm.models.pretrained import is_gpt2_source, load_pretrained, save_model
from tinygrad_llm.text.tokenizer import get_tokenizer

FIELDS = ("instruction", "input", "output")
PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")
RESPONSE_HEADER = "\n\n### Response:\n"
IGNORE_INDEX = -100  # targets the loss leaves out (autograd.functional.cross_entropy's ignore_index)
RESPONSES_FILE = "instruction-data-with-response.json"

# ---------------------------------------------------------------------------------------------------
# Entries: reading, checking, splitting


def load_entries(path) -> list:
    """The entries of a JSON file holding one list, or of a JSON-lines file (one object per line).
    The entries are not checked here (see `check_entries`). Raises OSError or ValueError."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    if not text.strip():
        raise ValueError(f"{path} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg != "Extra data" and path.suffix not in (".jsonl", ".ndjson"):
            raise ValueError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        data = _json_lines(text, path)  # several values: one per line
    else:
        if isinstance(data, dict) and path.suffix in (".jsonl", ".ndjson"):
            data = [data]  # JSON lines with one line
    if not isinstance(data, list):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a list of entries "
                         f"(expected [{{\"instruction\": ..., \"input\": ..., \"output\": ...}}, ...] "
                         f"or one such object per line)")
    if not data:
        raise ValueError(f"{path} holds no entries")
    return data


def _json_lines(text, path):
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not valid JSON ({e.msg} at column {e.colno})") from None
    return entries


def entry_problem(entry, fields=FIELDS, optional=()) -> str | None:
    """Why `entry` is not a usable entry, or None: it must be a dict whose `fields` are strings, and its
    `optional` fields too where it has them."""
    if not isinstance(entry, dict):
        return f"not an object but a {type(entry).__name__}"
    for field in fields + tuple(f for f in optional if f in entry):
        if field not in entry:
            return f"no {field!r}"
        if not isinstance(entry[field], str):
            return f"{field!r} is {type(entry[field]).__name__}, not a string"
    return None


def check_entries(entries, on_bad="skip", problem=entry_problem, needs=f"string fields {', '.join(FIELDS)}"):
    """(good entries, [(index, problem)] of the bad ones). An index is the entry's position in the file
    (from 0). on_bad="error" raises ValueError at the first bad entry; "skip" leaves them out (the caller
    reports the list). All entries bad is an error either way. `problem(entry)` says what is wrong with an
    entry (None: nothing), and `needs` what each entry needs, for the error: preference.py passes its own."""
    if on_bad not in ("skip", "error"):
        raise ValueError(f"on_bad must be 'skip' or 'error', got {on_bad!r}")
    good, bad = [], []
    for i, entry in enumerate(entries):
        why = problem(entry)
        if why is None:
            good.append(entry)
            continue
        if on_bad == "error":
            raise ValueError(f"entry {i}: {why} (each entry needs {needs}; --on-bad skip leaves such entries out)")
        bad.append((i, why))
    if not good:
        raise ValueError(f"none of the {len(entries)} entries is usable: {describe_bad(bad)}")
    return good, bad


def describe_bad(bad, limit=10) -> str:
    """'entry 3 (no 'output'), entry 7 (...)', the first `limit` of them and how many more."""
    text = ", ".join(f"entry {i} ({problem})" for i, problem in bad[:limit])
    return text + (f" and {len(bad) - limit} more" if len(bad) > limit else "")


class Split(NamedTuple):
    train: list
    val: list
    test: list


def split_entries(entries, seed=123, train_frac=0.85, test_frac=0.10) -> Split:
    """Shuffle with `seed`, then the book's proportions: the first 85 % train, the next 10 % test, the
    rest (about 5 %) validation. 1,100 entries -> 935 train, 55 val, 110 test."""
    order = np.random.default_rng(seed).permutation(len(entries))
    shuffled = [entries[i] for i in order]
    n_train, n_test = int(len(entries) * train_frac), int(len(entries) * test_frac)
    return Split(shuffled[:n_train], shuffled[n_train + n_test:], shuffled[n_train:n_train + n_test])


# ---------------------------------------------------------------------------------------------------
# The prompt


def format_input(entry) -> str:
    """The book's Alpaca prompt: the preamble, the instruction, and the input when it is not empty.

    >>> format_input({"instruction": "Name a fruit.", "input": ""})[len(PREAMBLE):]
    '\\n\\n### Instruction:\\nName a fruit.'
    >>> format_input({"instruction": "Add one.", "input": "41"})[len(PREAMBLE):]
    '\\n\\n### Instruction:\\nAdd one.\\n\\n### Input:\\n41'
    """
    instruction_text = f"{PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
    input_text = f"\n\n### Input:\n{entry['input']}" if entry.get("input") else ""
    return instruction_text + input_text


def prompt_text(entry) -> str:
    """What the model is given: format_input(entry) and the response header it answers after."""
    return format_input(entry) + RESPONSE_HEADER


def uses_chat_template(tokenizer) -> bool:
    """Whether prompts are written in the tokenizer's chat template (a Llama-family model's) rather than
    the Alpaca one (GPT-2's tokenizer has none)."""
    return getattr(tokenizer, "chat_template", None) is not None


def chat_messages(entry, with_output=False) -> list:
    """The entry as a conversation: the user asks the instruction (and the input, after a blank line),
    the assistant answers the output (with `with_output`).

    >>> chat_messages({"instruction": "Add one.", "input": "41", "output": "42"}, with_output=True)
    [{'role': 'user', 'content': 'Add one.\\n\\n41'}, {'role': 'assistant', 'content': '42'}]
    """
    content = entry["instruction"] + (f"\n\n{entry['input']}" if entry.get("input") else "")
    messages = [{"role": "user", "content": content}]
    if with_output:
        messages.append({"role": "assistant", "content": entry["output"]})
    return messages


def prompt_ids(tokenizer, entry) -> list:
    """The ids the model is given to answer `entry`: its chat template's user turn and the assistant's
    header where the tokenizer has a template, else the Alpaca `prompt_text`."""
    if uses_chat_template(tokenizer):
        return list(tokenizer.apply_chat_template(chat_messages(entry), add_generation_prompt=True))
    return encode_text(tokenizer, prompt_text(entry))


def example_ids(tokenizer, entry) -> tuple:
    """(prompt ids, response ids) of `entry` for training, without the token that ends the response
    (the collate appends `end_of_response(tokenizer)`). With a chat template both come from one
    rendering of the whole conversation, so prompt + response + [end] is exactly the template's ids up to
    and including the end-of-turn token after the answer (the newline a ChatML template writes after it
    is left out: generation stops before it)."""
    prompt = prompt_ids(tokenizer, entry)
    if not uses_chat_template(tokenizer):
        return prompt, encode_text(tokenizer, entry["output"])
    full = list(tokenizer.apply_chat_template(chat_messages(entry, with_output=True), add_generation_prompt=False))
    if full[:len(prompt)] != prompt:
        raise ValueError("the chat template renders the question differently with the answer after it than "
                         "when asking it, so the prompt the model is trained on is not the one it is asked with")
    response = full[len(prompt):]
    end = end_of_response(tokenizer)
    if end not in response:
        raise ValueError(f"the chat template writes no end-of-turn token (id {end}) after the answer")
    return prompt, response[:response.index(end)]


def encode_text(tokenizer, text) -> list:
    """Token ids of `text`, any special-token text in it (a literal "<|endoftext|>") encoded as ordinary
    text, so the only end-of-text ids in a training example are the ones the collate adds."""
    return tokenizer.encode(text, disallowed_special=())


def end_of_response(tokenizer) -> int:
    """The id that ends an answer and pads batches: the end-of-turn token the chat template writes after
    an assistant message (<|im_end|> for ChatML, <|eot_id|> for Llama 3), found by rendering a short
    conversation; the end-of-text token (`end_of_text`) without a template."""
    if not uses_chat_template(tokenizer):
        return end_of_text(tokenizer)
    probe = {"instruction": "?", "input": "", "output": "!"}
    asked = tokenizer.apply_chat_template(chat_messages(probe), add_generation_prompt=True)
    answered = tokenizer.apply_chat_template(chat_messages(probe, with_output=True), add_generation_prompt=False)
    ends = [i for i in answered[len(asked):] if i in tokenizer.stop_ids]
    if not ends:
        raise ValueError(f"the chat template of {tokenizer.name!r} ends an answer with none of the stop ids "
                         f"{sorted(tokenizer.stop_ids)}")
    return ends[0]


def stop_ids(tokenizer):
    """The ids an answer stops at: the tokenizer's stop ids (eos and the end-of-turn tokens) with a chat
    template, else its end-of-text."""
    return set(tokenizer.stop_ids) if uses_chat_template(tokenizer) else end_of_text(tokenizer)


def decode_response(tokenizer, ids) -> str:
    """The text of generated ids, special tokens left out where the tokenizer marks them, stripped."""
    if uses_chat_template(tokenizer):
        return tokenizer.decode(ids, skip_special_tokens=True).strip()
    return tokenizer.decode(ids).strip()


def end_of_text(tokenizer) -> int:
    """The tokenizer's <|endoftext|> id (50256 for GPT-2): it ends every response and pads batches."""
    eot = getattr(tokenizer, "eot_token", None)
    if eot is None:
        raise ValueError("the tokenizer has no <|endoftext|> token, which marks where a response ends")
    return eot


# ---------------------------------------------------------------------------------------------------
# Batches


class Example(NamedTuple):
    """One tokenized entry: prompt and response ids, and how many of them are the prompt."""
    ids: np.ndarray
    prompt_length: int


class InstructionDataset:
    """The book's InstructionDataset: each entry tokenized once, as prompt ids followed by output ids
    (`example_ids`: the Alpaca prompt, or the model's chat template)."""

    def __init__(self, entries, tokenizer):
        self.entries = list(entries)
        self.examples = []
        for entry in self.entries:
            prompt, response = example_ids(tokenizer, entry)
            self.examples.append(Example(np.asarray(prompt + response, dtype=np.int64), len(prompt)))

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def custom_collate_fn(batch, pad_token_id=50256, ignore_index=IGNORE_INDEX, allowed_max_length=None,
                      mask_prompt=False):
    """The book's collate: (inputs, targets) int64 arrays (B, T) from a list of Examples (or plain id
    sequences, which have no prompt to mask).

    Each sequence gets one end-of-text appended and is padded with end-of-text to the longest in the
    batch (plus one); inputs are ids[:-1], targets ids[1:]. In the targets, the appended end-of-text is
    kept (the model learns to stop) and the padding after it becomes `ignore_index`; with `mask_prompt`,
    so do the targets whose next token is still the prompt. Both are cut to `allowed_max_length`.

    >>> inputs, targets = custom_collate_fn([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    >>> inputs.tolist()
    [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]]
    >>> targets.tolist()
    [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100], [8, 9, 50256, -100, -100]]
    """
    items = [item if isinstance(item, Example) else Example(np.asarray(item, dtype=np.int64), 0)
             for item in batch]
    lengths = np.array([len(item.ids) for item in items])
    padded = np.full((len(items), lengths.max() + 1), pad_token_id, dtype=np.int64)  # (B, T + 1)
    for row, item in zip(padded, items):
        row[:len(item.ids)] = item.ids
    inputs, targets = padded[:, :-1], padded[:, 1:].copy()  # (B, T) each
    position = np.arange(targets.shape[1])[None, :]  # target j is token j + 1
    # subtle: the appended end-of-text is target len - 1; only the padding after it is ignored. The
    # book finds it as the first end-of-text in the targets, which is the same position because the
    # text is encoded with no end-of-text in it (encode_text).
    targets[position >= lengths[:, None]] = ignore_index
    if mask_prompt:
        prompt_lengths = np.array([item.prompt_length for item in items])
        targets[position < prompt_lengths[:, None] - 1] = ignore_index  # the book's targets[:len - 1]
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return np.ascontiguousarray(inputs), np.ascontiguousarray(targets)


def instruction_loader(entries, tokenizer, batch_size, *, train, max_length=None, mask_prompt=False,
                       seed=123):
    """A DataLoader of collated batches over `entries`: shuffled, incomplete last batch dropped, when
    `train` (the book's train_loader); in order and complete otherwise (val_loader, test_loader). Each
    example ends with `end_of_response(tokenizer)`, which also pads."""
    collate = partial(custom_collate_fn, pad_token_id=end_of_response(tokenizer), allowed_max_length=max_length,
                      mask_prompt=mask_prompt)
    return DataLoader(InstructionDataset(entries, tokenizer), batch_size, shuffle=train, drop_last=train,
                      seed=seed, collate_fn=collate)


# ---------------------------------------------------------------------------------------------------
# Models


def load_model(source, device="cpu", tokenizer=None):
    """(model, tokenizer) from a model directory (config.json + model.safetensors, as examples/pretrain.py
    and this chapter's script write them), a published GPT-2 name (gpt2, gpt2-medium, ...: downloaded once),
    or any other source `tinygrad_llm.load_pretrained` takes (a Llama-family .gguf file, directory or hub
    name, with the tokenizer it holds).

    A GPT-2's tokenizer: `tokenizer` (gpt2 or a directory) when given, else the directory's own encoder.json
    and vocab.bpe, else GPT-2's (tiktoken's gpt2, which downloads its files on first use). A Llama-family
    model comes with its own (`tokenizer` must be None)."""
    if not is_gpt2_source(source):
        if tokenizer is not None:
            raise ValueError(f"--tokenizer is for GPT-2 models; {source} brings its own tokenizer")
        model, tok = load_pretrained(source, device=device)
        if tok is None:
            raise ValueError(f"{source} holds no tokenizer (no tokenizer.json, or a GGUF file without "
                             "tokenizer.ggml.* metadata); use a source that has one")
        end_of_response(tok)
        return model, tok
    model = GPT.from_pretrained(source, device=device)
    if tokenizer is None:
        here = Path(source)
        tokenizer = str(here) if (here / "encoder.json").is_file() and (here / "vocab.bpe").is_file() else "gpt2"
    tok = get_tokenizer(tokenizer)
    if tok.n_vocab > model.config.vocab_size:
        raise ValueError(f"tokenizer {tokenizer} has {tok.n_vocab} tokens, the model {source} only "
                         f"{model.config.vocab_size}; pass the model's own tokenizer")
    end_of_text(tok)
    return model, tok


# ---------------------------------------------------------------------------------------------------
# Responses


def response_budget(model, prompt_ids, max_new_tokens) -> int:
    """How many tokens an answer may have: `max_new_tokens`, but no more than the context has room for
    after the prompt. Past that the model would stop seeing the start of the instruction (generate's
    sliding window), and each token would cost a full forward pass; a prompt that fills the context
    gets no answer (training cut such examples too)."""
    return max(0, min(max_new_tokens, model.config.context_length - len(prompt_ids)))


def generate_response(model, tokenizer, entry, max_new_tokens=256, **sampling) -> str:
    """The model's answer to `entry` (its output is not used): greedy by default, up to the first
    end-of-text (with a chat template: any stop id), `max_new_tokens` or a full context, with the KV
    cache; the text after the prompt, stripped."""
    ids = prompt_ids(tokenizer, entry)
    budget = response_budget(model, ids, max_new_tokens)
    if budget == 0:
        return ""
    out = generate(model, ids, budget, eos_id=stop_ids(tokenizer), **sampling)
    return decode_response(tokenizer, out[len(ids):].tolist())


def generate_responses(model, tokenizer, entries, max_new_tokens=256, progress=True) -> list:
    """Each entry with the model's answer added under "model_response" (new dicts)."""
    return [{**entry, "model_response": generate_response(model, tokenizer, entry, max_new_tokens)}
            for entry in tqdm(entries, desc="responses", unit="entry", disable=not progress)]


def response_report(prompt, entry, responses) -> str:
    """A test entry as the book prints it after training: the prompt, the correct response (where the
    entry has an "output"), each (label, response) of `responses`, and a rule.

    >>> response_report("Add one.", {"output": "42"}, [("Model response", "41")])
    '\\nAdd one.\\n\\nCorrect response:\\n>> 42\\n\\nModel response:\\n>> 41\\n----------------------------------------'
    """
    correct = f"\n\nCorrect response:\n>> {entry['output']}" if "output" in entry else ""
    answers = "".join(f"\n\n{label}:\n>> {response}" for label, response in responses)
    return f"\n{prompt}{correct}{answers}\n{'-' * 40}"


def write_json(path, data):
    """Write `data` as indented JSON, atomically (a reader never sees half a file). Returns the path."""
    write_text(path, json.dumps(data, indent=4, ensure_ascii=False) + "\n")
    return Path(path)


__all__ = [
    "FIELDS", "PREAMBLE", "RESPONSE_HEADER", "IGNORE_INDEX", "RESPONSES_FILE", "load_entries", "entry_problem",
    "check_entries", "describe_bad", "Split", "split_entries", "format_input", "prompt_text", "uses_chat_template",
    "chat_messages", "prompt_ids", "example_ids", "encode_text", "end_of_response", "stop_ids", "decode_response",
    "end_of_text", "Example", "InstructionDataset", "custom_collate_fn", "instruction_loader", "load_model",
    "response_budget", "generate_response", "generate_responses", "response_report", "write_json",
    "is_gpt2_source", "save_model",  # models.pretrained's, kept here where the chapter's scripts first called them
]
