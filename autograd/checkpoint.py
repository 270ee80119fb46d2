"""Book appendix A, section A.8 (saving and loading models): safetensors files of named arrays plus
JSON metadata, loaded without running code.

safetensors is the format the LLM world shares weights in; any tool that reads it can open these
files. A file holds raw little-endian arrays under a JSON header, so loading is parsing, never
unpickling. This module is the one reader and writer of such files (pretrained weights read tensor by
tensor, fine-tuned models, adapters and training checkpoints all go through it), and `atomic_write` is
the one way to write any file: beside its destination under a temporary name, flushed to disk, then
renamed over it, so a crash mid-save leaves the previous file intact.

Three levels, each built on the one before:
- `write_safetensors` / `read_safetensors_header` + `read_tensor_into`: the format, tensor by tensor;
- `save_tensors` / `load_tensors`: {name: array} plus a JSON metadata dict (`save_checkpoint` and
  `load_checkpoint` are their earlier names);
- `save_state` / `load_state`: a model, its optimizer and scheduler together, for an exact resume.

Layout of a `save_state` file:
- tensors "model.<name>" (a tied parameter once, under its first name) and
  "optim.<index>.<buffer>" (e.g. "optim.3.exp_avg"),
- the JSON under the metadata key `META_KEY`: {"version", "model_aliases": {name: first name},
  "optimizer": {"param_groups", "steps"}, "rng": dropout generator states, "scheduler", "extra"}.
"""

import contextlib
import errno
import json
import math
import os
import re
import tempfile

import numpy as np
import safetensors

from autograd import backend
from autograd.tensor import Tensor

META_KEY = "tinygrad_llm"  # part of the file format: every file written so far has its JSON under this key
FORMAT_VERSION = 1


class FileFormatError(ValueError):
    """A file the project reads (tokenizer files, config.json, a safetensors header, a checkpoint's
    metadata, a dataset) that is malformed, inconsistent or holds absurd values. The message is one
    line naming the file and the field; command-line programs print it as `error: ...`."""


class CheckpointError(FileFormatError):
    """A checkpoint file that cannot be read or does not fit what it is loaded into."""


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """Write `path` all or nothing: yields a file open on a temporary name in the same folder; when the
    block ends without error the file is flushed to disk, renamed over `path` and the folder synced, so
    a crash, a kill or a full disk leaves either the old file or the new one, never half of one. On an
    error the temporary file is removed and `path` is untouched. Every file the project writes goes
    through here.

        with atomic_write("out/config.json", "w", encoding="utf-8") as f:
            f.write(text)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    # the writer's process id in the name: a later run tells the leftovers of a killed writer from the
    # files a live one is still writing (`remove_stale_temporaries`)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}{_TMP_MARK}{os.getpid()}-")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's file is private (0600); give it a new file's usual mode
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            full = OSError(f"could not write {path}: no space left on the disk ({e.strerror}); the previous "
                           f"file is kept. Free some space and run again")
            full.errno = e.errno
            raise full from None
        raise
    _fsync_dir(folder)  # the rename is only durable once the folder's entry is on disk


_TMP_MARK = ".tmp-"
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # no space; over quota (not on Windows)
_TMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[A-Za-z0-9_]+$")  # .<name>.tmp-<pid>-<mkstemp's random part>


def remove_stale_temporaries(folder):
    """Delete the temporary files that `atomic_write` left in `folder` when its process was killed
    mid-write (a checkpoint's can be tens of MB). A file whose writer is still alive is kept: it may be
    writing it now. Returns the names removed.

        .checkpoint.safetensors.tmp-4242-x1y2z3ab   (process 4242 is gone)  -> removed
    """
    removed = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return removed
    for name in names:
        match = _TMP_NAME.match(name)
        if match and not _process_alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))
                removed.append(name)
    return sorted(removed)


def _process_alive(pid):
    """Whether process `pid` exists (signal 0 checks without sending anything). A PID reused by another
    process reads as alive, which only keeps a stale file one run longer."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:  # no such notion on this platform: keep the file
        return True
    return True


def _umask():
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


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


def write_text(path, text):
    """`path.write_text(text)` in UTF-8, atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_safetensors(path, tensors, metadata=None):
    """Write [(name, array, transpose)] (arrays on any device; transpose: store array.T) as a float32 or
    integer safetensors file, atomically, one tensor at a time: the package's own `save_file` first
    copies every tensor into one bytes object, twice the model's memory for a checkpoint. `metadata` is
    the file's {str: str} header metadata. Its files are read back with the package (`safe_open`)."""
    header, offset = {}, 0
    for name, array, transpose in tensors:
        shape = tuple(array.shape[::-1]) if transpose else tuple(array.shape)
        dtype = np.dtype(array.dtype)
        if dtype.str[1:] not in _SAFETENSORS_DTYPES:
            raise TypeError(f"{name}: cannot store dtype {dtype} in a safetensors file")
        nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype.str[1:]], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    with atomic_write(path) as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for _, array, transpose in tensors:
            host = backend.to_host(array.data if isinstance(array, Tensor) else array)
            f.write(np.ascontiguousarray(host.T if transpose else host, dtype=host.dtype.newbyteorder("<")).data)


# the float dtypes read_tensor_into reads, as NumPy dtypes (bfloat16: the top half of a float32)
READ_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4, "I64": 8, "U64": 8,
             "F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_SAFETENSORS_DTYPES = {"f4": "F32", "f8": "F64", "f2": "F16", "i8": "I64", "i4": "I32", "i2": "I16", "i1": "I8",
                       "u8": "U64", "u4": "U32", "u2": "U16", "u1": "U8", "b1": "BOOL"}


# ---------------------------------------------------------------------------------------------------
# safetensors, read tensor by tensor (pretrained weights too large to hold twice)


def read_safetensors_header(path):
    """({name: {"dtype", "shape", "data_offsets"}}, metadata, offset of the data) of a safetensors file,
    checked as the format's specification asks, since a header that is well-formed JSON can still point
    a tensor at another tensor's bytes: every entry has a known dtype, a shape of non-negative ints and
    integer offsets with 0 <= begin <= end <= the data's length; a tensor's byte size is
    prod(shape) * itemsize; the tensors tile the data region with no gap and no overlap; metadata is
    {str: str}. A violation is a CheckpointError naming the file and the tensor.

    Why a reader of our own beside `safe_open` (which `load_tensors` below uses): the `safetensors`
    package's NumPy reader cannot return BF16 tensors, and it memory-maps the file, so loading a
    checkpoint through it makes the whole file resident beside the model (tests/test_weights.py measures
    the peak)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n > size - 8:
            raise CheckpointError(f"{path} is not a safetensors file (header length {n}, file size {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: the header's __metadata__ must be an object of strings, got {metadata!r:.80}")
    data_size = size - 8 - n
    extents = []
    for name, info in header.items():
        begin, end = _check_entry(path, name, info, data_size)
        extents.append((begin, end, name))
    covered = 0  # the tensors, in file order, must cover [0, data_size) exactly
    for begin, end, name in sorted(extents):
        if begin != covered:
            problem = "overlaps the tensor before it" if begin < covered else f"leaves a gap at byte {covered}"
            raise CheckpointError(f"{path}: tensor {name} (bytes {begin} to {end}) {problem}")
        covered = end
    if covered != data_size:
        raise CheckpointError(f"{path}: the tensors cover {covered} of the {data_size} data bytes "
                              "(trailing bytes that no tensor owns)")
    return header, metadata, 8 + n


def _check_entry(path, name, info, data_size):
    """(begin, end) of one header entry, after checking it against the specification."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise CheckpointError(f"{path}: tensor {name}: malformed header entry {info!r:.120} "
                              "(needs dtype, shape and data_offsets)")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _ITEMSIZE:
        raise CheckpointError(f"{path}: tensor {name}: unknown dtype {dtype!r} (known: {', '.join(_ITEMSIZE)})")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CheckpointError(f"{path}: tensor {name}: shape {shape!r:.80} is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
        raise CheckpointError(f"{path}: tensor {name}: data_offsets {offsets!r:.80} is not two integers")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise CheckpointError(f"{path}: tensor {name}: data_offsets [{begin}, {end}] lie outside the "
                              f"{data_size} data bytes (the file is truncated or its header is corrupt)")
    nbytes = _ITEMSIZE[dtype] * math.prod(shape)  # Python ints: no overflow for absurd shapes
    if end - begin != nbytes:
        raise CheckpointError(f"{path}: tensor {name} holds {end - begin} bytes, not the {nbytes} of "
                              f"{dtype} {tuple(shape)}")
    return begin, end


def read_tensor_into(f, info, start, out):
    """Read one tensor into `out` (float32, its file shape); without a temporary when the file holds float32."""
    begin, end = info["data_offsets"]
    f.seek(start + begin)
    raw = np.empty(tuple(info["shape"]), dtype=READ_DTYPES[info["dtype"]]) if info["dtype"] != "F32" else out
    view = memoryview(raw.reshape(-1).view(np.uint8))
    got = 0
    while got < end - begin:
        k = f.readinto(view[got:])
        if not k:
            raise CheckpointError(f"unexpected end of file while reading a {info['dtype']} tensor")
        got += k
    if info["dtype"] == "BF16":
        out[...] = (raw.astype(np.uint32) << 16).view(np.float32)
    elif raw is not out:
        out[...] = raw


def save_tensors(path, tensors, metadata=None):
    """Write `tensors` ({name: array on any device}) and `metadata` (JSON-serializable) to `path`
    atomically, one tensor at a time (device arrays are copied to the host one by one)."""
    meta = {META_KEY: json.dumps(metadata if metadata is not None else {})}
    write_safetensors(path, [(k, v, False) for k, v in tensors.items()], meta)


def read_metadata(path):
    """The JSON metadata `save_tensors` stored in `path`, without reading any tensor (a file of
    another tool: its own {str: str} header metadata). Raises FileNotFoundError or CheckpointError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        with safetensors.safe_open(path, framework="numpy") as f:
            raw = f.metadata() or {}
        return json.loads(raw[META_KEY]) if META_KEY in raw else dict(raw)
    except (safetensors.SafetensorError, ValueError, TypeError, KeyError) as e:  # header, size, JSON
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {e}") from None


def load_tensors(path, device="cpu"):
    """(tensors on `device`, metadata) from a safetensors file, read tensor by tensor through the package
    (which checks the header and every tensor's extent). The metadata is the JSON written by
    `save_tensors`; for a file written by another tool it is the file's own {str: str} header."""
    metadata = read_metadata(path)
    path = os.fspath(path)
    try:
        with safetensors.safe_open(path, framework="numpy") as f:
            tensors = {k: backend.to_device(f.get_tensor(k), device) for k in f.keys()}
    except (safetensors.SafetensorError, ValueError, TypeError) as e:  # sizes, dtypes
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {e}") from None
    return tensors, metadata


# the earlier names of save_tensors and load_tensors (a "checkpoint" is what save_state writes)
save_checkpoint, load_checkpoint = save_tensors, load_tensors


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
    save_tensors(path, tensors, meta)


def load_state(path, model=None, optimizer=None, scheduler=None, strict=True):
    """Load what `save_state` wrote into existing objects (in place, onto each parameter's device).
    Returns the `extra` dict. Problems (missing or unexpected keys, shapes, dtypes) raise an error
    naming the file and the keys."""
    path = os.fspath(path)
    tensors, meta = load_tensors(path)
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} was not written by save_state (format version {meta.get('version')!r}, "
            f"expected {FORMAT_VERSION}); read it with load_tensors"
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


__all__ = ["FileFormatError", "CheckpointError", "atomic_write", "remove_stale_temporaries", "read_safetensors_header",
           "read_tensor_into", "READ_DTYPES", "save_tensors",
           "load_tensors", "save_state", "load_state", "save_checkpoint", "load_checkpoint"]
