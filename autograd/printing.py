"""How a Tensor prints: the body of its repr, in PyTorch's format (as torch's `_tensor_str.py`)."""

import numpy as np


def format_array(a):
    """The body of a Tensor's repr, following PyTorch's print options: every entry of a tensor of up to
    1,000 entries, else the first and last 3 along each axis around "..."; floats with 4 decimals
    (integral floats as "1."), in scientific notation when the magnitudes span more than 1e3 or reach
    1e8 or fall below 1e-4 (NumPy's rule, which is PyTorch's); rows wrapped at 80 characters.

        [[0.3374, -0.1778], [0.9178, 1.5810]] -> [[ 0.3374, -0.1778],
                                                   [ 0.9178,  1.5810]]
    """
    options = dict(separator=", ", threshold=1000, edgeitems=3, max_line_width=80, prefix="tensor(")
    if a.dtype.kind == "f":
        finite = a[np.isfinite(a)]
        if finite.size and (finite != np.round(finite)).any():
            options.update(precision=4, floatmode="fixed")
    return np.array2string(a, **options)


__all__ = ["format_array"]
