"""Book appendix E, sections E.1 and E.4: LoRA, low-rank adaptation (Hu et al. 2021).

Fine-tuning every weight of a GPT means a gradient and two AdamW moments for each of its numbers. LoRA
freezes the pretrained weight W and learns a low-rank change to it instead:

    y = x W^T + b + (alpha / rank) * (x A) B        A: (in, rank), B: (rank, out), rank << in, out

A starts Kaiming-uniform and B at zero, so a freshly wrapped layer computes exactly what it computed
before; training moves only A and B (for GPT-2 small at rank 16, about 2 % of the parameters).

    model = GPT.from_pretrained("gpt2")
    report = apply_lora(model, rank=16, alpha=16)   # wrap every Linear, freeze everything else
    print(report)                                   # trainable 2,359,296 of 126,799,104 parameters (1.86 %)
    ...train: the optimizer gets only the trainable parameters (train.param_groups)...
    save_adapter(model, "spam.lora.safetensors")    # a few MB: A and B with rank, alpha, targets
    merge_lora(model)                               # W += (alpha/rank) (A B)^T: a plain GPT again

The pieces follow the book's `LoRALayer`, `LinearWithLoRA` and `replace_linear_with_lora`: a wrapper
module and a function that swaps it in. Two differences, both from the LoRA paper and Hugging Face's PEFT:
the update is scaled by alpha / rank rather than by alpha alone, so changing the rank does not change the
size of the update at init-time learning rates (with alpha alone, doubling the rank doubles the step);
and A's Kaiming bound uses the layer's input size as the fan-in, 1/sqrt(in) (the book's
`kaiming_uniform_` on an (in, rank) tensor takes rank as the fan-in, an artefact of that layout).
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from dataclasses import dataclass, field

import numpy as np

from autograd import Function, Tensor, backend, nn
from autograd import functional as F
from autograd.checkpoint import CheckpointError, load_tensors, save_tensors

# Named groups of targets, as module-name patterns for the GPT-2 layout (tinygrad_llm/models/gpt.py)
# what every training command names the file of the adapters alone, beside its model/ folder
ADAPTER_FILE = "adapter.safetensors"

TARGET_GROUPS = {
    "attn": ("*attn.c_attn", "*attn.c_proj"),
    "mlp": ("*mlp.c_fc", "*mlp.c_proj"),
    "head": ("lm_head", "*.lm_head", "score", "*.score"),
}


class LoRALinearOp(Function):
    """y = x W^T + b + s (x A) B in one op, s = alpha / rank, x flattened to (N, in).

    Composed of Tensor ops (`LoRALinear.forward_reference`) the update costs two extra full-size arrays
    each way: delta (N, out) and the sum y + delta forward; the two gradients of x and their sum backward.
    Here the update is added into y in place and its input gradient into g W in place:

        h = x A (N, rank), y = x W^T + b, y += (s h) B
        dL/dB = (s h)^T g,  dL/dh = s g B^T,  dL/dA = x^T dL/dh,  dL/dx = g W + dL/dh A^T,
        dL/dW = g^T x,  dL/db = sum of g over rows (each only when asked: W and b are usually frozen)
    """

    def forward(self, x, w, a, b_lora, bias=None, scaling=1.0):
        lead, n_in = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, n_in)
        xp = backend.get_array_module(x)
        hs = x2 @ a  # (N, in) @ (in, rank) -> (N, rank)
        hs *= xp.asarray(scaling, dtype=hs.dtype)  # s h: scaled while it is small
        y = x2 @ w.T  # (N, in) @ (in, out): the frozen layer, computed as F.linear computes it
        if bias is not None:
            y += bias
        y += hs @ b_lora  # (N, rank) @ (rank, out), added in place
        y = y.reshape(*lead, w.shape[0])
        self.x2, self.w, self.a, self.b_lora, self.hs, self.lead = x2, w, a, b_lora, hs, lead
        self.scaling = scaling
        return y

    def backward(self, grad):
        x2, w, a, b_lora, hs = self.x2, self.w, self.a, self.b_lora, self.hs
        g = grad.reshape(-1, grad.shape[-1])  # (N, out)
        xp = backend.get_array_module(g)
        gh = g @ b_lora.T  # (N, out) @ (out, rank) -> (N, rank)
        gh *= xp.asarray(self.scaling, dtype=gh.dtype)
        need = self.needs_grad
        gx = None
        if need[0]:
            gx = g @ w  # (N, out) @ (out, in) -> (N, in)
            gx += gh @ a.T  # the update's share, added in place
            gx = gx.reshape(*self.lead, x2.shape[1])
        gw = g.T @ x2 if need[1] else None
        ga = x2.T @ gh if need[2] else None  # (in, N) @ (N, rank)
        gb = hs.T @ g if need[3] else None  # (rank, N) @ (N, out)
        grads = (gx, gw, ga, gb)
        if len(need) > 4:
            grads += (g.sum(axis=0) if need[4] else None,)
        return grads


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update: y = x W^T + b + (alpha / rank) (x A) B.

    The wrapper holds the base layer's own `weight` and `bias` Parameters under the same names, so the
    model's parameter names (and checkpoints, and the optimizer's view of them) do not change; A and B
    are added as `lora_A` (in, rank) and `lora_B` (rank, out).
    """

    def __init__(self, base, rank, alpha, rng=None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not (isinstance(rank, (int, np.integer)) and rank >= 1):
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"LoRA alpha must be a positive number, got {alpha!r}")
        rng = rng if rng is not None else np.random.default_rng()
        object.__setattr__(self, "_base", base)  # not a submodule: merge_lora puts it back in its place
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha = int(rank), float(alpha)
        self.scaling = self.alpha / self.rank
        self.weight = base.weight.requires_grad_(False)  # the pretrained layer, frozen
        self.bias = base.bias.requires_grad_(False) if base.bias is not None else None
        device = base.weight.device
        bound = 1.0 / math.sqrt(self.in_features)  # Kaiming-uniform with a = sqrt(5), fan-in = in_features
        A = rng.uniform(-bound, bound, (self.in_features, self.rank)).astype(np.float32)
        self.lora_A = nn.Parameter(backend.to_device(A, device))
        self.lora_B = nn.Parameter(backend.xp_for(device).zeros((self.rank, self.out_features), dtype=np.float32))
        self.adapter_enabled = True  # False: the base layer alone (`adapters_disabled`)

    def forward(self, x):
        """The fast path: one fused op (`LoRALinearOp`) that computes what `forward_reference` does."""
        if not self.adapter_enabled:
            return self._base(x)  # the wrapped nn.Linear, holding the same weight and bias
        return LoRALinearOp.apply(*self._inputs(x), scaling=self.scaling)

    def forward_reference(self, x):
        """The formula as Tensor ops, the engine deriving the gradients: the version to read."""
        y = F.linear(x, self.weight, self.bias)  # the frozen layer: (..., in) -> (..., out)
        h = x.reshape(-1, self.in_features) @ self.lora_A  # (N, in) @ (in, rank) -> (N, rank)
        delta = (h * self.scaling) @ self.lora_B  # (N, rank) @ (rank, out) -> (N, out); scaled while small
        return y + delta.reshape(*x.shape[:-1], self.out_features)

    def _inputs(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x, device=self.weight.device)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"LoRALinear: input of shape {x.shape} has {x.shape[-1]} features, the layer takes "
                             f"{self.in_features}")
        params = (self.weight, self.lora_A, self.lora_B) + ((self.bias,) if self.bias is not None else ())
        return (x,) + params

    def delta_weight(self):
        """The update as a change to W (out, in): (alpha / rank) (A B)^T, an array on the layer's device."""
        return (self.lora_A.data @ self.lora_B.data).T * np.float32(self.scaling)

    def merged_weight(self):
        """W + (alpha / rank) (A B)^T: the weight of a plain Linear that computes what this layer does."""
        return self.weight.data + self.delta_weight()

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, rank={self.rank}, alpha={self.alpha:g}")


@dataclass
class LoRAReport:
    """What `apply_lora` did: the wrapped layers and the parameter counts after freezing."""

    wrapped: list = field(default_factory=list)
    trainable: int = 0
    total: int = 0

    def __str__(self):
        share = 100.0 * self.trainable / self.total if self.total else 0.0
        return (f"LoRA on {len(self.wrapped)} layers: trainable {self.trainable:,} of {self.total:,} "
                f"parameters ({share:.2f} %)")


def _patterns(targets):
    if targets is None or targets == "all":
        return ("*",)
    if isinstance(targets, str):
        targets = [targets]
    patterns = []
    for t in targets:
        patterns.extend(TARGET_GROUPS.get(t, (t,)))
    return tuple(patterns)


def _replace(model, name, module):
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    setattr(owner, attr, module)


def lora_layers(model):
    """(module name, LoRALinear) for every wrapped layer of `model`."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def apply_lora(model, rank=8, alpha=16.0, targets="all", trainable=(), seed=0):
    """Wrap `model`'s Linear layers in LoRALinear (in place) and freeze every other parameter.

    targets: "all" (every nn.Linear), or a list of group names ("attn", "mlp", "head": see
      TARGET_GROUPS) and fnmatch patterns of dotted module names ("h.11.*").
    trainable: fnmatch patterns of parameter names that stay trainable besides A and B (a new
      classification head: ("score.*",)).
    seed: A's random draw. Returns a LoRAReport.
    """
    patterns = _patterns(targets)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [(n, m) for n, m in linears if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        have = ", ".join(n for n, _ in linears) or "none"
        raise ValueError(f"LoRA targets {targets!r} match no Linear layer of {type(model).__name__} "
                         f"(its Linear layers: {have})")
    if lora_layers(model):
        raise ValueError("the model already has LoRA layers; merge_lora(model) first, or load an adapter into them")
    rng = np.random.default_rng(seed)
    model.requires_grad_(False)
    for name, linear in chosen:
        _replace(model, name, LoRALinear(linear, rank, alpha, rng))
    keep = tuple(trainable or ())
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pat) for pat in keep):
            p.requires_grad_(True)
    return LoRAReport(wrapped=[n for n, _ in chosen], trainable=model.num_parameters(trainable=True),
                      total=model.num_parameters())


@contextlib.contextmanager
def adapters_disabled(model):
    """Inside the block every LoRA layer of `model` computes its frozen base layer alone, as the model did
    before `apply_lora`; the adapters are switched back on after it (also when the block raises). DPO's
    reference model is the policy with its adapters off: one model in memory instead of two.

        with adapters_disabled(model), no_grad():
            reference_logits = model(ids)
    """
    layers = [layer for _, layer in lora_layers(model) if layer.adapter_enabled]
    for layer in layers:
        layer.adapter_enabled = False
    try:
        yield model
    finally:
        for layer in layers:
            layer.adapter_enabled = True


def merged_state_dict(model):
    """`model.state_dict()` with every LoRA layer written as the plain Linear it amounts to: its merged
    weight under its own name and no adapter tensors (the model itself is left as it is). What a saved
    model holds, so the file loads into a model without LoRA."""
    merged = {f"{n}.weight": m.merged_weight() for n, m in lora_layers(model)}
    return {k: merged.get(k, v) for k, v in model.state_dict().items() if ".lora_" not in k}


def merge_lora(model):
    """Fold every LoRA update into its base weight and put a plain nn.Linear back in its place (in place;
    the weight and bias Parameters stay the same objects). Returns the model, which then computes what it
    computed with the adapters, to float32 rounding, at the cost of one plain Linear per layer."""
    for name, layer in lora_layers(model):
        layer.weight.data += layer.delta_weight()
        layer._base.train(layer.training)
        _replace(model, name, layer._base)  # the original Linear, holding the same (now merged) weight
    return model


# ---------------------------------------------------------------------------------------------------
# The adapter alone: a small file that goes on top of its base model

ADAPTER_FORMAT = "tinygrad_llm.finetune.lora/1"


def save_adapter(model, path):
    """Write only A and B of every LoRA layer to a safetensors file (atomically), with rank, alpha, the
    wrapped layers and their shapes in its metadata."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save; apply_lora(model, ...) first")
    tensors, shapes = {}, {}
    for name, layer in layers:
        tensors[f"{name}.lora_A"] = layer.lora_A.data
        tensors[f"{name}.lora_B"] = layer.lora_B.data
        shapes[name] = [layer.in_features, layer.out_features]
    first = layers[0][1]
    meta = {"format": ADAPTER_FORMAT, "rank": first.rank, "alpha": first.alpha,
            "targets": [n for n, _ in layers], "shapes": shapes}
    save_tensors(path, tensors, meta)
    return path


def load_adapter(model, path):
    """Load an adapter written by `save_adapter` onto `model`: wraps the saved layers first when the model
    has no LoRA layers yet (freezing the rest), else loads into the existing ones. A model whose layers do
    not match the adapter (a missing layer, other shapes, another rank) raises CheckpointError naming
    each mismatch. Returns the LoRAReport of the wrapped model."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path} is not a LoRA adapter written by save_adapter "
                              f"(format {meta.get('format')!r}, expected {ADAPTER_FORMAT!r})")
    rank, alpha, targets, shapes = meta["rank"], meta["alpha"], meta["targets"], meta["shapes"]
    modules = dict(model.named_modules())
    problems = [f"{name}.{k}: missing from the file" for name in targets for k in ("lora_A", "lora_B")
                if f"{name}.{k}" not in tensors]
    for name in targets:
        m = modules.get(name)
        want = tuple(shapes[name])
        if not isinstance(m, (nn.Linear, LoRALinear)):
            problems.append(f"{name}: the model has no Linear layer of that name")
        elif (m.in_features, m.out_features) != want:
            problems.append(f"{name}: adapter for a ({want[0]} -> {want[1]}) layer, the model's is "
                            f"({m.in_features} -> {m.out_features})")
        elif isinstance(m, LoRALinear) and (m.rank, m.alpha) != (rank, alpha):
            problems.append(f"{name}: the model's LoRA has rank {m.rank}, alpha {m.alpha:g}; the adapter rank "
                            f"{rank}, alpha {alpha:g}")
    if problems:
        raise CheckpointError(f"adapter {path} does not fit this {type(model).__name__} (wrong base model?):\n  "
                              + "\n  ".join(problems))
    existing = {n for n, _ in lora_layers(model)}
    if not existing:
        apply_lora(model, rank, alpha, targets=list(targets))
    elif existing != set(targets):
        raise CheckpointError(f"adapter {path} covers {len(targets)} layers, the model's LoRA {len(existing)} "
                              "others; load it onto the base model without LoRA layers")
    for name, layer in lora_layers(model):
        for k in ("lora_A", "lora_B"):
            getattr(layer, k).data[...] = backend.to_device(tensors[f"{name}.{k}"], getattr(layer, k).device)
    return LoRAReport(wrapped=list(targets), trainable=model.num_parameters(trainable=True),
                      total=model.num_parameters())


__all__ = ["ADAPTER_FILE", "LoRALinear", "LoRALinearOp", "merged_state_dict", "LoRAReport", "apply_lora", "merge_lora", "save_adapter", "load_adapter",
           "lora_layers", "adapters_disabled", "TARGET_GROUPS"]
