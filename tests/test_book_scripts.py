"""The book path: every script in examples/book runs (as a user runs it, in a subprocess) and prints the
book's deterministic numbers, each marked "(book: same)" next to ours."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "examples" / "book"


def run(script, *args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BOOK / script), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def same(out, label, value):
    """The line `label: value   (book: same)` is in the output."""
    line = f"{label}: {value}   (book: same)"
    assert line in out.splitlines(), f"missing {line!r}"


def test_ch02_tokens_windows_and_embeddings(shared_data):
    out = run("ch02.py", "--data-dir", shared_data).stdout
    same(out, "Total number of character", 20479)
    same(out, "tokens after splitting on words and punctuation", 4690)
    same(out, "vocabulary size", 1130)
    same(out, "with <|endoftext|> and <|unk|>", 1132)
    same(out, "SimpleTokenizerV2 ids", [1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7])
    same(out, "ids", [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114, 1659, 617,
                      34680, 27271, 13])
    same(out, "decoded", "Hello, do you like tea? <|endoftext|> In the sunlit terracesof someunknownPlace.")
    same(out, "tokens in the-verdict.txt", 5145)
    same(out, "x", [290, 4920, 2241, 287])
    same(out, "y", [4920, 2241, 287, 257])
    assert "[290, 4920, 2241, 287] ----> 257     and established himself in ---->  a" in out
    same(out, "first batch", [[[40, 367, 2885, 1464]], [[367, 2885, 1464, 1807]]])
    same(out, "second batch", [[[367, 2885, 1464, 1807]], [[2885, 1464, 1807, 3619]]])
    for label in ("Inputs", "Targets"):
        assert any(line.startswith(f"{label}: [[") and line.endswith("(book: same)") for line in out.splitlines())
    same(out, "token embeddings", (8, 4, 256))
    same(out, "position embeddings", (4, 256))
    same(out, "input embeddings", (8, 4, 256))


def test_ch04_the_124m_model(shared_data):
    out = run("ch04.py", "--data-dir", shared_data).stdout
    same(out, "batch", [[6109, 3626, 6100, 345], [6109, 1110, 6622, 257]])
    same(out, "Mean of the normalized rows", [0.0, 0.0])
    same(out, "Variance of the normalized rows", [1.0, 1.0])
    same(out, "FeedForward output shape", (2, 3, 768))
    same(out, "Output shape", (2, 4, 768))
    same(out, "Output shape", (2, 4, 50257))
    same(out, "Total number of parameters", "163,009,536")
    same(out, "Number of trainable parameters considering weight tying", "124,412,160")
    same(out, "Total size of the model", "621.83 MB")
    same(out, "encoded", [15496, 11, 314, 716])
    same(out, "Output length", 10)


def test_ch05_loss_training_and_decoding(shared_data):
    out = run("ch05.py", "--data-dir", shared_data).stdout
    same(out, "probas shape", (2, 3, 50257))
    same(out, "Targets batch 1", " effort moves you")
    same(out, "the same as -mean(log p)", True)
    same(out, "Characters", 20479)
    same(out, "Tokens", 5145)
    same(out, "Train loader", [(2, 256)] * 9)
    same(out, "Training tokens", 4608)
    same(out, "Validation tokens", 512)
    same(out, "All tokens", 5120)
    losses = [line for line in out.splitlines() if line.startswith("Ep 1 (Step")]
    first, last = (float(line.split("Val loss ")[1]) for line in (losses[0], losses[-1]))
    # train_simple evaluates after steps 1 and 6 of the 9 (the book's Step 000000 and 000005): the short training learns
    assert len(losses) == 2 and first > 10.5 and last < first - 1.5, losses
    same(out, "next token (argmax)", "forward")
    same(out, "Top logits", "tensor([6.7500, 6.2800, 4.5100])")
    same(out, "Top positions", [3, 7, 0])
    same(out, "new_logits", "tensor([4.5100,   -inf,   -inf, 6.7500,   -inf,   -inf,   -inf, 6.2800,   -inf])")
    same(out, "topk_probas", "tensor([0.0615, 0.0000, 0.0000, 0.5775, 0.0000, 0.0000, 0.0000, 0.3610, 0.0000])")
    same(out, "weights after loading equal the saved ones", True)


def test_appendix_a_autograd_and_a_small_network():
    out = run("appendix_a.py").stdout  # needs no data files
    same(out, "tensor2d @ tensor2d.T", [[14, 32], [32, 77]])
    same(out, "loss", "tensor(0.0852)")
    same(out, "grad(loss, w1)", "(tensor([-0.0898]),)")
    same(out, "grad(loss, b)", "(tensor([-0.0817]),)")
    same(out, "w1.grad after loss.backward()", "tensor([-0.0898])")
    same(out, "b.grad", "tensor([-0.0817])")
    same(out, "Total number of trainable model parameters", 2213)
    same(out, "compute_accuracy(model, train_loader)", 1.0)
    same(out, "compute_accuracy(model, test_loader)", 1.0)
    same(out, "missing and unexpected keys", ([], []))


def test_appendix_d_learning_rates(shared_data):
    out = run("appendix_d.py", "--data-dir", shared_data).stdout
    same(out, "warmup_steps", 27)
    assert out.count("  equal to the book's loop at every step: True   (book: same)") == 3
    assert "steps 0-3: 0.0001, 0.000467, 0.000833, 0.0012" in out  # the book's first lr is initial_lr


def test_a_missing_data_folder_is_one_line_saying_where_to_get_it(tmp_path):
    proc = run("ch02.py", "--data-dir", tmp_path, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: the-verdict.txt, gpt2/encoder.json, gpt2/vocab.bpe not "
                                                   f"found in {tmp_path}: download the-verdict.txt from https://")
    assert "--data-dir DIR" in lines[0]


@pytest.mark.parametrize("script", ["ch02.py", "ch04.py", "ch05.py", "appendix_a.py", "appendix_d.py", "ch07_dpo.py"])
def test_each_script_says_which_library_file_to_read(script):
    doc = " ".join((BOOK / script).read_text(encoding="utf-8").split('"""')[1].split())
    assert "Read " in doc and ".py" in doc.split("Read ", 1)[1]


def test_ch03_attention_weights():
    out = run("ch03.py").stdout
    same(out, "attention scores of 'journey'", "[0.9544, 1.4950, 1.4754, 0.8434, 0.7070, 1.0865]")
    same(out, "attention weights (softmax)", "[0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581]")
    same(out, "context vector of 'journey'", "[0.4419, 0.6515, 0.5683]")
    same(out, "all context vectors, row 2", "[0.4419, 0.6515, 0.5683]")
    same(out, "keys.shape", (6, 2))
    lines = out.splitlines()
    assert lines[lines.index("attention weights:") + 7] == "book: same"  # the whole 6 x 6 matrix of 3.3.2
    causal = lines[lines.index("causal attention weights:") + 1:][:6]
    assert causal[0] == "[[1.0000, 0.0000, 0.0000, 0.0000, 0.0000, 0.0000],"  # the first token sees itself only
    assert sum(line.count("0.0000") for line in causal) == 15  # the 15 future positions, masked
    assert sum(1 for line in lines if line.startswith("head ") and "attention weights" in line) == 3


def test_ch07_prompt_splits_and_collate(shared_data):
    out = run("ch07.py", "--data-dir", shared_data).stdout
    same(out, "Number of entries", 1100)
    for label, value in (("Training set length", 935), ("Validation set length", 55), ("Test set length", 110)):
        same(out, label, value)
    assert "### Instruction:\nIdentify the correct spelling of the following word.\n\n### Input:\nOcassion\n\n" \
           "### Response:\nThe correct spelling is 'Occasion.'" in out
    same(out, "inputs", [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]])
    same(out, "targets", [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100], [8, 9, 50256, -100, -100]])
    same(out, "loss_1", "1.1269")
    same(out, "loss_3", "1.1269")
    same(out, "loss_1 == loss_3", True)


def test_ch07_dpo_masks_logprobs_and_the_ln_2_start(shared_data):
    out = run("ch07_dpo.py", "--data-dir", shared_data).stdout
    same(out, "Number of entries", 1100)
    for label, value in (("Training set length", 935), ("Validation set length", 55), ("Test set length", 110)):
        same(out, label, value)
    assert "batch['prompt'][0]: [21106, 318, 281, 12064," in out and "1545]   (book: same)" in out
    assert "\nThe spelling of the given phrase \"freind\" is incorrect, the correct spelling is \"friend\".<|endoftext|>\n" \
           in out  # the masked tokens: the response and its end
    for label in ("manual loss (gather)", "cross_entropy", "-sequence_logprobs"):
        same(out, label, "1.4185")
    same(out, "compute_dpo_loss_batch", ("0.6931", "0.0", "0.0"))
    for label in ("Training loss", "Validation loss"):
        same(out, label, "0.6931")
    same(out, "Train reward margin", 0.0)
    same(out, "Val reward margin", 0.0)


def test_ch06_spam_data_and_head(shared_data):
    out = run("ch06.py", "--data-dir", shared_data).stdout
    same(out, "balanced: ham, spam", (747, 747))
    same(out, "train, validation, test", (1045, 149, 300))
    same(out, "training, validation, test batches", (130, 19, 38))
    same(out, "Inputs", [[5211, 345, 423, 640]])
    same(out, "Outputs dimensions", (1, 2))
    assert "ham, spam: (4827, 747)   (book: (4825, 747))" in out  # the note says why


def test_appendix_e_lora_counts():
    out = run("appendix_e.py").stdout
    same(out, "Total trainable parameters before", "124,441,346")
    same(out, "Total trainable parameters after", "0")
    assert "Total trainable LoRA parameters: 2,371,616   (book: 2,666,528)" in out  # the fused qkv, explained
    assert "largest change of the logits when wrapped (B = 0): 0.0" in out
    assert "a merged layer is a plain Linear again: Linear" in out


# ---- the pictures (--plot and friends; tests/test_viz.py checks what they draw) ----------------------


def test_appendix_a_prints_the_graph_of_the_loss_and_draws_it(tmp_path):
    out = run("appendix_a.py", "--plot", tmp_path / "graph.png").stdout
    dot = out[out.index("digraph autograd {"):out.index("}\n") + 2]
    for line in ('[label="w1\\n(1,) = 2.2\\ngrad -0.08983"', '[label="Sigmoid"', '[label="loss\\n() = 0.08519"'):
        assert line in dot
    assert dot.count(" -> ") == 13
    assert f"wrote {tmp_path / 'graph.png'}" in out.splitlines()
    assert (tmp_path / "graph.png").read_bytes()[:4] == b"\x89PNG"


def test_ch02_shows_the_tokens_of_its_text(shared_data, tmp_path):
    out = run("ch02.py", "--data-dir", shared_data, "--ids", "--html", tmp_path / "t.html",
              "--plot", tmp_path / "t.png").stdout
    same(out, "tokens joined are the text", True)
    assert ("Hello[15496]|,[11]| do[466]| you[345]| like[588]| tea[8887]|?[30]| [220]|<|endoftext|>[50256]| In[554]|"
            " the[262]| sun[4252]|lit[18250]| terr[8812]|aces[2114]|of[1659]| some[617]|unknown[34680]|Place[27271]|"
            ".[13]") in out.splitlines()
    page = (tmp_path / "t.html").read_text(encoding="utf-8")
    assert '<span style="background:#afafff" title="ids 15496">Hello<sub>15496</sub></span>' in page
    assert page.count("<span ") == 20
    assert f"wrote {tmp_path / 't.png'}" in out.splitlines()


def test_ch03_plots_the_heads_of_3_6_and_of_a_model(shared_data, tmp_path):
    out = run("ch03.py", "--plot", tmp_path / "a.png").stdout
    assert f"wrote {tmp_path / 'a.png'}" in out.splitlines()
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    import shutil

    from tests.conftest import tiny_gpt

    model_dir = tmp_path / "model"
    tiny_gpt(vocab_size=50257, context_length=16).save_pretrained(model_dir)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(shared_data / "gpt2" / name, model_dir / name)
    out = run("ch03.py", "--plot", tmp_path / "m.png", "--model", model_dir, "--prompt", "Every effort moves you",
              "--layer", "-1").stdout
    assert f"wrote {tmp_path / 'm.png'}" in out.splitlines()
