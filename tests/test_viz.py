"""The pictures for learners check what they draw: the autograd graph's nodes and edges (DOT text and the
matplotlib drawing), the attention grid's cells against `attention_weights`, token spans that join to
the text, and a run report whose lines are metrics.jsonl's numbers."""

import json
import re
import sys

import numpy as np
import pytest

from autograd import Tensor
from autograd import functional as F
from autograd.viz import PLOT_EXTRA, record_modules, trace
from tinygrad_llm.text.data import DataLoader, GPTDataset
from tinygrad_llm.text.tokenizer import BPETokenizer
from tinygrad_llm.training import TrainConfig, Trainer, lm_loss
from tinygrad_llm.training.config import lr_schedule
from tinygrad_llm.training.run_folder import METRICS
from tinygrad_llm.viz import attention_figure, attention_grid, color_tokens, token_spans, tokens_figure, tokens_html
from tinygrad_llm.viz import report
from tinygrad_llm.viz.report import read_metrics, series, write_report
from tinygrad_llm.viz.attention import token_labels
from tests.conftest import TEXT, tiny_gpt

pytest.importorskip("matplotlib")


def parse_dot(text):
    """{key: label} and [(from label, to label)] of a DOT text as Graph.dot writes it."""
    labels = dict(re.findall(r'^  (\w+) \[label="((?:[^"\\]|\\.)*)"', text, re.M))
    labels = {k: v.replace("\\n", "\n") for k, v in labels.items()}
    edges = [(labels[a], labels[b]) for a, b in re.findall(r"^  (\w+) -> (\w+);$", text, re.M)]
    return labels, edges


def logistic_loss():
    x1, y = Tensor([1.1]), Tensor([1.0])
    w1, b = Tensor([2.2], requires_grad=True), Tensor([0.0], requires_grad=True)
    z = x1 * w1 + b
    loss = F.binary_cross_entropy(z.sigmoid(), y)
    return loss, {"x1": x1, "w1": w1, "b": b, "y": y, "z": z, "loss": loss}


def test_the_dot_text_of_appendix_a_lists_its_ops_tensors_and_edges():
    loss, names = logistic_loss()
    graph = trace(loss, names=names)
    loss.backward()
    labels, edges = parse_dot(graph.dot())
    assert sorted(labels.values()) == sorted([
        "x1\n(1,) = 1.1", "w1\n(1,) = 2.2\ngrad -0.08983", "b\n(1,) = 0\ngrad -0.08166", "y\n(1,) = 1",
        "Mul", "(1,) = 2.42", "Add", "z\n(1,) = 2.42", "Sigmoid", "(1,) = 0.9183", "BinaryCrossEntropy",
        "(1,) = 0.08519", "Mean", "loss\n() = 0.08519"])
    assert edges == [("x1\n(1,) = 1.1", "Mul"), ("w1\n(1,) = 2.2\ngrad -0.08983", "Mul"), ("Mul", "(1,) = 2.42"),
                     ("(1,) = 2.42", "Add"), ("b\n(1,) = 0\ngrad -0.08166", "Add"), ("Add", "z\n(1,) = 2.42"),
                     ("z\n(1,) = 2.42", "Sigmoid"), ("Sigmoid", "(1,) = 0.9183"),
                     ("(1,) = 0.9183", "BinaryCrossEntropy"), ("y\n(1,) = 1", "BinaryCrossEntropy"),
                     ("BinaryCrossEntropy", "(1,) = 0.08519"), ("(1,) = 0.08519", "Mean"),
                     ("Mean", "loss\n() = 0.08519")]
    fills = dict(re.findall(r'^  (\w+) \[label="(?:[^"\\]|\\.)*", shape=\w+, fillcolor="(#\w+)"', graph.dot(), re.M))
    key = {v: k for k, v in labels.items()}
    assert fills[key["w1\n(1,) = 2.2\ngrad -0.08983"]] == "#c8e6c9"  # a leaf that requires grad
    assert fills[key["x1\n(1,) = 1.1"]] == "#eeeeee"  # an input: no gradient
    with pytest.raises(RuntimeError, match="before backward"):
        trace(loss)  # the walk freed the graph


def test_the_matplotlib_drawing_draws_each_node_and_edge_once(tmp_path):
    loss, names = logistic_loss()
    graph = trace(loss, names=names)
    fig = graph.figure()
    texts = {t.get_gid(): t.get_text() for t in fig.axes[0].texts}
    assert texts == {k: graph.label(k) for k in graph.nodes}
    arrows = sorted(p.get_gid() for p in fig.axes[0].patches if p.get_gid())
    assert arrows == sorted(f"{a}->{b}" for a, b in graph.edges)
    path = graph.draw(tmp_path / "g.png", engine="matplotlib")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_gpt_step_collapses_into_one_box_per_module():
    model = tiny_gpt(vocab_size=40, context_length=8, n_layers=2)
    batch = np.random.default_rng(0).integers(0, 40, (2, 8))
    with record_modules(model) as scopes:
        loss = lm_loss(model, (batch[:, :-1], batch[:, 1:]))
    assert all("forward" not in m.__dict__ for m in model.modules())  # the wrappers are gone
    full = trace(loss)
    boxes = trace(loss, names=model, scopes=scopes, depth=1)
    modules = {k: boxes.label(k).split("\n") for k, kind in boxes.nodes.items() if kind == "module"}
    assert sorted(lines[0] for lines in modules.values()) == [
        "h.0 (Block)", "h.1 (Block)", "ln_f (LayerNorm)", "wpe (Embedding)", "wte (Embedding)"]  # no dropout: no op
    ops_in_boxes = sum(int(lines[1].split()[0]) for lines in modules.values())
    ops_alone = sum(kind == "op" for kind in boxes.nodes.values())
    assert ops_in_boxes + ops_alone == sum(kind == "op" for kind in full.nodes.values())
    labels, edges = parse_dot(boxes.dot())
    assert ("h.0 (Block)\n10 ops, 49,984 parameters", "(2, 7, 64)") in edges  # a block's output, between boxes
    assert ("(2, 7, 64)", "h.1 (Block)\n10 ops, 49,984 parameters") in edges
    # the tied embedding is read in two places: wte's box and the head, so it stays a node of its own
    assert sum(a.startswith("wte.weight") for a, _ in edges) == 2
    deeper = trace(loss, scopes=scopes, depth=2)
    assert any(boxes_label.startswith("h.0.attn ") for boxes_label in map(deeper.label, deeper.nodes))


def test_the_attention_grid_draws_attention_weights(tok):
    model = tiny_gpt(vocab_size=tok.n_vocab, context_length=16)
    text = "the cat sat on the mat"
    fig = attention_grid(model, tok, text, layer=-1)
    expected = model.attention_weights(np.asarray([tok.encode(text)]))[-1][0]  # (heads, T, T)
    heat = [ax for ax in fig.axes if ax.images and ax.get_title().startswith("head")]
    assert len(heat) == expected.shape[0] == model.config.n_heads
    for h, ax in enumerate(heat):
        np.testing.assert_array_equal(ax.images[0].get_array(), expected[h])
        assert [t.get_text() for t in ax.get_xticklabels()] == token_labels(tok, tok.encode(text))
    assert "".join(token_labels(tok, tok.encode(text))).replace("\u00b7", " ") == text
    with pytest.raises(ValueError, match="layer 5 does not exist: the model has 2 layers"):
        attention_grid(model, tok, text, layer=5)
    with pytest.raises(ValueError, match=r"do not fit 3 tokens"):
        attention_figure(np.zeros((2, 4, 4)), ["a", "b", "c"])


def test_few_tokens_show_their_weights_in_the_cells():
    w = np.tril(np.ones((1, 3, 3), np.float32))
    w /= w.sum(axis=-1, keepdims=True)
    fig = attention_figure(w, ["a", "b", "c"])
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(["1.00", "0.50", "0.50", "0.33", "0.33", "0.33"])


@pytest.mark.parametrize("text", ["Hello, do you like tea?", "one\n\ntwo  three\n", "a 🙂 emoji, 日本語 too", ""])
def test_token_spans_join_to_the_text(tok, text):
    spans = token_spans(tok, text)
    assert "".join(s.text for s in spans) == text
    assert [i for s in spans for i in s.ids] == tok.encode(text)
    assert [s.start for s in spans] == [sum(len(p.text) for p in spans[:k]) for k in range(len(spans))]
    plain = re.sub(r"\x1b\[[0-9;]*m", "", color_tokens(spans))
    assert plain == text.replace("\n", "\u21b5\n")
    page = tokens_html(spans, ids=True)
    shown = re.findall(r'<span style="background:#\w+" title="ids ([\d ]*)">(.*?)<sub>', page, re.S)
    import html

    assert "".join(html.unescape(t) for _, t in shown) == text
    assert [tuple(map(int, i.split())) for i, _ in shown] == [s.ids for s in spans]
    drawn = [t.get_text() for t in tokens_figure(spans).axes[0].texts]
    assert "".join(drawn) == text.replace("\n", "\u21b5").replace(" ", "\u00b7")


def test_a_character_split_between_tokens_is_one_span():
    tok = BPETokenizer.train("plain ascii text " * 20, 270)
    spans = token_spans(tok, "a🙂b")
    assert [s.text for s in spans] == ["a", "🙂", "b"]
    assert len(spans[1].ids) == 4  # the emoji's four UTF-8 bytes, none of them a character alone


# ---- the run report ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, tok):
    ids = np.asarray(tok.encode(TEXT), dtype=np.int64)
    out = tmp_path_factory.mktemp("run")
    model = tiny_gpt(vocab_size=tok.n_vocab, context_length=16)
    train = DataLoader(GPTDataset(ids, 16, 16), batch_size=2, shuffle=True, seed=1)
    cfg = TrainConfig(lr=2e-3, warmup_steps=2, max_steps=7, eval_every=3, eval_batches=1, grad_clip=1.0,
                      log_every=2, out_dir=str(out), progress=False)

    def accuracy(trainer, record):  # what a classifier's on_eval adds
        record["val_acc"] = trainer.step / 10

    trainer = Trainer(model, train, None, cfg, log=None, on_eval=accuracy)
    trainer.fit()
    return out, trainer


def test_each_record_holds_its_steps_since_the_one_before(run):
    out, trainer = run
    records = read_metrics(out)
    assert [r["step"] for r in records] == [0, 3, 6, 7]
    assert "per_step" not in records[0]
    assert [r["per_step"]["step"] for r in records[1:]] == [[1, 2, 3], [4, 5, 6], [7]]
    assert [x for r in records[1:] for x in r["per_step"]["loss"]] == trainer.step_losses
    schedule = lr_schedule(trainer.config, trainer.total_steps)
    assert [x for r in records[1:] for x in r["per_step"]["lr"]] == [schedule(s) for s in range(7)]
    norms = [x for r in records[1:] for x in r["per_step"]["grad_norm"]]
    assert len(norms) == 7 and all(n > 0 for n in norms)


def test_the_report_draws_metrics_jsonl(run):
    out, _ = run
    records = read_metrics(out)
    drawn = series(records)
    per_step = [(s, r["per_step"]) for r in records if "per_step" in r for s in range(len(r["per_step"]["step"]))]
    assert drawn["lr"]["lr"] == ([p["step"][k] for k, p in per_step], [p["lr"][k] for k, p in per_step])
    assert drawn["grad_norm"]["grad_norm"] == ([p["step"][k] for k, p in per_step],
                                               [p["grad_norm"][k] for k, p in per_step])
    assert drawn["loss"] == {"train_loss": ([r["tokens_seen"] for r in records], [r["train_loss"] for r in records])}
    assert drawn["accuracy"] == {"val_acc": ([0, 3, 6, 7], [0.0, 0.3, 0.6, 0.7])}
    assert "reward" not in drawn
    fig = report.glance_figure(records)
    lines = {ax.get_title(): [line.get_xydata().tolist() for line in ax.lines] for ax in fig.axes}
    for panel, named in drawn.items():
        assert lines[report.AXES[panel][0]] == [np.column_stack(xy).tolist() for xy in named.values()]
    paths = write_report(out)
    assert sorted(p.name for p in paths) == ["accuracy.png", "grad_norm.png", "loss.png", "lr.png", "report.png"]
    assert report.METRICS_FILE == METRICS


def test_the_trainer_writes_the_pictures_beside_loss_png(run):
    out, _ = run
    assert {"loss.png", "lr.png", "grad_norm.png", "accuracy.png"} <= {p.name for p in out.iterdir()}


def test_rewards_and_old_runs_without_per_step():
    records = [{"step": 0, "tokens_seen": 0, "train_loss": 2.0, "val_loss": None, "lr": 0.1},
               {"step": 5, "tokens_seen": 50, "train_loss": 1.0, "val_loss": 1.5, "lr": 0.05,
                "reward_margin": 0.4, "reward_accuracy": 0.75}]
    drawn = series(records)
    assert drawn["lr"] == {"lr": ([0, 5], [0.1, 0.05])}  # the evaluations' rates
    assert "grad_norm" not in drawn
    assert drawn["loss"]["val_loss"] == ([50], [1.5])  # a null is not drawn
    assert drawn["reward"] == {"reward_accuracy": ([5], [0.75]), "reward_margin": ([5], [0.4])}
    assert drawn["accuracy"] == {"reward_accuracy": ([5], [0.75])}


def test_the_report_command(run, tmp_path, capsys, monkeypatch):
    out, _ = run
    assert report.main([str(out)]) == 0
    assert str(out / "report.png") in capsys.readouterr().out.splitlines()
    assert report.main([str(tmp_path)]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
    assert report.main([str(out)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {PLOT_EXTRA}"
    with pytest.raises(ImportError, match=re.escape(PLOT_EXTRA)):
        trace(logistic_loss()[0]).figure()
    assert "digraph" in trace(logistic_loss()[0]).dot()  # the text needs no matplotlib


def test_a_resume_between_evaluations_keeps_the_steps_since_the_last_record(tok, tmp_path):
    ids = np.asarray(tok.encode(TEXT), dtype=np.int64)

    def trainer(out, **kw):
        model = tiny_gpt(vocab_size=tok.n_vocab, context_length=16)
        train = DataLoader(GPTDataset(ids, 16, 16), batch_size=2, shuffle=True, seed=1)
        cfg = TrainConfig(max_steps=5, eval_every=3, eval_batches=1, grad_clip=1.0, out_dir=str(out), progress=False)
        return Trainer(model, train, None, cfg, log=None, **kw)

    full = trainer(tmp_path / "full")
    full.fit()

    def stop_at_2(t):
        if t.step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "cut", on_step=stop_at_2).fit()
    second = trainer(tmp_path / "cut")
    second.resume()
    second.fit()
    strip = lambda rs: [r["per_step"] for r in rs if "per_step" in r]  # noqa: E731
    assert strip(second.records) == strip(full.records)
    assert json.loads((tmp_path / "cut" / METRICS).read_text().splitlines()[1])["per_step"]["step"] == [1, 2, 3]


def test_the_attention_grid_draws_a_llama_familys_query_heads(tok):
    from tinygrad_llm.models.llama import Llama, LlamaConfig

    model = Llama(LlamaConfig.preset("tiny-llama", vocab_size=tok.n_vocab), seed=0)
    text = "the cat sat on the mat"
    fig = attention_grid(model, tok, text, layer=0)
    expected = model.attention_weights(np.asarray([tok.encode(text)]))[0][0]  # (n_heads, T, T), not n_kv_heads
    heat = [ax for ax in fig.axes if ax.images and ax.get_title().startswith("head")]
    assert len(heat) == model.config.n_heads > model.config.n_kv_heads
    for h, ax in enumerate(heat):
        np.testing.assert_array_equal(ax.images[0].get_array(), expected[h])
