"""hf_files.save_tokenizer_json: a Llama-family tokenizer written back as tokenizer.json + tokenizer_config.json +
generation_config.json, which the tokenizers library, transformers and our reader load with the same ids, special
tokens, stop ids and chat template. Written from tokenizers the tokenizers library trains in the styles of Llama 3,
Qwen2 and SmolLM2, and from the real SmolLM2-135M-Instruct GGUF (a fine-tuned model's directory made whole)."""

import pytest

from tests.test_llama_tokenizer import STYLES, TEXTS, train_style
from tinygrad_llm.text.hf_files import load_gguf_tokenizer, load_tokenizer_json, save_tokenizer_json

tokenizers = pytest.importorskip("tokenizers")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3 + 3?"}]


def assert_written_back(ours, directory, texts):
    path = save_tokenizer_json(ours, directory)
    theirs = tokenizers.Tokenizer.from_file(str(path))
    back = load_tokenizer_json(path)
    for text in texts:
        ids = ours.encode(text)
        assert theirs.encode(text, add_special_tokens=False).ids == ids, text
        assert theirs.encode(text).ids == ours.encode(text, add_special_tokens=True), text
        assert back.encode(text) == ids
        assert theirs.decode(ids, skip_special_tokens=False) == ours.decode(ids)
    assert back.fingerprint == ours.fingerprint
    assert (back.stop_ids, back.special_ids, back.chat_template) == (ours.stop_ids, ours.special_ids, ours.chat_template)
    assert back.special_tokens_map == ours.special_tokens_map
    return theirs


@pytest.mark.parametrize("style", list(STYLES))
def test_trained_tokenizers_written_back(style, tmp_path):
    train_style(style, tmp_path / "original")
    ours = load_tokenizer_json(tmp_path / "original" / "tokenizer.json")
    assert_written_back(ours, tmp_path / "written", TEXTS)


def test_smollm2_gguf_tokenizer_written_back_loads_in_transformers(smollm2_gguf, tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = load_gguf_tokenizer(smollm2_gguf)
    assert_written_back(ours, tmp_path, TEXTS)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (theirs.eos_token, theirs.bos_token) == (ours.eos_token, ours.bos_token)
    for generation_prompt, messages in ((True, MESSAGES), (False, MESSAGES[:3])):
        assert theirs.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                          return_dict=False) == ours.apply_chat_template(messages, generation_prompt)
