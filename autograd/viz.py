"""Book appendix A, section A.3 (computation graphs): the graph behind a tensor, as Graphviz DOT text and
as a picture (micrograd's `draw_dot`, DeZero's `plot_dot_graph`).

    x1, y = Tensor([1.1]), Tensor([1.0])
    w1, b = Tensor([2.2], requires_grad=True), Tensor([0.0], requires_grad=True)
    loss = F.binary_cross_entropy((x1 * w1 + b).sigmoid(), y)
    graph = trace(loss, names={"x1": x1, "w1": w1, "b": b, "y": y, "loss": loss})
    loss.backward()
    print(graph.dot())        # digraph autograd { t0 [label="w1 ..."]; t0 -> op1; ... }
    graph.draw("graph.png")   # Graphviz's `dot` when installed, else a layered drawing with matplotlib

A tensor is a box (its name, shape, the value of a one-element tensor; green where it requires grad,
grey where it does not; after `backward`, the gradient or its norm); an op is an oval with its name.
`trace` takes its snapshot of the graph before `backward`, which frees the graph as it walks; the labels
read each tensor's `.grad` when they are drawn, so a snapshot taken before `backward` shows the gradients
once it has run.

A large graph (a GPT's step, a few hundred ops) reads better with one box per module. The graph itself
does not know which module an op ran in, so `record_modules(model)` notes it while the forward runs:

    with record_modules(model) as scopes:
        loss = lm_loss(model, batch)
    trace(loss, scopes=scopes, depth=1).draw("gpt.png")   # wte, wpe, h.0 .. h.11, ln_f as boxes

Nothing here runs unless called: the recording is a wrapper around each module's `forward`, put on while
the `with` block runs and taken off after it. The pictures need matplotlib (the `plot` extra); the DOT
text needs nothing.
"""

import contextlib
import math
import shutil
import weakref

import numpy as np

from autograd import backend
from autograd.backward import _FREED

PLOT_EXTRA = "drawing needs matplotlib: pip install 'tinygrad-llm[plot]' (or pip install matplotlib)"

# ---------------------------------------------------------------------------------------------------
# matplotlib, without pyplot: a Figure drawn on the Agg canvas needs no display and no global backend


def new_figure(width, height):
    """A matplotlib Figure of `width` x `height` inches on the Agg canvas (files only, no window); raises
    ImportError with the one line saying what to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401  (first: a test hides matplotlib with None in sys.modules)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(PLOT_EXTRA) from None
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path, dpi=100):
    """Write `fig` as a PNG at `path` (atomically: a kill leaves the old file or the new one); returns it."""
    from autograd.checkpoint import atomic_write

    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=dpi)
    return path


# ---------------------------------------------------------------------------------------------------
# which module each op ran in


class ModuleScopes:
    """op (a Function instance) -> the dotted path of the innermost module whose forward made it, and
    each path's module class name. Filled by `record_modules`; weak, so it keeps no graph alive."""

    def __init__(self):
        self.path_of = weakref.WeakKeyDictionary()
        self.kind = {}

    def label(self, outputs, inputs, path):
        """Mark every op between `inputs` and `outputs` that no inner module marked already."""
        stop = {id(t) for t in inputs}
        stack, seen = list(outputs), set()
        while stack:
            t = stack.pop()
            ctx = getattr(t, "_ctx", None)
            if id(t) in stop or ctx is None or ctx is _FREED or id(ctx) in seen:
                continue
            seen.add(id(ctx))
            self.path_of.setdefault(ctx, path)
            stack.extend(ctx.inputs)


def _tensors_in(value):
    if hasattr(value, "_ctx") and hasattr(value, "data"):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors_in(v)]
    return []


@contextlib.contextmanager
def record_modules(model):
    """While the block runs, note the module path of each op the forward makes (for `trace(scopes=)`).

    Each submodule's `forward` is wrapped for the duration of the block (an instance attribute over the
    class's method, removed after): when a call returns, the ops between its tensor arguments and its
    result that no inner module claimed are its own. Ops made directly in `model.forward` stay at the
    top level."""
    scopes = ModuleScopes()
    wrapped = []
    for path, m in model.named_modules():
        if not path:
            continue
        scopes.kind[path] = type(m).__name__
        own = m.__dict__.get("forward")
        forward = m.forward

        def recording(*args, _forward=forward, _path=path, **kwargs):
            out = _forward(*args, **kwargs)
            scopes.label(_tensors_in(out), _tensors_in(args) + _tensors_in(kwargs), _path)
            return out

        object.__setattr__(m, "forward", recording)
        wrapped.append((m, own))
    try:
        yield scopes
    finally:
        for m, own in wrapped:
            if own is None:
                del m.__dict__["forward"]
            else:
                object.__setattr__(m, "forward", own)


def _truncate(path, depth):
    """The first `depth` levels of a module path, list indices not counting as levels:
    _truncate("h.0.attn", 1) == "h.0", _truncate("h.0.attn", 2) == "h.0.attn"."""
    kept, level = [], 0
    for part in path.split("."):
        if not part.isdigit():
            if level == depth:
                break
            level += 1
        kept.append(part)
    return ".".join(kept)


# ---------------------------------------------------------------------------------------------------
# the graph


def _number(x):
    return f"{x:.4g}" if math.isfinite(x) else str(x)


class Graph:
    """A snapshot of the graph behind a tensor: `nodes` {key: kind} ("tensor", "op", "module") and
    `edges` [(from key, to key)] in the order a reader follows them, inputs first. `label(key)` is a
    node's text, read at the time it is asked (a gradient computed after the snapshot shows)."""

    def __init__(self):
        self.nodes, self.edges = {}, []
        self._tensor, self._name, self._text, self._root, self._edge_set = {}, {}, {}, None, set()
        self._value = {}  # a one-element tensor's value, read at the snapshot: backward may reuse its buffer

    def _add_edge(self, a, b):
        if (a, b) not in self._edge_set:
            self._edge_set.add((a, b))
            self.edges.append((a, b))

    def label(self, key):
        if self.nodes[key] != "tensor":
            return self._text[key]
        t, lines = self._tensor[key], []
        if self._name.get(key):
            lines.append(self._name[key])
        shape = "(" + ", ".join(map(str, t.shape)) + ("," if len(t.shape) == 1 else "") + ")"
        if key in self._value:
            shape += " = " + _number(self._value[key])
        if t.dtype != np.float32:
            shape += f" {t.dtype}"
        lines.append(shape)
        g = t.grad
        if g is not None:
            g = backend.to_host(g)
            lines.append(f"grad {_number(float(g.reshape(())))}" if g.size == 1
                         else f"|grad| {_number(float(np.linalg.norm(g.astype(np.float64))))}")
        return "\n".join(lines)

    def style(self, key):
        """(shape, fill colour) of a node, the same in the DOT text and the matplotlib drawing."""
        kind = self.nodes[key]
        if kind == "op":
            return "ellipse", "#bbdefb"
        if kind == "module":
            return "box", "#ffe0b2"
        if key == self._root:
            return "box", "#fff3b0"
        t = self._tensor[key]
        if not t.requires_grad:
            return "box", "#eeeeee"  # a constant or an input: no gradient flows into it
        return "box", "#c8e6c9" if t._ctx is None else "#ffffff"  # a leaf to train, or an op's result

    def dot(self, direction="LR"):
        """Graphviz DOT text: one line per node (its label, shape, colour), one per edge."""
        out = ["digraph autograd {", f"  rankdir={direction};",
               '  node [fontname="Helvetica", fontsize=10, style="rounded,filled"];']
        for key in self.nodes:
            shape, fill = self.style(key)
            text = self.label(key).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            out.append(f'  {key} [label="{text}", shape={shape}, fillcolor="{fill}"];')
        out += [f"  {a} -> {b};" for a, b in self.edges]
        return "\n".join(out + ["}"]) + "\n"

    def figure(self, direction="LR"):
        """The graph drawn with matplotlib alone, in layers: a node one step after its last input."""
        return _draw_layers(self, direction)

    def draw(self, path, direction="LR", engine="auto"):
        """Write the picture as a PNG at `path` and return the path. engine: "graphviz" (the `graphviz`
        package and the `dot` program), "matplotlib" (`figure`), or "auto": graphviz where both are
        installed, else matplotlib."""
        if engine == "auto":
            engine = "graphviz" if _graphviz_usable() else "matplotlib"
        if engine == "graphviz":
            import graphviz

            from autograd.checkpoint import atomic_write

            png = graphviz.Source(self.dot(direction)).pipe(format="png")
            with atomic_write(path) as f:
                f.write(png)
            return path
        return save_figure(self.figure(direction), path, dpi=110)


def _graphviz_usable():
    try:
        import graphviz  # noqa: F401
    except ImportError:
        return False
    return shutil.which("dot") is not None


def _names_of(names):
    """{id(tensor): name} from a {name: Tensor} dict or a Module (its named parameters)."""
    if names is None:
        return {}
    if hasattr(names, "named_parameters"):
        names = dict(names.named_parameters())
    return {id(t): name for name, t in names.items()}


def trace(root, names=None, scopes=None, depth=None):
    """The graph of ops and tensors `root` was computed from, as a `Graph`.

    names: {name: Tensor} (or a Module: its parameter names) to label the tensors with. scopes: what
    `record_modules` recorded while `root` was computed; then each module down to `depth` levels
    (default 1; list indices do not count, so "h.0" is one level) is drawn as one box with its op
    count, and only the tensors that pass between boxes are shown. Take the snapshot before
    `backward()`, which frees the graph (or run it with retain_graph=True).
    """
    if root._ctx is _FREED:
        raise RuntimeError("trace() after backward(): the walk freed this graph; trace it before backward(), "
                           "or pass retain_graph=True to backward()")
    names = _names_of(names)
    # the walk: tensors and ops reached from root, each op with its inputs and its one output
    tensors, ops, stack = {}, {}, [root]
    while stack:
        t = stack.pop()
        if id(t) in tensors:
            continue
        tensors[id(t)] = t
        ctx = t._ctx
        if ctx is not None and ctx is not _FREED:
            ops[id(t)] = ctx  # keyed by its output tensor
            stack.extend(reversed(ctx.inputs))
    if scopes is not None and depth is None:
        depth = 1
    group = {}  # output tensor id -> module box path, or None for an op drawn on its own
    for tid, ctx in ops.items():
        path = scopes.path_of.get(ctx) if scopes is not None else None
        group[tid] = _truncate(path, depth) if path else None
    consumers = {}  # tensor id -> the node keys that read it
    order = _inputs_first(root, tensors, ops)
    graph, tkey, okey = Graph(), {}, {}
    for n, tid in enumerate(order):
        tkey[tid] = f"t{n}"
        if tid in ops:
            okey[tid] = f"m_{_safe(group[tid])}" if group[tid] is not None else f"op{n}"
    for tid in order:
        if tid in ops:
            for p in ops[tid].inputs:
                consumers.setdefault(id(p), []).append(okey[tid])

    def hidden(tid):
        """A tensor inside one box: made there (or a leaf), and read only there."""
        readers = set(consumers.get(tid, []))
        if tid == id(root) or len(readers) != 1 or not next(iter(readers)).startswith("m_"):
            return False
        return tid not in ops or okey[tid] in readers

    op_count, param_count = {}, {}
    for tid in order:
        if tid not in ops and hidden(tid) and tensors[tid].requires_grad:  # a parameter inside one box
            box = consumers[tid][0]
            param_count[box] = param_count.get(box, 0) + tensors[tid].data.size
        if tid in ops:
            key = okey[tid]
            op_count[key] = op_count.get(key, 0) + 1
            if key not in graph.nodes:
                if group[tid] is None:
                    graph.nodes[key], graph._text[key] = "op", _op_name(ops[tid])
                else:
                    graph.nodes[key] = "module"
        if not hidden(tid):
            key = tkey[tid]
            graph.nodes[key], graph._tensor[key] = "tensor", tensors[tid]
            graph._name[key] = names.get(tid)
            if tensors[tid].data.size == 1:
                graph._value[key] = float(backend.to_host(tensors[tid].data).reshape(()))
    for tid in order:  # the edges, each once, in the order of the walk
        if tid not in ops:
            continue
        for p in ops[tid].inputs:
            if not hidden(id(p)):  # a hidden tensor is made and read inside this op's box
                graph._add_edge(tkey[id(p)], okey[tid])
        if not hidden(tid):
            graph._add_edge(okey[tid], tkey[tid])
    for key, kind in graph.nodes.items():
        if kind == "module":
            path = next(g for t, g in group.items() if g is not None and okey[t] == key)
            kind_name = scopes.kind.get(path, "")
            n = op_count[key]
            params = f", {param_count[key]:,} parameters" if key in param_count else ""
            graph._text[key] = (f"{path}" + (f" ({kind_name})" if kind_name else "")
                                + f"\n{n} op{'s' * (n != 1)}{params}")
    graph._root = tkey[id(root)]
    return graph


def _safe(path):
    return path.replace(".", "_")


def _op_name(ctx):
    name = type(ctx).__name__
    return name[:-2] if name.endswith("Op") and len(name) > 2 else name


def _inputs_first(root, tensors, ops):
    """Tensor ids, each after every tensor its op read (an iterative depth-first order from root)."""
    order, done, stack = [], set(), [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(id(t))
            continue
        if id(t) in done:
            continue
        done.add(id(t))
        stack.append((t, True))
        if id(t) in ops:
            stack.extend((p, False) for p in reversed(ops[id(t)].inputs) if id(p) not in done)
    return order


# ---------------------------------------------------------------------------------------------------
# a layered drawing of its own, for machines without Graphviz

CHAR_W, LINE_H, PAD, GAP_LAYER, GAP_NODE = 0.068, 0.15, 0.08, 0.45, 0.18  # inches, for 8-point monospace


def _layers(graph):
    """Each node's layer: one after its latest input; a node with no inputs right before its first reader."""
    preds = {k: [] for k in graph.nodes}
    succs = {k: [] for k in graph.nodes}
    for a, b in graph.edges:
        preds[b].append(a)
        succs[a].append(b)
    layer = {}
    for k in graph.nodes:  # the edges follow the walk: inputs come before the ops that read them
        layer[k] = 1 + max((layer[p] for p in preds[k] if p in layer), default=-1)
    for k in graph.nodes:
        if not preds[k] and succs[k]:
            layer[k] = min(layer[s] for s in succs[k]) - 1
    return layer, preds, succs


def _draw_layers(graph, direction):
    from matplotlib.patches import Ellipse, FancyArrowPatch, FancyBboxPatch

    layer, preds, succs = _layers(graph)
    n_layers = max(layer.values()) + 1
    rows = [[k for k in graph.nodes if layer[k] == i] for i in range(n_layers)]
    for _ in range(3):  # barycenter sweeps: each node near the nodes it connects to
        for i in range(1, n_layers):
            pos = {k: j for j, k in enumerate(rows[i - 1])}
            rows[i].sort(key=lambda k: np.mean([pos[p] for p in preds[k] if p in pos] or [len(pos) / 2]))
        for i in range(n_layers - 2, -1, -1):
            pos = {k: j for j, k in enumerate(rows[i + 1])}
            rows[i].sort(key=lambda k: np.mean([pos[s] for s in succs[k] if s in pos] or [len(pos) / 2]))
    labels = {k: graph.label(k) for k in graph.nodes}
    size = {}
    for k, text in labels.items():
        lines = text.split("\n")
        w, h = max(map(len, lines)) * CHAR_W + 2 * PAD, len(lines) * LINE_H + 2 * PAD
        size[k] = (w * 1.25, h * 1.3) if graph.nodes[k] == "op" else (w, h)
    lr = direction == "LR"
    # along: the layer axis; across: the nodes of one layer
    along = [max(size[k][0 if lr else 1] for k in row) if row else 0 for row in rows]
    across = [sum(size[k][1 if lr else 0] for k in row) + GAP_NODE * (len(row) - 1) for row in rows]
    span = max(across)
    centre = {}
    a = 0.0
    for i, row in enumerate(rows):
        c = (span - across[i]) / 2
        for k in row:
            extent = size[k][1 if lr else 0]
            centre[k] = (a + along[i] / 2, c + extent / 2)
            c += extent + GAP_NODE
        a += along[i] + GAP_LAYER
    total = a - GAP_LAYER
    margin = 0.15
    width, height = (total, span) if lr else (span, total)
    fig = new_figure(width + 2 * margin, height + 2 * margin)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-margin, width + margin)
    ax.set_ylim(height + margin, -margin) if lr else ax.set_ylim(total + margin, -margin)
    ax.axis("off")
    xy = {k: (c[0], c[1]) if lr else (c[1], c[0]) for k, c in centre.items()}
    for k in graph.nodes:
        (x, y), (w, h) = xy[k], size[k]
        shape, fill = graph.style(k)
        if shape == "ellipse":
            ax.add_patch(Ellipse((x, y), w, h, facecolor=fill, edgecolor="#555555", linewidth=0.8, zorder=2))
        else:
            ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.05",
                                        facecolor=fill, edgecolor="#555555", linewidth=0.8, zorder=2))
        ax.text(x, y, labels[k], ha="center", va="center", family="monospace", fontsize=8, gid=k, zorder=3)
    for a_key, b_key in graph.edges:
        (x0, y0), (w0, h0) = xy[a_key], size[a_key]
        (x1, y1), (w1, h1) = xy[b_key], size[b_key]
        start, end = ((x0 + w0 / 2, y0), (x1 - w1 / 2, y1)) if lr else ((x0, y0 + h0 / 2), (x1, y1 - h1 / 2))
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=8, color="#555555",
                                     linewidth=0.8, shrinkA=0, shrinkB=1, gid=f"{a_key}->{b_key}", zorder=1))
    return fig


__all__ = ["trace", "record_modules", "Graph", "ModuleScopes", "new_figure", "save_figure", "PLOT_EXTRA"]
