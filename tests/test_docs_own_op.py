"""docs/your-own-op.md runs as written: its python blocks, in order, in one namespace."""

import re
from pathlib import Path

import numpy as np
import pytest

from autograd import Tensor
from autograd.grad_check import check_gradients

PAGE = Path(__file__).resolve().parents[1] / "docs" / "your-own-op.md"


def run_page():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    namespace = {"__name__": "your_own_op"}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)
    return blocks, namespace


def test_the_page_runs_and_its_wrong_backward_is_caught(capsys):
    blocks, ns = run_page()
    assert len(blocks) == 3
    assert capsys.readouterr().out.startswith("caught: input 0 of shape (3, 4)")
    x = np.linspace(-3.0, 3.0, 7)
    check_gradients(ns["SoftplusOp"], x)  # the Function subclass itself, no wrapper
    t = Tensor(x, requires_grad=True)
    ns["softplus"](t).sum().backward()
    np.testing.assert_allclose(t.grad, 1.0 / (1.0 + np.exp(-x)), rtol=1e-15)  # dy/dx = sigmoid(x)
    with pytest.raises(AssertionError, match="input 0 of shape"):
        check_gradients(ns["WrongSoftplusOp"], x)


def test_the_op_and_its_check_fit_in_about_twenty_lines():
    blocks, _ = run_page()
    code = [line for line in blocks[0].splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 24, len(code)
