"""Book appendix A: introduction to PyTorch, on this project's engine: tensors, automatic differentiation, a
small network, data loaders, a training loop, saving and loading.

Prints what the book's appendix A prints, at the same points, next to the book's value. The logistic
regression's loss and gradients are the book's to 4 decimals; the network's numbers come from random
weights (the book's from PyTorch's generator, ours from NumPy's) and differ, its accuracy does not.
Read autograd/tensor.py (Tensor, backward, grad), autograd/ops.py (the basic ops, each forward above its
backward), autograd/functional/ (losses.py: binary_cross_entropy, cross_entropy; activations.py: softmax),
autograd/module.py and autograd/nn.py (Module, Sequential, Linear), autograd/optim.py (SGD), tinygrad_llm/text/data.py (DataLoader) and
autograd/checkpoint.py beside it; autograd/viz.py draws the computation graph of A.3 (printed as Graphviz DOT
text; `--plot` draws it as a picture, which needs matplotlib). No data files are needed.

    python examples/book/appendix_a.py [--plot [graph.png]]
"""

import tempfile
from pathlib import Path

import numpy as np

import autograd
from _book import heading, parse_args, plot_flag, show, write_picture
from autograd import Tensor, nn
from autograd import functional as F
from autograd.checkpoint import load_checkpoint, save_checkpoint
from autograd.optim import SGD
from autograd.viz import trace
from tinygrad_llm.text.data import DataLoader


class NeuralNetwork(nn.Module):
    """The book's network: two hidden layers of 30 and 20 units with ReLU, then the output layer."""

    def __init__(self, num_inputs, num_outputs, rng=None):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(num_inputs, 30, rng=rng), nn.ReLU(),  # 1st hidden layer
            nn.Linear(30, 20, rng=rng), nn.ReLU(),  # 2nd hidden layer
            nn.Linear(20, num_outputs, rng=rng),  # output layer
        )

    def forward(self, x):
        return self.layers(x)  # logits


def main(argv=None):
    args = parse_args(__doc__, argv=argv, add_arguments=lambda p: plot_flag(p, "graph.png", "the graph of A.3"))

    heading("A.2 Understanding tensors")
    tensor2d = Tensor(np.array([[1, 2], [3, 4]]))
    print("tensor2d:", tensor2d)
    show("Tensor([1, 2, 3]).dtype", Tensor([1, 2, 3]).dtype, "torch.int64",
         note="differs by design: Python numbers make float32 tensors here; an integer NumPy array keeps int64")
    show("Tensor(np.array([1, 2, 3])).dtype", Tensor(np.array([1, 2, 3])).dtype, "int64")
    show("Tensor([1.0, 2.0, 3.0]).dtype", Tensor([1.0, 2.0, 3.0]).dtype, "float32")
    show(".float() of the int64 one", Tensor(np.array([1, 2, 3])).float().dtype, "float32")
    tensor2d = Tensor(np.array([[1, 2, 3], [4, 5, 6]]))
    show("shape", tensor2d.shape, (2, 3))
    show("reshape(3, 2)", tensor2d.reshape(3, 2).tolist(), [[1, 2], [3, 4], [5, 6]])
    show("view(3, 2)", tensor2d.view(3, 2).tolist(), [[1, 2], [3, 4], [5, 6]])
    show(".T", tensor2d.T.tolist(), [[1, 4], [2, 5], [3, 6]])
    print("tensor2d @ tensor2d.T:", tensor2d @ tensor2d.T)
    show("tensor2d @ tensor2d.T", (tensor2d @ tensor2d.T).tolist(), [[14, 32], [32, 77]])

    heading("A.3-A.4 A computation graph, automatic differentiation")
    y = Tensor([1.0])  # true label
    x1 = Tensor([1.1])  # input feature
    w1 = Tensor([2.2], requires_grad=True)  # weight parameter
    b = Tensor([0.0], requires_grad=True)  # bias unit
    z = x1 * w1 + b  # net input
    a = z.sigmoid()  # activation and output
    loss = F.binary_cross_entropy(a, y)
    show("loss", loss.detach(), "tensor(0.0852)")
    graph = trace(loss, names={"x1": x1, "w1": w1, "b": b, "z": z, "a": a, "y": y, "loss": loss})  # before backward frees it
    grad_L_w1 = autograd.grad(loss, w1, retain_graph=True)
    grad_L_b = autograd.grad(loss, b, retain_graph=True)
    show("grad(loss, w1)", grad_L_w1, "(tensor([-0.0898]),)")
    show("grad(loss, b)", grad_L_b, "(tensor([-0.0817]),)")
    loss.backward()
    show("w1.grad after loss.backward()", Tensor(w1.grad), "tensor([-0.0898])")
    show("b.grad", Tensor(b.grad), "tensor([-0.0817])")
    print("the graph of the loss as Graphviz DOT text (paste it into any Graphviz viewer), with the leaves' gradients:")
    print(graph.dot(), end="")
    if args.plot:
        write_picture(lambda: graph.draw(args.plot), args.plot)
    show("the same from the logits (the stable form)", F.binary_cross_entropy_with_logits(z.detach(), y),
         "tensor(0.0852)")

    heading("A.5 Implementing multilayer neural networks")
    model = NeuralNetwork(50, 3, rng=np.random.default_rng(123))
    print(model)
    show("Total number of trainable model parameters", model.num_parameters(trainable=True), 2213)
    show("layers[0].weight shape", model.layers[0].weight.shape, (30, 50))
    X = Tensor(np.random.default_rng(123).random((1, 50), dtype=np.float32))
    out = model(X)
    print("out:", out, "  (book: tensor([[-0.1262,  0.1080, -0.1792]], grad_fn=<AddmmBackward0>))")
    with autograd.no_grad():
        print("softmax:", F.softmax(model(X), axis=1), "  (book: tensor([[0.3113, 0.3934, 0.2952]]))")

    heading("A.6 Setting up efficient data loaders")
    X_train = np.array([[-1.2, 3.1], [-0.9, 2.9], [-0.5, 2.6], [2.3, -1.1], [2.7, -1.5]], dtype=np.float32)
    y_train = np.array([0, 0, 0, 1, 1])
    X_test = np.array([[-0.8, 2.8], [2.6, -1.6]], dtype=np.float32)
    y_test = np.array([0, 1])
    train_ds = list(zip(X_train, y_train))  # any sequence of (features, label) is a dataset: len and indexing
    test_ds = list(zip(X_test, y_test))
    show("len(train_ds)", len(train_ds), 5)
    loader = DataLoader(train_ds, batch_size=2, shuffle=True, drop_last=False, seed=123)
    for idx, (x, label) in enumerate(loader):
        print(f"Batch {idx + 1}:", Tensor(x), Tensor(label))
    print("(the book's order comes from PyTorch's shuffle: labels [1, 0], [0, 0], [1])")
    train_loader = DataLoader(train_ds, batch_size=2, shuffle=True, drop_last=True, seed=123)
    test_loader = DataLoader(test_ds, batch_size=2, shuffle=False, drop_last=False)
    show("batches with drop_last=True", len(train_loader), 2)

    heading("A.7 A typical training loop")
    model = NeuralNetwork(num_inputs=2, num_outputs=2, rng=np.random.default_rng(123))
    optimizer = SGD(model.parameters(), lr=0.5)
    num_epochs = 3
    for epoch in range(num_epochs):
        model.train()
        for batch_idx, (features, labels) in enumerate(train_loader):
            logits = model(Tensor(features))
            loss = F.cross_entropy(logits, labels)  # loss function
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            print(f"Epoch: {epoch + 1:03d}/{num_epochs:03d} | Batch {batch_idx + 1:03d}/{len(train_loader):03d}"
                  f" | Train/Val Loss: {loss.item():.2f}")
    print("(book: 0.75, 0.65, 0.44, 0.13, 0.03, 0.00: other initial weights and batch order)")
    model.eval()
    with autograd.no_grad():
        outputs = model(Tensor(X_train))
    print("outputs:", outputs)
    probas = F.softmax(outputs, axis=1)
    print("probas:", probas)
    predictions = outputs.argmax(axis=1)
    show("predictions", predictions.tolist(), [0, 0, 0, 1, 1])
    show("predictions == y_train", (predictions == y_train).tolist(), [True] * 5)
    show("compute_accuracy(model, train_loader)", compute_accuracy(model, train_loader), 1.0)
    show("compute_accuracy(model, test_loader)", compute_accuracy(model, test_loader), 1.0)

    heading("A.8 Saving and loading models")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"  # safetensors, not pickle: loading a file runs no code
        save_checkpoint(path, model.state_dict())
        again = NeuralNetwork(2, 2)  # needs to match the original model exactly
        missing, unexpected = again.load_state_dict(load_checkpoint(path)[0])
        show("missing and unexpected keys", (missing, unexpected), ([], []), note="the book: <All keys matched successfully>")
        with autograd.no_grad():
            show("the loaded model's outputs equal", np.array_equal(again(Tensor(X_train)).numpy(), outputs.numpy()), True)
    print("A.9: on a GPU, Tensor(..., device='cuda') and model.to('cuda') (needs CuPy); see autograd/backend.py.")


def compute_accuracy(model, dataloader):
    model.eval()
    correct, total_examples = 0, 0
    for features, labels in dataloader:
        with autograd.no_grad():
            logits = model(Tensor(features))
        predictions = logits.argmax(axis=1)
        correct += int((predictions == labels).numpy().sum())
        total_examples += len(labels)
    return correct / total_examples


if __name__ == "__main__":
    main()
