"""DPO (tinygrad_llm/finetune/preference.py): the collate's masks at exact positions, sequence_logprobs and
dpo_loss against the book's formulas re-derived in NumPy (values and gradients), the ln 2 start, the LoRA
reference (adapters off) equal to a frozen copy step for step, and a short run whose validation reward
margin grows."""

import json
import math

import numpy as np
import pytest

from autograd import Tensor, nn, no_grad
from autograd.grad_check import check_gradients
from autograd.optim import AdamW
from tests.conftest import tiny_gpt
from tests.test_instruct import toy_entries
from tinygrad_llm.finetune import instruct
from tinygrad_llm.finetune import preference as dpo
from tinygrad_llm.finetune.lora import adapters_disabled, apply_lora, lora_layers
from tinygrad_llm.text.tokenizer import BPETokenizer
from tinygrad_llm.training.trainer import TrainConfig, Trainer


def toy_preferences(n=40):
    """Toy entries with a chosen answer (the right one) and a rejected one (always "No.")."""
    return [{**e, "chosen": e["output"], "rejected": "No."} for e in toy_entries(n)]


@pytest.fixture(scope="module")
def tok():
    text = "\n".join(instruct.prompt_text(e) + e["chosen"] + e["rejected"] for e in toy_preferences())
    return BPETokenizer.train(text * 3, 320)


def batch_of(entries, tok, max_length=None):
    return next(iter(dpo.preference_loader(entries, tok, len(entries), train=False, max_length=max_length)))


# ---- entries --------------------------------------------------------------------------------------


def test_bad_entries_are_named_by_index():
    good = toy_preferences(3)
    entries = [good[0], {"instruction": "x", "input": "", "chosen": "a"}, {**good[1], "rejected": "  "},
               {**good[2], "chosen": 3}, "text", {k: v for k, v in good[0].items() if k != "output"}]
    kept, bad = dpo.check_entries(entries)
    assert kept == [entries[0], entries[5]]  # "output" is optional
    assert bad == [(1, "no 'rejected'"), (2, "'rejected' is empty"), (3, "'chosen' is int, not a string"),
                   (4, "not an object but a str")]
    with pytest.raises(ValueError, match=r"entry 1: no 'rejected' \(each entry needs"):
        dpo.check_entries(entries, "error")
    with pytest.raises(ValueError, match="none of the 1 entries is usable: entry 0"):
        dpo.check_entries([entries[2]])


def test_the_books_file_splits_85_5_10(shared_data):
    entries = instruct.load_entries(shared_data / "instruction-data-with-preference.json")
    good, bad = dpo.check_entries(entries, "error")
    split = instruct.split_entries(good)
    assert (len(good), bad) == (1100, [])
    assert [len(s) for s in split] == [935, 55, 110]
    # the same order as instruction-data.json, so the same seeded split: DPO's test entries are instruct's
    instructions = instruct.split_entries(instruct.load_entries(shared_data / "instruction-data.json"))
    assert [e["instruction"] for e in split.test] == [e["instruction"] for e in instructions.test]


# ---- batches --------------------------------------------------------------------------------------


def test_collate_masks_select_the_responses_at_exact_positions():
    batch = [dpo.PreferenceExample([11, 12, 13], [21, 22, 0], [31, 0]),
             dpo.PreferenceExample([14], [23, 0], [32, 33, 34, 35, 0])]
    b = dpo.custom_collate_fn(batch, pad_token_id=0)
    assert b.chosen.tolist() == [[11, 12, 13, 21, 22, 0], [14, 23, 0, 0, 0, 0]]
    assert b.rejected.tolist() == [[11, 12, 13, 31, 0, 0], [14, 32, 33, 34, 35, 0]]
    assert [np.flatnonzero(row).tolist() for row in b.chosen_mask] == [[3, 4, 5], [1, 2]]
    assert [np.flatnonzero(row).tolist() for row in b.rejected_mask] == [[3, 4], [1, 2, 3, 4, 5]]
    cut = dpo.custom_collate_fn(batch, pad_token_id=0, allowed_max_length=4)
    assert cut.chosen.shape == cut.rejected_mask.shape == (2, 4)
    assert [np.flatnonzero(row).tolist() for row in cut.chosen_mask] == [[3], [1, 2]]


def test_the_masked_tokens_are_the_response_and_its_end(tok):
    entries = toy_preferences(4)
    b = batch_of(entries, tok)
    eot = tok.eot_token
    for row, entry in enumerate(entries):
        prompt = instruct.encode_text(tok, instruct.prompt_text(entry))
        for key in ("chosen", "rejected"):
            ids, mask = getattr(b, key)[row], getattr(b, f"{key}_mask")[row]
            assert ids[:len(prompt)].tolist() == prompt and not mask[:len(prompt)].any()
            assert ids[mask].tolist() == tok.encode(entry[key]) + [eot]
            assert (ids[len(prompt) + mask.sum():] == eot).all() and not mask[len(prompt) + mask.sum():].any()


def test_an_entry_whose_prompt_fills_max_length_is_left_out(tok):
    entries = toy_preferences(4)  # three "Add one" prompts, then a shorter "Say hello."
    lengths = [len(instruct.encode_text(tok, instruct.prompt_text(e))) for e in entries]
    n = lengths[0]
    assert lengths[3] < n and lengths[:3] == [n] * 3
    loader = dpo.preference_loader(entries, tok, 2, train=False, max_length=n)
    assert loader.dataset.dropped == [0, 1, 2] and loader.dataset.entries == entries[3:]
    b = batch_of(entries, tok, max_length=n + 1)  # each keeps its first response token
    assert b.chosen.shape == (4, n + 1) and b.chosen_mask[:3].sum(axis=1).tolist() == [1, 1, 1]


class ChatTokenizer(BPETokenizer):
    """A BPE with a ChatML-like template, as a Llama-family tokenizer has one (rendered by hand here)."""

    chat_template = "chatml"

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|endoftext|>\n" for m in messages)
        text += "<|im_start|>assistant\n" if add_generation_prompt else ""
        return self.encode(text, allowed_special="all") if tokenize else text


def test_a_chat_template_frames_the_prompt_and_ends_the_response(tok):
    chat = ChatTokenizer(tok.vocab, tok.merges, tok.special_tokens)
    entry = {"instruction": "Add one to the number.", "input": "4", "chosen": "5", "rejected": "No."}
    prompt = dpo.prompt_ids(chat, entry)
    assert chat.decode(prompt) == "<|im_start|>user\nAdd one to the number.\n\n4<|endoftext|>\n<|im_start|>assistant\n"
    assert chat.decode(dpo.response_ids(chat, entry, "5")) == "5<|endoftext|>\n"
    b = batch_of([entry], chat)
    assert chat.decode(b.chosen[0][b.chosen_mask[0]].tolist()) == "5<|endoftext|>\n"
    assert b.chosen_mask[0].argmax() == len(prompt)


# ---- sequence_logprobs and dpo_loss against the book's formulas ------------------------------------


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def book_logprobs(logits, labels, mask):
    """The book's compute_logprobs in NumPy: logits (B, T, V) of all positions, labels and mask (B, T)."""
    lp = np.take_along_axis(log_softmax(logits[:, :-1]), labels[:, 1:, None], axis=-1)[..., 0]
    m = mask[:, 1:]
    return (lp * m).sum(-1) / m.sum(-1)


IDS = np.array([[1, 4, 2, 0, 3, 3], [2, 2, 1, 4, 0, 1]])
MASK = np.array([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]], dtype=bool)


def test_sequence_logprobs_is_the_books_compute_logprobs_on_a_gpt():
    model = tiny_gpt(vocab_size=5, context_length=8, seed=3)
    with no_grad():
        ours = dpo.sequence_logprobs(model, IDS, MASK).numpy()
        full = model(IDS).numpy()  # the book runs the model on all positions and drops the last
    np.testing.assert_allclose(ours, book_logprobs(full, IDS, MASK), rtol=1e-5, atol=1e-6)


def test_sequence_logprobs_gradient_is_the_derived_one_and_finite_differences():
    """A bigram model, logits = table[ids]: d lp_b / d table[i] = sum over selected t with ids[t-1] = i
    of (onehot(ids[t]) - softmax(table[i])) / count_b."""
    table = np.random.default_rng(0).standard_normal((5, 5))
    weights = np.array([0.7, -1.3])
    t = Tensor(table, requires_grad=True)
    (dpo.sequence_logprobs(lambda ids: t[ids], IDS, MASK) * Tensor(weights)).sum().backward()
    p = np.exp(log_softmax(table))
    expected = np.zeros_like(table)
    for b in range(2):
        count = MASK[b, 1:].sum()
        for pos in np.flatnonzero(MASK[b, 1:]) + 1:
            expected[IDS[b, pos - 1]] += weights[b] * (np.eye(5)[IDS[b, pos]] - p[IDS[b, pos - 1]]) / count
    np.testing.assert_allclose(t.grad, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dpo.sequence_logprobs(lambda ids: t[ids], IDS, MASK).numpy(),
                               book_logprobs(table[IDS], IDS, MASK), rtol=1e-12)
    check_gradients(lambda tt: dpo.sequence_logprobs(lambda ids: tt[ids], IDS, MASK), table)


def test_a_row_that_selects_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"rows \[1\] select no token"):
        dpo.sequence_logprobs(lambda ids: Tensor(np.zeros(ids.shape + (5,))), IDS, MASK * [[1], [0]])


def book_dpo(pc, pr, rc, rr, beta):
    z = beta * ((pc - pr) - (rc - rr))
    return np.mean(np.logaddexp(0.0, -z)), np.mean(pc - rc), np.mean(pr - rr)  # -log sigmoid(z) = log(1 + e^-z)


def test_dpo_loss_is_the_books_compute_dpo_loss_with_its_gradient():
    rng = np.random.default_rng(1)
    pc, pr, rc, rr = (rng.standard_normal(6) * 3 for _ in range(4))
    beta = 0.3
    inputs = [Tensor(a, requires_grad=True) for a in (pc, pr)]
    loss, chosen, rejected = dpo.dpo_loss(*inputs, Tensor(rc), Tensor(rr), beta)
    np.testing.assert_allclose([loss.numpy(), chosen.numpy(), rejected.numpy()], book_dpo(pc, pr, rc, rr, beta),
                               rtol=1e-12)
    loss.backward()
    z = beta * ((pc - pr) - (rc - rr))
    slope = beta / (1 + np.exp(z)) / len(z)  # d/dz of -log sigmoid(z) is -sigmoid(-z)
    np.testing.assert_allclose(inputs[0].grad, -slope, rtol=1e-10)
    np.testing.assert_allclose(inputs[1].grad, slope, rtol=1e-10)
    assert not chosen.requires_grad and not rejected.requires_grad
    check_gradients(lambda a, b, c, d: dpo.dpo_loss(a, b, c, d, beta)[0], pc, pr, rc, rr)


def test_dpo_loss_is_finite_far_out_and_refuses_a_bad_beta():
    big = Tensor(np.array([1e4, -1e4]))
    loss, _, _ = dpo.dpo_loss(big, -big, Tensor(np.zeros(2)), Tensor(np.zeros(2)), 1.0)
    np.testing.assert_allclose(loss.numpy(), 1e4)  # (0 + 2e4) / 2: -log sigmoid(-2e4) = 2e4, of +2e4 = 0
    for beta in (0, -0.1, math.nan, math.inf, True):
        with pytest.raises(ValueError, match="beta must be a positive number"):
            dpo.dpo_loss(big, big, big, big, beta)
        with pytest.raises(ValueError, match="beta must be a positive number"):
            dpo.DPOObjective(None, beta)


# ---- the reference ---------------------------------------------------------------------------------


def test_a_policy_equal_to_its_reference_starts_at_ln_2_with_zero_margins(tok):
    model = tiny_gpt(vocab_size=tok.n_vocab, context_length=128, seed=0)
    loss, chosen, rejected = dpo.DPOObjective(dpo.frozen_copy(model)).batch(model, batch_of(toy_preferences(8), tok))
    assert abs(float(loss.numpy()) - math.log(2)) < 1e-7 and f"{float(loss.numpy()):.4f}" == "0.6931"
    assert float(chosen.numpy()) == 0.0 and float(rejected.numpy()) == 0.0


def test_adapters_disabled_computes_the_base_and_switches_back():
    model = tiny_gpt(seed=0)
    ids = np.random.default_rng(0).integers(0, 97, (2, 7))
    with no_grad():
        base = model(ids).numpy()
        apply_lora(model, 2, 4)
        for _, layer in lora_layers(model):
            layer.lora_B.data[...] = 0.1
        adapted = model(ids).numpy()
        with pytest.raises(RuntimeError), adapters_disabled(model):
            np.testing.assert_array_equal(model(ids).numpy(), base)  # the frozen base, exactly
            raise RuntimeError
        np.testing.assert_array_equal(model(ids).numpy(), adapted)  # on again, also after an error
    assert not np.allclose(adapted, base)


def test_disable_dropout_makes_train_mode_deterministic():
    model = tiny_gpt(seed=0, drop_rate=0.3)
    ids = np.random.default_rng(0).integers(0, 97, (2, 7))
    with no_grad():
        assert not np.allclose(model(ids).numpy(), model(ids).numpy())
        dpo.disable_dropout(model)
        with nn.eval_mode(model):
            expected = model(ids).numpy()
        np.testing.assert_array_equal(model(ids).numpy(), expected)


def test_the_lora_reference_equals_a_frozen_copy_step_for_step(tok):
    """Two identical LoRA policies, one against a frozen copy of the base, one against itself with the
    adapters off: the same losses, rewards and updates at every step."""
    entries = toy_preferences(16)
    runs = []
    for frozen in (True, False):
        model = tiny_gpt(vocab_size=tok.n_vocab, context_length=128, seed=0)
        objective = dpo.DPOObjective(dpo.frozen_copy(model) if frozen else None, beta=0.5)
        apply_lora(model, 2, 4, seed=1)
        optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        history = []
        for batch in dpo.preference_loader(entries, tok, 4, train=True, seed=0):
            loss, chosen, rejected = objective.batch(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            history.append([float(t.numpy()) for t in (loss, chosen, rejected)])
        runs.append((history, model.state_dict()))
    (frozen_history, frozen_state), (lora_history, lora_state) = runs
    assert len(frozen_history) == 4 and frozen_history[0][0] == pytest.approx(math.log(2), abs=1e-7)
    np.testing.assert_allclose(lora_history, frozen_history, rtol=1e-6, atol=1e-7)
    assert frozen_history[-1][1] - frozen_history[-1][2] > 0  # the margin has moved
    for name, value in frozen_state.items():
        np.testing.assert_allclose(lora_state[name], value, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="the policy has no LoRA layers"):
        dpo.DPOObjective(None).batch(tiny_gpt(vocab_size=tok.n_vocab, context_length=128), batch)


def test_a_reference_of_another_vocabulary_is_refused():
    with pytest.raises(ValueError, match="vocabulary of 90 tokens, the policy 97"):
        dpo.check_vocabularies(tiny_gpt(97), tiny_gpt(90))


# ---- a short run -----------------------------------------------------------------------------------


def test_a_short_run_raises_the_validation_reward_margin(tok, tmp_path):
    entries = toy_preferences(48)
    split = instruct.split_entries(entries)
    model = tiny_gpt(vocab_size=tok.n_vocab, context_length=128, seed=0)
    objective = dpo.DPOObjective(dpo.frozen_copy(model), beta=0.5)
    train = dpo.preference_loader(split.train, tok, 8, train=True)
    val = dpo.preference_loader(split.val + split.test, tok, 8, train=False)
    before = dpo.evaluate_dpo(model, val, objective)
    config = TrainConfig(lr=3e-3, max_steps=30, eval_every=30, log_every=30, progress=False, weight_decay=0.01)
    records = Trainer(model, train, val, config, loss_fn=objective, log=None).fit()
    after = dpo.evaluate_dpo(model, val, objective)
    assert before["loss"] == pytest.approx(math.log(2), abs=1e-6) and before["reward_margin"] == 0.0
    assert after["reward_margin"] > 1.0 and after["loss"] < 0.5
    assert after["chosen_reward"] > after["rejected_reward"]
    assert records[-1]["val_loss"] == pytest.approx(after["loss"], rel=1e-5)
    # the policy now prefers the chosen answers: its log-probability of "No." fell
    assert after["rejected_reward"] < 0
    json.dumps(after)  # plain numbers, for metrics.jsonl
