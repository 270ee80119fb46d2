"""The packages' structure: every module imports on its own, the imports between modules form no cycle
(counting the ones inside functions), and autograd never imports tinygrad_llm."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("autograd", "tinygrad_llm")


def modules():
    found = []
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(found)


def imports_of(module):
    """The project modules `module` imports anywhere in its file (top level or inside a function)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    path = path if path.exists() else path.with_suffix("") / "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from autograd import backend` imports the module autograd.backend; `from autograd.tensor
            # import Tensor` imports autograd.tensor
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in set(modules())]
            names = subs or [node.module]
        else:
            continue
        found |= {n for n in names if n in set(modules())}
    return found - {module}


def test_every_module_imports_on_its_own():
    code = ("import importlib, sys\n"
            f"for name in {modules()!r}:\n"
            "    for loaded in [m for m in sys.modules if m.split('.')[0] in ('autograd', 'tinygrad_llm')]:\n"
            "        del sys.modules[loaded]\n"
            "    importlib.import_module(name)\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_no_import_cycles_and_autograd_stands_alone():
    graph = {m: imports_of(m) for m in modules()}
    assert not any(dep.startswith("tinygrad_llm") for m, deps in graph.items() if m.startswith("autograd")
                   for dep in deps), {m: deps for m, deps in graph.items() if m.startswith("autograd")}
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", f"import cycle: {' -> '.join(path + [m])}"
        state[m] = "open"
        for dep in sorted(graph[m]):
            visit(dep, path + [m])
        state[m] = "done"

    for m in graph:
        visit(m, [])
    assert graph["tinygrad_llm.models.gpt2_weights"].isdisjoint({"tinygrad_llm.models.gpt"})  # the model reads weights, not back


def test_the_strict_test_device_is_loaded_only_when_asked_for():
    code = ("import sys, numpy as np\nfrom tinygrad_llm.models.gpt import GPT, GPTConfig\n"
            "GPT(GPTConfig.preset('cpu-tiny'))(np.zeros((1, 3), dtype=np.int64))\n"
            "print('autograd.testing' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


def test_the_old_flat_module_paths_still_import_and_name_the_moved_modules():
    import importlib

    import tinygrad_llm
    from tinygrad_llm import _MOVED

    for old, new in _MOVED.items():
        assert importlib.import_module(f"tinygrad_llm.{old}") is importlib.import_module(f"tinygrad_llm.{new}")
    from tinygrad_llm.model import GPT
    from tinygrad_llm.train import Trainer
    assert (tinygrad_llm.GPT, tinygrad_llm.Trainer) == (GPT, Trainer)
    assert GPT.__module__ == "tinygrad_llm.models.gpt"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("tinygrad_llm.no_such_module")
