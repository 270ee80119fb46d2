"""GPT-2 checkpoints in Hugging Face's layout: loading against an independent NumPy forward pass, the
save/load round trip, errors that name the key, and the downloader (offline, resume, verification)
against a local HTTP server. No test touches the network."""

import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from autograd import no_grad
from autograd.checkpoint import CheckpointError
from tinygrad_llm.models.gpt import GPT, GPTConfig
from tinygrad_llm.support.download import DownloadError, download_file
from autograd.checkpoint import read_safetensors_header
from tinygrad_llm.models.gpt2_weights import WeightsUnavailableError, load_weights
from tests.conftest import tiny_config, tiny_gpt

V, CTX, C, L, H = 50, 16, 32, 2, 4


# ---------------------------------------------------------------------------------------------------
# A tiny random checkpoint written by hand in HF's layout, and picoGPT's forward pass over it


def hf_params(seed=0, V=V, CTX=CTX, C=C, L=L):
    """GPT-2's tensors as Hugging Face stores them: Conv1D weights (in, out), x @ w + b."""
    r = np.random.default_rng(seed)
    n = lambda *s: (r.standard_normal(s) * 0.2).astype(np.float32)
    p = {"wte.weight": n(V, C), "wpe.weight": n(CTX, C), "ln_f.weight": 1 + n(C), "ln_f.bias": n(C)}
    for i in range(L):
        p |= {f"h.{i}.ln_1.weight": 1 + n(C), f"h.{i}.ln_1.bias": n(C),
              f"h.{i}.attn.c_attn.weight": n(C, 3 * C), f"h.{i}.attn.c_attn.bias": n(3 * C),
              f"h.{i}.attn.c_proj.weight": n(C, C), f"h.{i}.attn.c_proj.bias": n(C),
              f"h.{i}.ln_2.weight": 1 + n(C), f"h.{i}.ln_2.bias": n(C),
              f"h.{i}.mlp.c_fc.weight": n(C, 4 * C), f"h.{i}.mlp.c_fc.bias": n(4 * C),
              f"h.{i}.mlp.c_proj.weight": n(4 * C, C), f"h.{i}.mlp.c_proj.bias": n(C)}
    return p


def write_hf_checkpoint(directory, params, prefix="", buffers=True, **config):
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {(k if k.startswith("lm_head") else prefix + k): v for k, v in params.items()}
    if buffers:  # HF's causal-mask buffers, which are not weights
        for i in range(L):
            tensors[f"{prefix}h.{i}.attn.bias"] = np.tril(np.ones((1, 1, CTX, CTX), bool))  # BOOL, as transformers
            tensors[f"{prefix}h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": V, "n_positions": CTX,
           "n_ctx": CTX, "n_embd": C, "n_layer": L, "n_head": H, "layer_norm_epsilon": 1e-5,
           "activation_function": "gelu_new", "resid_pdrop": 0.1} | config
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


def reference_logits(p, ids, n_head=H, head=None):
    """picoGPT's forward pass in float64, on the HF tensors as they are."""
    p = {k: v.astype(np.float64) for k, v in p.items()}

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    def layer_norm(x, g, b, eps=1e-5):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return g * (x - mean) / np.sqrt(var + eps) + b

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def mha(x, i):
        qkv = x @ p[f"h.{i}.attn.c_attn.weight"] + p[f"h.{i}.attn.c_attn.bias"]
        heads = [np.split(m, n_head, axis=-1) for m in np.split(qkv, 3, axis=-1)]
        mask = (1 - np.tri(len(x))) * -1e10
        out = [softmax(q @ k.T / np.sqrt(q.shape[-1]) + mask) @ v for q, k, v in zip(*heads)]
        return np.hstack(out) @ p[f"h.{i}.attn.c_proj.weight"] + p[f"h.{i}.attn.c_proj.bias"]

    x = p["wte.weight"][ids] + p["wpe.weight"][np.arange(len(ids))]
    for i in range(L):
        x = x + mha(layer_norm(x, p[f"h.{i}.ln_1.weight"], p[f"h.{i}.ln_1.bias"]), i)
        h = gelu(layer_norm(x, p[f"h.{i}.ln_2.weight"], p[f"h.{i}.ln_2.bias"]) @ p[f"h.{i}.mlp.c_fc.weight"]
                 + p[f"h.{i}.mlp.c_fc.bias"])
        x = x + h @ p[f"h.{i}.mlp.c_proj.weight"] + p[f"h.{i}.mlp.c_proj.bias"]
    x = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"])
    return x @ (p["wte.weight"] if head is None else head.astype(np.float64)).T


def logits_of(model, ids):
    with no_grad():
        return model.eval()(np.asarray(ids)[None]).numpy()[0]


IDS = [3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3]


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_load_matches_numpy_reference(tmp_path, prefix):
    params = hf_params()
    model = GPT.from_pretrained(write_hf_checkpoint(tmp_path, params, prefix=prefix))
    assert model.config == GPTConfig(vocab_size=V, context_length=CTX, emb_dim=C, n_heads=H, n_layers=L,
                                     drop_rate=0.0, qkv_bias=True, tie_weights=True)
    np.testing.assert_allclose(logits_of(model, IDS), reference_logits(params, IDS), rtol=1e-4, atol=1e-4)
    # the Conv1D weights were transposed into our (out, in) Linear, the rest copied as they are
    np.testing.assert_array_equal(model.h[0].attn.c_attn.weight.numpy(), params["h.0.attn.c_attn.weight"].T)
    np.testing.assert_array_equal(model.wte.weight.numpy(), params["wte.weight"])


def test_untied_head_and_tied_copy(tmp_path):
    params = hf_params()
    head = (np.random.default_rng(1).standard_normal((V, C)) * 0.2).astype(np.float32)
    untied = GPT.from_pretrained(write_hf_checkpoint(tmp_path / "u", params | {"lm_head.weight": head},
                                                     tie_word_embeddings=False))
    np.testing.assert_allclose(logits_of(untied, IDS), reference_logits(params, IDS, head=head), rtol=1e-4, atol=1e-4)
    # a tied checkpoint may store the head (transformers' older files do): equal to wte, it is accepted
    tied = write_hf_checkpoint(tmp_path / "t", params | {"lm_head.weight": params["wte.weight"]}, prefix="transformer.")
    GPT.from_pretrained(tied)
    write_hf_checkpoint(tmp_path / "bad", params | {"lm_head.weight": head})
    with pytest.raises(CheckpointError, match="lm_head.weight differs from wte.weight"):
        GPT.from_pretrained(tmp_path / "bad")


@pytest.mark.parametrize("preset", ["cpu-tiny", "book"])
def test_save_load_round_trip(tmp_path, preset):
    cfg = tiny_config(vocab_size=V, context_length=CTX)
    if preset == "book":  # the book's pretraining setting: no qkv bias, untied head, dropout
        cfg = tiny_config(vocab_size=V, context_length=CTX, qkv_bias=False, tie_weights=False,
                               drop_rate=0.1)
    model = GPT(cfg, seed=3)
    model.save_pretrained(tmp_path)
    again = GPT.from_pretrained(tmp_path)
    assert again.config == cfg
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_array_equal(logits_of(model, IDS), logits_of(again, IDS))
    # the files are GPT-2's layout, readable by the safetensors library itself
    with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
        np.testing.assert_array_equal(f.get_tensor("h.1.mlp.c_fc.weight"), model.h[1].mlp.c_fc.weight.numpy().T)
    assert ("lm_head.weight" in keys) == (not cfg.tie_weights)
    assert ("h.0.attn.c_attn.bias" in keys) == cfg.qkv_bias
    hf = json.loads((tmp_path / "config.json").read_text())
    assert (hf["model_type"], hf["n_embd"], hf["n_layer"], hf["n_head"], hf["n_positions"], hf["tie_word_embeddings"]) \
        == ("gpt2", cfg.emb_dim, cfg.n_layers, cfg.n_heads, CTX, cfg.tie_weights)


def test_round_trip_on_device(tmp_path, device):
    model = tiny_gpt(vocab_size=V, context_length=CTX, seed=4).to(device)
    model.save_pretrained(tmp_path)
    again = GPT.from_pretrained(tmp_path, device=device)
    assert again.wte.weight.device == device
    np.testing.assert_array_equal(again.h[0].mlp.c_fc.weight.numpy(), model.h[0].mlp.c_fc.weight.numpy())


def test_errors_name_the_key(tmp_path):
    params = hf_params()
    missing = {k: v for k, v in params.items() if k != "h.1.mlp.c_fc.bias"}
    with pytest.raises(CheckpointError, match=r"missing key h\.1\.mlp\.c_fc\.bias \(expected shape \(128,\)\)"):
        GPT.from_pretrained(write_hf_checkpoint(tmp_path / "a", missing))
    wrong = params | {"h.0.attn.c_attn.weight": params["h.0.attn.c_attn.weight"].T.copy()}  # stored (out, in)
    with pytest.raises(CheckpointError, match=r"h\.0\.attn\.c_attn\.weight: expected shape \(32, 96\) .*"
                                              r"transposed on load\), got \(96, 32\)"):
        GPT.from_pretrained(write_hf_checkpoint(tmp_path / "b", wrong))
    with pytest.raises(CheckpointError, match=r"unexpected key h\.0\.attn\.extra"):
        GPT.from_pretrained(write_hf_checkpoint(tmp_path / "c", params | {"h.0.attn.extra": np.zeros(3, np.float32)}))
    d = write_hf_checkpoint(tmp_path / "d", params)
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        GPT.from_pretrained(d)
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory"):
        GPT.from_pretrained(tmp_path / "nowhere")


def test_half_precision_checkpoints_load_as_float32(tmp_path):
    params = hf_params()
    half = {k: v.astype(np.float16) for k, v in params.items()}
    model = GPT.from_pretrained(write_hf_checkpoint(tmp_path, half))
    assert model.wte.weight.dtype == np.float32
    np.testing.assert_array_equal(model.wte.weight.numpy(), half["wte.weight"].astype(np.float32))


def _memory_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def test_loading_reads_tensor_by_tensor(tmp_path):
    """Peak memory while loading stays near the model's size: the file is never held whole beside it."""
    cfg = GPTConfig(vocab_size=8192, context_length=256, emb_dim=512, n_heads=8, n_layers=4)  # ~70 MB
    GPT(cfg, seed=0).save_pretrained(tmp_path)
    size_kib = (tmp_path / "model.safetensors").stat().st_size / 1024
    model = GPT(cfg, seed=1)  # allocated first: the peak below measures the reading alone
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak-RSS counter (VmHWM)
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak-memory counter")
    before = _memory_kib("VmRSS")
    load_weights(model, tmp_path / "model.safetensors")
    grown = _memory_kib("VmHWM") - before
    assert grown < 0.25 * size_kib, f"loading a {size_kib / 1024:.0f} MiB file raised peak memory by {grown / 1024:.0f} MiB"


# ---------------------------------------------------------------------------------------------------
# Downloading


def test_offline_error_says_what_to_do(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    with pytest.raises(WeightsUnavailableError) as e:
        GPT.from_pretrained("gpt2", cache_dir=tmp_path)  # an empty Hugging Face cache
    msg = str(e.value)
    for part in (f"not in the Hugging Face cache {tmp_path}", "HF_HUB_OFFLINE", "config.json and model.safetensors",
                 "https://huggingface.co/openai-community/gpt2", "GPT.from_pretrained('/path/to/dir')",
                 "huggingface-cli download openai-community/gpt2 config.json model.safetensors"):
        assert part in msg


class _Hub(http.server.BaseHTTPRequestHandler):
    """A hub in miniature: /{name}/resolve/main/{file} answers a 302 to /lfs/{file} carrying X-Linked-Etag
    and X-Linked-Size as huggingface.co does, and /lfs/ serves bytes with Range support."""

    files, sha, ranges = {}, {}, []

    def do_GET(self):
        if "/resolve/main/" in self.path:
            name = self.path.rsplit("/", 1)[1]
            self.send_response(302)
            self.send_header("Location", f"/lfs/{name}")
            self.send_header("x-linked-etag", f'"{self.sha[name]}"')  # the hub sends them lower-case
            self.send_header("x-linked-size", str(len(self.files[name])))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.files[self.path.rsplit("/", 1)[1]]
        rng = self.headers.get("Range")
        self.ranges.append(rng)
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(tmp_path):
    ckpt = write_hf_checkpoint(tmp_path / "src", hf_params())
    _Hub.files = {f: (ckpt / f).read_bytes() for f in ("config.json", "model.safetensors")}
    _Hub.sha = {f: hashlib.sha256(b).hexdigest() for f, b in _Hub.files.items()}
    _Hub.ranges = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _interrupted(part, data, url, keep):
    """A .part as an interrupted download leaves it: its first `keep` bytes and the record of the whole."""
    part.write_bytes(data[:keep])
    part.with_name(part.name + ".json").write_text(json.dumps({"url": url, "size": len(data), "etag": None,
                                                               "sha256": None}))


def test_download_resumes_and_verifies(tmp_path, hub):
    data = _Hub.files["model.safetensors"]
    url = f"{hub}/gpt2/resolve/main/model.safetensors"
    dest = tmp_path / "gpt2" / "model.safetensors"
    dest.parent.mkdir()
    _interrupted(tmp_path / "gpt2" / "model.safetensors.part", data, url, 1000)
    download_file(f"{hub}/gpt2/resolve/main/config.json", dest.parent / "config.json", progress=False)
    download_file(url, dest, progress=True)
    assert _Hub.ranges == [None, "bytes=1000-"]  # config.json whole, the weights resumed
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["config.json", "model.safetensors"]
    model = GPT.from_pretrained(dest.parent)
    np.testing.assert_allclose(logits_of(model, IDS), reference_logits(hf_params(), IDS), rtol=1e-4, atol=1e-4)


def test_download_rejects_corrupt_bytes(tmp_path, hub):
    dest = tmp_path / "model.safetensors"
    part = tmp_path / "model.safetensors.part"
    url = f"{hub}/gpt2/resolve/main/model.safetensors"
    _interrupted(part, b"\0" * len(_Hub.files["model.safetensors"]), url, 1000)  # recorded, but wrong bytes
    with pytest.raises(DownloadError, match="sha256"):  # the hub's X-Linked-Etag is the file's sha256
        download_file(f"{hub}/gpt2/resolve/main/model.safetensors", dest, progress=False)
    assert not part.exists() and not dest.exists()  # removed, so the next try starts clean
    download_file(f"{hub}/gpt2/resolve/main/model.safetensors", dest, progress=False)
    read_safetensors_header(dest)
    with pytest.raises(DownloadError, match="sha256"):
        download_file(f"{hub}/gpt2/resolve/main/config.json", tmp_path / "config.json", sha256="0" * 64)
