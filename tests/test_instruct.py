"""Instruction fine-tuning: the Alpaca template, the book's collate, entry checks, the split, responses,
a short run whose loss falls, and the judge's client against a local stub server."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from autograd.functional import cross_entropy
from tinygrad_llm.finetune import instruct, judge
from tinygrad_llm.finetune.instruct import (
    Example,
    InstructionDataset,
    check_entries,
    custom_collate_fn,
    format_input,
    instruction_loader,
    load_entries,
    prompt_text,
    split_entries,
)
from tinygrad_llm.text.tokenizer import BPETokenizer
from tinygrad_llm.training.trainer import TrainConfig, Trainer, evaluate
from tests.conftest import tiny_gpt

WITH_INPUT = {"instruction": "Convert the active sentence to passive: 'The chef cooks the meal every day.'",
              "input": "", "output": "The meal is cooked by the chef every day."}
SPELLING = {"instruction": "Evaluate the following phrase by transforming it into the spelling given.",
            "input": "freind --> friend",
            "output": 'The spelling of the given phrase "freind" is incorrect, the correct spelling is "friend".'}


def toy_entries(n=40):
    """Entries a tiny model learns quickly: add one to a number, or greet."""
    entries = []
    for i in range(n):
        if i % 4 == 3:
            entries.append({"instruction": "Say hello.", "input": "", "output": "Hello!"})
        else:
            entries.append({"instruction": "Add one to the number.", "input": str(i), "output": str(i + 1)})
    return entries


@pytest.fixture(scope="module")
def small_tok():
    text = "\n".join(prompt_text(e) + e["output"] for e in toy_entries())
    return BPETokenizer.train(text * 3, 320)


@pytest.fixture(scope="module")
def gpt2_tok(shared_data_module):
    return BPETokenizer.load(shared_data_module / "gpt2")


@pytest.fixture(scope="module")
def shared_data_module():
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


def tiny_model(tok, seed=0):
    return tiny_gpt(tok.n_vocab, 128, seed=seed)


# ---- the template --------------------------------------------------------------------------------


def test_template_without_input_is_the_books():
    assert format_input(WITH_INPUT) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nConvert the active sentence to passive: 'The chef cooks the meal every "
        "day.'")
    assert prompt_text(WITH_INPUT) == format_input(WITH_INPUT) + "\n\n### Response:\n"


def test_template_with_input_is_the_books():
    assert prompt_text(SPELLING) + SPELLING["output"] == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nEvaluate the following phrase by transforming it into the spelling "
        "given.\n\n### Input:\nfreind --> friend\n\n### Response:\nThe spelling of the given phrase \"freind\" "
        "is incorrect, the correct spelling is \"friend\".")


def test_prompt_and_output_tokenized_apart_equal_the_whole_text(gpt2_tok):
    example = InstructionDataset([SPELLING], gpt2_tok)[0]
    whole = gpt2_tok.encode(prompt_text(SPELLING) + SPELLING["output"])
    assert example.ids.tolist() == whole
    assert example.ids[:example.prompt_length].tolist() == gpt2_tok.encode(prompt_text(SPELLING))
    assert example.ids[example.prompt_length - 6:example.prompt_length].tolist() == [198, 198, 21017, 18261, 25, 198]


def test_end_of_text_text_in_an_entry_is_ordinary_text(gpt2_tok):
    entry = {"instruction": "Echo.", "input": "", "output": "<|endoftext|>"}
    assert 50256 not in InstructionDataset([entry], gpt2_tok)[0].ids


# ---- the collate ---------------------------------------------------------------------------------

BOOK_BATCH = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]


def test_collate_the_books_example():
    inputs, targets = custom_collate_fn(BOOK_BATCH)
    assert inputs.dtype == targets.dtype == np.int64
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]]
    assert targets.tolist() == [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100], [8, 9, 50256, -100, -100]]


def test_collate_masks_the_prompt():
    batch = [Example(np.array([0, 1, 2, 3, 4]), 3), Example(np.array([5, 6]), 1), Example(np.array([7, 8, 9]), 2)]
    inputs, targets = custom_collate_fn(batch, pad_token_id=99, mask_prompt=True)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 99, 99, 99], [7, 8, 9, 99, 99]]
    # a target is kept from the first response token on: targets[prompt_length - 1:]
    assert targets.tolist() == [[-100, -100, 3, 4, 99], [6, 99, -100, -100, -100], [-100, 9, 99, -100, -100]]
    unmasked = custom_collate_fn(batch, pad_token_id=99)[1]
    assert unmasked.tolist()[0] == [1, 2, 3, 4, 99]


def test_collate_truncates_after_padding():
    inputs, targets = custom_collate_fn(BOOK_BATCH, allowed_max_length=3)
    assert inputs.tolist() == [[0, 1, 2], [5, 6, 50256], [7, 8, 9]]
    assert targets.tolist() == [[1, 2, 3], [6, 50256, -100], [8, 9, 50256]]
    assert custom_collate_fn(BOOK_BATCH, allowed_max_length=50)[0].shape == (3, 5)  # never padded further


def test_masked_loss_is_the_loss_of_the_response_tokens(small_tok):
    entries = toy_entries(4)
    ds = InstructionDataset(entries, small_tok)
    model = tiny_model(small_tok)
    eot = small_tok.eot_token
    inputs, full = custom_collate_fn(list(ds), pad_token_id=eot)
    _, masked = custom_collate_fn(list(ds), pad_token_id=eot, mask_prompt=True)
    counted = (masked != -100).sum(axis=1)
    assert counted.tolist() == [len(small_tok.encode(e["output"])) + 1 for e in entries]  # response + end-of-text
    logits = model(inputs)
    only = np.where(np.arange(full.shape[1])[None, :] >= np.array([x.prompt_length for x in ds])[:, None] - 1,
                    full, -100)
    assert float(cross_entropy(logits, masked).data) == pytest.approx(float(cross_entropy(logits, only).data))


# ---- entries -------------------------------------------------------------------------------------


def test_load_json_list_and_json_lines(tmp_path):
    entries = toy_entries(3)
    (tmp_path / "a.json").write_text(json.dumps(entries))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(e) for e in entries) + "\n\n")
    (tmp_path / "c.json").write_text("\n".join(json.dumps(e) for e in entries))  # lines, whatever the suffix
    (tmp_path / "d.jsonl").write_text(json.dumps(entries[0]))
    assert load_entries(tmp_path / "a.json") == load_entries(tmp_path / "b.jsonl") == entries
    assert load_entries(tmp_path / "c.json") == entries and load_entries(tmp_path / "d.jsonl") == entries[:1]


@pytest.mark.parametrize("text, words", [
    ('[{"instruction": "a",', "not valid JSON"),
    ('{"a": 1}\n{"b": ', "line 2"),
    ('{"instruction": "a"}', "not a list"),
    ("[]", "no entries"),
    ("  \n", "empty"),
])
def test_load_errors(tmp_path, text, words):
    (tmp_path / "d.json").write_text(text)
    with pytest.raises(ValueError, match=words):
        load_entries(tmp_path / "d.json")


def test_bad_entries_are_reported_by_index():
    entries = toy_entries(5)
    entries[1] = {"instruction": "x", "output": "y"}
    entries[3] = {**entries[3], "output": 7}
    entries.append(["not", "an", "object"])
    good, bad = check_entries(entries, "skip")
    assert len(good) == 3
    assert bad == [(1, "no 'input'"), (3, "'output' is int, not a string"), (5, "not an object but a list")]
    assert instruct.describe_bad(bad, limit=2) == \
        "entry 1 (no 'input'), entry 3 ('output' is int, not a string) and 1 more"
    with pytest.raises(ValueError, match="entry 1: no 'input'"):
        check_entries(entries, "error")
    with pytest.raises(ValueError, match="none of the 2 entries"):
        check_entries([{}, {"instruction": 1, "input": "", "output": ""}], "skip")


def test_split_sizes_of_the_books_data(shared_data):
    entries = load_entries(shared_data / "instruction-data.json")
    split = split_entries(entries, seed=123)
    assert [len(part) for part in split] == [935, 55, 110]  # train, val, test
    again = split_entries(entries, seed=123)
    assert split == again
    other = split_entries(entries, seed=7)
    assert other.test != split.test
    ids = lambda part: sorted(map(json.dumps, part))  # noqa: E731
    assert ids(split.train + split.val + split.test) == ids(entries)  # a partition


def test_loaders_train_shuffles_and_drops_last_eval_keeps_order(small_tok):
    entries = toy_entries(10)
    train = instruction_loader(entries, small_tok, 4, train=True, seed=1)
    val = instruction_loader(entries, small_tok, 4, train=False)
    assert (len(train), len(val)) == (2, 3)
    first = next(iter(val))[0]
    prompt = small_tok.encode(prompt_text(entries[0]))
    assert first[0, :len(prompt)].tolist() == prompt  # in order: entry 0 comes first


# ---- training and responses ----------------------------------------------------------------------


def test_a_short_run_learns_the_format(small_tok, tmp_path):
    entries = toy_entries(40)
    train = instruction_loader(entries, small_tok, 8, train=True, seed=0)
    model = tiny_model(small_tok)
    config = TrainConfig(lr=3e-3, max_steps=25, eval_every=25, eval_batches=None, progress=False)
    records = Trainer(model, train, None, config, log=None).fit()
    assert records[-1]["train_loss"] < 0.5 * records[0]["train_loss"]
    assert evaluate(model, train) == pytest.approx(records[-1]["train_loss"])


def test_training_and_responses_on_each_device(small_tok, device):
    entries = toy_entries(8)
    model = tiny_model(small_tok).to(device)
    train = instruction_loader(entries, small_tok, 4, train=True, mask_prompt=True)
    config = TrainConfig(lr=1e-3, max_steps=2, eval_every=2, eval_batches=1, progress=False)
    records = Trainer(model, train, None, config, log=None).fit()
    assert np.isfinite(records[-1]["train_loss"])
    responses = instruct.generate_responses(model, small_tok, entries[:2], max_new_tokens=3, progress=False)
    host = model.to("cpu")  # the same weights, on the host
    assert responses == instruct.generate_responses(host, small_tok, entries[:2], max_new_tokens=3, progress=False)


def test_responses_file(small_tok, tmp_path):
    model = tiny_model(small_tok)
    entries = toy_entries(3)
    responses = instruct.generate_responses(model, small_tok, entries, max_new_tokens=4, progress=False)
    path = instruct.write_json(tmp_path / instruct.RESPONSES_FILE, responses)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert len(data) == 3 and [set(d) for d in data] == [{"instruction", "input", "output", "model_response"}] * 3
    assert [d["model_response"] for d in data] == [
        instruct.generate_response(model, small_tok, e, max_new_tokens=4) for e in entries]
    assert [p.name for p in tmp_path.iterdir()] == [instruct.RESPONSES_FILE]  # no temporary file left


def test_answers_stop_where_the_context_is_full(small_tok):
    model = tiny_model(small_tok)  # context 128
    assert [instruct.response_budget(model, [0] * n, 20) for n in (10, 120, 128, 140)] == [20, 8, 0, 0]
    long_entry = {"instruction": "Say hello. " * 60, "input": "", "output": ""}
    assert len(small_tok.encode(prompt_text(long_entry))) > 128
    assert instruct.generate_response(model, small_tok, long_entry) == ""


# ---- the judge -----------------------------------------------------------------------------------


def test_parse_score():
    assert [judge.parse_score(s) for s in ["85", "Score: 90.", " 100\n", "none", "250"]] == [85, 90, 100, None, None]


def test_judge_prompt_is_the_books():
    entry = {**WITH_INPUT, "model_response": "The meal is cooked every day."}
    assert judge.judge_prompt(entry) == (
        f"Given the input `{format_input(entry)}` and correct output `The meal is cooked by the chef every "
        "day.`, score the model response `The meal is cooked every day.` on a scale from 0 to 100, where 100 "
        "is the best score. Respond with the integer number only.")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ollama_stub():
    """A stand-in for Ollama on 127.0.0.1: lists llama3, answers every chat with '7' then '3' streamed."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self._send(json.dumps({"models": [{"name": "llama3:latest"}]}))

        def do_POST(self):
            requests.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self._send("\n".join(json.dumps({"message": {"role": "assistant", "content": c}}) for c in "73"))

        def _send(self, body):
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_judge_client_against_a_stub(ollama_stub):
    url, requests = ollama_stub
    judge.check_judge(url, "llama3")
    with pytest.raises(judge.JudgeUnavailableError, match="ollama pull phi3"):
        judge.check_judge(url, "phi3")
    entries = [{**WITH_INPUT, "model_response": "x"}]
    assert judge.score_responses(entries, "llama3", url, progress=False) == [73]
    path, payload = requests[0]
    assert path == "/api/chat"
    assert payload == {"model": "llama3", "messages": [{"role": "user", "content": judge.judge_prompt(entries[0])}],
                       "options": {"seed": 123, "temperature": 0, "num_ctx": 2048}, "stream": False}


def test_judge_unreachable():
    with pytest.raises(judge.JudgeUnavailableError, match="cannot reach the judge"):
        judge.check_judge(f"http://127.0.0.1:{free_port()}")


# ---- the model's chat template (a Llama-family tokenizer) -----------------------------------------

# ChatML as SmolLM2 and Qwen write it (without SmolLM2's default system turn)
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def chatml_tokenizer(directory, entries=None):
    """A ~400-token byte-level BPE trained by the tokenizers library on `entries` (default toy_entries),
    with ChatML's special tokens, saved in `directory` as tokenizer.json and a tokenizer_config.json that
    holds the ChatML template and <|im_end|> as eos, as a Hugging Face model directory has them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    text = "\n".join(e["instruction"] + "\n\n" + e["input"] + "\n" + e["output"] for e in entries or toy_entries())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text * 3 + "user assistant system"], trainer=trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {"chat_template": CHATML, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "tokenizer_class": "PreTrainedTokenizerFast"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return tok


def tiny_chat_llama(directory, entries=None, **overrides):
    """A Hugging Face directory of a tiny random Llama written by transformers (`LlamaForCausalLM(cfg)
    .save_pretrained`) with `chatml_tokenizer`'s files: a chat model `load_pretrained` reads."""
    from tests.test_llama import hf_tiny

    hf_tok = chatml_tokenizer(directory, entries)
    hf = hf_tiny(vocab_size=hf_tok.get_vocab_size(), max_position_embeddings=256, **overrides)
    hf.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return tiny_chat_llama(tmp_path_factory.mktemp("chat") / "llama")


def test_chat_template_prompt_example_and_collate_have_the_templates_ids(chat_dir):
    from tokenizers import Tokenizer

    from tinygrad_llm.models.pretrained import load_tokenizer

    tok = load_tokenizer(chat_dir)
    theirs = Tokenizer.from_file(str(chat_dir / "tokenizer.json"))
    enc = lambda text: theirs.encode(text, add_special_tokens=False).ids  # noqa: E731
    start, end = theirs.token_to_id("<|im_start|>"), theirs.token_to_id("<|im_end|>")
    first = {"instruction": "Add one to the number.", "input": "41", "output": "42"}
    second = {"instruction": "Say hello.", "input": "", "output": "Hello!"}
    assert instruct.uses_chat_template(tok) and instruct.end_of_response(tok) == end
    assert instruct.chat_messages(first) == [{"role": "user", "content": "Add one to the number.\n\n41"}]

    prompts = [[start, *enc("user\nAdd one to the number.\n\n41"), end, *enc("\n"), start, *enc("assistant\n")],
               [start, *enc("user\nSay hello."), end, *enc("\n"), start, *enc("assistant\n")]]
    responses = [enc("42"), enc("Hello!")]
    for entry, prompt, response in zip((first, second), prompts, responses):
        assert instruct.prompt_ids(tok, entry) == prompt
        assert instruct.example_ids(tok, entry) == (prompt, response)
        # the whole conversation as the tokenizers library encodes the template's text: the example and end
        full = enc(f"<|im_start|>user\n{instruct.chat_messages(entry)[0]['content']}<|im_end|>\n"
                   f"<|im_start|>assistant\n{entry['output']}<|im_end|>\n")
        assert full == prompt + response + [end] + enc("\n")

    for mask_prompt in (False, True):
        loader = instruction_loader([first, second], tok, 2, train=False, mask_prompt=mask_prompt)
        inputs, targets = next(iter(loader))
        width = max(len(p) + len(r) for p, r in zip(prompts, responses))  # + the end-of-turn, - the shift
        for row, (prompt, response) in enumerate(zip(prompts, responses)):
            ids = prompt + response + [end]  # what the template renders, up to and with <|im_end|>
            pad = width + 1 - len(ids)
            assert inputs[row].tolist() == (ids + [end] * pad)[:-1]  # padded with <|im_end|>
            wanted = ids[1:] + [-100] * pad
            if mask_prompt:  # only the response and its <|im_end|> are targets
                wanted = [-100] * (len(prompt) - 1) + response + [end] + [-100] * pad
            assert targets[row].tolist() == wanted


def test_chat_template_ids_equal_transformers(chat_dir):
    transformers = pytest.importorskip("transformers")
    from tinygrad_llm.models.pretrained import load_tokenizer

    tok = load_tokenizer(chat_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(chat_dir)
    entry = {"instruction": "Add one to the number.", "input": "7", "output": "8"}
    prompt, response = instruct.example_ids(tok, entry)
    assert theirs.apply_chat_template(instruct.chat_messages(entry), add_generation_prompt=True,
                                      return_dict=False) == prompt
    full = theirs.apply_chat_template(instruct.chat_messages(entry, with_output=True), return_dict=False)
    assert full[:len(prompt) + len(response) + 1] == prompt + response + [instruct.end_of_response(tok)]


def test_chat_template_response_stops_at_any_stop_id(chat_dir):
    from tinygrad_llm.models.generate import generate
    from tinygrad_llm.models.pretrained import load_pretrained

    model, tok = load_pretrained(chat_dir)
    entry = {"instruction": "Say hello.", "input": "", "output": "Hello!"}
    ids = instruct.prompt_ids(tok, entry)
    free = generate(model, ids, 12)[len(ids):].tolist()
    stops = set(tok.stop_ids)
    answer = instruct.generate_response(model, tok, entry, max_new_tokens=12)
    cut = next((k for k, i in enumerate(free) if i in stops), len(free))
    assert answer == tok.decode(free[:cut], skip_special_tokens=True).strip()
