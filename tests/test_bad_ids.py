"""Token ids outside the vocabulary are an error where they enter (the embedding lookup, the loss's
targets), never a silent wrap-around: Python indexing reads id -1 as the last row. The loss's
ignore_index (-100, the instruction fine-tuning's padding) stays ignored. And an abandoned stream gives
the model its mode back at once, not when the garbage collector gets to it."""

import gc

import numpy as np
import pytest

import autograd.functional as F
import autograd.reference as R
import tinygrad_llm.models.generate as generate_module
from autograd import Tensor
from tinygrad_llm.models.generate import generate, stream
from tinygrad_llm.models.gpt import GPT, GPTConfig

V = 50


def tiny_model(**kw):
    return GPT(GPTConfig.preset("cpu-tiny", vocab_size=V, context_length=16, **kw), seed=0)


@pytest.mark.parametrize("bad, where", [(-1, (1, 2)), (V, (0, 0)), (10**6, (1, 0))])
def test_model_rejects_ids_outside_the_vocabulary(bad, where):
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    ids[where] = bad
    with pytest.raises(ValueError) as e:
        tiny_model()(ids)
    assert str(e.value) == f"embedding ids: id {bad} at position {where} is outside [0, {V}) (a vocabulary of {V})"


def test_model_accepts_the_edges_of_the_vocabulary():
    logits = tiny_model()(np.array([[0, V - 1]]))
    assert logits.shape == (1, 2, V)


@pytest.mark.parametrize("loss", [F.cross_entropy, R.cross_entropy], ids=["fused", "reference"])
def test_cross_entropy_rejects_negative_targets_but_ignores_ignore_index(loss):
    logits = Tensor(np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32))
    with pytest.raises(ValueError, match=r"cross_entropy targets: id -1 at position \(1, 1\) is outside \[0, 5\) "
                                         r"\(a vocabulary of 5\) or the ignore index -100"):
        loss(logits, np.array([[0, 1, 2], [3, -1, 4]]))
    with pytest.raises(ValueError, match=r"id 5 at position \(0, 0\)"):
        loss(logits, np.array([[5, 1, 2], [3, 0, 4]]))
    # -100 is the padding of instruction fine-tuning: left out, equal to the loss over the other rows
    masked = loss(logits, np.array([[0, -100, 2], [-100, -100, 4]])).numpy()
    kept = loss(logits.reshape(-1, 5)[np.array([0, 2, 5])], np.array([0, 2, 4])).numpy()
    np.testing.assert_allclose(masked, kept, rtol=1e-6)


def _keep_inner_steps(monkeypatch):
    """Hold a reference to each inner `_steps` generator, as a debugger, a traceback or a slow collector
    would: then only an explicit close runs its `finally`."""
    made = []
    original = generate_module._steps

    def keeping(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(generate_module, "_steps", keeping)
    return made


def test_closing_a_stream_restores_training_mode_without_the_garbage_collector(monkeypatch):
    made = _keep_inner_steps(monkeypatch)
    model = tiny_model()
    gc.disable()
    try:
        tokens = stream(model, [5, 6, 7], 10)
        next(tokens)
        assert not model.training  # eval mode while generating
        tokens.close()
        assert model.training
        assert made[0].gi_frame is None  # the inner generator was closed, not merely dropped
    finally:
        gc.enable()


def test_generate_stopping_at_end_of_text_restores_training_mode(monkeypatch):
    _keep_inner_steps(monkeypatch)
    model = tiny_model()
    first = int(generate(model, [5, 6, 7], 1)[-1])
    gc.disable()
    try:
        out = generate(model, [5, 6, 7], 10, eos_id=first)  # stops at the first step
        assert out.tolist() == [5, 6, 7]
        assert model.training
    finally:
        gc.enable()
