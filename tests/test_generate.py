"""Generation: the KV cache gives the logits of a full forward pass, generate gives the same ids with
and without it, a cache kept from call to call (a chat) gives each turn's tokens of a fresh prefill and
feeds only the new ids, the sampling rules (greedy, temperature, top-k, top-p, seed, end-of-text),
streaming text, and the example script run on a saved model, offline."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autograd import Tensor, is_grad_enabled, no_grad
from tinygrad_llm.models.generate import PrefixCache, decode_stream, generate, sample_next, stream
from tinygrad_llm.models.gpt import KVCache
from tinygrad_llm.models.llama import Llama, LlamaConfig
from tinygrad_llm.text.tokenizer import BPETokenizer
from tests.conftest import tiny_gpt

ROOT = Path(__file__).resolve().parents[1]
V, CTX = 97, 24


def tiny_model(seed=0, device="cpu", **kw):
    return tiny_gpt(V, CTX, seed=seed, device=device, **kw)


def prompt(b=2, t=6, seed=0):
    return np.random.default_rng(seed).integers(0, V, (b, t))


# ---------------------------------------------------------------------------------------------------
# KV cache


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_incremental_decoding_gives_the_full_forward_logits(device, qkv_bias):
    model = tiny_model(device=device, qkv_bias=qkv_bias, tie_weights=qkv_bias).eval()
    ids = prompt(2, CTX, seed=1)
    cache = KVCache(model.config, 2, device=device)
    with no_grad():
        full = model(ids).numpy()  # (2, CTX, V)
        steps = [model(ids[:, :7], cache).numpy()]  # prefill 7 tokens, then 3, then one at a time
        steps.append(model(ids[:, 7:10], cache).numpy())
        steps += [model(ids[:, t:t + 1], cache).numpy() for t in range(10, CTX)]
    assert cache.length == CTX
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-4, atol=1e-5)
    cache.reset()
    with no_grad():
        np.testing.assert_allclose(model(ids[:, :3], cache).numpy(), full[:, :3], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_last_only_gives_the_last_positions_logits(device, tie):
    """What generation asks for: the head on the last position only, with and without a cache."""
    model = tiny_model(device=device, tie_weights=tie).eval()
    ids = prompt(2, 9, seed=3)
    cache = KVCache(model.config, 2, device=device)
    with no_grad():
        full = model(ids).numpy()  # (2, 9, V)
        last = model(ids, last_only=True).numpy()
        prefill = model(ids[:, :5], cache, last_only=True).numpy()
        rest = model(ids[:, 5:], cache, last_only=True).numpy()
    assert last.shape == prefill.shape == rest.shape == (2, 1, V)
    np.testing.assert_allclose(last, full[:, -1:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prefill, full[:, 4:5], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rest, full[:, -1:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "seed": 7}])
def test_generate_gives_the_same_ids_with_and_without_cache(device, sampling):
    model = tiny_model(device=device)
    ids = prompt(2, 10)
    new = 2 * CTX  # well past the context length, where the window slides each step
    with_cache = generate(model, ids, new, **sampling)
    without = generate(model, ids, new, use_cache=False, **sampling)
    assert with_cache.shape == (2, 10 + new) and with_cache.dtype == np.int64
    np.testing.assert_array_equal(with_cache, without)
    np.testing.assert_array_equal(with_cache[:, :10], ids)


def test_generate_matches_the_books_loop():
    """The book's generate_text_simple: crop to the context, argmax of the last position, append."""
    model = tiny_model().eval()
    ids = prompt(1, 20)
    expected = ids.copy()
    with no_grad():
        for _ in range(12):
            logits = model(expected[:, -CTX:]).numpy()[:, -1]
            expected = np.concatenate([expected, logits.argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(generate(model, ids, 12), expected)
    # a prompt longer than the context is cropped to its last CTX tokens
    long = prompt(1, CTX + 9, seed=3)
    with no_grad():
        first = model(long[:, -CTX:]).numpy()[0, -1].argmax()
    assert generate(model, long, 1)[0, -1] == first


def test_generate_accepts_lists_and_tensors_and_restores_modes():
    model = tiny_model()
    assert model.training and is_grad_enabled()
    a = generate(model, [5, 6, 7], 4)
    assert a.shape == (7,)
    np.testing.assert_array_equal(generate(model, Tensor(np.array([[5, 6, 7]])), 4)[0], a)
    assert model.training and is_grad_enabled()  # eval mode and no_grad only while generating
    with pytest.raises(ValueError, match="non-empty integer"):
        generate(model, [], 3)
    tokens = stream(model, [5, 6, 7], 10)
    next(tokens)
    assert is_grad_enabled()  # between tokens the caller's grad mode is its own
    tokens.close()  # an abandoned stream gives the model its training mode back
    assert model.training


# ---------------------------------------------------------------------------------------------------
# Sampling


def test_sampling_is_seeded():
    model = tiny_model()
    ids = prompt(1, 5)
    a = generate(model, ids, 15, temperature=1.5, seed=1)
    np.testing.assert_array_equal(a, generate(model, ids, 15, temperature=1.5, seed=1))
    assert not np.array_equal(a, generate(model, ids, 15, temperature=1.5, seed=2))


def test_top_k_one_and_tiny_top_p_are_greedy():
    model = tiny_model()
    ids = prompt(2, 5)
    greedy = generate(model, ids, 10)
    np.testing.assert_array_equal(generate(model, ids, 10, temperature=2.0, top_k=1, seed=0), greedy)
    np.testing.assert_array_equal(generate(model, ids, 10, temperature=2.0, top_p=1e-6, seed=0), greedy)


def test_sample_next_keeps_the_top_k_and_the_nucleus():
    rng = np.random.default_rng(0)
    probs = np.array([0.05, 0.4, 0.1, 0.3, 0.15], dtype=np.float32)
    logits = np.log(probs)[None].repeat(4000, axis=0)
    assert set(sample_next(logits, rng, 1.0, top_k=2)) == {1, 3}
    # nucleus 0.75: 0.4 + 0.3 = 0.7 < 0.75, so 0.15 joins: the smallest set holding at least 0.75
    got = sample_next(logits, rng, 1.0, top_p=0.75)
    assert set(got) == {1, 3, 4}
    np.testing.assert_allclose(np.bincount(got, minlength=5)[[1, 3, 4]] / 4000, np.array([0.4, 0.3, 0.15]) / 0.85,
                               atol=0.03)
    assert set(sample_next(logits, rng, 1.0, top_p=0.7)) == {1, 3}  # exactly p: 0.4 + 0.3 suffices
    np.testing.assert_array_equal(sample_next(logits[:2], rng, 0.0), [1, 1])
    with pytest.raises(ValueError, match="top_p"):
        generate(tiny_model(), [1], 1, temperature=1.0, top_p=0.0)


def test_stops_at_end_of_text():
    model = tiny_model()
    ids = prompt(1, 5)
    greedy = generate(model, ids, 10)[0, 5:]
    eos = int(greedy[3])
    out = generate(model, ids, 10, eos_id=eos)
    first = list(greedy).index(eos)
    np.testing.assert_array_equal(out[0, 5:], greedy[:first])  # the end-of-text token is not appended
    assert list(stream(model, ids[0], 10, eos_id=eos)) == list(greedy[:first])
    # in a batch, a row that has ended is padded with eos until every row has ended
    batch = generate(model, np.concatenate([ids, prompt(1, 5, seed=9)]), 10, eos_id=eos)
    row = list(batch[0, 5:])
    assert row[:first] == list(greedy[:first]) and all(t == eos for t in row[first:])


def test_stops_at_any_of_a_set_of_stop_ids():
    """A chat model ends at eos or at an end-of-turn token (`tokenizer.stop_ids`): eos_id takes a set."""
    model = tiny_model()
    ids = np.concatenate([prompt(1, 5), prompt(1, 5, seed=9)])
    greedy = generate(model, ids, 10)[:, 5:]
    unseen = next(i for i in range(97) if i not in greedy)
    first, second = int(greedy[0, 2]), int(greedy[1, 4])
    stops = {first, second, unseen}
    ends = [next(k for k, t in enumerate(row) if t in stops) for row in greedy.tolist()]
    out = generate(model, ids, 10, eos_id=stops)
    for row, end, got in zip(greedy.tolist(), ends, out[:, 5:].tolist()):
        # each row as far as its first stop id, then padded with the id it stopped at
        assert got[:end] == row[:end] and all(t == row[end] for t in got[end:])
    assert list(stream(model, ids[1], 10, eos_id=stops)) == greedy[1, :ends[1]].tolist()
    assert generate(model, ids, 10, eos_id={unseen}).tolist() == generate(model, ids, 10, eos_id=unseen).tolist()


def test_stream_yields_the_generated_ids_one_by_one():
    model = tiny_model()
    ids = prompt(1, 4)
    got, seen = list(stream(model, ids, 9, temperature=0.8, seed=3)), []
    assert all(isinstance(t, int) for t in got)
    full = generate(model, ids, 9, temperature=0.8, seed=3, on_token=lambda t: seen.append(int(t[0])))
    assert got == seen == list(full[0, 4:])
    with pytest.raises(ValueError, match="one sequence"):
        next(stream(model, prompt(2, 3), 2))


def test_decode_stream_never_splits_a_character():
    text = "naïve café 世界 🙂!"
    tok = BPETokenizer.train("plain ascii text " * 20, 260)  # few merges: multi-byte characters span tokens
    ids = tok.encode(text)
    assert len(ids) > len(text)
    pieces = list(decode_stream(tok, iter(ids)))
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


# ---------------------------------------------------------------------------------------------------
# A cache kept from one call to the next (a chat)

MESSAGES = [prompt(1, 6, seed=10)[0].tolist(), prompt(1, 4, seed=11)[0].tolist(), prompt(1, 5, seed=12)[0].tolist()]
ANSWER = 5  # tokens per answer


def sharp(model):
    """`model` with its weight matrices ten times as large: at the init's scale a tiny random model's
    greedy answer repeats one token whatever it is given, and a wrong cache would go unseen."""
    for p in model.parameters():
        if p.data.ndim == 2:
            p.data *= 10.0
    return model


def chat_model(kind, device="cpu"):
    """A tiny random GPT or Llama, sharpened, with room for a few turns (a context of 64)."""
    model = Llama(LlamaConfig.preset("tiny-llama"), seed=0) if kind == "llama" else tiny_gpt(V, 64, seed=0)
    return sharp(model).to(device)


def count_fed(model):
    """Wrap `model.forward` so that it records how many positions each call is fed; returns the record."""
    fed, forward = [], model.forward

    def counting(ids, cache=None, last_only=False):
        fed.append(np.shape(ids)[1])  # ids (B, T)
        return forward(ids, cache, last_only)

    model.forward = counting
    return fed


def chat(model, messages, cache=None):
    """Each turn's answer: the conversation so far (the earlier messages and answers) and the turn's
    message, continued by `stream` for ANSWER tokens."""
    conversation, answers = [], []
    for message in messages:
        conversation += message
        answers.append(list(stream(model, conversation, ANSWER, cache=cache)))
        conversation += answers[-1]
    return answers


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_a_kept_cache_answers_each_turn_as_a_fresh_prefill_and_feeds_only_the_new_ids(device, kind):
    model = chat_model(kind, device)
    fresh = chat(model, MESSAGES)  # a new cache each turn: the whole conversation prefilled again
    fed = count_fed(model)
    cache = PrefixCache(model)
    assert chat(model, MESSAGES, cache) == fresh
    # turn 1 prefills its message, then one token a step; a later turn feeds the last answer's last
    # token (generation stopped before feeding it) and the new message, then one token a step
    steps = [1] * (ANSWER - 1)
    assert fed == [6, *steps, 1 + 4, *steps, 1 + 5, *steps]
    assert cache.length == 6 + 4 + 5 + 3 * ANSWER - 1


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_ids_that_differ_from_the_cached_ones_are_computed_again(kind):
    """A template may render an earlier turn anew otherwise (Qwen3 drops an answer's thinking): the
    cache keeps the common prefix, and the answer is still the fresh prefill's."""
    model = chat_model(kind)
    first, second = MESSAGES[:2]
    cache = PrefixCache(model)
    answer = list(stream(model, first, ANSWER, cache=cache))
    fed = count_fed(model)
    # the same prompt again (an answer regenerated): only its last id is fed, for its logits
    assert list(stream(model, first, ANSWER, cache=cache)) == answer and fed[0] == 1
    rewritten = first[:3] + [(first[3] + 1) % V] + first[4:] + answer + second  # differs from position 3 on
    fed.clear()
    assert list(stream(model, rewritten, ANSWER, cache=cache)) == list(stream(model, rewritten, ANSWER))
    assert fed[0] == len(rewritten) - 3
    # another conversation altogether, and a cache reset: all of it is fed
    other = [(first[0] + 1) % V, *second]
    fed.clear()
    assert list(stream(model, other, ANSWER, cache=cache)) == list(stream(model, other, ANSWER))
    cache.reset()
    assert list(stream(model, other, ANSWER, cache=cache)) == list(stream(model, other, ANSWER))
    assert fed[0] == fed[2 * ANSWER] == len(other)


def test_a_kept_cache_follows_the_window_past_the_context():
    model = sharp(tiny_model())
    cache = PrefixCache(model)
    ids = prompt(1, 10)[0]
    first = generate(model, ids, 20, cache=cache)  # 30 tokens: the window slides past CTX = 24
    assert cache.length == CTX
    more = np.concatenate([first, [1, 2, 3]])
    second = generate(model, more, 6, cache=cache)
    np.testing.assert_array_equal(first, generate(model, ids, 20, use_cache=False))
    np.testing.assert_array_equal(second, generate(model, more, 6, use_cache=False))


def test_a_kept_cache_of_a_batch_keeps_what_every_row_agrees_on():
    model = sharp(tiny_model())
    cache = PrefixCache(model, batch_size=2)
    out = generate(model, prompt(2, 8), 4, cache=cache)
    edited = out.copy()
    edited[1, 5] = (edited[1, 5] + 1) % V  # row 1 differs from position 5 on, row 0 not at all
    fed = count_fed(model)
    np.testing.assert_array_equal(generate(model, edited, 4, cache=cache), generate(model, edited, 4))
    assert fed[0] == edited.shape[1] - 5


def test_a_cache_that_cannot_hold_the_ids_is_refused():
    model = tiny_model()
    with pytest.raises(TypeError, match="must be a PrefixCache"):  # a bare KV cache does not know its ids
        generate(model, [1, 2], 2, cache=KVCache(model.config, 1))
    with pytest.raises(ValueError, match="another model"):
        generate(model, [1, 2], 2, cache=PrefixCache(tiny_model(seed=1)))
    with pytest.raises(ValueError, match="use_cache=False"):
        generate(model, [1, 2], 2, cache=PrefixCache(model), use_cache=False)
    with pytest.raises(ValueError, match="a batch of 2"):
        generate(model, prompt(2, 3), 2, cache=PrefixCache(model))


# ---------------------------------------------------------------------------------------------------
# The example script, offline, on a model of ours


def test_example_runs_offline_on_a_saved_model(tmp_path):
    tok = BPETokenizer.train("the cat sat on the mat. the dog sat on the log. " * 30, 300)
    model = tiny_gpt(vocab_size=tok.n_vocab, context_length=32, seed=0)
    model.save_pretrained(tmp_path)
    tok.save(tmp_path)  # the trainer writes the tokenizer's files beside the weights
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TINYGRAD_LLM_CACHE": str(tmp_path / "none")}

    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "examples" / "generate.py"), *args],
                              capture_output=True, text=True, env=env, timeout=60, check=False)

    r = run("--model", str(tmp_path), "--prompt", "the cat", "--max-new-tokens", "8", "--seed", "0",
            "--temperature", "0.7", "--top-k", "20", "--top-p", "0.95")
    assert r.returncode == 0, r.stderr
    expected_ids = generate(model, tok.encode("the cat"), 8, temperature=0.7, top_k=20, top_p=0.95, seed=0,
                            eos_id=tok.eot_token)
    assert r.stdout == tok.decode(expected_ids) + "\n"
    assert "8 tokens" in r.stderr
    no_cache = run("--model", str(tmp_path), "--prompt", "the cat", "--max-new-tokens", "8", "--seed", "0",
                   "--temperature", "0.7", "--top-k", "20", "--top-p", "0.95", "--no-cache")
    assert no_cache.stdout == r.stdout
    for args, words in [(["--model", str(tmp_path / "missing")], "neither a checkpoint directory"),
                        (["--model", str(ROOT / "tests")], "holds no config.json")]:
        bad = run(*args)
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
