"""The id check: token ids and class targets must lie in [0, n) before they index a table.

Both the fused ops (`functional/`) and the composed ones (`reference.py`) check their ids here, so a bad
id gives the same ValueError on either path.
"""

import numpy as np

from autograd import backend


def check_ids(ids, n, what, ignore_index=None):
    """Raise ValueError unless every id lies in [0, n) (or equals `ignore_index`), naming the first bad
    id, its position and n. Python indexing would otherwise read -1 as the last row (and CuPy clips ids
    past the end), so a bad id silently gives another token's numbers.

    The test is one min and one max over the array as given: free for the host arrays a data loader
    makes, one host sync for a device array. Callers check once per batch where the ids enter (the
    embedding lookup, the loss's targets), never per layer. Only a failing check searches for the
    position.

        check_ids(np.array([[3, -1]]), 10, "token ids")  # ValueError: token ids: id -1 at position (0, 1) ...
    """
    if ids.size == 0:
        return
    xp = backend.get_array_module(ids)
    low, high = int(ids.min()), int(ids.max())
    if low >= 0 and high < n:
        return
    bad = (ids < 0) | (ids >= n)
    if ignore_index is not None:
        bad &= ids != ignore_index
        if not bool(bad.any()):
            return
    first = int(xp.argmax(bad.reshape(-1)))  # the first True
    position = tuple(int(i) for i in np.unravel_index(first, ids.shape))
    value = int(ids.reshape(-1)[first])
    where = position[0] if len(position) == 1 else position
    allowed = f" or the ignore index {ignore_index}" if ignore_index is not None else ""
    raise ValueError(f"{what}: id {value} at position {where} is outside [0, {n}) "
                     f"(a vocabulary of {n}){allowed}")


__all__ = ["check_ids"]
