"""What the fused ops accept from a caller, turned into what they compute on: Tensors and checked ids."""

import numpy as np

from autograd import backend
from autograd.ids import check_ids
from autograd.tensor import Tensor


def as_tensor(x, like=None):
    """`x` itself when it is a Tensor, else a Tensor of it (on `like`'s device when given)."""
    if isinstance(x, Tensor):
        return x
    return Tensor(x, device=like.device if like is not None else None)


def as_ids(ids, like, n=None, what="ids", ignore_index=None):
    """Ids or targets: an integer Tensor or array, on `like`'s device. With `n`, checked to lie in [0, n)
    (see `check_ids`) before they move: host ids are checked on the host, without a device sync."""
    data = ids.data if isinstance(ids, Tensor) else ids
    if not hasattr(data, "dtype"):
        data = np.asarray(data)
    if data.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {data.dtype}")
    if n is not None:
        check_ids(data, n, what, ignore_index)
    return backend.to_device(data, like.device)
