"""The Llama family's tokenizers (tinygrad_llm/text/hf_tokenizer.py, hf_files.py) id for id against the tokenizers library
and transformers: the real SmolLM2-135M-Instruct GGUF, and tiny byte-level BPEs that the tokenizers library
trains here in the styles of Llama 3, Qwen2 and SmolLM2, read from tokenizer.json and from GGUF files written
from them."""

import json
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autograd.checkpoint import FileFormatError
from tests.conftest import TEXT
from tinygrad_llm.text.hf_files import load_gguf_tokenizer, load_tokenizer, load_tokenizer_json
from tinygrad_llm.text.hf_tokenizer import GPT2_SPLIT, LLAMA3_SPLIT, QWEN2_SPLIT, HFTokenizer

tokenizers = pytest.importorskip("tokenizers")
gguf = pytest.importorskip("gguf")
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402
from tokenizers.trainers import BpeTrainer  # noqa: E402

TEXTS = [
    "Hello world", "The quick brown fox jumps over the lazy dog.", "I'm sure they'll say we've done it, don't you?",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "naïve café, Straße, 東京, Москва, 😀🎉👩‍👩‍👧", "In 2024, 1234567 people paid $3.50 (or 12,345.678).",
    "   leading and trailing   ", "a  b\n\n\n  c\t\t d \r\n e", "x =  1;  y =   22", "\u00a0\u2003 unicode spaces",
    "<|im_start|>user\nHi<|im_end|>", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant\n", "",
]

# ---- the real SmolLM2-135M-Instruct ------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return load_tokenizer(smollm2_gguf)


@pytest.fixture(scope="module")
def smollm2_hf(smollm2_gguf):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


@pytest.fixture(scope="module")
def smollm2_published(smollm2_hf):
    """The same vocabulary with SmolLM2's published pre-tokenizer (its tokenizer.json: Digits with
    individual_digits, then ByteLevel), which llama.cpp's "smollm" reproduces; transformers' GGUF reader
    does not know "smollm" and uses GPT-2's pattern alone."""
    tok = Tokenizer.from_str(smollm2_hf.backend_tokenizer.to_str())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return tok


def test_smollm2_chat_prompt_ids(smollm2):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = smollm2.apply_chat_template(messages, tokenize=False)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                             "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?")
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids = smollm2.apply_chat_template(messages)
    assert len(ids) == 37 and ids[:4] == [1, 9690, 198, 2683] and ids[-3:] == [1, 520, 9531, 198][-3:]
    assert smollm2.decode(ids) == prompt


def test_smollm2_special_ids(smollm2):
    assert (smollm2.bos_token, smollm2.eos_token, smollm2.pad_token, smollm2.unk_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert (smollm2.bos_token_id, smollm2.eos_token_id, smollm2.n_vocab) == (1, 2, 49152)
    assert smollm2.stop_ids == {2}
    assert smollm2.encode("<|im_start|>user\nHi<|im_end|>") == [1, 4093, 198, 26843, 2]
    assert smollm2.encode("<|im_end|>", allowed_special=()) == smollm2.encode_ordinary("<|im_end|>")
    with pytest.raises(ValueError, match="disallowed"):
        smollm2.encode("<|im_end|>", disallowed_special="all", allowed_special=())
    assert smollm2.encode("Hi", add_special_tokens=True) == smollm2.encode("Hi")  # add_bos_token is false


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_ids_equal_transformers(smollm2, smollm2_hf, smollm2_published, text):
    ids = smollm2.encode(text)
    assert ids == smollm2_published.encode(text, add_special_tokens=False).ids
    if "  1" not in text and "   2" not in text:  # no whitespace run before a digit: GPT-2's pattern agrees
        assert ids == smollm2_hf(text)["input_ids"]
    assert smollm2.decode(ids) == text


def test_smollm2_digits_after_spaces(smollm2, smollm2_hf):
    """Where the two readings differ: llama.cpp and SmolLM2's tokenizer.json cut digits out first, so
    "a  1" keeps its two spaces as one token; GPT-2's pattern alone gives a space to the digit."""
    assert smollm2.encode("a  1") == [81, 256, 33]
    assert smollm2_hf("a  1")["input_ids"] == [81, 216, 216, 33]


@given(st.text(max_size=60))
def test_smollm2_property(smollm2, smollm2_published, text):
    ids = smollm2.encode(text)
    assert ids == smollm2_published.encode(text, add_special_tokens=False).ids
    kept = text.encode().translate(None, smollm2._missing_bytes).decode("utf-8", "replace")
    assert smollm2.decode(ids) == kept  # the 21 bytes SmolLM2's vocabulary lacks are dropped, as HF drops them


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Name a prime.\n  Just one."}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "Quatre."}, {"role": "user", "content": "Et 3+3 ?"}],
])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_chat_template_equals_transformers(smollm2, smollm2_hf, messages, add_generation_prompt):
    ours = smollm2.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    theirs = smollm2_hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert ours == theirs
    assert smollm2.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == \
        smollm2_hf(theirs, add_special_tokens=False)["input_ids"]


# ---- tiny tokenizers the tokenizers library trains ---------------------------------------------------

CORPUS = TEXT + "\n".join(TEXTS) * 3 + "Les élèves étudient à l'école. 東京タワー 1234 5678 90 -- ++ == !=\n" * 5
STYLES = {
    # Llama 3: a Split pattern, ByteLevel without its own pattern, ignore_merges, <|begin_of_text|> added first
    "llama3": dict(split=[("split", LLAMA3_SPLIT)], ignore_merges=True, bos="<|begin_of_text|>",
                   specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                             "<|eot_id|>"]),
    # Qwen2/3: NFC, a Split pattern with single digits, ChatML's specials and <think> as a plain added token
    "qwen2": dict(split=[("split", QWEN2_SPLIT)], nfc=True, specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  plain=["<think>", "</think>"]),
    # SmolLM2: digits isolated, then ByteLevel with GPT-2's pattern
    "smollm2": dict(split=[("digits", None), ("byte_level_regex", None)],
                    specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    # GPT-2's ByteLevel alone, with add_prefix_space: a space before each piece between added tokens
    "prefix_space": dict(split=[("byte_level_prefix", None)], specials=["<|endoftext|>"]),
}


def train_style(style: str, directory):
    """A ~700-token byte-level BPE trained by the tokenizers library in `style`, saved as tokenizer.json."""
    spec = STYLES[style]
    tok = Tokenizer(models.BPE(ignore_merges=spec.get("ignore_merges", False)))
    if spec.get("nfc"):
        tok.normalizer = normalizers.NFC()
    steps = []
    for kind, pattern in spec["split"]:
        if kind == "split":
            steps += [pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        elif kind == "digits":
            steps.append(pre_tokenizers.Digits(individual_digits=True))
        elif kind == "byte_level_regex":
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        else:
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps) if len(steps) > 1 else steps[0]
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=700, special_tokens=spec["specials"], show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in spec.get("plain", [])])
    if spec.get("bos"):
        tok.post_processor = processors.TemplateProcessing(single=f"{spec['bos']} $A",
                                                           special_tokens=[(spec["bos"], tok.token_to_id(spec["bos"]))])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return tok


@pytest.fixture(scope="module", params=list(STYLES))
def trained(request, tmp_path_factory):
    """(style, the tokenizers library's tokenizer, ours read from its tokenizer.json, the directory)."""
    directory = tmp_path_factory.mktemp(request.param)
    hf = train_style(request.param, directory)
    return request.param, hf, load_tokenizer(directory), directory


def _texts_with_specials(style):
    specials = STYLES[style]["specials"] + STYLES[style].get("plain", [])
    return st.lists(st.one_of(st.text(max_size=30), st.sampled_from(specials)), max_size=6).map("".join)


@pytest.mark.parametrize("text", TEXTS + ["<|endoftext|>a<|im_end|> <think>x</think>", "<|eot_id|>\n\n2024"])
def test_trained_ids_equal_tokenizers(trained, text):
    style, hf, ours, _ = trained
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids
    assert ours.encode(text, add_special_tokens=True) == hf.encode(text).ids
    expected = unicodedata.normalize("NFC", text) if style == "qwen2" else text
    if style != "prefix_space":  # a prefix space added is decoded as a space
        assert ours.decode(ours.encode(text)) == expected


@given(data=st.data())
def test_trained_property(trained, data):
    style, hf, ours, _ = trained
    text = data.draw(st.one_of(st.text(max_size=80), _texts_with_specials(style)))
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids
    if style != "prefix_space":
        expected = unicodedata.normalize("NFC", text) if style == "qwen2" else text
        assert ours.decode(ours.encode(text)) == expected


def test_trained_reads_what_the_file_says(trained):
    style, hf, ours, _ = trained
    assert isinstance(ours, HFTokenizer) and ours.n_vocab == hf.get_vocab_size()
    assert ours.ignore_merges == (style == "llama3")
    assert ours.normalization == (("NFC",) if style == "qwen2" else ())
    assert ours.prefix_ids == ([hf.token_to_id("<|begin_of_text|>")] if style == "llama3" else [])
    if style == "smollm2":
        assert ours.splits == (r"\p{N}", GPT2_SPLIT)
    special = {hf.token_to_id(t) for t in STYLES[style]["specials"]}
    assert ours.special_ids == special
    if style == "qwen2":
        think = hf.token_to_id("<think>")
        assert ours.encode("a<think>b") == [*ours.encode("a"), think, *ours.encode("b")]
        assert ours.decode([think], skip_special_tokens=True) == "<think>"  # added, not special: kept


def test_ignore_merges_follows_the_file(tmp_path):
    """A vocabulary entry the merges would not reach: with ignore_merges a pre-token that spells it is that
    entry, without it the merges decide, in both libraries."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet(), key=ord))}
    vocab.update({"ab": 256, "bc": 257, "abc": 258})  # "abc" comes from no merge
    for ignore in (False, True):
        hf = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("b", "c")], ignore_merges=ignore))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.save(str(tmp_path / "tokenizer.json"))
        ours = load_tokenizer_json(tmp_path / "tokenizer.json")
        assert ours.encode("abc") == hf.encode("abc").ids == ([258] if ignore else [256, vocab["c"]])


# ---- GGUF files written from the trained tokenizers ---------------------------------------------------

def write_gguf(path, hf: Tokenizer, pre: str, model: str = "gpt2", template: str | None = None, **ids):
    """A tensor-less GGUF holding `hf`'s vocabulary and merges under llama.cpp's keys, as convert_hf_to_gguf
    writes them."""
    spec = json.loads(hf.to_str())
    tokens = [None] * hf.get_vocab_size()
    for t, i in hf.get_vocab().items():
        tokens[i] = t
    added = {t["id"]: t for t in spec["added_tokens"]}
    types = [(3 if added[i]["special"] else 4) if i in added else 1 for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for key, value in ids.items():
        getattr(w, f"add_{key}")(value)
    if template:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("style,pre", [("llama3", "llama-bpe"), ("qwen2", "qwen2"), ("smollm2", "smollm")])
def test_gguf_ids_equal_tokenizers(tmp_path, style, pre):
    hf = train_style(style, tmp_path / "json")
    eos = hf.token_to_id(STYLES[style]["specials"][-1])
    path = write_gguf(tmp_path / "tok.gguf", hf, pre, eos_token_id=eos, bos_token_id=0, add_bos_token=style == "llama3")
    ours = load_gguf_tokenizer(path)
    assert ours.eos_token_id == eos and eos in ours.stop_ids
    assert ours.prefix_ids == ([0] if style == "llama3" else [])
    for text in TEXTS:
        text = unicodedata.normalize("NFC", text)  # a GGUF holds no normalizer: llama.cpp applies none
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids


# ---- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["WordPiece", "Unigram"])
def test_unsupported_tokenizer_json(tmp_path, kind):
    model = models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]") if kind == "WordPiece" else \
        models.Unigram([("<unk>", 0.0), ("a", -1.0)], 0)
    Tokenizer(model).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=rf"tokenizer.json: a {kind} tokenizer; only byte-level BPE") as e:
        load_tokenizer(tmp_path)
    assert "\n" not in str(e.value)


def test_sentencepiece_style_bpe_is_refused(tmp_path):
    hf = Tokenizer(models.BPE(vocab={"<unk>": 0, "a": 1}, merges=[], byte_fallback=True, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="byte_fallback"):
        load_tokenizer_json(tmp_path / "tokenizer.json")


def test_corrupt_tokenizer_json_names_the_file(tmp_path):
    hf = train_style("smollm2", tmp_path)
    text = (tmp_path / "tokenizer.json").read_text()
    (tmp_path / "tokenizer.json").write_text(text[: len(text) // 2])
    with pytest.raises(FileFormatError, match=r"tokenizer.json: not valid JSON") as e:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    spec = json.loads(hf.to_str())
    spec["model"]["merges"][0] = "zzz qqq"
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(FileFormatError, match=r"tokenizer.json: merge 0 \('zzz' 'qqq'\) names the token"):
        load_tokenizer(tmp_path)


def test_sentencepiece_gguf_is_refused(tmp_path):
    hf = train_style("smollm2", tmp_path / "json")
    path = write_gguf(tmp_path / "spm.gguf", hf, "default", model="llama")
    with pytest.raises(ValueError, match=r"spm.gguf: tokenizer.ggml.model is 'llama'; only 'gpt2'"):
        load_tokenizer(path)
    path = write_gguf(tmp_path / "pre.gguf", hf, "chatglm-bpe")
    with pytest.raises(ValueError, match=r"pre.gguf: pre-tokenizer tokenizer.ggml.pre='chatglm-bpe'"):
        load_tokenizer(path)


def test_truncated_gguf_names_the_file(tmp_path):
    hf = train_style("smollm2", tmp_path / "json")
    data = write_gguf(tmp_path / "whole.gguf", hf, "smollm").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 3])
    with pytest.raises(FileFormatError, match=r"cut.gguf: not a readable GGUF file") as e:
        load_tokenizer(tmp_path / "cut.gguf")
    assert "\n" not in str(e.value)


def test_missing_source(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.json in this directory"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nothing.gguf")
