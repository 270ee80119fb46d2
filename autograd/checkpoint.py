"""Checkpoints as safetensors files: named arrays plus JSON metadata, loaded without running code.

safetensors is the format the LLM world shares weights in; any tool that reads it can open these
files. A file holds raw little-endian arrays under a JSON header, so loading is parsing, never
unpickling. Writes are atomic: the file is written beside its destination under a temporary name,
flushed to disk, then renamed over it, so a crash mid-save leaves the previous checkpoint intact.

Layout of a `save_state` file:
- tensors "model.<name>" (a tied parameter once, under its first name) and
  "optim.<index>.<buffer>" (e.g. "optim.3.exp_avg"),
- metadata key "tinygrad_llm" holding JSON: {"version", "model_aliases": {name: first name},
  "optimizer": {"param_groups", "steps"}, "rng": dropout generator states, "scheduler", "extra"}.
"""

import json
import os

import numpy as np
import safetensors
import safetensors.numpy

from autograd import backend
from autograd.tensor import Tensor

META_KEY = "tinygrad_llm"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit what it is loaded into."""


def _host(array):
    array = array.data if isinstance(array, Tensor) else array
    return np.ascontiguousarray(backend.to_host(array))


def save_checkpoint(path, tensors, metadata=None):
    """Write `tensors` ({name: array on any device}) and `metadata` (JSON-serializable) to `path`
    atomically. Device arrays are copied to the host first."""
    path = os.fspath(path)
    host = {k: _host(v) for k, v in tensors.items()}
    meta = {META_KEY: json.dumps(metadata if metadata is not None else {})}
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        safetensors.numpy.save_file(host, tmp, metadata=meta)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _fsync_dir(directory):
    try:  # make the rename itself durable; not possible on every platform
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path, device="cpu"):
    """(tensors on `device`, metadata) from a safetensors file. The metadata is the JSON written by
    `save_checkpoint`; for a file written by another tool it is the file's own {str: str} header."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        with safetensors.safe_open(path, framework="numpy") as f:
            raw_meta = f.metadata() or {}
        tensors = safetensors.numpy.load_file(path)
        metadata = json.loads(raw_meta[META_KEY]) if META_KEY in raw_meta else dict(raw_meta)
    except (safetensors.SafetensorError, ValueError, TypeError, KeyError) as e:  # header, size, JSON, dtype
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {e}") from None
    if device != "cpu":
        tensors = {k: backend.to_device(v, device) for k, v in tensors.items()}
    return tensors, metadata


# ---------------------------------------------------------------------------------------------------
# Models, optimizers and schedulers together


def save_state(path, model=None, optimizer=None, scheduler=None, extra=None):
    """Save a model's state dict, an optimizer's state, a scheduler's step and the model's dropout
    generator states to one file, for an exact resume. `extra` is any JSON-serializable dict (the
    trainer's step, its config) and comes back from `load_state`."""
    tensors = {}
    meta = {"version": FORMAT_VERSION, "extra": extra if extra is not None else {}}
    if model is not None:
        first, aliases = {}, {}
        for name, array in model.state_dict().items():
            if id(array) in first:  # a tied parameter: saved once, restored under every name
                aliases[name] = first[id(array)]
            else:
                first[id(array)] = name
                tensors[f"model.{name}"] = array
        meta["model_aliases"] = aliases
        meta["rng"] = model.rng_states()
    if optimizer is not None:
        sd = optimizer.state_dict()
        steps = {}
        for i, s in sd["state"].items():
            steps[str(i)] = int(s["step"])
            for k, v in s.items():
                if k != "step":
                    tensors[f"optim.{i}.{k}"] = v
        meta["optimizer"] = {"param_groups": sd["param_groups"], "steps": steps}
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    save_checkpoint(path, tensors, meta)


def load_state(path, model=None, optimizer=None, scheduler=None, strict=True):
    """Load what `save_state` wrote into existing objects (in place, onto each parameter's device).
    Returns the `extra` dict. Problems (missing or unexpected keys, shapes, dtypes) raise an error
    naming the file and the keys."""
    path = os.fspath(path)
    tensors, meta = load_checkpoint(path)
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} was not written by save_state (format version {meta.get('version')!r}, "
            f"expected {FORMAT_VERSION}); read it with load_checkpoint"
        )
    if model is not None:
        state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        for alias, name in meta.get("model_aliases", {}).items():
            if name in state:
                state[alias] = state[name]
        try:
            model.load_state_dict(state, strict=strict)
        except ValueError as e:
            raise type(e)(f"checkpoint {path}: {e}") from None
        model.set_rng_states(meta.get("rng", {}))
    if optimizer is not None:
        if "optimizer" not in meta:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state")
        opt_meta = meta["optimizer"]
        state = {}
        for i, step in opt_meta["steps"].items():
            prefix = f"optim.{i}."
            entry = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            entry["step"] = step
            state[int(i)] = entry
        try:
            optimizer.load_state_dict({"param_groups": opt_meta["param_groups"], "state": state})
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
    if scheduler is not None:
        if "scheduler" not in meta:
            raise CheckpointError(f"checkpoint {path} holds no scheduler state")
        scheduler.load_state_dict(meta["scheduler"])
    return meta.get("extra", {})


__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "save_state", "load_state"]
